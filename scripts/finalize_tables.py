"""Write metadata/slices.parquet and metadata/errors.parquet once every batch is done.

Errors are complete only now: pixel decoding in the slice stage adds
``undecodable_pixels`` rows to the header errors found while extracting.
"""

from __future__ import annotations

import argparse
import logging
import sys
from collections.abc import Sequence

import pyarrow as pa

import table_schema
from render_thumbnails import THUMBNAILS_SCHEMA
from save_slices import MANIFEST_SCHEMA
from table_schema import read_parts

log = logging.getLogger("finalize_tables")

SLICES_SCHEMA = pa.schema(
    list(MANIFEST_SCHEMA)
    + [f for f in THUMBNAILS_SCHEMA if f.name not in ("series_key", "npy_path", "png_path")]
)


def slices_table(manifest_parts: Sequence[str], thumbnail_parts: Sequence[str]) -> pa.Table:
    """Slice manifests joined with how each thumbnail was rendered, sorted by series and slice."""
    manifest = read_parts(manifest_parts, MANIFEST_SCHEMA)
    thumbs = {r["png_path"]: r for r in read_parts(thumbnail_parts, THUMBNAILS_SCHEMA).to_pylist()}
    rows = [{**thumbs.get(r["png_path"], {}), **r} for r in manifest.to_pylist()]
    rows.sort(key=lambda r: (r["series_key"], r["plane"], r["index"]))
    return table_schema.table_from_rows(rows, SLICES_SCHEMA)


def errors_table(error_parts: Sequence[str]) -> pa.Table:
    """All error rows, in the fixed order of :func:`table_schema.sorted_errors`."""
    return table_schema.sorted_errors(read_parts(error_parts, table_schema.ERRORS_SCHEMA))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", nargs="*", default=[])
    parser.add_argument("--thumbnails", nargs="*", default=[])
    parser.add_argument("--error-parts", nargs="*", default=[])
    parser.add_argument("--slices", required=True)
    parser.add_argument("--errors", required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the final slices and errors tables."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    slices = slices_table(args.manifests, args.thumbnails)
    errors = errors_table(args.error_parts)
    table_schema.write_table(slices, args.slices)
    table_schema.write_table(errors, args.errors)
    log.info("%d slices, %d error rows", slices.num_rows, errors.num_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
