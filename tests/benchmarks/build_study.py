"""Build a large, realistic study by copying the demo study's real series with fresh UIDs.

Deterministic: the same size gives the same bytes. Half of the files get no extension.
Used by the benchmark and by scale tests; never by the workflow itself.
"""

from __future__ import annotations

import argparse
import hashlib
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import pydicom

ROOT = Path(__file__).resolve().parents[2]
DEMO = ROOT / "resources" / "demo-study"
TEMPLATES = (
    DEMO / "patient01_head_MR" / "20220407_brain" / "003_t1_fl2d_sag",
    DEMO / "patient02_abdomen_CT" / "20221208_ct_body_3.0",
)

log = logging.getLogger("build_study")


def derived_uid(*parts: object) -> str:
    """A valid, deterministic UID under the 2.25 (UUID-derived) root."""
    digest = hashlib.sha1("|".join(str(p) for p in parts).encode()).digest()
    return "2.25." + str(int.from_bytes(digest[:16], "big"))


def template_series() -> list[list[pydicom.Dataset]]:
    """The demo's real image series, each a list of datasets in file-name order."""
    series = []
    for folder in TEMPLATES:
        files = sorted(p for p in folder.iterdir() if p.is_file())
        series.append([pydicom.dcmread(p) for p in files])
    return series


def build(out: Path, n_files: int, series_per_study: int = 4) -> int:
    """Write about ``n_files`` files (whole series only) under ``out``; returns files written."""
    templates = template_series()
    written = 0
    copy = 0
    while written < n_files:
        template = templates[copy % len(templates)]
        study_no, series_no = divmod(copy, series_per_study)
        study_uid = derived_uid("study", study_no)
        series_uid = derived_uid("series", copy)
        folder = out / f"subject_{study_no:05d}" / f"series_{series_no:02d}"
        folder.mkdir(parents=True, exist_ok=True)
        for i, ds in enumerate(template):
            ds.StudyInstanceUID = study_uid
            ds.SeriesInstanceUID = series_uid
            ds.SOPInstanceUID = derived_uid("instance", copy, i)
            ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
            ds.SeriesNumber = series_no + 1
            ds.PatientID = f"SUBJ{study_no:05d}"
            name = f"IM_{i + 1:04d}" + (".dcm" if (copy + i) % 2 else "")
            ds.save_as(folder / name, enforce_file_format=False)
            written += 1
        copy += 1
    return written


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", required=True, type=Path, help="new study folder")
    parser.add_argument("--files", required=True, type=int, help="about this many files")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the study; refuses to write into a folder that already has files."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.out.exists() and any(args.out.iterdir()):
        print(f"build_study: {args.out} is not empty", file=sys.stderr)
        return 2
    n = build(args.out, args.files)
    log.info("%d files written to %s", n, args.out)
    return 0


if __name__ == "__main__":
    sys.exit(main())
