"""Typed table schemas: DICOM keyword columns typed by VR, plus our own columns.

Types follow the VR from pydicom's data dictionary so that any keyword a user asks
for gets a sensible column type without a hand-written list per tag.
"""

from __future__ import annotations

import datetime as dt
import math
import os
import re
from collections.abc import Iterable, Sequence
from functools import cache

import pyarrow as pa
import pyarrow.parquet as pq

CORE_KEYWORDS = (
    "SOPClassUID",
    "SOPInstanceUID",
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "FrameOfReferenceUID",
    "TransferSyntaxUID",
    "Modality",
    "Manufacturer",
    "ManufacturerModelName",
    "StudyDate",
    "StudyTime",
    "StudyDescription",
    "SeriesDate",
    "SeriesNumber",
    "SeriesDescription",
    "InstanceNumber",
    "AcquisitionNumber",
    "ImageType",
    "BodyPartExamined",
    "Rows",
    "Columns",
    "NumberOfFrames",
    "SamplesPerPixel",
    "PhotometricInterpretation",
    "BitsAllocated",
    "BitsStored",
    "PixelRepresentation",
    "PixelSpacing",
    "SliceThickness",
    "SpacingBetweenSlices",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "RescaleSlope",
    "RescaleIntercept",
    "RescaleType",
    "WindowCenter",
    "WindowWidth",
    "EchoTime",
    "RepetitionTime",
    "EchoNumbers",
    "TemporalPositionIdentifier",
    "KVP",
)
"""Keywords always present in ``instances.parquet``, in this order, null when absent."""

_INT_VRS = {"IS", "SL", "SS", "UL", "US", "SV", "UV", "AT"}
_FLOAT_VRS = {"DS", "FL", "FD"}
_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN", "SQ"}

_TIME_RE = re.compile(r"^(\d{2})(?::?(\d{2})(?::?(\d{2})(?:\.(\d{1,6}))?)?)?$")


@cache
def keyword_vr(keyword: str) -> tuple[str, bool]:
    """Return the dictionary VR of a keyword and whether it can hold several values.

    Raises
    ------
    ValueError
        If ``keyword`` is not a DICOM keyword in pydicom's data dictionary.
    """
    from pydicom.datadict import dictionary_VM, dictionary_VR, tag_for_keyword

    tag = tag_for_keyword(keyword)
    if tag is None:
        raise ValueError(f"Unknown DICOM keyword {keyword!r}")
    vr = dictionary_VR(tag).split(" or ")[0]
    vm = dictionary_VM(tag)
    return vr, vm not in ("1", "")


@cache
def arrow_type(keyword: str) -> pa.DataType:
    """Arrow type for a keyword column: IS→int64, DS/FL/FD→float64, multi numbers→list<float64>,
    DA→date32, TM→time64[us], text VRs→string (list<string> when multi-valued).
    """
    vr, multi = keyword_vr(keyword)
    if keyword == "NumberOfFrames":
        return pa.int64()
    if vr in _INT_VRS or vr in _FLOAT_VRS:
        if multi:
            return pa.list_(pa.float64())
        return pa.int64() if vr in _INT_VRS else pa.float64()
    if vr == "DA":
        return pa.date32()
    if vr == "TM":
        return pa.time64("us")
    if multi and vr not in _BINARY_VRS:
        return pa.list_(pa.string())
    return pa.string()


def convert_value(value, keyword: str):
    """Convert a pydicom element value to the Python value of its column type.

    Empty values become None. Raises ValueError for a malformed value (e.g. a DS
    of ``"1.0.2"``) so the caller can null it and record a warning.
    """
    if value is None:
        return None
    typ = arrow_type(keyword)
    items = _as_items(value)
    if not items:
        return None
    if pa.types.is_list(typ):
        inner = typ.value_type
        converted = [_scalar(v, inner) for v in items]
        return [v for v in converted if v is not None] or None
    if len(items) > 1 and not pa.types.is_string(typ):
        # A single-valued keyword holding several values: keep the first, as viewers do.
        items = items[:1]
    if pa.types.is_string(typ) and len(items) > 1:
        return "\\".join(str(v) for v in items)
    return _scalar(items[0], typ)


def _as_items(value) -> list:
    """Element value as a list of non-empty items."""
    if isinstance(value, (bytes, bytearray)):
        return [value]
    if isinstance(value, (list, tuple)) or type(value).__name__ == "MultiValue":
        items = list(value)
    else:
        items = [value]
    return [v for v in items if v is not None and str(v).strip() != ""]


def _scalar(v, typ: pa.DataType):
    """Convert one value to ``typ``; raise ValueError when it does not parse."""
    if pa.types.is_string(typ):
        if isinstance(v, (bytes, bytearray)):
            return bytes(v).hex()
        return str(v).strip()
    if pa.types.is_floating(typ):
        number = float(str(v).strip()) if not isinstance(v, (int, float)) else float(v)
        if not math.isfinite(number):
            raise ValueError(f"non-finite number {v!r}")
        return number
    if pa.types.is_integer(typ):
        if isinstance(v, int):
            number = int(v)
        else:
            text = str(v).strip()
            try:
                number = int(text)
            except ValueError:
                as_float = float(text)
                if not as_float.is_integer():
                    raise ValueError(f"not an integer: {v!r}") from None
                number = int(as_float)
        if not -(2**63) <= number < 2**63:
            raise ValueError(f"integer out of int64 range: {v!r}")
        return number
    if pa.types.is_date(typ):
        text = str(v).strip().replace(".", "").replace("-", "")
        return dt.datetime.strptime(text, "%Y%m%d").date()
    if pa.types.is_time(typ):
        match = _TIME_RE.match(str(v).strip())
        if not match:
            raise ValueError(f"not a DICOM time: {v!r}")
        hh, mm, ss, frac = match.groups()
        return dt.time(
            int(hh), int(mm or 0), min(int(ss or 0), 59), int((frac or "0").ljust(6, "0"))
        )
    raise ValueError(f"unsupported column type {typ}")


OWN_COLUMNS_BEFORE = (
    ("path", pa.string()),
    ("file_size", pa.int64()),
    ("series_key", pa.string()),
    ("has_pixels", pa.bool_()),
)
OWN_COLUMNS_AFTER = (("header_json", pa.string()),)


def instance_keywords(extra_keywords: Iterable[str] = ()) -> list[str]:
    """Core keywords followed by the user's extra keywords, without repeats."""
    keywords = list(CORE_KEYWORDS)
    for keyword in extra_keywords:
        keyword_vr(keyword)  # raises on unknown keywords
        if keyword not in keywords:
            keywords.append(keyword)
    return keywords


def instances_schema(extra_keywords: Iterable[str] = ()) -> pa.Schema:
    """Explicit schema of ``instances.parquet``: our columns, keyword columns, header_json."""
    fields = [pa.field(name, typ) for name, typ in OWN_COLUMNS_BEFORE]
    fields += [pa.field(k, arrow_type(k)) for k in instance_keywords(extra_keywords)]
    fields += [pa.field(name, typ) for name, typ in OWN_COLUMNS_AFTER]
    return pa.schema(fields)


MOSAIC_FIELDS = [
    pa.field("mosaic_tiles", pa.int32()),
    pa.field("mosaic_tile_rows", pa.int32()),
    pa.field("mosaic_tile_columns", pa.int32()),
    pa.field("mosaic_positions", pa.list_(pa.list_(pa.float64()))),
]
"""Columns only the extract shards hold, after the instances columns: a Siemens mosaic's
layout (``multiframe.mosaic_columns``), worked out where its header is parsed, in parallel
and kept by the per-file cache, so the serial merge need not. Null for other files, and for
a mosaic the merge lays out from its header itself."""


def shard_schema(instances: pa.Schema) -> pa.Schema:
    """Schema of an extract shard table: ``instances`` (:func:`instances_schema`) and
    :data:`MOSAIC_FIELDS`.
    """
    return pa.schema([*instances, *MOSAIC_FIELDS])


BATCH_INSTANCE_COLUMNS = [
    "path",
    "series_key",
    "NumberOfFrames",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "header_json",
    "frames",
    "frame_positions",
    "mosaic_tiles",
]
"""Instance columns of a batch's work list (``_work/batches/batch_N.instances.parquet``,
written by the merge) that the per-batch stages need (header_json only for multi-frame
rows). The last three say which slices a stack takes from a multi-frame or mosaic
instance: its frames (null: all), their positions, and the mosaic's tile count."""

SEG_SOURCE_COLUMNS = ("SOPInstanceUID", "seg_source")
"""Columns a batch's instance work list gains when a SEG of the batch has source images."""


ERRORS_SCHEMA = pa.schema(
    [
        ("path", pa.string()),
        ("reason", pa.string()),
        ("detail", pa.string()),
        ("severity", pa.string()),
        ("stage", pa.string()),
    ]
)
"""``errors.parquet``: severity ``error``: not an instance; ``warning``: instance with a problem."""

MANIFEST_SCHEMA = pa.schema(
    [
        ("series_key", pa.string()),
        ("plane", pa.string()),
        ("index", pa.int64()),
        ("n_in_plane", pa.int64()),
        ("npy_path", pa.string()),
        ("png_path", pa.string()),
        ("source_path", pa.string()),
        ("frame", pa.int64()),
        ("position_mm", pa.float64()),
        ("pixel_spacing_mm", pa.list_(pa.float64())),
        ("value_units", pa.string()),
        ("photometric", pa.string()),
        ("window_center", pa.float64()),
        ("window_width", pa.float64()),
        ("voi_lut_function", pa.string()),
        ("voi_lut_source", pa.string()),
        ("rows", pa.int64()),
        ("columns", pa.int64()),
        ("segment_number", pa.int64()),
        ("segment_label", pa.string()),
        ("segment_rgb", pa.list_(pa.int64())),
        ("source_sop_instance_uid", pa.string()),
        ("source_frame", pa.int64()),
        ("source_npy_path", pa.string()),
    ]
)
"""``_work/slices/batch_N.parquet``: one row per saved slice (a batch's manifest).

SEG rows (null elsewhere): ``segment_number``, ``segment_label`` and ``segment_rgb`` (the
display colour, sRGB 0–255) of the mask; ``source_sop_instance_uid`` and ``source_frame``
(0-based) of the image it was drawn on; ``source_npy_path``, that image's slice saved for
the overlay when it is in the study (then ``window_center``/``window_width`` are its
header window). ``source_path`` and ``frame`` are always the saved slice's own file.
"""

THUMBNAILS_SCHEMA = pa.schema(
    [
        ("series_key", pa.string()),
        ("npy_path", pa.string()),
        ("png_path", pa.string()),
        ("window_source", pa.string()),
        ("window_center_used", pa.float64()),
        ("window_width_used", pa.float64()),
        ("png_height", pa.int64()),
        ("png_width", pa.int64()),
    ]
)
"""``_work/thumbnails/batch_N.parquet``: one row per rendered thumbnail."""

SHEETS_SCHEMA = pa.schema(
    [
        ("series_key", pa.string()),
        ("sheet_path", pa.string()),
        ("n_tiles", pa.int64()),
    ]
)
"""``_work/sheets/batch_N.parquet``: one row per contact sheet."""

IDENTIFIERS_SCHEMA = pa.schema(
    [
        ("series_key", pa.string()),
        ("patient", pa.list_(pa.string())),
        ("other", pa.list_(pa.string())),
    ]
)
"""``_work/identifiers.parquet`` (merge): per series, the identifying values of its first
instance's header (:func:`privacy.header_identifiers`), which the review page must not
show; a work table, never a final one."""

QC_SCHEMA = pa.schema(
    [
        ("qc_rating", pa.int64()),
        ("qc_tags", pa.list_(pa.string())),
        ("qc_note", pa.string()),
        ("qc_rater", pa.string()),
        ("qc_rated_at", pa.string()),
    ]
)
"""Columns ``finalize_tables`` adds to ``metadata/series.parquet`` from ``review.ratings``:
rating 1–4 (exclude, poor, acceptable, excellent), artifact tags, note, who and when;
null for series nobody rated."""

VOLUMES_SCHEMA = pa.schema(
    [
        ("series_key", pa.string()),
        ("format", pa.string()),
        ("path", pa.string()),
        ("shape", pa.list_(pa.int64())),
        ("voxel_size_mm", pa.list_(pa.float64())),
        ("affine", pa.list_(pa.float64())),
        ("orientation", pa.string()),
        ("dtype", pa.string()),
        ("scl_slope", pa.float64()),
        ("scl_inter", pa.float64()),
        ("value_units", pa.string()),
        ("n_source_files", pa.int64()),
        ("n_frames", pa.int64()),
    ]
)
"""``_work/volumes/batch_N.parquet`` and ``metadata/volumes.parquet``: one row per written
volume file (``format`` nifti or npy). ``shape`` is (i, j, k) = (columns, rows, slices);
``affine`` the 4 x 4 voxel-to-RAS+ matrix, row by row; ``orientation`` the axis codes
(e.g. ``LPS``); ``dtype`` what the file stores, scaled by ``scl_slope``/``scl_inter``."""


def read_table(path, columns: Sequence[str] | None = None, schema: pa.Schema | None = None):
    """A Parquet file as a table, like ``pq.read_table`` but through ``pq.ParquetFile``:
    ``pq.read_table`` imports pyarrow.dataset, 0.3-0.4 s of every step's start-up.

    With ``schema``, the table has its fields, as ``pq.read_table(schema=...)`` reads it:
    columns it lacks are left out, fields the file lacks are null, and types are cast.
    """
    parquet = pq.ParquetFile(path)
    if schema is None:
        return parquet.read(columns=columns)
    stored = set(parquet.schema_arrow.names)
    table = parquet.read(columns=[name for name in schema.names if name in stored])
    arrays = [
        table.column(field.name) if field.name in stored else pa.nulls(len(table), field.type)
        for field in schema
    ]
    return pa.Table.from_arrays(arrays, names=schema.names).cast(schema)


def read_parts(paths: Sequence[str], schema: pa.Schema) -> pa.Table:
    """Concatenate per-shard or per-batch tables with one schema (empty when there are none)."""
    tables = [read_table(p, schema=schema) for p in paths]
    return pa.concat_tables(tables) if tables else schema.empty_table()


def sorted_errors(errors: pa.Table) -> pa.Table:
    """Error rows in their fixed order: path, severity, reason, detail, stage."""
    if errors.num_rows == 0:
        return errors
    keys = ("path", "severity", "reason", "detail", "stage")
    return errors.sort_by([(key, "ascending") for key in keys])


def table_from_rows(rows: Sequence[dict], schema: pa.Schema) -> pa.Table:
    """Build a table with exactly ``schema``'s columns; missing keys become null."""
    columns = {f.name: [row.get(f.name) for row in rows] for f in schema}
    return pa.table(columns, schema=schema)


PARQUET_OPTIONS = {
    "compression": "zstd",
    "use_dictionary": True,
    "write_statistics": True,
    "store_schema": True,
}
"""Fixed writer options: the same table always gives the same bytes."""


def write_table(table: pa.Table, path: str, row_group_size: int | None = None) -> None:
    """Write Parquet deterministically (fixed options, no timestamps) via a temporary name,
    creating the parent folder.
    """
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp"
    pq.write_table(table, tmp, row_group_size=row_group_size, **PARQUET_OPTIONS)
    os.replace(tmp, path)


def remove_stale(folder: os.PathLike, keep: set[str], suffix: str) -> int:
    """Delete files ending in ``suffix`` in ``folder`` whose names are not in ``keep``.

    A series re-done with other settings (fewer slices, other planes) must not keep
    arrays or images the new manifest does not list. Returns how many were removed.
    """
    removed = 0
    if not os.path.isdir(folder):
        return 0
    for name in os.listdir(folder):
        if name.endswith(suffix) and name not in keep:
            os.unlink(os.path.join(folder, name))
            removed += 1
    return removed


def table_bytes(table: pa.Table) -> bytes:
    """The Parquet bytes :func:`write_table` would write, for write-if-changed files."""
    sink = pa.BufferOutputStream()
    pq.write_table(table, sink, **PARQUET_OPTIONS)
    return sink.getvalue().to_pybytes()
