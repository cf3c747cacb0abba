"""Save selected slices of each series in one batch as .npy arrays, in true spatial order.

Frames are sorted along the slice normal; only the selected frames are decoded.
Monochrome slices hold modality values (HU for CT) as float32; colour slices hold
uint8 RGB. A frame that cannot be decoded becomes an ``undecodable_pixels`` row.
With ``--volumes-format``, each stack with a regular grid is decoded whole, once: its
volume goes to ``volumes/`` (see ``volumes.py``) and the saved slices come from it; a
stack that is not written says why in a ``volume_skipped`` warning.
"""

from __future__ import annotations

import lean_imports  # noqa: F401 - first: keeps unused packages out of this process

import argparse
import logging
import os
import sys
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from pydicom.dataset import Dataset

import dicom_io
import fast_header
import geometry
import multiframe
import pixel_decoders
import rendering
import series_cache
import table_schema
import volumes
from merge_metadata import BATCH_INSTANCE_COLUMNS

log = logging.getLogger("save_slices")

MANIFEST_SCHEMA = table_schema.MANIFEST_SCHEMA

INSTANCE_COLUMNS = BATCH_INSTANCE_COLUMNS


@dataclass(frozen=True)
class Frame:
    """One frame of a stack: where it comes from and where it lies."""

    path: str
    frame: int
    n_frames: int
    position: float | None
    instance_number: int | None
    xyz: tuple[float, float, float] | None = None
    tile: int | None = None
    """Slice of a Siemens mosaic (``n_tiles`` of them in the image), else None."""
    n_tiles: int | None = None


def _row_positions(row: dict, slices: list[tuple[int, int | None]]) -> np.ndarray | None:
    """Positions of a work-list row's slices, (len(slices), 3), or None when unknown."""
    if row.get("frame_positions") is not None:
        per_frame = np.asarray(row["frame_positions"], dtype=float)
    elif int(row.get("NumberOfFrames") or 1) > 1 and row.get("header_json"):
        try:  # instances.parquet rather than a work list: the header has them
            per_frame = geometry.frame_positions(Dataset.from_json(row["header_json"]))
        except Exception:  # noqa: BLE001 - unusable geometry: fall back to order
            return None
        if per_frame is not None and row.get("frames") is not None:
            per_frame = per_frame[row["frames"]]
    elif len(row.get("ImagePositionPatient") or ()) == 3 and not row.get("mosaic_tiles"):
        per_frame = np.asarray([row["ImagePositionPatient"]], dtype=float)
    else:
        return None
    if per_frame is None or per_frame.shape != (len(slices), 3):
        return None
    return per_frame if np.isfinite(per_frame).all() else None


def _row_slices(row: dict) -> list[tuple[int, int | None]]:
    """``(frame, tile)`` of each slice a work-list row gives its stack."""
    if row.get("mosaic_tiles"):
        return [(0, t) for t in range(int(row["mosaic_tiles"]))]
    n_frames = int(row.get("NumberOfFrames") or 1)
    frames = row.get("frames")
    return [(int(f), None) for f in (range(n_frames) if frames is None else frames)]


def stack_frames(instances: list[dict], orientation) -> list[Frame]:
    """All frames (or mosaic tiles) of a stack in patient order along the normal.

    Falls back to InstanceNumber, then path and frame, when positions are unknown.
    """
    frames: list[Frame] = []
    positions: list | None = [] if orientation is not None else None
    for row in sorted(instances, key=lambda r: (r["path"], r.get("frames") or [])):
        n_frames = int(row.get("NumberOfFrames") or 1)
        slices = _row_slices(row)
        if positions is not None:
            per_frame = _row_positions(row, slices)
            positions = None if per_frame is None else positions + per_frame.tolist()
        n_tiles = row.get("mosaic_tiles")
        for f, tile in slices:
            number = row.get("InstanceNumber")
            frames.append(Frame(row["path"], f, n_frames, None, number, None, tile, n_tiles))
    if frames and positions is not None and len(positions) == len(frames):
        projected = geometry.project_positions(positions, orientation)
        frames = [
            replace(fr, position=round(float(z), 4), xyz=tuple(p))
            for fr, z, p in zip(frames, projected, positions, strict=True)
        ]
        order = np.argsort(projected, kind="stable")
        return [frames[i] for i in order]
    return sorted(
        frames,
        key=lambda fr: (
            fr.instance_number is None,
            fr.instance_number or 0,
            fr.path,
            fr.frame,
            fr.tile or 0,
        ),
    )


ANATOMICAL_PLANES = ("axial", "coronal", "sagittal")


@dataclass(frozen=True)
class Selection:
    """Which slices to save: planes, and either a count or fractions along each plane."""

    count: int = 9
    fractions: tuple[float, ...] = ()
    planes: tuple[str, ...] = ("acquired",)


def select_indices(n: int, count: int, fractions: Sequence[float] = ()) -> list[int]:
    """Indices into ``n`` slices: at ``fractions`` (0 = first, 1 = last) when given, else
    ``count`` evenly spaced, centred indices (odd counts hold the middle).
    """
    if n <= 0:
        return []
    if fractions:
        return sorted({min(n - 1, max(0, int(np.floor(f * (n - 1) + 0.5)))) for f in fractions})
    if count >= n:
        return list(range(n))
    picks = [int(np.floor((i + 1) / (count + 1) * (n - 1) + 0.5)) for i in range(count)]
    return sorted(set(picks))


def decode_frame(ds: Dataset, frame: Frame) -> np.ndarray:
    """Decode only one frame of an instance read with :func:`dicom_io.read_for_pixels`
    (for a mosaic tile, the whole image: see :func:`frame_pixels`).
    """
    from pydicom.pixels import pixel_array

    pixel_decoders.register()  # imagecodecs JPEG, deflated frames, 1-bit RLE (once)
    index = frame.frame if frame.n_frames > 1 else None
    arr = pixel_array(ds, index=index)
    if index is not None and arr.ndim >= 3 and arr.shape[0] == frame.n_frames:
        arr = arr[frame.frame]  # some decoders return every frame regardless of index
    return arr


def frame_pixels(image: np.ndarray, frame: Frame) -> np.ndarray:
    """The frame's slice of a decoded image: the image, or its mosaic tile."""
    if frame.tile is None:
        return image
    return multiframe.cut_tile(image, int(frame.n_tiles), frame.tile)


def slice_values(arr: np.ndarray, ds: Dataset, frame: int) -> tuple[np.ndarray, str, str]:
    """Array to save, its units and photometric: modality values, or uint8 RGB for colour."""
    photometric = str(ds.get("PhotometricInterpretation", "MONOCHROME2")).strip()
    if photometric == "PALETTE COLOR":
        from pydicom.pixels import apply_color_lut

        return rendering.colour_to_uint8(apply_color_lut(arr, ds)), "RGB", "RGB"  # LUT depth
    if arr.ndim == 3 and arr.shape[-1] == 3:
        bits = int(ds.get("BitsStored") or arr.dtype.itemsize * 8)
        return rendering.colour_to_uint8(arr, min(bits, arr.dtype.itemsize * 8)), "RGB", "RGB"
    if arr.ndim != 2:
        raise ValueError(f"decoded frame has shape {arr.shape}, expected 2-D")
    return rendering.modality_values(arr, ds, frame), rendering.value_units(ds, frame), photometric


def save_npy(array: np.ndarray, target: Path) -> None:
    """Write an array atomically (temporary name, then rename)."""
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "wb") as fh:
        np.save(fh, array, allow_pickle=False)
    os.replace(tmp, target)


def _undecodable(path: str, exc: BaseException) -> dict:
    return {
        "path": path,
        "reason": "undecodable_pixels",
        "detail": dicom_io.short_message(exc, 300),
        "severity": "warning",
        "stage": "save_slices",
    }


class FrameDecoder:
    """Decode frames of a stack, reading each file once while its frames are wanted."""

    def __init__(self, study: Path):
        self.study = study
        self.failed: dict[str, BaseException] = {}
        self._path: str | None = None
        self._ds: Dataset | None = None
        self._mosaic: np.ndarray | None = None

    def _header(self, frame: Frame) -> Dataset:
        if frame.path != self._path:
            self._path, self._ds, self._mosaic = frame.path, None, None
            path = dicom_io.study_file(self.study, frame.path)
            self._ds = fast_header.read_dataset_fast(path) or dicom_io.read_for_pixels(path)
        return self._ds

    def _stored(self, frame: Frame) -> tuple[np.ndarray, Dataset]:
        """Stored values of one frame and its header; a mosaic is decoded once for all
        its tiles.
        """
        ds = self._header(frame)
        if frame.tile is None:
            return decode_frame(ds, frame), ds
        if self._mosaic is None:
            self._mosaic = decode_frame(ds, frame)
        return frame_pixels(self._mosaic, frame), ds

    def decode(
        self, frame: Frame, decoded: np.ndarray | None = None, header: Dataset | None = None
    ) -> tuple[np.ndarray, str, str, Dataset]:
        """Values, units, photometric and header of one frame; raises when undecodable.

        ``decoded`` passes modality values already decoded (a frame of a stack decoded
        whole), so only the header is needed; ``header``, when given, is that header.
        """
        if frame.path in self.failed:
            raise self.failed[frame.path]
        try:
            ds = header if header is not None else self._header(frame)
            if decoded is not None:
                photometric = str(ds.get("PhotometricInterpretation", "")).strip()
                return decoded, rendering.value_units(ds, frame.frame), photometric, ds
            stored, ds = self._stored(frame)
            values, units, photometric = slice_values(stored, ds, frame.frame)
        except Exception as exc:  # noqa: BLE001 - decoders raise many types
            self.failed[frame.path] = exc
            raise
        return values, units, photometric, ds

    def decode_stored(self, frame: Frame) -> tuple[np.ndarray, np.ndarray, Dataset]:
        """Stored values, modality values and header of one frame; raises when undecodable.

        For a stack decoded whole: the modality values are what :meth:`decode` gives.
        """
        if frame.path in self.failed:
            raise self.failed[frame.path]
        try:
            stored, ds = self._stored(frame)
            values = slice_values(stored, ds, frame.frame)[0]
        except Exception as exc:  # noqa: BLE001 - decoders raise many types
            self.failed[frame.path] = exc
            raise
        return stored, values, ds


def _record(key, plane, index, n, npy, values, **facts) -> dict:
    """One manifest row; the .npy path names the plane and the slice's index in it."""
    return {
        "series_key": key,
        "plane": plane,
        "index": index,
        "n_in_plane": n,
        "npy_path": npy,
        "png_path": npy.replace("slices/", "thumbnails/", 1).removesuffix(".npy") + ".png",
        "rows": int(values.shape[0]),
        "columns": int(values.shape[1]),
        **facts,
    }


def voi_facts(ds: Dataset, path: str | None) -> dict:
    """VOILUTFunction, and the file whose VOI LUT Sequence a thumbnail may use."""
    has_lut = bool(ds.get("VOILUTSequence")) and path is not None
    return {
        "voi_lut_function": str(ds.get("VOILUTFunction") or "LINEAR").strip() or "LINEAR",
        "voi_lut_source": path if has_lut else None,
    }


def planes_to_save(series: dict, selection: Selection) -> tuple[str, bool, list[str]]:
    """Name of the acquired plane, whether to save it, and the reformatted planes to make.

    Reformats need a volume (``is_volume``) that is axis-aligned and monochrome; the
    acquired plane is saved when asked for or when no reformat can be made.
    """
    acquired = series.get("orientation") or "acquired"
    wanted = [acquired if p == "acquired" else p for p in selection.planes]
    reformats = [p for p in dict.fromkeys(wanted) if p in ANATOMICAL_PLANES and p != acquired]
    can_reslice = (
        series.get("is_volume")
        and acquired in ANATOMICAL_PLANES
        and str(series.get("PhotometricInterpretation") or "").startswith("MONOCHROME")
    )
    reformats = reformats if can_reslice else []
    return acquired, acquired in wanted or not reformats, reformats


def volume_plan(series: dict, frames: list[Frame], settings: volumes.VolumeSettings):
    """``(write, reason)``: whether to write the stack's volume, else why not (or None).

    ``(False, None)`` when no volume is wanted (volumes off, another modality, not a
    stack); a reason makes a ``volume_skipped`` warning. PixelSpacing is checked once the
    stack is decoded (enhanced objects keep it in the functional groups).
    """
    if not settings.wants(series.get("Modality")):
        return False, None
    if not volumes.is_candidate(series, len(frames), any(f.n_frames > 1 for f in frames)):
        return False, None
    positions = [f.xyz for f in frames] if all(f.xyz is not None for f in frames) else None
    reason = volumes.grid_problem(
        positions, series.get("ImageOrientationPatient"), series.get("PhotometricInterpretation")
    )
    return reason is None, reason


def write_stack_volume(
    results: Path,
    series: dict,
    frames: list[Frame],
    decoded: list[tuple[np.ndarray, np.ndarray, Dataset]],
    values: np.ndarray,
    settings: volumes.VolumeSettings,
) -> tuple[list[dict], str | None]:
    """Write the volume of a stack decoded whole; returns its rows, or a reason to skip."""
    if values.ndim != 3:
        return [], f"decoded frames have {values.ndim - 1} dimensions, not 2 (colour?)"
    headers = [ds for _, _, ds in decoded]
    first = headers[0]
    spacing = volumes.pixel_spacing(series.get("PixelSpacing"), first)
    if spacing is None:
        return [], "no PixelSpacing"
    spacings = {tuple(volumes.pixel_spacing(ds.get("PixelSpacing"), ds) or ()) for ds in headers}
    if len(spacings) > 1:
        return [], f"PixelSpacing differs between slices ({len(spacings)} values)"
    grid = volumes.stack_grid([f.xyz for f in frames], series["ImageOrientationPatient"], spacing)
    rescale = [
        rendering.rescale_parameters(ds, f.frame) for f, ds in zip(frames, headers, strict=True)
    ]
    facts = {
        "value_units": rendering.value_units(first, frames[0].frame),
        "n_source_files": len({f.path for f in frames}),
        "n_frames": len(frames),
    }
    rows = volumes.write_volume(
        results,
        series["series_key"],
        settings.formats,
        [stored for stored, _, _ in decoded],
        values,
        rescale,
        any(bool(ds.get("ModalityLUTSequence")) for ds in headers),
        grid,
        facts,
    )
    return rows, None


def save_series(
    study: Path,
    results: Path,
    series: dict,
    instances: list[dict],
    selection: Selection,
    volume_settings: volumes.VolumeSettings = volumes.VOLUMES_OFF,
) -> tuple[list[dict], list[dict], list[dict]]:
    """Save the selected slices (and the volume) of one series; returns manifest rows,
    error rows and ``volumes.parquet`` rows.

    Only the chosen frames are decoded, unless a reformatted plane or a volume is asked
    for: then the whole stack is decoded once and the slices are taken from it.
    """
    orientation = series.get("ImageOrientationPatient")
    frames = stack_frames(instances, orientation)
    acquired, acquired_wanted, reformats = planes_to_save(series, selection)
    key = series["series_key"]
    decoder = FrameDecoder(study)
    manifest, errors, volume_rows = [], [], []
    write_volume, skip = volume_plan(series, frames, volume_settings)
    volume, whole = None, []
    if reformats or write_volume:
        try:
            whole = [decoder.decode_stored(f) for f in frames]
            volume = np.stack([values for _, values, _ in whole])
        except Exception as exc:  # noqa: BLE001 - fall back to the acquired plane alone
            errors.append(_undecodable(next(iter(decoder.failed), frames[0].path), exc))
            reformats, acquired_wanted, write_volume = [], True, False
    if write_volume and volume is not None:
        volume_rows, skip = write_stack_volume(
            results, series, frames, whole, volume, volume_settings
        )
        whole = [(None, None, ds) for _, _, ds in whole]  # stored values no longer needed
        if volume.ndim != 3:
            volume = None  # colour frames: slices are decoded one by one as usual
    if skip:
        errors.append(volumes.skip_row(min(f.path for f in frames), key, skip))
    if acquired_wanted:
        for index in select_indices(len(frames), selection.count, selection.fractions):
            frame = frames[index]
            try:
                if volume is None:
                    values, units, photometric, ds = decoder.decode(frame)
                else:  # from the whole decode, header included
                    values, units, photometric, ds = decoder.decode(
                        frame, volume[index], whole[index][2]
                    )
            except Exception as exc:  # noqa: BLE001
                if not any(e["path"] == frame.path for e in errors):
                    errors.append(_undecodable(frame.path, exc))
                continue
            npy = f"slices/{key}/{acquired}_{index:04d}.npy"
            save_npy(values, results / npy)
            window = rendering.header_window(ds, frame.frame)
            manifest.append(
                _record(
                    key,
                    acquired,
                    index,
                    len(frames),
                    npy,
                    values,
                    source_path=frame.path,
                    frame=frame.frame,
                    position_mm=frame.position,
                    pixel_spacing_mm=geometry.pixel_spacing(ds),
                    value_units=units,
                    photometric=photometric,
                    window_center=window[0] if window else None,
                    window_width=window[1] if window else None,
                    **voi_facts(ds, frame.path),
                )
            )
    if reformats and volume is not None:
        middle = len(frames) // 2  # units and window of the reslices come from here
        _, units, photometric, ds = decoder.decode(frames[middle], volume[middle], whole[middle][2])
        window = rendering.header_window(ds, frames[middle].frame)
        for plane in reformats:
            slices, spacing, positions = geometry.reformat_volume(
                volume,
                orientation,
                series["PixelSpacing"],
                series["slice_spacing"],
                frames[0].xyz,
                plane,
            )
            for index in select_indices(len(slices), selection.count, selection.fractions):
                npy = f"slices/{key}/{plane}_{index:04d}.npy"
                save_npy(slices[index], results / npy)
                manifest.append(
                    _record(
                        key,
                        plane,
                        index,
                        len(slices),
                        npy,
                        slices[index],
                        source_path=None,
                        frame=None,
                        position_mm=round(float(positions[index]), 4),
                        pixel_spacing_mm=list(spacing),
                        value_units=units,
                        photometric=photometric,
                        window_center=window[0] if window else None,
                        window_width=window[1] if window else None,
                        **voi_facts(ds, None),
                    )
                )
    return manifest, errors, volume_rows


def read_instances(path, keys: Sequence[str] | None = None) -> list[dict]:
    """Work-list rows of the series ``keys`` (all when None). ``instances.parquet`` serves
    too (it has no frame-group columns: each instance is taken whole).
    """
    available = set(pq.read_schema(path).names)
    columns = [c for c in INSTANCE_COLUMNS if c in available]
    filters = None if keys is None else [("series_key", "in", list(keys))]
    return pq.read_table(path, columns=columns, filters=filters).to_pylist()


def save_batch(
    study: Path,
    results: Path,
    instances_path,
    series_path,
    batch: int,
    selection: Selection,
    volume_settings: volumes.VolumeSettings = volumes.VOLUMES_OFF,
):
    """Save slices (and volumes) for every series of ``batch``; returns manifest, errors and
    volumes tables.
    """
    series = pq.read_table(series_path, filters=[("batch", "=", batch)]).to_pylist()
    keys = [s["series_key"] for s in series]
    rows = read_instances(instances_path, keys) if keys else []
    by_key: dict[str, list[dict]] = {}
    for row in rows:
        by_key.setdefault(row["series_key"], []).append(row)
    manifest, errors, volume_rows = [], [], []
    cache_dir = results / "_work" / "cache" / "save_slices"
    reused = 0
    for record in sorted(series, key=lambda s: s["series_key"]):
        key, inputs = record["series_key"], by_key.get(record["series_key"], [])
        sources = series_cache.stamps(dicom_io.study_file(study, r["path"]) for r in inputs)
        facts = {k: v for k, v in record.items() if k != "batch"}  # the batch may renumber
        expected = series_cache.fingerprint(facts, inputs, sources, selection, volume_settings)
        hit = series_cache.load(cache_dir, key, expected)
        outputs = (
            [r["npy_path"] for r in hit["m"]] + [r["path"] for r in hit.get("v", [])] if hit else []
        )
        arrays = series_cache.stamps(results / p for p in outputs) if hit else None
        if arrays is not None:  # every array still there (a series may have none)
            m, e, v = hit["m"], hit["e"], hit.get("v", [])
            reused += 1
        else:
            m, e, v = save_series(study, results, record, inputs, selection, volume_settings)
            series_cache.store(cache_dir, key, expected, {"m": m, "e": e, "v": v})
        keep = {Path(row["npy_path"]).name for row in m}
        table_schema.remove_stale(results / "slices" / key, keep, ".npy")
        volumes.remove_stale(results, key, {row["path"] for row in v})
        manifest += m
        errors += e
        volume_rows += v
    log.info("batch %d: %d series, %d unchanged since the last run", batch, len(series), reused)
    return (
        table_schema.table_from_rows(manifest, MANIFEST_SCHEMA),
        table_schema.table_from_rows(errors, table_schema.ERRORS_SCHEMA),
        table_schema.table_from_rows(volume_rows, table_schema.VOLUMES_SCHEMA),
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, type=Path)
    parser.add_argument("--results", required=True, type=Path, help="results folder")
    parser.add_argument("--instances", required=True)
    parser.add_argument("--series", required=True)
    parser.add_argument("--batch", required=True, type=int)
    parser.add_argument("--count", type=int, default=9, help="slices per plane, evenly spaced")
    parser.add_argument(
        "--fractions", type=float, nargs="*", default=[], help="slice positions in 0..1 instead"
    )
    parser.add_argument(
        "--planes",
        nargs="+",
        default=["acquired"],
        choices=("acquired", *ANATOMICAL_PLANES),
        help="acquired plane and/or reformatted anatomical planes (volumes only)",
    )
    parser.add_argument(
        "--volumes-format",
        nargs="*",
        default=[],
        choices=volumes.FORMATS,
        help="write each volume as NIfTI and/or .npy under volumes/ (none: volumes off)",
    )
    parser.add_argument(
        "--volumes-modality", nargs="*", default=[], help="only volumes of these modalities"
    )
    parser.add_argument("--manifest", required=True)
    parser.add_argument("--errors", required=True)
    parser.add_argument(
        "--volumes", help="this batch's volumes table (written, empty when volumes are off)"
    )
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Save one batch's slices and write its manifest and error rows."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    manifest, errors, volume_table = save_batch(
        args.study,
        args.results,
        args.instances,
        args.series,
        args.batch,
        Selection(args.count, tuple(args.fractions), tuple(args.planes)),
        volumes.VolumeSettings(
            tuple(dict.fromkeys(args.volumes_format)), tuple(sorted(set(args.volumes_modality)))
        ),
    )
    table_schema.write_table(manifest, args.manifest)
    table_schema.write_table(errors, args.errors)
    if args.volumes:
        table_schema.write_table(volume_table, args.volumes)
    log.info(
        "batch %d: %d slices saved, %d volume file(s), %d error or warning rows",
        args.batch,
        manifest.num_rows,
        volume_table.num_rows,
        errors.num_rows,
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
