"""Time one per-file operation over a list of files, in this fresh process; print JSON.

A fresh process starts with empty per-process memos, as an extract job does, so the
time is what a first pass over those files costs (repeated passes in one process would
find every element already converted). Operations: ``read``,
``pydicom.dcmread(path, stop_before_pixels=True)``; ``extract``,
``extract_metadata.extract_file`` (read, typed columns, DICOM JSON; keywords from
``table_schema.instance_keywords([])``); ``reference``,
``dicom_json.header_json(dicom_io.read_header(path).dataset)``. One file from pydicom's
own test data is processed first so that lazy imports are not timed.
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from collections.abc import Callable, Sequence
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parents[2] / "scripts"
MEASURES = ("read", "extract", "reference")


def operation(measure: str, files: Sequence[Path] = ()) -> Callable[[Path], object]:
    """The function of one file that ``measure`` names (see the module docstring).

    For ``extract``, the sizes of ``files`` are looked up here, outside any timing, as
    the extract step reads them from its shard list.
    """
    import pydicom

    if measure == "read":
        return lambda path: pydicom.dcmread(path, stop_before_pixels=True)
    if str(SCRIPTS) not in sys.path:
        sys.path.insert(0, str(SCRIPTS))
    import dicom_io
    import dicom_json
    import extract_metadata
    import table_schema

    if measure == "extract":
        keywords = table_schema.instance_keywords([])
        sizes = {path: path.stat().st_size for path in files}

        def extract(path: Path) -> object:
            size = sizes[path] if path in sizes else path.stat().st_size
            return extract_metadata.extract_file(path.parent, path.name, size, keywords)

        return extract
    if measure == "reference":
        return lambda path: dicom_json.header_json(dicom_io.read_header(path).dataset)
    raise ValueError(f"Argument 'measure' must be one of {MEASURES}, got {measure!r}")


def ms_per_file(fn: Callable[[Path], object], files: Sequence[Path]) -> float:
    """Milliseconds per file of one pass of ``fn`` over ``files``."""
    start = time.perf_counter()
    for path in files:
        fn(path)
    return 1000 * (time.perf_counter() - start) / len(files)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--measure", required=True, choices=MEASURES, help="what to time")
    parser.add_argument("files", nargs="+", type=Path, help="files, timed in this order")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Print ``{"measure": ..., "files": n, "ms_per_file": ...}`` as one JSON line."""
    args = parse_args(argv)
    from pydicom.data import get_testdata_file

    fn = operation(args.measure, args.files)
    fn(Path(get_testdata_file("CT_small.dcm", download=False)))  # first-call set-up
    result = {
        "measure": args.measure,
        "files": len(args.files),
        "ms_per_file": ms_per_file(fn, args.files),
    }
    print(json.dumps(result))
    return 0


if __name__ == "__main__":
    sys.exit(main())
