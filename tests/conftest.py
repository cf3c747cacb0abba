"""Shared fixtures: the demo study's metadata tables, built once per test session."""

from __future__ import annotations

import pytest

import demo


@pytest.fixture(scope="session")
def demo_metadata(tmp_path_factory):
    """Scan, extract and merge the demo study into a temp folder; return the table paths."""
    import extract_metadata
    import merge_metadata
    import scan_study

    out = tmp_path_factory.mktemp("demo_metadata")
    assert scan_study.main(["--study", str(demo.STUDY), "--out-dir", str(out / "scan")]) == 0
    shards = sorted((out / "scan").glob("shard_*.jsonl"))
    parts_i, parts_e = [], []
    for shard in shards:
        i, e = out / f"{shard.stem}.instances.parquet", out / f"{shard.stem}.errors.parquet"
        args = ["--study", str(demo.STUDY), "--shard", str(shard)]
        assert extract_metadata.main(args + ["--instances", str(i), "--errors", str(e)]) == 0
        parts_i.append(str(i))
        parts_e.append(str(e))
    paths = {
        "root": out,
        "instances": out / "metadata" / "instances.parquet",
        "series": out / "metadata" / "series.parquet",
        "errors": out / "errors_extract.parquet",
    }
    args = ["--instance-parts", *parts_i, "--error-parts", *parts_e]
    args += ["--instances", str(paths["instances"]), "--series", str(paths["series"])]
    assert merge_metadata.main(args + ["--errors", str(paths["errors"])]) == 0
    return paths


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One full workflow run on a copy of the demo study: ``(cwd, results, snakemake log)``."""
    from workflow_run import run_demo

    return run_demo(tmp_path_factory)
