"""Every query recipe in the README's cookbook runs against the demo results."""

from __future__ import annotations

import re

import pandas as pd
import pytest

import demo
import query

README = demo.ROOT / "README.md"


def cookbook_blocks(language: str) -> list[str]:
    """Code blocks of one language in the README's "Query cookbook" section, in order."""
    text = README.read_text(encoding="utf-8")
    section = text.split("## Query cookbook", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


@pytest.mark.slow
class TestPandasRecipes:
    def test_every_pandas_recipe_runs_and_returns_data(self, demo_run, monkeypatch):
        cwd, _, _ = demo_run
        monkeypatch.chdir(cwd)
        setup, *recipes = cookbook_blocks("python")
        namespace: dict = {}
        exec(setup, namespace)  # noqa: S102 - the README's own code
        assert len(recipes) >= 5
        for recipe in recipes:
            result = eval(recipe.strip(), namespace)  # noqa: S307 - the README's own code
            assert isinstance(result, (pd.DataFrame, pd.Series)), recipe

    def test_failed_files_recipe_names_the_demo_bad_files(self, demo_run, monkeypatch):
        cwd, _, _ = demo_run
        monkeypatch.chdir(cwd)
        setup, *recipes = cookbook_blocks("python")
        namespace: dict = {}
        exec(setup, namespace)  # noqa: S102
        failed = eval(next(r for r in recipes if "errors.severity" in r), namespace)  # noqa: S307
        assert set(failed.path) == {
            "unsorted/zipMR.gz",
            "unsorted/no_meta.dcm",
            "unsorted/rtplan_truncated.dcm",
        }


@pytest.mark.slow
class TestSqlRecipes:
    def test_every_sql_recipe_runs(self, demo_run):
        _, results, _ = demo_run
        con = query.connect(results)
        recipes = cookbook_blocks("sql")
        assert len(recipes) >= 5
        for recipe in recipes:
            query.run_query(con, recipe)

    def test_sql_and_pandas_agree_on_counts_by_modality(self, demo_run):
        _, results, _ = demo_run
        sql = query.run_query(query.connect(results), cookbook_blocks("sql")[0])
        instances = pd.read_parquet(results / "metadata" / "instances.parquet")
        assert sql.instances.sum() == len(instances) == 69
        ct = sql[sql.Modality == "CT"].instances.sum()
        assert ct == (instances.Modality == "CT").sum() == 21
