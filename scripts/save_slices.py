"""Save selected slices of each series in one batch as .npy arrays, in true spatial order.

Frames are sorted along the slice normal; only the selected frames are decoded.
Monochrome slices hold modality values (HU for CT) as float32; colour slices hold
uint8 RGB. A frame that cannot be decoded becomes an ``undecodable_pixels`` row.
SEG series save segment masks (and the matching source slices, for overlays): see
:func:`save_segmentation`; tiled whole-slide levels are saved assembled: see
:func:`save_slide`.
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
import privacy
import rendering
import segmentation
import series_cache
import slide
import table_schema
import volumes

log = logging.getLogger("save_slices")

MANIFEST_SCHEMA = table_schema.MANIFEST_SCHEMA

INSTANCE_COLUMNS = table_schema.BATCH_INSTANCE_COLUMNS


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


def read_header(study: Path, path: str) -> Dataset:
    """A whole instance (pixels included) for decoding, by its study-relative path."""
    source = dicom_io.study_file(study, path)
    return fast_header.read_dataset_fast(source) or dicom_io.read_for_pixels(source)


def _source_row(sources: list[dict], uid: str | None, xyz) -> dict | None:
    """The source instance a SEG frame was drawn on: by SOPInstanceUID, else by position.

    Position: a single-frame source whose ImagePositionPatient is within 0.01 mm of the
    SEG frame's (same frame of reference is implied by the reference to its series).
    """
    if uid:
        for row in sources:
            if row.get("SOPInstanceUID") == uid:
                return row
    if xyz is None:
        return None
    for row in sorted(sources, key=lambda r: r["path"]):
        ipp = row.get("ImagePositionPatient")
        single = (row.get("NumberOfFrames") or 1) == 1 and ipp is not None and len(ipp) == 3
        if single and np.linalg.norm(np.asarray(ipp, float) - np.asarray(xyz, float)) < 0.01:
            return row
    return None


def _source_slice(decoder: FrameDecoder, row: dict, frame: int, shape) -> tuple | None:
    """``(values, window, frame)`` of a source frame with the mask's ``shape``, else None."""
    n_frames = int(row.get("NumberOfFrames") or 1)
    if frame >= n_frames:
        return None
    try:
        values, _, _, ds = decoder.decode(Frame(row["path"], frame, n_frames, None, None))
    except Exception as exc:  # noqa: BLE001 - no overlay, the mask is still drawn
        log.warning("source image of a SEG frame not decoded: %s", dicom_io.short_message(exc))
        return None
    if values.shape[:2] != tuple(shape):
        return None
    return values, rendering.header_window(ds, frame), frame


def level_tiles(study: Path, path: str, ds: Dataset, frames: Sequence[int]):
    """Values of ``frames`` (sorted) of a tiled level, decoded one at a time from the file.

    pydicom's ``iter_pixels`` reads one frame's bytes at a time, so neither the file
    nor the level's pixels are ever in memory whole; ``ds`` (its header) gives the
    modality rescale and the colour handling of :func:`slice_values`.
    """
    from pydicom.pixels import iter_pixels

    source = dicom_io.study_file(study, path)
    for frame, arr in zip(frames, iter_pixels(source, indices=frames), strict=True):
        yield slice_values(arr, ds, frame)[0]


def _slide_source(study: Path, sources: list[dict], uid: str | None, seg: Dataset, stride: int):
    """The tiled source (slide level) of a tiled SEG, assembled at ``stride``, or None.

    The source named by ``uid``, else the first source level with the SEG's total matrix.
    """
    import pydicom

    ordered = sorted(sources, key=lambda r: (r.get("SOPInstanceUID") != uid, r["path"]))
    for row in ordered:
        try:
            source = dicom_io.study_file(study, row["path"])
            ds = pydicom.dcmread(source, stop_before_pixels=True, force=True)
            if not slide.is_tiled(ds) or slide.total_matrix(ds) != slide.total_matrix(seg):
                continue
            frames = slide.first_plane_frames(ds)
            tiles = level_tiles(study, row["path"], ds, frames)
            values, _ = slide.assemble_frames(ds, frames, tiles, stride=stride)
        except Exception as exc:  # noqa: BLE001 - no overlay, the mask is still drawn
            log.warning("source slide of a SEG not assembled: %s", dicom_io.short_message(exc))
            continue
        return values, rendering.header_window(ds, 0), row
    return None


def save_segmentation(
    study: Path,
    results: Path,
    series: dict,
    instances: list[dict],
    sources: list[dict],
    selection: Selection,
) -> tuple[list[dict], list[dict]]:
    """Save selected segment masks of a SEG stack; returns manifest and error rows.

    A plain SEG saves one mask per selected frame (frames in spatial order, each in its
    own segment's colour); a tiled SEG saves one assembled mask per selected segment
    (plane ``slide``). Each row names its segment and the source image it was drawn on;
    when that image is among ``sources`` (the batch work list's ``seg_source`` rows) and
    has the mask's size, its values are saved beside the mask (``source_npy_path``) for
    the thumbnail's overlay, and its header window in ``window_center``/``window_width``.
    """
    key = series["series_key"]
    frames = stack_frames(instances, series.get("ImageOrientationPatient"))
    headers: dict[str, Dataset] = {}
    errors: list[dict] = []
    units: dict[tuple, list[Frame]] = {}
    for frame in frames:
        if frame.path not in headers:
            try:
                headers[frame.path] = read_header(study, frame.path)
            except Exception as exc:  # noqa: BLE001
                errors.append(_undecodable(frame.path, exc))
                headers[frame.path] = None
        ds = headers[frame.path]
        if ds is None:
            continue
        if slide.is_tiled(ds):  # one unit per segment: its tiles make one mask
            segment = segmentation.frame_segment(ds, frame.frame)
            units.setdefault((segment or 0, frame.path), []).append(frame)
        else:
            units[(len(units), frame.path, frame.frame)] = [frame]
    ordered = sorted(units) if any(len(k) == 2 for k in units) else list(units)
    plane = "slide" if ordered and len(ordered[0]) == 2 else series.get("orientation") or "acquired"
    manifest = []
    source_decoder = FrameDecoder(study)
    slide_sources: dict = {}
    for index in select_indices(len(ordered), selection.count, selection.fractions):
        unit = units[ordered[index]]
        first = unit[0]
        ds = headers[first.path]

        def mask_of(f, ds=ds, first=first):
            stored = decode_frame(ds, Frame(first.path, f, first.n_frames, None, None))
            return segmentation.mask_values(stored, ds)

        try:
            if plane == "slide":
                stride = slide.stride_for(slide.total_matrix(ds), 4)  # float mask or RGB source
                numbers = [f.frame for f in unit]
                masks = (mask_of(f) for f in numbers)
                mask, _ = slide.assemble_frames(ds, numbers, masks, stride=stride)
            else:
                stride, mask = 1, mask_of(first.frame)
        except Exception as exc:  # noqa: BLE001
            if not any(e["path"] == first.path for e in errors):
                errors.append(_undecodable(first.path, exc))
            continue
        number = segmentation.frame_segment(ds, first.frame)
        segment = segmentation.segments(ds).get(number)
        uid, source_frame = segmentation.frame_source(ds, first.frame)
        overlay, source_npy = None, None
        if plane == "slide":
            if first.path not in slide_sources:
                slide_sources[first.path] = _slide_source(study, sources, uid, ds, stride)
            found = slide_sources[first.path]
            if found is not None and found[0].shape[:2] == mask.shape:
                overlay = (found[0], found[1], None)
                uid = uid or found[2].get("SOPInstanceUID")
        else:
            row = _source_row(sources, uid, first.xyz)
            if row is not None:
                uid = row.get("SOPInstanceUID") or uid
                overlay = _source_slice(source_decoder, row, source_frame or 0, mask.shape)
                source_frame = overlay[2] if overlay is not None else source_frame
        npy = f"slices/{key}/{plane}_{index:04d}.npy"
        save_npy(mask, results / npy)
        if overlay is not None:
            source_npy = f"slices/{key}/{plane}_{index:04d}_source.npy"
            save_npy(overlay[0], results / source_npy)
        spacing = geometry.pixel_spacing(ds)
        window = overlay[1] if overlay is not None else None
        manifest.append(
            _record(
                key,
                plane,
                index,
                len(ordered),
                npy,
                mask,
                source_path=first.path,
                frame=first.frame if plane != "slide" else None,
                position_mm=first.position,
                pixel_spacing_mm=[v * stride for v in spacing] if spacing else None,
                value_units=segmentation.value_units(ds),
                photometric=str(ds.get("PhotometricInterpretation") or "MONOCHROME2").strip(),
                window_center=window[0] if window else None,
                window_width=window[1] if window else None,
                voi_lut_function=None,
                voi_lut_source=None,
                segment_number=number,
                # a label repeating the patient's name or ID is left out (privacy)
                segment_label=privacy.blank_identifying(
                    segment.label if segment else None, series.get("patient_identifiers") or ()
                ),
                segment_rgb=list(segment.rgb if segment else segmentation.palette_colour(1)),
                source_sop_instance_uid=uid,
                source_frame=source_frame if uid else None,
                source_npy_path=source_npy,
            )
        )
    return manifest, errors


def save_slide(
    study: Path, results: Path, series: dict, instances: list[dict]
) -> tuple[list[dict], list[dict], list[dict]]:
    """Save the lowest-resolution tiled level of a whole-slide stack, assembled.

    Returns manifest rows (one, plane ``slide``), error rows, and the instances left for
    the ordinary path: everything that is not a tiled level (LABEL, OVERVIEW, untiled
    images). Higher-resolution levels are not decoded. A level larger than
    :data:`slide.MEMORY_BUDGET` is assembled at a stride, with a ``slide_downsampled``
    warning row.
    """
    import pydicom

    headers, rest = [], []
    for row in sorted(instances, key=lambda r: r["path"]):
        try:
            ds = pydicom.dcmread(
                dicom_io.study_file(study, row["path"]), stop_before_pixels=True, force=True
            )
        except Exception:  # noqa: BLE001 - the ordinary path reports it
            rest.append(row)
            continue
        if slide.is_level(ds):
            headers.append((row, ds))
        else:
            rest.append(row)
    chosen = slide.lowest_level([ds for _, ds in headers])
    if chosen is None:
        return [], [], instances
    row, ds = headers[chosen]
    key, path = series["series_key"], row["path"]
    try:
        frames = slide.first_plane_frames(ds)
        tiles = level_tiles(study, path, ds, frames)
        values, stride = slide.assemble_frames(ds, frames, tiles, slide.MEMORY_BUDGET)
    except Exception as exc:  # noqa: BLE001
        return [], [_undecodable(path, exc)], rest
    errors = []
    if stride > 1:
        shape = slide.total_matrix(ds)
        errors.append(
            {
                "path": path,
                "reason": "slide_downsampled",
                "detail": f"level of {shape[0]} x {shape[1]} pixels saved as {values.shape[0]} x "
                f"{values.shape[1]} (1 pixel in {stride} along rows and columns) to stay within "
                f"{slide.MEMORY_BUDGET / 2**20:g} MiB",
                "severity": "warning",
                "stage": "save_slices",
            }
        )
    npy = f"slices/{key}/slide_0000.npy"
    save_npy(values, results / npy)
    spacing = geometry.pixel_spacing(ds)
    window = rendering.header_window(ds, 0)
    colour = values.ndim == 3
    record = _record(
        key,
        "slide",
        0,
        1,
        npy,
        values,
        source_path=path,
        frame=None,
        position_mm=None,
        pixel_spacing_mm=[v * stride for v in spacing] if spacing else None,
        value_units="RGB" if colour else rendering.value_units(ds),
        photometric="RGB" if colour else str(ds.get("PhotometricInterpretation", "")).strip(),
        window_center=window[0] if window else None,
        window_width=window[1] if window else None,
        **voi_facts(ds, None),
    )
    return [record], errors, rest


def save_series(
    study: Path,
    results: Path,
    series: dict,
    instances: list[dict],
    selection: Selection,
    volume_settings: volumes.VolumeSettings = volumes.VOLUMES_OFF,
    sources: Sequence[dict] = (),
) -> tuple[list[dict], list[dict], list[dict]]:
    """Save the selected slices (and the volume) of one series; returns manifest rows,
    error rows and ``volumes.parquet`` rows.

    Only the chosen frames are decoded, unless a reformatted plane or a volume is asked
    for: then the whole stack is decoded once and the slices are taken from it. A SEG
    saves its masks (``sources``: the instances it was drawn on, for overlays); a
    whole-slide stack saves its lowest tiled level assembled, then its other images.
    """
    if series.get("Modality") == "SEG":
        manifest, errors = save_segmentation(
            study, results, series, instances, list(sources), selection
        )
        return manifest, errors, []
    slide_rows, slide_errors = [], []
    if series.get("Modality") == "SM":
        slide_rows, slide_errors, instances = save_slide(study, results, series, instances)
        if not instances:
            return slide_rows, slide_errors, []
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
    return slide_rows + manifest, slide_errors + errors, volume_rows


def saved_arrays(row: dict) -> list[str]:
    """The .npy files of one manifest row: the slice, and a SEG mask's source slice."""
    return [p for p in (row["npy_path"], row.get("source_npy_path")) if p]


def read_instances(path, keys: Sequence[str] | None = None) -> list[dict]:
    """Work-list rows of the series ``keys`` (all when None), with a SEG's source images.
    ``instances.parquet`` serves too (it has no frame-group columns: each instance is
    taken whole).
    """
    available = set(pq.read_schema(path).names)
    wanted = [*INSTANCE_COLUMNS, *table_schema.SEG_SOURCE_COLUMNS]  # the last: SEG batches
    columns = [c for c in wanted if c in available]
    rows = table_schema.read_table(path, columns).to_pylist()
    if keys is None:
        return rows
    keys = set(keys)
    return [row for row in rows if row["series_key"] in keys]


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
    series = [s for s in table_schema.read_table(series_path).to_pylist() if s["batch"] == batch]
    keys = [s["series_key"] for s in series]
    rows = read_instances(instances_path, keys) if keys else []
    by_key: dict[str, list[dict]] = {}
    seg_sources: dict[str, list[dict]] = {}
    for row in rows:
        target = seg_sources if row.get("seg_source") else by_key
        target.setdefault(row["series_key"], []).append(row)
    manifest, errors, volume_rows = [], [], []
    cache_dir = results / "_work" / "cache" / "save_slices"
    reused = 0
    for record in sorted(series, key=lambda s: s["series_key"]):
        key, inputs = record["series_key"], by_key.get(record["series_key"], [])
        drawn_on = seg_sources.get(key, [])  # a SEG's source images
        sources = series_cache.stamps(
            dicom_io.study_file(study, r["path"]) for r in inputs + drawn_on
        )
        facts = {k: v for k, v in record.items() if k != "batch"}  # the batch may renumber
        expected = series_cache.fingerprint(
            facts, inputs, sources, selection, volume_settings, *([drawn_on] if drawn_on else [])
        )
        hit = series_cache.load(cache_dir, key, expected)
        outputs = (
            [p for r in hit["m"] for p in saved_arrays(r)] + [r["path"] for r in hit.get("v", [])]
            if hit
            else []
        )
        arrays = series_cache.stamps(results / p for p in outputs) if hit else None
        if arrays is not None:  # every array still there (a series may have none)
            m, e, v = hit["m"], hit["e"], hit.get("v", [])
            reused += 1
        else:
            m, e, v = save_series(
                study, results, record, inputs, selection, volume_settings, drawn_on
            )
            series_cache.store(cache_dir, key, expected, {"m": m, "e": e, "v": v})
        keep = {Path(p).name for row in m for p in saved_arrays(row)}
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
