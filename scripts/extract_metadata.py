"""Read the headers of one shard of files into typed instance rows and error rows.

Header-only reads; pixel data is never decoded here. Every file in the shard ends up
either as an instance row or as an error row of severity ``error``.
"""

from __future__ import annotations

import lean_imports  # noqa: F401 - first: keeps unused packages out of this process

import argparse
import json
import logging
import os
import shutil
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
from pydicom.datadict import dictionary_VR, tag_for_keyword
from pydicom.dataelem import RawDataElement
from pydicom.tag import BaseTag

import multiframe
import privacy
import series_cache
import sharding
import table_schema
from dicom_io import FileProblem, HeaderRead, display_path, read_header
from dicom_json import header_json
from fast_header import read_header_fast

log = logging.getLogger("extract_metadata")

SHARD_ROW_GROUP = 128
"""Rows per Parquet row group in a shard's instances table."""


META_FALLBACK = {
    "SOPClassUID": "MediaStorageSOPClassUID",
    "SOPInstanceUID": "MediaStorageSOPInstanceUID",
}
"""Dataset keywords that take the file meta's value when the dataset's is empty or missing
(de-identified files, DICOMDIRs); the empty_uid warning still reports the dataset's."""


def _element_value(header: HeaderRead, keyword: str):
    """Raw pydicom value of a keyword, looking in file meta for group 0002 keywords."""
    ds = header.dataset
    meta = getattr(ds, "file_meta", None)
    if keyword == "TransferSyntaxUID":
        return meta.get("TransferSyntaxUID") if meta is not None else None
    tag = _tag(keyword)
    value = ds[tag].value if tag in ds else None
    if value in (None, "") and keyword in META_FALLBACK and meta is not None:
        value = meta.get(META_FALLBACK[keyword]) or value
    return value


_typed_memo: dict = {}
"""Typed column values by keyword and raw element bytes: slices of a series repeat most."""


@cache
def _tag(keyword: str) -> BaseTag:
    """The tag of a keyword, looked up once (datasets are fastest asked by tag)."""
    return BaseTag(tag_for_keyword(keyword))


@cache
def _keep(keywords: tuple[str, ...]) -> frozenset:
    """Tags a row reads from the header dataset: its columns and the empty-UID check."""
    return frozenset(_tag(k) for k in keywords + ("SOPInstanceUID", "SeriesInstanceUID"))


@cache
def _memoisable(keyword: str) -> bool:
    """Keywords whose typed value depends only on the element's own bytes and character set."""
    if keyword in META_FALLBACK or keyword == "TransferSyntaxUID":
        return False
    return " or " not in dictionary_VR(tag_for_keyword(keyword))


def _typed_value(header: HeaderRead, keyword: str, charset):
    """The column value of a keyword (as ``table_schema.convert_value`` gives it), memoised.

    Raises what the conversion raised, so the caller records the same warning.
    """
    raw = header.dataset.get_item(_tag(keyword)) if _memoisable(keyword) else None
    if not isinstance(raw, RawDataElement):
        return table_schema.convert_value(_element_value(header, keyword), keyword)
    key = (keyword, raw.VR, raw.value, raw.is_implicit_VR, charset)
    hit = _typed_memo.get(key)
    if hit is None:
        try:
            hit = (True, table_schema.convert_value(_element_value(header, keyword), keyword))
        except Exception as exc:  # noqa: BLE001 - kept to be raised again for the same bytes
            hit = (False, exc)
        if len(_typed_memo) > 100_000:
            _typed_memo.clear()
        _typed_memo[key] = hit
    ok, value = hit
    if not ok:
        raise value
    return list(value) if isinstance(value, list) else value


def instance_row(
    path: str,
    file_size: int,
    header: HeaderRead,
    keywords: Sequence[str],
    json_model: tuple[str, list[str]] | None = None,
) -> tuple[dict, list[tuple[str, str]]]:
    """One typed row for ``instances.parquet`` plus ``(reason, detail)`` warnings.

    Malformed values become null with a ``malformed_value`` warning instead of failing.
    ``json_model`` is the header's ``(DICOM JSON text, problems)`` when already known.
    """
    warnings = list(header.warnings)
    row: dict = {
        "path": display_path(path),
        "file_size": file_size,
        "has_pixels": header.has_pixels,
    }
    charset = header.dataset.get_item(0x00080005)
    charset = getattr(charset, "value", None)
    charset = charset if isinstance(charset, bytes | None) else str(charset)
    for keyword in keywords:
        try:
            row[keyword] = _typed_value(header, keyword, charset)
        except Exception as exc:  # noqa: BLE001 - vendor values fail in many ways
            row[keyword] = None
            warnings.append(("malformed_value", f"{keyword}: {type(exc).__name__}: {exc}"[:300]))
    if _element_value(header, "NumberOfFrames") in (None, ""):
        row["NumberOfFrames"] = 1  # absent means one frame; a malformed value stays null
    text, problems = json_model if json_model is not None else header_json(header.dataset)
    row["header_json"] = text
    warnings += [("malformed_value", f"left out of header_json: {p}") for p in problems]
    uids = ("StudyInstanceUID", "SeriesInstanceUID", "SOPInstanceUID")
    missing = [u for u in uids if not str(header.dataset.get(u, "") or "").strip()]
    if missing:
        warnings.append(("empty_uid", f"empty or missing: {', '.join(missing)}"))
    return row, warnings


def pseudonymized(row: dict, errors: list[dict], key: bytes) -> tuple[dict, list[dict]]:
    """Row and error rows with identifying values replaced by keyed pseudonyms.

    Error details of malformed values are cut to the element's name: the raw value
    might identify the patient.
    """
    row = privacy.pseudonymize_row(row, key)
    model = privacy.pseudonymize_json(json.loads(row["header_json"]), key)
    row["header_json"] = json.dumps(model, sort_keys=True, separators=(",", ":"))
    for error in errors:
        if error["reason"] == "malformed_value":
            error["detail"] = error["detail"].split(":")[0] + ": malformed value (withheld)"
    return row, errors


def extract_file(
    study: Path, path: str, file_size: int, keywords: Sequence[str], key: bytes | None = None
) -> tuple[dict | None, list[dict]]:
    """Index one file: its instance row (or None) and its error rows.

    With a pseudonymisation ``key``, identifying values are replaced (see ``privacy``). A
    Siemens mosaic's row also holds its layout (``table_schema.MOSAIC_FIELDS``).
    """
    json_model = None
    fast = read_header_fast(study / path, _keep(tuple(keywords)))
    if fast is not None:
        header, text, problems = fast
        json_model = (text, problems)
    try:
        if fast is None:
            header = read_header(study / path)
    except FileProblem as problem:
        return None, [_error(path, problem.reason, problem.detail, "error")]
    except Exception as exc:  # noqa: BLE001 - last resort: a file never stops the shard
        return None, [_error(path, "unreadable_header", f"{type(exc).__name__}: {exc}", "error")]
    try:
        row, warnings = instance_row(path, file_size, header, keywords, json_model)
    except Exception as exc:  # noqa: BLE001
        return None, [_error(path, "unreadable_header", f"{type(exc).__name__}: {exc}", "error")]
    errors = [_error(path, reason, detail, "warning") for reason, detail in warnings]
    if key is not None:
        row, errors = pseudonymized(row, errors, key)
    row.update(multiframe.mosaic_columns(row))  # from header_json, as the merge would see it
    return row, errors


def _error(path: str, reason: str, detail: str, severity: str) -> dict:
    return {
        "path": display_path(path),
        "reason": reason,
        "detail": detail[:500],
        "severity": severity,
        "stage": "extract",
    }


def read_shard(shard: Path) -> list[tuple[str, int]]:
    """The ``(path, file_size)`` entries of a shard list written by scan_study."""
    return [(item["path"], int(item["file_size"])) for item in _shard_lines(shard)]


def read_stamps(shard: Path) -> dict[str, list]:
    """Each file's stamp in a shard list (every field but the path: size, times, inode)."""
    return {item.pop("path"): list(item.values()) for item in _shard_lines(shard)}


def _shard_lines(shard: Path) -> list[dict]:
    lines = shard.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def extract_shard(
    study: Path,
    entries: Sequence[tuple[str, int]],
    extra_keywords: Sequence[str] = (),
    key: bytes | None = None,
    reuse: tuple[pa.Table, pa.Table, set[str]] | None = None,
):
    """Index every file of a shard; returns ``(instances table, errors table)`` sorted by path
    (the instances with :data:`table_schema.MOSAIC_FIELDS`).

    ``reuse`` is ``(instances, errors, paths)`` from an earlier run of this shard: the rows
    of those paths are taken from there instead of reading the files again.
    """
    keywords = table_schema.instance_keywords(extra_keywords)
    kept = reuse[2] if reuse else set()
    rows, errors = [], []
    for path, size in sorted(entries):
        if path in kept:
            continue
        row, file_errors = extract_file(study, path, size, keywords, key)
        if row is not None:
            rows.append(row)
        errors.extend(file_errors)
    schema = table_schema.shard_schema(table_schema.instances_schema(extra_keywords))
    instances = table_schema.table_from_rows(rows, schema)
    errors = table_schema.table_from_rows(errors, table_schema.ERRORS_SCHEMA)
    if kept:
        instances = pa.concat_tables([instances, _rows_of(reuse[0], kept)])
        errors = pa.concat_tables([errors, _rows_of(reuse[1], kept)])
    return instances.sort_by("path"), table_schema.sorted_errors(errors)


def _rows_of(table: pa.Table, paths: set[str]) -> pa.Table:
    """Rows of ``table`` whose (display) path is one of ``paths`` (raw shard paths)."""
    wanted = pa.array(sorted({display_path(p) for p in paths}), pa.string())
    return table.filter(pc.is_in(table.column("path"), value_set=wanted))


CACHE_VERSION = 1


def cache_fingerprint(extra_keywords: Sequence[str], privacy_mode: str) -> str:
    """What a shard's rows depend on besides its files: settings and the code."""
    return series_cache.fingerprint("extract", CACHE_VERSION, list(extra_keywords), privacy_mode)


def load_reuse(cache: Path, stamps: dict[str, list], fingerprint: str):
    """Rows an earlier run of this shard left in ``cache``, for files whose stamp is unchanged.

    Returns ``(instances, errors, paths)`` or None (no cache, other settings or code).
    """
    try:
        meta = json.loads((cache / "stamps.json").read_text(encoding="utf-8"))
        if meta["fingerprint"] != fingerprint:
            return None
        instances = pq.ParquetFile(cache / "instances.parquet").read()
        errors = pq.ParquetFile(cache / "errors.parquet").read()
    except (OSError, ValueError, KeyError, pa.ArrowException):
        return None
    same = {path for path, stamp in meta["stamps"].items() if stamps.get(path) == stamp}
    return instances, errors, same


def store_cache(cache: Path, tables: dict[str, str], stamps: dict[str, list], fingerprint: str):
    """Keep this run's tables (``{"instances": path, "errors": path}``, hard-linked, else
    copied) and the file stamps they were read at, for the next run.
    """
    cache.mkdir(parents=True, exist_ok=True)
    (cache / "stamps.json").unlink(missing_ok=True)  # tables first, then what vouches for them
    for name, path in tables.items():
        tmp = cache / f"{name}.parquet.tmp"
        tmp.unlink(missing_ok=True)
        try:
            os.link(path, tmp)  # outputs are replaced, never rewritten in place
        except OSError:
            shutil.copyfile(path, tmp)
        os.replace(tmp, cache / f"{name}.parquet")
    text = json.dumps({"fingerprint": fingerprint, "stamps": stamps})
    sharding.write_if_changed(cache / "stamps.json", text.encode("utf-8", "surrogateescape"))


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, type=Path)
    parser.add_argument("--shard", required=True, type=Path, help="shard list from scan_study")
    parser.add_argument("--instances", required=True, help="output instances Parquet")
    parser.add_argument("--errors", required=True, help="output errors Parquet")
    parser.add_argument("--keyword", action="append", default=[], help="extra DICOM keyword")
    parser.add_argument(
        "--cache", type=Path, help="folder keeping this shard's rows for the next run"
    )
    parser.add_argument(
        "--privacy",
        choices=("none", "pseudonymize"),
        default="none",
        help=f"pseudonymize: keyed hashes for identifying values (key in ${privacy.KEY_ENV})",
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Extract one shard; exit 2 with one line on an unknown extra keyword."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    try:
        table_schema.instance_keywords(args.keyword)
        key = privacy.load_key() if args.privacy == "pseudonymize" else None
    except ValueError as exc:
        print(f"extract_metadata: {exc}", file=sys.stderr)
        return 2
    entries = read_shard(args.shard)
    reuse = stamps = fingerprint = None
    if args.cache is not None and key is None:  # pseudonyms depend on a key we do not keep
        stamps = read_stamps(args.shard)
        fingerprint = cache_fingerprint(args.keyword, args.privacy)
        reuse = load_reuse(args.cache, stamps, fingerprint)
    instances, errors = extract_shard(args.study, entries, args.keyword, key, reuse)
    # small row groups let the merge stream every shard at once in little memory
    table_schema.write_table(instances, args.instances, row_group_size=SHARD_ROW_GROUP)
    table_schema.write_table(errors, args.errors)
    if stamps is not None:
        tables = {"instances": args.instances, "errors": args.errors}
        store_cache(args.cache, tables, stamps, fingerprint)
    log.info(
        "%d files (%d unchanged since the last run): %d instances, %d error rows",
        len(entries),
        len(reuse[2]) if reuse else 0,
        instances.num_rows,
        errors.num_rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
