"""How one instance holds many slices: enhanced multi-frame dimensions and Siemens mosaics.

An enhanced object may hold several volumes (echoes, time points, b-values, segments);
its frames are split into groups by the values that tell volumes apart, the way classic
series are split by EchoNumbers or TemporalPositionIdentifier. A Siemens mosaic tiles a
whole volume into one image; its slices and their positions come from the CSA header.
"""

from __future__ import annotations

import json
import math
import warnings
from dataclasses import dataclass

import numpy as np

import geometry

SPATIAL_DIMENSIONS = {
    0x00209057,  # InStackPositionNumber
    0x00200032,  # ImagePositionPatient
    0x0048021E,  # ColumnPositionInTotalImagePixelMatrix
    0x0048021F,  # RowPositionInTotalImagePixelMatrix
    0x0040072A,  # XOffsetInSlideCoordinateSystem
    0x0040073A,  # YOffsetInSlideCoordinateSystem
    0x0040074A,  # ZOffsetInSlideCoordinateSystem
}
"""Dimension pointers that say where a frame lies, not which volume it belongs to."""


def _item(sequence, keyword: str):
    """First item of ``sequence``'s ``keyword`` sub-sequence, or None."""
    if not sequence:
        return None
    inner = sequence.get(keyword)
    return inner[0] if inner else None


def _number(value, digits: int = 4):
    try:
        return round(float(value), digits)
    except (TypeError, ValueError):
        return None


def _frame_facts(frame, shared) -> tuple:
    """Values of one frame that tell volumes apart, from its or the shared functional groups."""

    def group(keyword: str):
        return _item(frame, keyword) or _item(shared, keyword)

    content = group("FrameContentSequence")
    diffusion = group("MRDiffusionSequence")
    echo = group("MREchoSequence")
    segment = group("SegmentIdentificationSequence")
    direction = _item(diffusion, "DiffusionGradientDirectionSequence") if diffusion else None
    vector = direction.get("DiffusionGradientOrientation") if direction else None
    return (
        str(content.get("StackID") or "") if content else "",
        content.get("TemporalPositionIndex") if content else None,
        # rounded so that per-slice jitter of a nominal value does not split a volume:
        # b-values to 1 s/mm², directions to 0.001, echo times to 0.01 ms
        _number(diffusion.get("DiffusionBValue"), 0) if diffusion else None,
        tuple(_number(v, 3) for v in vector) if vector else None,
        _number(echo.get("EffectiveEchoTime"), 2) if echo else None,
        segment.get("ReferencedSegmentNumber") if segment else None,
    )


def _volume_dimensions(ds) -> list[int]:
    """Indices into DimensionIndexValues of the dimensions that are not spatial."""
    wanted = []
    for i, dimension in enumerate(ds.get("DimensionIndexSequence") or []):
        pointer = dimension.get("DimensionIndexPointer")
        if pointer is not None and int(pointer) not in SPATIAL_DIMENSIONS:
            wanted.append(i)
    return wanted


def frame_keys(ds) -> list[tuple] | None:
    """Per frame, the key of the volume it belongs to; None when the header has no
    per-frame functional groups.

    The key is the frame's non-spatial DimensionIndexValues (the object's own order of
    volumes) followed by stack ID, temporal position, b-value, gradient direction,
    effective echo time and segment number.
    """
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if not per_frame:
        return None
    shared_items = ds.get("SharedFunctionalGroupsSequence")
    shared = shared_items[0] if shared_items else None
    dimensions = _volume_dimensions(ds)
    keys = []
    for frame in per_frame:
        content = _item(frame, "FrameContentSequence")
        values = content.get("DimensionIndexValues") if content else None
        values = [] if values is None else list(values) if not isinstance(values, int) else [values]
        index = tuple(int(values[i]) if i < len(values) else None for i in dimensions)
        keys.append(index + _frame_facts(frame, shared))
    return keys


def group_frames(keys: list[tuple]) -> list[tuple[tuple, list[int]]]:
    """Frame indices grouped by key, groups in key order (numbers compared as numbers)."""
    groups: dict[tuple, list[int]] = {}
    for i, key in enumerate(keys):
        groups.setdefault(key, []).append(i)
    return sorted(groups.items(), key=lambda item: sort_key(item[0]))


def sort_key(value) -> tuple:
    """A total order on keys mixing None, numbers, strings and tuples."""
    if value is None:
        return (0,)
    if isinstance(value, (bool, int, float)):
        return (1, float(value))
    if isinstance(value, (tuple, list)):
        return (2, tuple(sort_key(v) for v in value))
    return (3, str(value))


def key_text(key: tuple) -> str:
    """A frame group's key as text that sorts like :func:`sort_key` for the usual values."""
    parts = []
    for value in key:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            parts.append(f"{float(value):+020.6f}")
        else:
            parts.append(repr(value))
    return "|".join(parts)


@dataclass(frozen=True)
class Mosaic:
    """A Siemens mosaic: ``n_tiles`` slices of ``tile_rows`` × ``tile_columns`` pixels."""

    n_tiles: int
    tile_rows: int
    tile_columns: int
    positions: np.ndarray
    """(n_tiles, 3) ImagePositionPatient of each slice, in tile order."""


CSA_IMAGE_HEADER = "00291010"
"""Siemens CSA Image Header Info (private group 0029, creator SIEMENS CSA HEADER)."""


MOSAIC_GEOMETRY_TAGS = frozenset(
    {
        "00080008",  # ImageType
        "00180050",  # SliceThickness
        "00180088",  # SpacingBetweenSlices
        "00181164",  # ImagerPixelSpacing
        "00186011",  # SequenceOfUltrasoundRegions
        "00200032",  # ImagePositionPatient
        "00200037",  # ImageOrientationPatient
        "00280008",  # NumberOfFrames
        "00280010",  # Rows
        "00280011",  # Columns
        "00280030",  # PixelSpacing
        "3004000C",  # GridFrameOffsetVector
        "52009229",  # SharedFunctionalGroupsSequence
        "52009230",  # PerFrameFunctionalGroupsSequence
    }
)
"""The standard elements a single-frame image's positions and mosaic layout are computed
from (:func:`mosaic_layout`, ``geometry.frame_positions``); with private group 0029 (the
CSA headers and their creators) they are all of the header that is needed."""


def mosaic_dataset(header: dict):
    """A pydicom Dataset of the elements of a DICOM JSON header (parsed) that a mosaic's
    layout needs. Building it costs about 1.4 ms against 8.5 ms for the whole Siemens
    header, which the merge did for every mosaic.
    """
    from pydicom.dataset import Dataset

    needed = {t: v for t, v in header.items() if t in MOSAIC_GEOMETRY_TAGS or t[:4] == "0029"}
    return Dataset.from_json(needed)


def _csa_bytes(ds) -> bytes | None:
    """Raw bytes of the CSA image header, found by its private creator."""
    for block in range(0x10, 0x100):
        creator = ds.get((0x0029, block))
        if creator is None:
            break
        if str(creator.value).strip() == "SIEMENS CSA HEADER":
            element = ds.get((0x0029, (block << 8) | 0x10))
            value = element.value if element is not None else None
            return bytes(value) if value else None
    return None


def mosaic_csa(ds) -> dict | None:
    """The parsed CSA image header of a MOSAIC image, else None (read once per header)."""
    if not is_mosaic(ds.get("ImageType")):
        return None
    raw = _csa_bytes(ds)
    if raw is None:
        return None
    with warnings.catch_warnings():  # nibabel warns that its DICOM readers are experimental
        warnings.simplefilter("ignore")
        from nibabel.nicom import csareader  # about 0.5 s to import: only for mosaics
    try:
        return csareader.read(raw)
    except Exception:  # noqa: BLE001 - a broken CSA header: not a usable mosaic
        return None


def mosaic_tiles(csa: dict | None) -> int | None:
    """NumberOfImagesInMosaic of a parsed CSA header (:func:`mosaic_csa`), else None."""
    from nibabel.nicom import csareader

    try:
        n = csareader.get_n_mosaic(csa) if csa else None
    except Exception:  # noqa: BLE001 - a malformed entry: not a usable mosaic
        return None
    return int(n) if n and int(n) > 1 else None


def _slice_normal(csa: dict, orientation) -> np.ndarray:
    """CSA SliceNormalVector (the order of the tiles), else the cross product."""
    from nibabel.nicom import csareader

    try:
        normal = csareader.get_slice_normal(csa)
    except Exception:  # noqa: BLE001
        normal = None
    if normal is not None and np.linalg.norm(normal) > 0.5:
        return np.asarray(normal, dtype=float) / np.linalg.norm(normal)
    return geometry.slice_normal(orientation)


def mosaic_layout(ds) -> Mosaic | None:
    """Tiles and slice positions of a Siemens mosaic, or None when ``ds`` is not one.

    ImagePositionPatient of a mosaic is the corner of the whole tiled image; the first
    slice's position moves it by half the difference of the mosaic and tile sizes (as
    nibabel and dcm2niix do); further slices follow along the CSA slice normal at
    SpacingBetweenSlices (else SliceThickness).
    """
    csa = mosaic_csa(ds)
    n = mosaic_tiles(csa)
    rows, columns = int(ds.get("Rows") or 0), int(ds.get("Columns") or 0)
    if n is None or not rows or not columns:
        return None
    per_side = math.ceil(math.sqrt(n))
    if rows % per_side or columns % per_side:
        return None
    tile_rows, tile_columns = rows // per_side, columns // per_side
    orientation = geometry.frame_orientation(ds)
    position = ds.get("ImagePositionPatient")
    spacing = geometry.pixel_spacing(ds)
    step = _number(ds.get("SpacingBetweenSlices")) or _number(ds.get("SliceThickness"))
    if orientation is None or position is None or len(position) != 3 or not spacing or not step:
        positions = np.full((n, 3), np.nan)
        return Mosaic(n, tile_rows, tile_columns, positions)
    iop = np.asarray(orientation, dtype=float).reshape(2, 3)
    shift = np.array([(rows - tile_rows) / 2, (columns - tile_columns) / 2])
    # a row index moves along the column direction cosines and a column index along the row's
    corner = np.asarray([float(v) for v in position]) + (
        shift[0] * spacing[0] * iop[1] + shift[1] * spacing[1] * iop[0]
    )
    normal = _slice_normal(csa, orientation)
    positions = corner + np.outer(np.arange(n) * abs(step), normal)
    return Mosaic(n, tile_rows, tile_columns, positions)


def is_mosaic(image_type) -> bool:
    """Whether an ImageType value (a list, or None) names a MOSAIC image."""
    return "MOSAIC" in [str(v).upper() for v in image_type or ()]


def mosaic_columns(row: dict) -> dict:
    """The shard columns of an instance row (``table_schema.MOSAIC_FIELDS``): its mosaic
    layout, from its ``header_json``, as the merge would find it; empty (nulls) when the row
    is no single-frame mosaic or when the merge must look at the header itself (a layout
    that fails, or a row without its own orientation or pixel spacing).
    """
    if (row.get("NumberOfFrames") or 1) != 1 or not is_mosaic(row.get("ImageType")):
        return {}
    if row.get("ImageOrientationPatient") is None or row.get("PixelSpacing") is None:
        return {}
    try:
        ds = mosaic_dataset(json.loads(row["header_json"]))
        geometry.frame_positions(ds)  # the merge's path: if this fails, so does its layout
        mosaic = mosaic_layout(ds)
    except Exception:  # noqa: BLE001 - the merge then tries the header and records why
        return {}
    if mosaic is None:
        return {}
    finite = bool(np.isfinite(mosaic.positions).all())
    return {
        "mosaic_tiles": mosaic.n_tiles,
        "mosaic_tile_rows": mosaic.tile_rows,
        "mosaic_tile_columns": mosaic.tile_columns,
        "mosaic_positions": mosaic.positions.tolist() if finite else None,
    }


def cut_tile(image: np.ndarray, n_tiles: int, tile: int) -> np.ndarray:
    """Tile ``tile`` (0-based, row-major) of a mosaic image holding ``n_tiles`` slices."""
    per_side = math.ceil(math.sqrt(n_tiles))
    rows, columns = image.shape[0] // per_side, image.shape[1] // per_side
    r, c = divmod(tile, per_side)
    return image[r * rows : (r + 1) * rows, c * columns : (c + 1) * columns]
