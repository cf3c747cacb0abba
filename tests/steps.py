"""Run the metadata steps' CLIs on a small study folder, as the workflow would."""

from __future__ import annotations

from pathlib import Path

import extract_metadata
import merge_metadata
import scan_study


def index_study(study: Path, out: Path, *merge_args: str) -> dict[str, Path]:
    """scan_study, extract_metadata per shard and merge_metadata; return the table paths.

    Keys: ``instances``, ``series``, ``errors`` (extract errors), ``batches`` (folder of
    per-batch work lists) and ``identifiers``.
    """
    assert scan_study.main(["--study", str(study), "--out-dir", str(out / "scan")]) == 0
    parts_i, parts_e = [], []
    for shard in sorted((out / "scan").glob("shard_*.jsonl")):
        i, e = out / f"{shard.stem}.instances.parquet", out / f"{shard.stem}.errors.parquet"
        args = ["--study", str(study), "--shard", str(shard)]
        assert extract_metadata.main(args + ["--instances", str(i), "--errors", str(e)]) == 0
        parts_i.append(str(i))
        parts_e.append(str(e))
    paths = {
        "root": out,
        "instances": out / "metadata" / "instances.parquet",
        "series": out / "metadata" / "series.parquet",
        "errors": out / "errors_extract.parquet",
        "batches": out / "batches",
        "identifiers": out / "identifiers.parquet",
    }
    args = ["--instance-parts", *parts_i, "--error-parts", *parts_e, *merge_args]
    args += ["--instances", str(paths["instances"]), "--series", str(paths["series"])]
    args += ["--errors", str(paths["errors"]), "--batch-dir", str(paths["batches"])]
    args += ["--identifiers", str(paths["identifiers"])]
    assert merge_metadata.main(args) == 0
    return paths
