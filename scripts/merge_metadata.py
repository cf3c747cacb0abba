"""Merge shard tables into instances.parquet, series.parquet and the extract errors.

Here instances are grouped into series and stacks (a series splits when modality,
size, orientation, echo or time point differ), each stack gets its ``series_key``,
geometry checks and the batch that later stages process it in.
"""

from __future__ import annotations

import argparse
import logging
import os
import posixpath
import sys
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq

import dicom_io  # noqa: F401 - sets quiet pydicom reading options
import geometry
import table_schema
from sharding import bucket_count, short_hash, stable_bucket, write_if_changed

log = logging.getLogger("merge_metadata")

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
    for iop in orientations:
        if iop is None or len(iop) != 6 or not geometry.is_valid_orientation(iop):
            labels.append(None)
            continue
        for i, rep in enumerate(reps):
            if geometry.same_orientation(iop, rep):
                labels.append(i)
                break
        else:
            reps.append(iop)
            labels.append(len(reps) - 1)
    return labels


def _first(value):
    if value is None:
        return None
    if isinstance(value, (list, tuple, np.ndarray)):
        return value[0] if len(value) else None
    return value


def _stack_signature(row: dict, cluster: int | None) -> tuple:
    """What must agree for instances to be one stack of a series."""
    return (
        str(row.get("Modality") or ""),
        bool(row["has_pixels"]),
        row.get("Rows") or 0,
        row.get("Columns") or 0,
        -1 if cluster is None else cluster,
        _first(row.get("EchoNumbers")) or 0,
        row.get("TemporalPositionIdentifier") or 0,
    )


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
            stacks.append(Stack(identity, grouped_by[identity], by_sig[sig]))
    return stacks


def _positions(rows: list[dict], members: list[int]) -> np.ndarray | None:
    """Frame positions of a stack, (N, 3); multi-frame headers come from header_json."""
    from pydicom.dataset import Dataset

    positions = []
    for i in members:
        row = rows[i]
        if (row.get("NumberOfFrames") or 1) > 1:
            try:
                ds = Dataset.from_json(row["header_json"])
                frames = geometry.frame_positions(ds)
            except Exception:  # noqa: BLE001 - unusable geometry means unknown positions
                frames = None
            if frames is None:
                return None
            positions.extend(frames.tolist())
        else:
            ipp = row.get("ImagePositionPatient")
            if ipp is None or len(ipp) != 3:
                return None
            positions.append(list(ipp))
    return np.asarray(positions, dtype=float)


def _orientation_of(rows: list[dict], members: list[int]) -> list[float] | None:
    iop = rows[members[0]].get("ImageOrientationPatient")
    if iop is not None and len(iop) == 6:
        return list(iop) if geometry.is_valid_orientation(iop) else None
    if (rows[members[0]].get("NumberOfFrames") or 1) > 1:
        from pydicom.dataset import Dataset

        try:
            return geometry.frame_orientation(Dataset.from_json(rows[members[0]]["header_json"]))
        except Exception:  # noqa: BLE001
            return None
    return None


def stack_record(rows: list[dict], stack: Stack, single_orientation: bool | None) -> dict:
    """One series.parquet row (without key and batch) with geometry checks."""
    members = stack.rows
    first = rows[members[0]]
    record = {
        "StudyInstanceUID": first.get("StudyInstanceUID"),
        "SeriesInstanceUID": first.get("SeriesInstanceUID"),
        "grouped_by": stack.grouped_by,
        "n_instances": len(members),
        "n_frames": int(sum(rows[i].get("NumberOfFrames") or 1 for i in members)),
        "total_file_size": int(sum(rows[i]["file_size"] for i in members)),
        "has_pixels": bool(first["has_pixels"]),
        "single_orientation": single_orientation,
    }
    for keyword in (
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
    ):
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
    """Series records and the series_key of every instance row (same order as ``rows``)."""
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
    n_batches = bucket_count(len(pixel_keys), series_per_batch)
    for record in records:
        record["batch"] = (
            stable_bucket(record["series_key"], n_batches) if record["has_pixels"] else None
        )
    records.sort(key=lambda r: r["series_key"])
    return records, instance_keys


def read_parts(paths: Sequence[str], schema: pa.Schema) -> pa.Table:
    """Concatenate shard tables with one schema (an empty table when there are none)."""
    tables = [pq.read_table(p, schema=schema) for p in paths]
    return pa.concat_tables(tables) if tables else schema.empty_table()


BATCH_INSTANCE_COLUMNS = [
    "path",
    "series_key",
    "NumberOfFrames",
    "InstanceNumber",
    "ImagePositionPatient",
    "ImageOrientationPatient",
    "header_json",
]
"""Instance columns the per-batch stages need (header_json only for multi-frame rows)."""


def grouping_rows(instances: pa.Table) -> list[dict]:
    """Instance rows for grouping, as dicts, with header_json only where geometry needs it.

    Converting every header to Python would dominate the merge of a large study; only
    multi-frame instances carry per-frame positions in it.
    """
    light = instances.drop_columns(["header_json"]).to_pylist()
    multi = [i for i, row in enumerate(light) if (row.get("NumberOfFrames") or 1) > 1]
    headers = instances.column("header_json").take(multi).to_pylist() if multi else []
    for i, header in zip(multi, headers, strict=True):
        light[i]["header_json"] = header
    return light


def merge(instance_parts, error_parts, extra_keywords=(), series_per_batch: int = 8):
    """Return ``(instances, series, errors)`` tables, each sorted deterministically."""
    schema = table_schema.instances_schema(extra_keywords)
    instances = read_parts(instance_parts, schema).sort_by("path")
    rows = grouping_rows(instances)
    records, keys = build_series(rows, series_per_batch)
    instances = instances.set_column(
        schema.get_field_index("series_key"), "series_key", pa.array(keys, pa.string())
    )
    errors = read_parts(error_parts, table_schema.ERRORS_SCHEMA).sort_by(
        [("path", "ascending"), ("severity", "ascending"), ("reason", "ascending")]
    )
    series = table_schema.table_from_rows(records, SERIES_SCHEMA)
    return instances, series, errors


def batch_tables(instances: pa.Table, series: pa.Table) -> dict[int, tuple[pa.Table, pa.Table]]:
    """Per batch: its series rows and the instance columns its slices need."""
    out = {}
    batches = sorted(set(series.column("batch").drop_null().to_pylist()))
    frames = pc.fill_null(instances.column("NumberOfFrames"), 1)
    single = pc.less_equal(frames, 1)
    headers = pc.if_else(single, pa.scalar(None, pa.string()), instances.column("header_json"))
    light = instances.select(BATCH_INSTANCE_COLUMNS[:-1]).append_column("header_json", headers)
    for batch in batches:
        batch_series = series.filter(pc.equal(series.column("batch"), batch))
        keys = batch_series.column("series_key")
        batch_instances = light.filter(pc.is_in(light.column("series_key"), value_set=keys))
        out[batch] = (batch_series, batch_instances)
    return out


def write_batches(instances: pa.Table, series: pa.Table, folder: str) -> list[int]:
    """Write each batch's work lists, rewriting only those whose content changed."""
    os.makedirs(folder, exist_ok=True)
    tables = batch_tables(instances, series)
    for batch, (batch_series, batch_instances) in tables.items():
        for kind, table in (("series", batch_series), ("instances", batch_instances)):
            target = os.path.join(folder, f"batch_{batch}.{kind}.parquet")
            write_if_changed(target, table_schema.table_bytes(table))
    return sorted(tables)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--instance-parts", nargs="*", default=[])
    parser.add_argument("--error-parts", nargs="*", default=[])
    parser.add_argument("--keyword", action="append", default=[])
    parser.add_argument("--series-per-batch", type=int, default=8)
    parser.add_argument("--instances", required=True)
    parser.add_argument("--series", required=True)
    parser.add_argument("--errors", required=True)
    parser.add_argument("--batch-dir", help="folder for per-batch work lists (write-if-changed)")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Merge the shard tables and write the three metadata tables."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    instances, series, errors = merge(
        args.instance_parts, args.error_parts, args.keyword, args.series_per_batch
    )
    for target, table in (
        (args.instances, instances),
        (args.series, series),
        (args.errors, errors),
    ):
        os.makedirs(os.path.dirname(os.path.abspath(target)), exist_ok=True)
        table_schema.write_table(table, target)
    if args.batch_dir:
        write_batches(instances, series, args.batch_dir)
    log.info(
        "%d instances in %d series/stacks; %d error rows",
        instances.num_rows,
        series.num_rows,
        errors.num_rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
