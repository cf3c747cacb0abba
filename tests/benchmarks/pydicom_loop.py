"""The plain pydicom loop: read every file's header, one process, no outputs.

``pydicom.dcmread(path, stop_before_pixels=True)`` over every regular file of a study, in
path order; files pydicom rejects are counted. This is the second baseline of
``run_benchmark.py``: the least a metadata stage must do, done the simplest way.
"""

from __future__ import annotations

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

import pydicom

log = logging.getLogger("pydicom_loop")


def list_files(study: Path) -> list[Path]:
    """Every regular file under ``study``, sorted by path (symlinked folders not followed)."""
    found = []
    for dirpath, _dirnames, filenames in os.walk(study):
        found.extend(Path(dirpath) / name for name in filenames)
    return sorted(found)


def read_headers(files: Sequence[Path]) -> tuple[int, int]:
    """Read every file's header with pydicom; returns ``(read, rejected)`` counts."""
    read = rejected = 0
    for path in files:
        try:
            pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - any file pydicom refuses only counts
            rejected += 1
        else:
            read += 1
    return read, rejected


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, type=Path, help="study folder (read-only)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Read the study's headers; returns 0, or 2 when no file could be read."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    read, rejected = read_headers(list_files(args.study))
    log.info("%d headers read, %d files rejected", read, rejected)
    return 0 if read else 2


if __name__ == "__main__":
    sys.exit(main())
