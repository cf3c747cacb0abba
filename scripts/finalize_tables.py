"""Write metadata/slices.parquet, errors.parquet and series.parquet once every batch is done.

Errors are complete only now: pixel decoding in the slice stage adds
``undecodable_pixels`` rows to the header errors found while extracting. The final
series table is the merge's with the reviewers' ratings (``review.ratings``, a CSV the
review page downloads) joined in as ``qc_*`` columns, so a new ratings file reruns only
this step and the page.

This is also where a rerun drops what the study and settings no longer produce: every
file under ``slices/``, ``thumbnails/`` and ``contact_sheets/`` that the final tables do
not list (series removed, merged into another key, left without decodable pixels),
per-series caches of series that are gone, and the work files of batches that no
longer exist. The results then hold what a fresh run would write.
"""

from __future__ import annotations

import lean_imports  # noqa: F401 - first: keeps unused packages out of this process

import argparse
import logging
import os
import re
import shutil
import sys
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow as pa

import ratings as ratings_csv
import table_schema
from table_schema import MANIFEST_SCHEMA, QC_SCHEMA, SHEETS_SCHEMA, THUMBNAILS_SCHEMA, read_parts

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


def series_with_ratings(series: pa.Table, ratings: dict[str, dict]) -> tuple[pa.Table, list[str]]:
    """The series table with the :data:`table_schema.QC_SCHEMA` columns appended.

    Parameters
    ----------
    series : pyarrow.Table
        The merged series table (one row per series or stack, ``series_key`` unique).
    ratings : dict
        Series key → parsed rating row (:func:`ratings.read_ratings`).

    Returns
    -------
    table : pyarrow.Table
        ``series`` in its row order with ``qc_rating``, ``qc_tags``, ``qc_note``,
        ``qc_rater`` and ``qc_rated_at`` (null where a series is not rated).
    unknown : list of str
        Sorted series keys of ratings that match no series of the table.
    """
    keys = series.column("series_key").to_pylist()
    rows = [ratings.get(k) or {} for k in keys]
    sources = {"qc_rating": "rating", "qc_note": "note", "qc_rater": "rater"}
    sources.update({"qc_rated_at": "rated_at", "qc_tags": "tags"})
    out = series.drop_columns([f.name for f in QC_SCHEMA if f.name in series.column_names])
    for field in QC_SCHEMA:
        values = [row.get(sources[field.name]) for row in rows]
        if field.name == "qc_tags":
            values = [v or None for v in values]
        out = out.append_column(field, pa.array(values, field.type))
    return out, sorted(set(ratings) - set(keys))


OUTPUT_FOLDERS = ("slices", "thumbnails", "contact_sheets")
"""Result folders holding only files the final tables (and the sheets tables) list."""

CACHE_STAGES = ("save_slices", "render_thumbnails", "make_contact_sheets")
"""Per-series cache folders under ``_work/cache/``, one ``<series_key>.json`` per series."""

BATCH_OUTPUT = re.compile(r"batch_(\d+)(?:\..*)?")
"""Name of a batch's work file or folder under ``_work/{slices,thumbnails,sheets}``."""


def listed_outputs(slices: pa.Table, sheet_parts: Sequence[str]) -> set[str]:
    """Result-relative paths of every array, thumbnail and sheet the run produced."""
    listed = set(slices.column("npy_path").to_pylist()) | set(slices.column("png_path").to_pylist())
    listed.update(slices.column("source_npy_path").to_pylist())  # SEG overlays' source slices
    listed.update(read_parts(sheet_parts, SHEETS_SCHEMA).column("sheet_path").to_pylist())
    listed.discard(None)
    return listed


def remove_unlisted(
    results: Path, listed: set[str], folders: Sequence[str] = OUTPUT_FOLDERS, roots: bool = False
) -> list[str]:
    """Delete files under ``folders`` not in ``listed`` and folders left empty (the
    ``folders`` themselves too when ``roots``).

    Returns the removed files' result-relative paths, sorted.
    """
    removed = []
    for folder in folders:
        root = results / folder
        for dirpath, _, filenames in os.walk(root, topdown=False):
            for name in filenames:
                path = Path(dirpath) / name
                relative = path.relative_to(results).as_posix()
                if relative not in listed:
                    path.unlink()
                    removed.append(relative)
            if (roots or Path(dirpath) != root) and not os.listdir(dirpath):
                os.rmdir(dirpath)
    return sorted(removed)


def remove_stale_work(results: Path, series_keys: set[str], batches: Iterable[int]) -> int:
    """Drop per-series caches of series not in ``series_keys`` and the work files of
    batches not in ``batches``; returns how many files and folders were removed.
    """
    removed = 0
    for stage in CACHE_STAGES:
        folder = results / "_work" / "cache" / stage
        if folder.is_dir():
            for path in folder.iterdir():
                if path.suffix == ".json" and path.stem not in series_keys:
                    path.unlink()
                    removed += 1
    batches = set(batches)
    for stage in ("slices", "thumbnails", "sheets", "volumes"):
        folder = results / "_work" / stage
        if not folder.is_dir():
            continue
        for path in folder.iterdir():
            match = BATCH_OUTPUT.fullmatch(path.name)
            if match and int(match.group(1)) not in batches:
                if path.is_dir() and not path.is_symlink():
                    shutil.rmtree(path)
                else:
                    path.unlink()
                removed += 1
    return removed


def volumes_table(volume_parts: Sequence[str]) -> pa.Table:
    """Every batch's volume rows, sorted by series and format (empty when volumes are off)."""
    table = read_parts(volume_parts, table_schema.VOLUMES_SCHEMA)
    if table.num_rows == 0:
        return table
    return table.sort_by([("series_key", "ascending"), ("format", "ascending")])


def remove_unlisted_volumes(results: Path, volumes: pa.Table) -> list[str]:
    """Delete files under ``volumes/`` that ``volumes`` does not list (volumes switched off,
    series gone); returns their result-relative paths, sorted.
    """
    return remove_unlisted(results, set(volumes.column("path").to_pylist()), ("volumes",), True)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--manifests", nargs="*", default=[])
    parser.add_argument("--thumbnails", nargs="*", default=[])
    parser.add_argument("--error-parts", nargs="*", default=[])
    parser.add_argument("--slices", required=True)
    parser.add_argument("--errors", required=True)
    parser.add_argument(
        "--results", type=Path, help="results folder: remove outputs the tables do not list"
    )
    parser.add_argument(
        "--sheets", nargs="*", help="every batch's sheets table (needed with --results)"
    )
    parser.add_argument("--series", help="series.parquet: whose caches and batches are kept")
    parser.add_argument(
        "--series-out", help="final series table: --series with the ratings joined in"
    )
    parser.add_argument(
        "--ratings", nargs="*", default=[], help="ratings CSVs of the review page (later wins)"
    )
    parser.add_argument("--volume-parts", nargs="*", default=[], help="every batch's volumes")
    parser.add_argument("--volumes", help="volumes.parquet to write (and prune volumes/ with)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Write the final slices and errors tables."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if args.series_out:
        if not args.series:
            log.error("--series-out needs --series")
            return 2
        try:
            rated = ratings_csv.read_all(args.ratings)
        except ratings_csv.RatingsError as exc:
            log.error("%s", exc)
            return 1
        series, unknown = series_with_ratings(table_schema.read_table(args.series), rated)
        if unknown:
            shown = ", ".join(unknown[:20]) + (" …" if len(unknown) > 20 else "")
            log.warning(
                "%d rated series_key(s) match no series of this run and are ignored: %s",
                len(unknown),
                shown,
            )
        table_schema.write_table(series, args.series_out)
        log.info("%d of %d series rated", len(rated) - len(unknown), series.num_rows)
    slices = slices_table(args.manifests, args.thumbnails)
    errors = errors_table(args.error_parts)
    table_schema.write_table(slices, args.slices)
    table_schema.write_table(errors, args.errors)
    log.info("%d slices, %d error rows", slices.num_rows, errors.num_rows)
    if args.results is not None and args.sheets is not None:
        removed = remove_unlisted(args.results, listed_outputs(slices, args.sheets))
        log.info("%d output file(s) no longer produced were removed", len(removed))
        for path in removed:
            log.debug("removed %s", path)
        if args.series:
            series = table_schema.read_table(args.series, ["series_key", "batch"])
            keys = set(series.column("series_key").to_pylist())
            batches = set(series.column("batch").drop_null().to_pylist())
            stale = remove_stale_work(args.results, keys, batches)
            log.info("%d stale cache or work file(s) removed", stale)
    if args.volumes:
        write_volumes(args.volume_parts, args.volumes, args.results)
    return 0


def write_volumes(volume_parts: Sequence[str], out: str, results: Path | None) -> None:
    """Write volumes.parquet; with ``results``, remove volume files it does not list."""
    volumes = volumes_table(volume_parts)
    table_schema.write_table(volumes, out)
    log.info("%d volume file(s)", volumes.num_rows)
    if results is not None:
        removed = remove_unlisted_volumes(results, volumes)
        log.info("%d volume file(s) no longer produced were removed", len(removed))


if __name__ == "__main__":
    sys.exit(main())
