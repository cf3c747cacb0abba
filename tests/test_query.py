"""The query CLI: views over the metadata tables, output formats, one-line errors."""

from __future__ import annotations

import pandas as pd
import pytest

import query


@pytest.mark.slow
class TestMain:
    def test_prints_an_aligned_table(self, demo_run, capsys):
        _, results, _ = demo_run
        sql = "SELECT Modality, count(*) AS n FROM instances GROUP BY 1 ORDER BY 1"
        assert query.main(["--results", str(results), sql]) == 0
        lines = capsys.readouterr().out.splitlines()
        assert lines[0].split() == ["Modality", "n"]
        assert "CT 21" in [" ".join(line.split()) for line in lines]

    def test_writes_csv_and_parquet(self, demo_run, tmp_path, capsys):
        _, results, _ = demo_run
        sql = "SELECT series_key, slice_spacing FROM series WHERE is_volume ORDER BY 1"
        assert query.main(["--results", str(results), "--format", "csv", sql]) == 0
        assert capsys.readouterr().out.startswith("series_key,slice_spacing\n")
        out = tmp_path / "volumes.parquet"
        args = ["--results", str(results), "--format", "parquet", "--out", str(out), sql]
        assert query.main(args) == 0
        assert len(pd.read_parquet(out)) == 3  # head MR, abdomen CT, RT dose grid

    def test_bad_query_gives_duckdb_message_on_one_line(self, demo_run, capsys):
        _, results, _ = demo_run
        assert query.main(["--results", str(results), "SELECT nope FROM instances"]) == 1
        err = capsys.readouterr().err
        assert err.count("\n") == 1 and err.startswith("query: ") and "nope" in err

    def test_missing_results_folder_is_one_line(self, tmp_path, capsys):
        assert query.main(["--results", str(tmp_path), "SELECT 1"]) == 1
        assert "no metadata tables" in capsys.readouterr().err
