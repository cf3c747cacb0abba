"""Merge shard tables into instances.parquet, series.parquet and the extract errors.

Here instances are grouped into series and stacks (a series splits when modality,
size, orientation, echo or time point differ), each stack gets its ``series_key``,
geometry checks and the batch that later stages process it in. An enhanced object
holding several volumes is split by its dimensions (``multiframe.frame_keys``) and a
Siemens mosaic into its slices: such an instance is one "frame group" row per volume,
and the batch work lists say which frames (or mosaic tiles) each stack takes.
"""

from __future__ import annotations

import lean_imports  # noqa: F401 - first: keeps unused packages out of this process

import argparse
import json
import logging
import os
import posixpath
import re
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import geometry
import multiframe
import privacy
import segmentation
import table_schema
from sharding import bucket_count, short_hash, stable_bucket, write_if_changed
from table_schema import read_parts

log = logging.getLogger("merge_metadata")

SPLIT_FROM_STACKS = 32
"""From this many stacks with pixels a study gets at least two batches, so two cores share
the slice, thumbnail and sheet work (about 0.15 s of CPU a stack on vendor MR)."""

SERIES_SCHEMA = pa.schema(
    [
        ("series_key", pa.string()),
        ("StudyInstanceUID", pa.string()),
        ("SeriesInstanceUID", pa.string()),
        ("grouped_by", pa.string()),
        ("stack", pa.int64()),
        ("n_stacks", pa.int64()),
        ("Modality", pa.string()),
        ("SeriesNumber", pa.int64()),
        ("SeriesDescription", pa.string()),
        ("StudyDescription", pa.string()),
        ("Manufacturer", pa.string()),
        ("ManufacturerModelName", pa.string()),
        ("BodyPartExamined", pa.string()),
        ("n_instances", pa.int64()),
        ("n_frames", pa.int64()),
        ("total_file_size", pa.int64()),
        ("has_pixels", pa.bool_()),
        ("Rows", pa.int64()),
        ("Columns", pa.int64()),
        ("PhotometricInterpretation", pa.string()),
        ("PixelSpacing", pa.list_(pa.float64())),
        ("ImageOrientationPatient", pa.list_(pa.float64())),
        ("orientation", pa.string()),
        ("slice_spacing", pa.float64()),
        ("single_orientation", pa.bool_()),
        ("uniform_spacing", pa.bool_()),
        ("missing_slices", pa.int64()),
        ("duplicate_positions", pa.int64()),
        ("is_volume", pa.bool_()),
        ("batch", pa.int64()),
    ]
)


SERIES_KEYWORDS = (
    "Modality",
    "SeriesNumber",
    "SeriesDescription",
    "StudyDescription",
    "Manufacturer",
    "ManufacturerModelName",
    "BodyPartExamined",
    "Rows",
    "Columns",
    "PhotometricInterpretation",
    "PixelSpacing",
)
"""Instance columns a series row takes from its first instance that has them."""

GROUPING_COLUMNS = (
    ("path", "file_size", "has_pixels", "StudyInstanceUID", "SeriesInstanceUID")
    + SERIES_KEYWORDS
    + ("ImagePositionPatient", "ImageOrientationPatient", "NumberOfFrames", "InstanceNumber")
    + ("AcquisitionNumber", "EchoNumbers", "TemporalPositionIdentifier")
    + tuple(f.name for f in table_schema.MOSAIC_FIELDS)
)
"""The columns grouping and series rows read: rows of every instance are Python dicts, at
100,000 instances about 4.7 KB each with every column, so only these are made."""


def series_identity(row: dict) -> tuple[str, str]:
    """The grouping key of an instance's series and how it was chosen.

    SeriesInstanceUID when present; de-identified files with an empty UID fall back to
    folder + StudyInstanceUID + SeriesNumber + Modality.
    """
    uid = row.get("SeriesInstanceUID")
    if uid:
        return f"uid:{uid}", "SeriesInstanceUID"
    folder = posixpath.dirname(row["path"])
    parts = (
        folder,
        row.get("StudyInstanceUID") or "",
        row.get("SeriesNumber"),
        row.get("Modality"),
    )
    return "fallback:" + "|".join(str(p) for p in parts), "folder+SeriesNumber"


def _orientation_clusters(orientations: list) -> list[int | None]:
    """Cluster index per ImageOrientationPatient (None when absent), first-seen order."""
    reps: list = []
    labels: list[int | None] = []
    seen: dict = {}  # slices of a series repeat one orientation: decide each value once
    for iop in orientations:
        key = None if iop is None else tuple(iop)
        if key in seen:
            labels.append(seen[key])
            continue
        label = None
        if iop is not None and len(iop) == 6 and geometry.is_valid_orientation(iop):
            for i, rep in enumerate(reps):
                if geometry.same_orientation(iop, rep):
                    label = i
                    break
            else:
                reps.append(iop)
                label = len(reps) - 1
        seen[key] = label
        labels.append(label)
    return labels


def _first(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return value[0] if len(value) else None
    return value


def _stack_signature(row: dict, cluster: int | None) -> tuple:
    """What must agree for instances (or frame groups) to be one stack of a series."""
    return (
        str(row.get("Modality") or ""),
        bool(row["has_pixels"]),
        row.get("Rows") or 0,
        row.get("Columns") or 0,
        -1 if cluster is None else cluster,
        _first(row.get("EchoNumbers")) or 0,
        row.get("TemporalPositionIdentifier") or 0,
        row.get("frame_key") or "",
    )


def n_slices(row: dict) -> int:
    """Slices a grouping row holds: its frame group, mosaic tiles or NumberOfFrames."""
    if row.get("frames") is not None:
        return len(row["frames"])
    return int(row.get("mosaic_tiles") or row.get("NumberOfFrames") or 1)


@dataclass
class Stack:
    """Instances (row indices) of one stack of one series."""

    identity: str
    grouped_by: str
    rows: list[int] = field(default_factory=list)


def group_stacks(rows: list[dict]) -> list[Stack]:
    """Group instance rows into series stacks; returns stacks in a deterministic order."""
    by_series: dict[str, list[int]] = {}
    grouped_by: dict[str, str] = {}
    for i, row in enumerate(rows):
        identity, how = series_identity(row)
        by_series.setdefault(identity, []).append(i)
        grouped_by[identity] = how
    stacks: list[Stack] = []
    for identity in sorted(by_series):
        members = by_series[identity]
        clusters = _orientation_clusters([rows[i].get("ImageOrientationPatient") for i in members])
        by_sig: dict[tuple, list[int]] = {}
        for i, cluster in zip(members, clusters, strict=True):
            by_sig.setdefault(_stack_signature(rows[i], cluster), []).append(i)
        for sig in sorted(by_sig, key=lambda s: tuple(str(x) for x in s)):
            for part in split_repeated_positions(rows, by_sig[sig]):
                stacks.append(Stack(identity, grouped_by[identity], part))
    return stacks


def _order(row: dict) -> tuple:
    """Order of repeated acquisitions: AcquisitionNumber, InstanceNumber, path, frames."""
    frames = row.get("frames") or [0]
    return (row.get("AcquisitionNumber") or 0, row.get("InstanceNumber") or 0, row["path"], frames)


def _split_whole_volumes(rows: list[dict], members: list[int]) -> list[list[int]] | None:
    """One stack per member when every member is a whole volume (a mosaic, or an
    enhanced object or frame group) at the same positions as the others; else None.
    """
    if len(members) < 2 or any(n_slices(rows[i]) < 2 for i in members):
        return None
    first = None
    for i in members:
        positions = rows[i].get("frame_positions")
        if positions is None or len(positions) != n_slices(rows[i]):
            return None
        points = np.round(np.asarray(positions, dtype=float), 2)
        if not np.isfinite(points).all():
            return None
        key = sorted(map(tuple, points.tolist()))
        if len(set(key)) != len(key) or (first is not None and key != first):
            return None
        first = key
    return [[i] for i in sorted(members, key=lambda i: _order(rows[i]))]


def split_repeated_positions(rows: list[dict], members: list[int]) -> list[list[int]]:
    """Split a stack whose every position holds the same number k > 1 of slices into k
    stacks (time points, b-values, phases), by AcquisitionNumber, InstanceNumber, path.

    Members that each hold a whole volume at the same positions (mosaics of a
    time series, one enhanced object per volume) become one stack each, in that order.
    A stack with some positions repeated and others not is left whole: its
    ``duplicate_positions`` count shows the fault.
    """
    volumes = _split_whole_volumes(rows, members)
    if volumes is not None:
        return volumes
    single = [i for i in members if n_slices(rows[i]) == 1]
    iop = rows[members[0]].get("ImageOrientationPatient")
    if len(single) != len(members) or len(members) < 4 or not _valid_orientation(iop):
        return [members]
    positions = _positions(rows, members)
    if positions is None:
        return [members]
    heights = np.round(geometry.project_positions(positions, iop), 2)
    at: dict[float, list[int]] = {}
    for i, z in zip(members, heights, strict=True):
        at.setdefault(float(z), []).append(i)
    counts = {len(v) for v in at.values()}
    if len(counts) != 1 or (k := counts.pop()) < 2 or len(at) < 2:
        return [members]

    parts: list[list[int]] = [[] for _ in range(k)]
    for z in sorted(at):
        for j, i in enumerate(sorted(at[z], key=lambda i: _order(rows[i]))):
            parts[j].append(i)
    return [sorted(part) for part in parts]


def _valid_orientation(iop) -> bool:
    return iop is not None and len(iop) == 6 and geometry.is_valid_orientation(iop)


def _positions(rows: list[dict], members: list[int]) -> np.ndarray | None:
    """Frame positions of a stack, (N, 3), or None when any frame's position is unknown."""
    positions = []
    for i in members:
        row = rows[i]
        if n_slices(row) > 1 or row.get("mosaic_tiles"):
            frames = row.get("frame_positions")
            if frames is None or len(frames) != n_slices(row):
                return None
            positions.extend(np.asarray(frames, dtype=float).tolist())
        else:
            ipp = row.get("ImagePositionPatient")
            if ipp is None or len(ipp) != 3:
                return None
            positions.append(list(ipp))
    return np.asarray(positions, dtype=float)


def _orientation_of(rows: list[dict], members: list[int]) -> list[float] | None:
    iop = rows[members[0]].get("ImageOrientationPatient")
    return list(iop) if _valid_orientation(iop) else None


def _one_per_file(rows: list[dict], members: list[int]) -> list[int]:
    """``members`` with one row per file (frame groups of one object count once)."""
    return list({rows[i]["path"]: i for i in members}.values())


def stack_record(rows: list[dict], stack: Stack, single_orientation: bool | None) -> dict:
    """One series.parquet row (without key and batch) with geometry checks."""
    members = stack.rows
    first = rows[members[0]]
    record = {
        "StudyInstanceUID": first.get("StudyInstanceUID"),
        "SeriesInstanceUID": first.get("SeriesInstanceUID"),
        "grouped_by": stack.grouped_by,
        "n_instances": len(_one_per_file(rows, members)),
        "n_frames": int(sum(n_slices(rows[i]) for i in members)),
        "total_file_size": int(sum(rows[i]["file_size"] for i in _one_per_file(rows, members))),
        "has_pixels": bool(first["has_pixels"]),
        "single_orientation": single_orientation,
    }
    for keyword in SERIES_KEYWORDS:
        record[keyword] = next(
            (rows[i][keyword] for i in members if rows[i].get(keyword) is not None), None
        )
    orientation = _orientation_of(rows, members) if record["has_pixels"] else None
    positions = _positions(rows, members) if orientation is not None else None
    record["ImageOrientationPatient"] = orientation
    record["orientation"] = geometry.orientation_label(orientation) if orientation else None
    if positions is not None and len(positions):
        report = geometry.check_spacing(geometry.project_positions(positions, orientation))
        record.update(
            slice_spacing=report.slice_spacing,
            uniform_spacing=report.uniform_spacing,
            missing_slices=report.missing_slices,
            duplicate_positions=report.duplicate_positions,
            is_volume=bool(
                single_orientation
                and len(positions) >= 3
                and report.uniform_spacing
                and report.missing_slices == 0
                and report.duplicate_positions == 0
            ),
        )
    else:
        record["is_volume"] = False
    return record


def build_series(rows: list[dict], series_per_batch: int) -> tuple[list[dict], list[str]]:
    """Series records and the series_key of every grouping row (same order as ``rows``)."""
    stacks = group_stacks(rows)
    per_series: dict[str, list[Stack]] = {}
    for stack in stacks:
        per_series.setdefault(stack.identity, []).append(stack)
    instance_keys: list[str] = [""] * len(rows)
    records = []
    for identity, series_stacks in per_series.items():
        pixel_rows = [i for s in series_stacks if rows[s.rows[0]]["has_pixels"] for i in s.rows]
        clusters = _orientation_clusters(
            [rows[i].get("ImageOrientationPatient") for i in pixel_rows]
        )
        known = {c for c in clusters if c is not None}
        single = (len(known) == 1) if known else None
        base = short_hash(identity)
        for n, stack in enumerate(series_stacks, start=1):
            key = base if len(series_stacks) == 1 else f"{base}-{n}"
            record = stack_record(rows, stack, single)
            record.update(series_key=key, stack=n, n_stacks=len(series_stacks))
            records.append(record)
            for i in stack.rows:
                instance_keys[i] = key
    pixel_keys = [r["series_key"] for r in records if r["has_pixels"]]
    n_batches = bucket_count(len(pixel_keys), series_per_batch, split_from=SPLIT_FROM_STACKS)
    for record in records:
        record["batch"] = (
            stable_bucket(record["series_key"], n_batches) if record["has_pixels"] else None
        )
    records.sort(key=lambda r: r["series_key"])
    return records, instance_keys


FRAME_GROUP_FIELDS = [
    pa.field("frames", pa.list_(pa.int32())),
    pa.field("frame_positions", pa.list_(pa.list_(pa.float64()))),
    pa.field("mosaic_tiles", pa.int32()),
]


SHARD_FIELD = pa.field("_shard", pa.int32())
"""The merge's own column of the light instances: the shard a row came from."""

OUTPUT_ROW_GROUP = 1024
"""Rows per row group of instances.parquet: fixed, so bytes do not depend on sharding."""


def read_light(parts: Sequence[str], schema: pa.Schema) -> pa.Table:
    """Every shard's instance rows without header_json, with the shards' mosaic layouts
    (``table_schema.MOSAIC_FIELDS``) and each row's shard (``_shard``, an index into
    ``parts``), sorted by path.
    """
    shard = table_schema.shard_schema(schema)
    columns = [name for name in shard.names if name != "header_json"]
    light = shard.remove(shard.get_field_index("header_json")).append(SHARD_FIELD)
    tables = [pq.read_table(p, columns=columns, schema=shard).select(columns) for p in parts]
    tables = [
        t.append_column(SHARD_FIELD, pa.array(np.full(t.num_rows, i, np.int32)))
        for i, t in enumerate(tables)
    ]
    table = pa.concat_tables(tables) if tables else light.empty_table()
    return table.sort_by("path")


def headers_where(parts: Sequence[str], light: pa.Table, wanted, schema: pa.Schema) -> dict:
    """header_json by path of the ``light`` rows where ``wanted`` (a boolean array) holds.
    A shard without such a row is not read: decompressing its header_json column is most
    of what reading it costs.
    """
    chosen = light.filter(wanted)
    paths, shards = chosen.column("path").to_pylist(), chosen.column(SHARD_FIELD.name).to_pylist()
    headers: dict[str, str] = {}
    for i in sorted(set(shards)):
        keep = pa.array([p for p, s in zip(paths, shards, strict=True) if s == i], pa.string())
        table = pq.read_table(parts[i], columns=["path", "header_json"], schema=schema)
        table = table.filter(pc.is_in(table.column("path"), value_set=keep))
        headers.update(zip(*(table.column(c).to_pylist() for c in table.column_names), strict=True))
    return headers


def multi_frame_headers(parts: Sequence[str], light: pa.Table, schema: pa.Schema) -> dict:
    """header_json of multi-frame instances and of mosaics the extract step did not lay
    out (their per-frame geometry lives there), by path.
    """
    multi = pc.greater(pc.fill_null(light.column("NumberOfFrames"), 1), 1)
    image_type = pc.list_flatten(light.column("ImageType"))
    if pc.any(pc.equal(pc.utf8_upper(image_type), "MOSAIC")).as_py():
        types = light.column("ImageType").to_pylist()
        laid_out = light.column("mosaic_tiles").to_pylist()
        mosaic = [
            multiframe.is_mosaic(t) and n is None for t, n in zip(types, laid_out, strict=True)
        ]
        multi = pc.or_(multi, pa.array(mosaic))
    return headers_where(parts, light, multi, schema)


def grouping_rows(light: pa.Table, headers: dict[str, str]) -> list[dict]:
    """Rows for grouping, as dicts, in path order: one per instance, or one per frame
    group of an instance holding several volumes. ``_row`` is the instance's index.

    Multi-frame rows get their per-frame positions (``frame_positions``), and their
    orientation and pixel spacing from the functional groups when the top level has
    none (enhanced CT/MR); the instances table itself keeps the header as it is. A mosaic
    the extract step laid out (``mosaic_tiles`` set) takes that layout as it is, and its
    header is not needed (the batch steps read headers of multi-frame objects only).
    """
    rows = light.select(GROUPING_COLUMNS).to_pylist()
    for i, row in enumerate(rows):
        row["_row"] = i
        laid_out = (row.pop("mosaic_tile_rows"), row.pop("mosaic_tile_columns"))
        positions = row.pop("mosaic_positions")
        if row["mosaic_tiles"] is not None:  # never in ``headers`` (multi_frame_headers)
            row.update(
                Rows=laid_out[0],
                Columns=laid_out[1],
                frame_positions=None if positions is None else np.asarray(positions),
            )
    if not headers:
        return rows  # pydicom (about 0.4 s to import) only for multi-frame geometry
    from pydicom.dataset import Dataset

    import dicom_io  # noqa: F401 - sets quiet pydicom reading options

    out = []
    for row in rows:
        header = headers.get(row["path"])
        if header is None:
            out.append(row)
            continue
        row["header_json"] = header
        try:
            if (row.get("NumberOfFrames") or 1) == 1:  # here only because it is a mosaic
                ds = multiframe.mosaic_dataset(json.loads(header))
            else:
                ds = Dataset.from_json(header)
        except Exception:  # noqa: BLE001 - unusable geometry means unknown positions
            row["frame_positions"] = None
            out.append(row)
            continue
        out.extend(frame_group_rows(row, ds))
    return out


def frame_group_rows(row: dict, ds) -> list[dict]:
    """The grouping rows of one multi-frame or mosaic instance (see :func:`grouping_rows`).

    A mosaic is one row of ``mosaic_tiles`` slices with tile-sized Rows and Columns; an
    enhanced object with several volumes one row per frame group (``frames``, its
    ``frame_key``); anything else stays one row.
    """
    try:
        row["frame_positions"] = geometry.frame_positions(ds)
        if row.get("ImageOrientationPatient") is None:
            row["ImageOrientationPatient"] = geometry.frame_orientation(ds)
        if row.get("PixelSpacing") is None:
            row["PixelSpacing"] = geometry.pixel_spacing(ds)
        mosaic = multiframe.mosaic_layout(ds) if (row.get("NumberOfFrames") or 1) == 1 else None
        keys = multiframe.frame_keys(ds) if mosaic is None else None
    except Exception:  # noqa: BLE001 - unusable geometry means unknown positions
        row["frame_positions"] = None
        return [row]
    if mosaic is not None:
        finite = bool(np.isfinite(mosaic.positions).all())
        row.update(
            mosaic_tiles=mosaic.n_tiles,
            Rows=mosaic.tile_rows,
            Columns=mosaic.tile_columns,
            frame_positions=mosaic.positions if finite else None,
        )
        return [row]
    groups = multiframe.group_frames(keys) if keys and len(keys) == n_slices(row) else []
    if len(groups) < 2 or max(len(frames) for _, frames in groups) < 2:
        return [row]  # one volume, or one frame per key (a single-slice cine): one stack
    positions = row["frame_positions"]
    out = []
    for key, frames in groups:
        part = dict(row)
        part.update(
            frames=frames,
            frame_key=multiframe.key_text(key),
            frame_positions=None if positions is None else positions[frames],
        )
        out.append(part)
    return out


SHARD_STREAM_BATCH = 128
"""Rows read from each shard at a time while merging."""


class _ShardStream:
    """Rows of one path-sorted shard table (its ``columns``), taken in order, a batch read
    at a time.
    """

    def __init__(self, path: str, columns: list[str]):
        parquet = pq.ParquetFile(path)
        self._batches = parquet.iter_batches(batch_size=SHARD_STREAM_BATCH, columns=columns)
        self._buffer: list[pa.RecordBatch] = []
        self._buffered = 0

    def take(self, n: int) -> pa.Table:
        """The next ``n`` rows."""
        while self._buffered < n:
            batch = next(self._batches)
            self._buffer.append(batch)
            self._buffered += batch.num_rows
        table = pa.Table.from_batches(self._buffer)
        self._buffer = table.slice(n).to_batches()
        self._buffered -= n
        return table.slice(0, n)


def write_instances(
    parts: Sequence[str], schema: pa.Schema, light: pa.Table, target: str
) -> dict[str, list[str]]:
    """Write instances.parquet in path order, merging the path-sorted shards.

    Each row group takes its rows from every shard in turn (a shard's rows of one row
    group follow each other) and puts them in path order with one ``take``; only a
    row group and a batch per shard are in memory at a time, whatever the study's size.
    series_key and each row's shard come from ``light`` (:func:`merge_tables`). Returns
    each series' identifying values (:func:`privacy.header_identifiers` of its first
    instance's header) for the batch work lists and the identifiers table, so that neither
    the sheets nor the review page need read a header to keep them out of their text.
    """
    identifiers: dict[str, dict[str, list[str]]] = {}
    shard_of = light.column(SHARD_FIELD.name).to_numpy()
    keys = light.column("series_key").to_pylist()
    streams = [_ShardStream(p, schema.names) for p in parts]
    key_index = schema.get_field_index("series_key")
    tmp = f"{target}.tmp"
    with pq.ParquetWriter(tmp, schema, **table_schema.PARQUET_OPTIONS) as writer:
        for start in range(0, len(keys), OUTPUT_ROW_GROUP):
            shards = shard_of[start : start + OUTPUT_ROW_GROUP]
            counts = np.bincount(shards, minlength=len(streams))
            pieces = [streams[i].take(int(n)) for i, n in enumerate(counts) if n]
            grouped = np.argsort(shards, kind="stable")  # row of the pieces → row in order
            in_order = np.empty_like(grouped)
            in_order[grouped] = np.arange(len(grouped))
            chunk = pa.concat_tables(pieces).take(pa.array(in_order))
            chunk_keys = keys[start : start + OUTPUT_ROW_GROUP]
            chunk = chunk.set_column(key_index, "series_key", pa.array(chunk_keys, pa.string()))
            first = {}
            for row, key in enumerate(chunk_keys):
                if key not in identifiers and key not in first:
                    first[key] = row
            rows = pa.array(list(first.values()), pa.int64())  # may be empty: typed
            headers = chunk.column("header_json").take(rows).to_pylist()
            for key, header in zip(first, headers, strict=True):
                identifiers[key] = privacy.header_identifiers(header)
            # one chunk per column: the writer's pages follow the chunks, and these
            # follow the shards' batches, so bytes would otherwise depend on sharding
            writer.write_table(chunk.combine_chunks(), row_group_size=OUTPUT_ROW_GROUP)
    os.replace(tmp, target)
    return identifiers


def parts_schema(instance_parts: Sequence[str], extra_keywords=()) -> pa.Schema:
    """Schema of the instances in the shard tables, as extract wrote them, without the
    shards' own :data:`table_schema.MOSAIC_FIELDS` (computing it from the keywords needs
    pydicom's dictionary: about 0.4 s of import on the serial merge).
    """
    if not instance_parts:
        return table_schema.instances_schema(extra_keywords)
    fields = pq.read_schema(instance_parts[0]).remove_metadata()
    for name in (f.name for f in table_schema.MOSAIC_FIELDS if f.name in fields.names):
        fields = fields.remove(fields.get_field_index(name))
    # Parquet names list items "element"; Arrow (and instances_schema) "item"
    return pa.schema(
        f.with_type(pa.list_(f.type.value_type)) if pa.types.is_list(f.type) else f for f in fields
    )


def merge_tables(instance_parts, error_parts, extra_keywords=(), series_per_batch: int = 8):
    """Group instances into series: ``(light instances, grouping rows, series, errors)``.

    ``light instances`` has every column but header_json (multi-frame headers are in the
    grouping rows); the full table is written by :func:`write_instances`.
    """
    schema = parts_schema(instance_parts, extra_keywords)
    light = read_light(instance_parts, schema)
    headers = multi_frame_headers(instance_parts, light, schema)
    rows = grouping_rows(light, headers)
    records, keys = build_series(rows, series_per_batch)
    instance_keys: list[str | None] = [None] * light.num_rows
    for row, key in zip(rows, keys, strict=True):
        row["series_key"] = key
        if instance_keys[row["_row"]] is None:  # an object split in volumes: the first's
            instance_keys[row["_row"]] = key
    light = light.set_column(
        light.schema.get_field_index("series_key"),
        "series_key",
        pa.array(instance_keys, pa.string()),
    )
    errors = table_schema.sorted_errors(read_parts(error_parts, table_schema.ERRORS_SCHEMA))
    series = table_schema.table_from_rows(records, SERIES_SCHEMA)
    return light, rows, series, errors


def read_stamps(shard_lists: Sequence[str]) -> dict[str, str]:
    """Each file's stamp from the scan's shard lists, by path, as one string.

    The stamp (size, mtime, ctime, inode) changes when a file is rewritten, even at the
    same size with its mtime set back, or replaced by another; carried into the batch
    work lists, it makes Snakemake redo the batches whose files changed although their
    headers did not. It never enters the metadata tables, which depend on content only.
    """
    stamps = {}
    for shard_list in shard_lists:
        with open(shard_list, encoding="utf-8") as fh:
            for line in fh:
                if line.strip():
                    entry = json.loads(line)
                    fields = ("file_size", "mtime_ns", "ctime_ns", "inode")
                    stamps[entry["path"]] = ":".join(str(entry.get(f)) for f in fields)
    return stamps


def _frame_group_column(rows: list[dict], field: pa.Field) -> pa.Array:
    values = []
    for row in rows:
        value = row.get(field.name)
        if field.name == "frame_positions" and (n_slices(row) == 1 and not row.get("mosaic_tiles")):
            value = None  # single frames: ImagePositionPatient says it
        values.append(np.asarray(value).tolist() if isinstance(value, np.ndarray) else value)
    return pa.array(values, field.type)


def batch_tables(
    light: pa.Table,
    rows: list[dict],
    series: pa.Table,
    stamps: dict[str, str] | None = None,
    identifiers: dict[str, list[str]] | None = None,
) -> dict[int, tuple[pa.Table, pa.Table]]:
    """Per batch: its series rows and the instance columns its slices need, one row per
    grouping row (``rows``, each with its ``series_key``).

    With ``stamps`` (path → file stamp) the instances get a ``file_stamp`` column; with
    ``identifiers`` (series key → patient identifiers) the series a
    ``patient_identifiers`` column (work lists only, never a final table).
    """
    out = {}
    if identifiers is not None:
        keys = series.column("series_key").to_pylist()
        column = pa.array([identifiers.get(k, []) for k in keys], pa.list_(pa.string()))
        series = series.append_column("patient_identifiers", column)
    batches = sorted(set(series.column("batch").drop_null().to_pylist()))
    columns = light.take(pa.array([row["_row"] for row in rows], pa.int64()))
    columns = columns.set_column(
        columns.schema.get_field_index("series_key"),
        "series_key",
        pa.array([row["series_key"] for row in rows], pa.string()),
    )
    paths = columns.column("path").to_pylist()
    header_column = pa.array([row.get("header_json") for row in rows], pa.string())
    columns = columns.select(table_schema.BATCH_INSTANCE_COLUMNS[:6]).append_column(
        "header_json", header_column
    )
    for group_field in FRAME_GROUP_FIELDS:
        columns = columns.append_column(group_field, _frame_group_column(rows, group_field))
    if stamps is not None:
        stamp_column = pa.array([stamps.get(p) for p in paths], pa.string())
        columns = columns.append_column("file_stamp", stamp_column)
    for batch in batches:
        batch_series = series.filter(pc.equal(series.column("batch"), batch))
        keys = batch_series.column("series_key")
        batch_instances = columns.filter(pc.is_in(columns.column("series_key"), value_set=keys))
        out[batch] = (batch_series, batch_instances)
    return out


def segmentation_headers(parts: Sequence[str], light: pa.Table, schema: pa.Schema) -> dict:
    """header_json of every SEG instance, by path (single-frame SEGs included)."""
    seg = pc.fill_null(pc.equal(light.column("Modality"), "SEG"), False)
    return headers_where(parts, light, seg, schema)


def _seg_identity(series_uid: str | None, key: str) -> str:
    """How a SEG's sources are found for a series row: its SeriesInstanceUID, else its key.

    By UID, every stack of a SEG series gets the sources of all its instances, however
    its frames are split into stacks.
    """
    return f"uid:{series_uid}" if series_uid else f"key:{key}"


def segmentation_sources(light: pa.Table, seg_headers: dict[str, str]) -> dict[str, list[int]]:
    """SEG series → rows of ``light`` (instances with pixels) its SEG instances derive from.

    Keys are :func:`_seg_identity`. The sources are the instances the SEG names
    (ReferencedSOPInstanceUID) and every instance of the series it names
    (ReferencedSeriesSequence), outside the SEG's own series.
    """
    if not seg_headers:
        return {}
    columns = ("path", "series_key", "SOPInstanceUID", "SeriesInstanceUID", "has_pixels")
    paths, keys, sops, series_uids, pixels = (light.column(c).to_pylist() for c in columns)
    by_sop: dict[str, list[int]] = {}
    by_series: dict[str, list[int]] = {}
    for i, (sop, uid, has) in enumerate(zip(sops, series_uids, pixels, strict=True)):
        if has:
            by_sop.setdefault(sop, []).append(i)
            by_series.setdefault(uid, []).append(i)
    wanted: dict[str, set[int]] = {}
    for i, path in enumerate(paths):
        if path not in seg_headers:
            continue
        named_series, named_instances = segmentation.referenced_uids(seg_headers[path])
        found = {j for u in named_instances for j in by_sop.get(u, ())}
        found |= {j for u in named_series for j in by_series.get(u, ())}
        found = {j for j in found if series_uids[j] != series_uids[i]}
        if found:
            wanted.setdefault(_seg_identity(series_uids[i], keys[i]), set()).update(found)
    return {key: sorted(rows) for key, rows in wanted.items()}


def add_segmentation_sources(
    tables: dict[int, tuple[pa.Table, pa.Table]],
    light: pa.Table,
    headers: dict[str, str],
    seg_headers: dict[str, str],
    stamps: dict[str, str] | None = None,
) -> dict[int, tuple[pa.Table, pa.Table]]:
    """Add each SEG's source instances to its batch's instance work list.

    A source row has the SEG's ``series_key`` and ``seg_source`` true; every row of such a
    batch gets ``SOPInstanceUID``. The SEG's batch then knows where its source images are
    (to draw the masks over them), and its work list, holding the sources' file stamps,
    changes when a source file does: Snakemake redoes that batch. Batches without SEG
    sources are returned unchanged (their work lists keep their bytes).
    """
    sources = segmentation_sources(light, seg_headers)
    if not sources:
        return tables
    path_index = {p: i for i, p in enumerate(light.column("path").to_pylist())}
    sop_column = light.column("SOPInstanceUID").to_pylist()
    light_rows = None
    out = dict(tables)
    for batch, (batch_series, batch_instances) in tables.items():
        keys = batch_series.column("series_key").to_pylist()
        uids = batch_series.column("SeriesInstanceUID").to_pylist()
        members = zip(keys, uids, strict=True)
        extra = [
            (key, j)
            for key, uid in sorted(members, key=lambda m: m[0])
            for j in sources.get(_seg_identity(uid, key), ())
        ]
        if not extra:
            continue
        if light_rows is None:
            light_rows = light.select(table_schema.BATCH_INSTANCE_COLUMNS[:6]).to_pylist()
        rows = batch_instances.to_pylist()
        for row in rows:
            row.update(SOPInstanceUID=sop_column[path_index[row["path"]]], seg_source=False)
        for key, j in extra:
            source = light_rows[j]
            row = dict(source, series_key=key, header_json=headers.get(source["path"]))
            if stamps is not None:
                row["file_stamp"] = stamps.get(row["path"])
            rows.append(dict(row, SOPInstanceUID=sop_column[j], seg_source=True))
        schema = batch_instances.schema.append(pa.field("SOPInstanceUID", pa.string()))
        schema = schema.append(pa.field("seg_source", pa.bool_()))
        out[batch] = (batch_series, pa.Table.from_pylist(rows, schema=schema))
    return out


BATCH_FILE = re.compile(r"batch_(\d+)\.(?:series|instances)\.parquet(?:\.tmp)?")


def write_batches(
    light: pa.Table,
    rows: list[dict],
    series: pa.Table,
    folder: str,
    stamps: dict[str, str] | None = None,
    identifiers: dict[str, list[str]] | None = None,
    seg_headers: dict[str, str] | None = None,
) -> list[int]:
    """Write each batch's work lists, rewriting only those whose content changed.

    Work lists of batches that no longer exist are removed, so a batch number that
    comes back gets new lists (and its jobs rerun) rather than an old list's time.
    ``seg_headers`` (path → header JSON of SEG instances) adds each SEG's source images
    to its batch (:func:`add_segmentation_sources`).
    """
    os.makedirs(folder, exist_ok=True)
    tables = batch_tables(light, rows, series, stamps, identifiers)
    headers = {row["path"]: row["header_json"] for row in rows if row.get("header_json")}
    tables = add_segmentation_sources(tables, light, headers, seg_headers or {}, stamps)
    for batch, (batch_series, batch_instances) in tables.items():
        for kind, table in (("series", batch_series), ("instances", batch_instances)):
            target = os.path.join(folder, f"batch_{batch}.{kind}.parquet")
            write_if_changed(target, table_schema.table_bytes(table))
    for name in os.listdir(folder):
        match = BATCH_FILE.fullmatch(name)
        if match and int(match.group(1)) not in tables:
            os.unlink(os.path.join(folder, name))
    return sorted(tables)


def identifiers_table(identifiers: dict[str, dict[str, list[str]]]) -> pa.Table:
    """The identifiers table (:data:`table_schema.IDENTIFIERS_SCHEMA`), one row per series
    key in key order.
    """
    rows = [{"series_key": key, **identifiers[key]} for key in sorted(identifiers)]
    return table_schema.table_from_rows(rows, table_schema.IDENTIFIERS_SCHEMA)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instance-parts", nargs="*", default=[])
    parser.add_argument("--error-parts", nargs="*", default=[])
    parser.add_argument("--keyword", action="append", default=[])
    parser.add_argument("--series-per-batch", type=int, default=8)
    parser.add_argument("--instances", required=True)
    parser.add_argument("--series", required=True)
    parser.add_argument("--errors", required=True)
    parser.add_argument("--identifiers", help="identifiers table to write (review page)")
    parser.add_argument("--batch-dir", help="folder for per-batch work lists (write-if-changed)")
    parser.add_argument(
        "--shard-lists", nargs="*", help="the scan's shard lists: file stamps for the work lists"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Merge the shard tables and write the metadata tables (and batch work lists)."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    light, rows, series, errors = merge_tables(
        args.instance_parts, args.error_parts, args.keyword, args.series_per_batch
    )
    os.makedirs(os.path.dirname(os.path.abspath(args.instances)), exist_ok=True)
    schema = parts_schema(args.instance_parts, args.keyword)
    identifiers = write_instances(args.instance_parts, schema, light, args.instances)
    table_schema.write_table(series, args.series)
    table_schema.write_table(errors, args.errors)
    if args.identifiers:
        table_schema.write_table(identifiers_table(identifiers), args.identifiers)
    if args.batch_dir:
        stamps = read_stamps(args.shard_lists) if args.shard_lists is not None else None
        seg_headers = segmentation_headers(args.instance_parts, light, schema)
        patient = {key: found["patient"] for key, found in identifiers.items()}
        write_batches(light, rows, series, args.batch_dir, stamps, patient, seg_headers)
    log.info(
        "%d instances in %d series/stacks; %d error rows",
        light.num_rows,
        series.num_rows,
        errors.num_rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
