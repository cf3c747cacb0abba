"""A re-extracted shard reads only files whose stamp changed, and its tables equal a fresh run."""

from __future__ import annotations

import logging
import os
import shutil
from pathlib import Path

import pyarrow.parquet as pq

import demo
import extract_metadata
import scan_study

VENDOR = Path(__file__).resolve().parent / "fixtures" / "vendor-mr"


def _study(tmp_path: Path) -> Path:
    study = tmp_path / "study"
    shutil.copytree(demo.MR_SERIES, study / "mr")
    shutil.copytree(VENDOR / "Philips_Achieva_DTI", study / "philips")
    shutil.copytree(demo.UNSORTED, study / "unsorted")
    return study


def _extract(study: Path, out: Path, cache: Path | None, caplog) -> tuple[bytes, bytes, str]:
    """Scan into one shard and extract it; return both tables' bytes and the log line."""
    assert scan_study.main(["--study", str(study), "--out-dir", str(out / "scan")]) == 0
    (shard,) = sorted((out / "scan").glob("shard_*.jsonl"))
    args = ["--study", str(study), "--shard", str(shard)]
    args += ["--instances", str(out / "i.parquet"), "--errors", str(out / "e.parquet")]
    if cache is not None:
        args += ["--cache", str(cache)]
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="extract_metadata"):
        assert extract_metadata.main(args) == 0
    log = " ".join(r.getMessage() for r in caplog.records)
    return (out / "i.parquet").read_bytes(), (out / "e.parquet").read_bytes(), log


def test_unchanged_files_are_reused_and_changed_ones_read_again(tmp_path, caplog):
    study = _study(tmp_path)
    cache = tmp_path / "cache"
    n_files = sum(1 for p in study.rglob("*") if p.is_file())
    first = _extract(study, tmp_path / "run1", cache, caplog)
    assert "(0 unchanged since the last run)" in first[2]

    # pixels scrubbed in place: same size, mtime put back (ctime still moves)
    target = study / "mr" / "IM_0010"
    info = target.stat()
    data = bytearray(target.read_bytes())
    data[-100:] = bytes(100)
    target.write_bytes(bytes(data))
    os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
    # a file turned corrupt, one removed, one added
    (study / "philips" / "0017.dcm").write_bytes(b"not DICOM any more")
    (study / "mr" / "IM_0001").unlink()
    shutil.copyfile(demo.CT_SMALL, study / "mr" / "added.dcm")

    again = _extract(study, tmp_path / "run2", cache, caplog)
    assert f"({n_files - 3} unchanged since the last run)" in again[2]
    fresh = _extract(study, tmp_path / "run3", None, caplog)
    assert again[:2] == fresh[:2]
    errors = pq.read_table(tmp_path / "run2" / "e.parquet").to_pylist()
    assert {"path": "philips/0017.dcm", "reason": "not_dicom"}.items() <= next(
        e for e in errors if e["path"] == "philips/0017.dcm"
    ).items()
    paths = pq.read_table(tmp_path / "run2" / "i.parquet", columns=["path"]).column(0).to_pylist()
    assert "mr/added.dcm" in paths and "mr/IM_0001" not in paths


def test_other_settings_do_not_reuse_rows(tmp_path, caplog):
    study = _study(tmp_path)
    cache = tmp_path / "cache"
    _extract(study, tmp_path / "run1", cache, caplog)
    assert extract_metadata.cache_fingerprint([], "none") != extract_metadata.cache_fingerprint(
        ["SliceLocation"], "none"
    )
    stamps = extract_metadata.read_stamps(next((tmp_path / "run1" / "scan").glob("*.jsonl")))
    assert extract_metadata.load_reuse(cache, stamps, "another fingerprint") is None
    reuse = extract_metadata.load_reuse(
        cache, stamps, extract_metadata.cache_fingerprint([], "none")
    )
    assert reuse is not None and len(reuse[2]) == len(stamps)
