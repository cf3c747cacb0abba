"""Tiled whole-slide images (VL Whole Slide Microscopy, and tiled SEG): the assembled plane.

A tiled object stores one large image, its *total pixel matrix*
(TotalPixelMatrixRows × TotalPixelMatrixColumns), as frames of Rows × Columns tiles. In
TILED_FULL objects the tiles are in row-major order and fill the matrix (PS3.3
C.7.6.17.3); TILED_SPARSE objects give each frame's top-left corner in
PlanePositionSlideSequence (RowPositionInTotalImagePixelMatrix,
ColumnPositionInTotalImagePixelMatrix, 1-based). A pyramid is several such objects of one
series, one per resolution (ImageType VOLUME); LABEL and OVERVIEW images are ordinary
single-frame images.

A viewer shows the slide, not its tiles: here the tiles of one level are pasted into
one array. :data:`MEMORY_BUDGET` bounds that array; a larger level is assembled at a
stride (every n-th pixel of every n-th row), so a level of any size costs at most the
budget.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence

import numpy as np

MEMORY_BUDGET = 64 * 2**20
"""Largest assembled array in bytes (64 MiB: about 4,700 × 4,700 RGB pixels). A level
whose full-resolution array would exceed it is assembled at a stride; see
:func:`stride_for`."""

LEVEL_IMAGE_TYPES = ("VOLUME", "THUMBNAIL")
"""Third value of ImageType of the pyramid's levels (LABEL and OVERVIEW are not levels)."""


def _value(item, keyword: str):
    """An element's value from a pydicom Dataset or a plain dict (tests, JSON-less rows)."""
    if item is None:
        return None
    return item.get(keyword) if hasattr(item, "get") else None


def total_matrix(ds) -> tuple[int, int] | None:
    """``(TotalPixelMatrixRows, TotalPixelMatrixColumns)``, or None when the object is not tiled."""
    rows, columns = _value(ds, "TotalPixelMatrixRows"), _value(ds, "TotalPixelMatrixColumns")
    if not rows or not columns:
        return None
    return int(rows), int(columns)


def _slide_position(ds, frame: int) -> tuple[int, int] | None:
    """0-based ``(row, column)`` of a frame's top-left pixel from PlanePositionSlideSequence."""
    per_frame = _value(ds, "PerFrameFunctionalGroupsSequence")
    item = None
    if per_frame and frame < len(per_frame) and "PlanePositionSlideSequence" in per_frame[frame]:
        item = per_frame[frame].PlanePositionSlideSequence[0]
    if item is None:
        return None
    row = item.get("RowPositionInTotalImagePixelMatrix")
    column = item.get("ColumnPositionInTotalImagePixelMatrix")
    if row is None or column is None:
        return None
    return int(row) - 1, int(column) - 1


def is_tiled(ds) -> bool:
    """Whether frames are tiles of a total pixel matrix (TILED_FULL, or per-frame positions)."""
    if total_matrix(ds) is None:
        return False
    organisation = str(_value(ds, "DimensionOrganizationType") or "").strip()
    if organisation in ("TILED_FULL", "TILED_SPARSE"):
        return True
    return _slide_position(ds, 0) is not None


def tiles_per_plane(ds) -> int:
    """Tiles that fill one plane of a TILED_FULL object: ⌈rows/Rows⌉ × ⌈columns/Columns⌉."""
    rows, columns = total_matrix(ds)
    return math.ceil(rows / int(ds.Rows)) * math.ceil(columns / int(ds.Columns))


def tile_positions(ds) -> list[tuple[int, int]]:
    """0-based ``(row, column)`` of the top-left pixel of every frame, in frame order.

    TILED_FULL objects without per-frame positions repeat the row-major tile order for
    every further plane (focal plane, optical path, segment); per-frame
    PlanePositionSlideSequence wins wherever it is present.
    """
    n_frames = int(_value(ds, "NumberOfFrames") or 1)
    rows, columns = total_matrix(ds)
    tile_rows, tile_columns = int(ds.Rows), int(ds.Columns)
    across = math.ceil(columns / tile_columns)
    per_plane = tiles_per_plane(ds)
    out = []
    for frame in range(n_frames):
        given = _slide_position(ds, frame)
        if given is None:
            within = frame % per_plane
            given = (within // across * tile_rows, within % across * tile_columns)
        out.append(given)
    return out


def stride_for(shape: tuple[int, int], bytes_per_pixel: int, budget: int = MEMORY_BUDGET) -> int:
    """Smallest stride n ≥ 1 for which the ``shape`` matrix taken at every n-th pixel fits.

    Parameters
    ----------
    shape : tuple of int
        ``(rows, columns)`` of the total pixel matrix.
    bytes_per_pixel : int
        Samples per pixel × bytes per sample of the assembled array (3 for uint8 RGB).
    budget : int
        Bytes the assembled array may take.
    """
    if bytes_per_pixel < 1 or budget < bytes_per_pixel:
        raise ValueError(
            f"Argument 'budget' must hold one pixel of {bytes_per_pixel} bytes, got {budget}"
        )
    rows, columns = shape
    stride = max(1, math.floor(math.sqrt(rows * columns * bytes_per_pixel / budget)))
    while math.ceil(rows / stride) * math.ceil(columns / stride) * bytes_per_pixel > budget:
        stride += 1
    return stride


def assembled_shape(shape: tuple[int, int], stride: int) -> tuple[int, int]:
    """``(rows, columns)`` of a ``shape`` matrix taken at every ``stride``-th pixel."""
    return math.ceil(shape[0] / stride), math.ceil(shape[1] / stride)


def assemble(
    tiles: Iterable[tuple[int, int, np.ndarray]],
    shape: tuple[int, int],
    stride: int = 1,
    dtype=np.uint8,
    samples: int = 1,
) -> np.ndarray:
    """Paste tiles into a new array of the total pixel matrix, every ``stride``-th pixel.

    Parameters
    ----------
    tiles : iterable of (int, int, ndarray)
        ``(row, column, tile)``: 0-based top-left pixel of the tile in the total matrix and
        the tile, ``(Rows, Columns)`` or ``(Rows, Columns, samples)``. Tiles reaching past
        the matrix (the padded right and bottom tiles) are cut; a later tile overwrites
        an earlier one where they overlap.
    shape : tuple of int
        ``(TotalPixelMatrixRows, TotalPixelMatrixColumns)``.
    stride : int
        Keep matrix pixels whose row and column are multiples of ``stride``.
    dtype, samples
        Type and samples per pixel of the result; pixels no tile covers stay 0 (black).

    Returns
    -------
    (ceil(rows / stride), ceil(columns / stride)[, samples]) ndarray
    """
    if stride < 1:
        raise ValueError(f"Argument 'stride' must be >= 1, got {stride}")
    out_rows, out_columns = assembled_shape(shape, stride)
    out_shape = (out_rows, out_columns) if samples == 1 else (out_rows, out_columns, samples)
    out = np.zeros(out_shape, dtype=dtype)
    for top, left, tile in tiles:
        if tile.ndim not in (2, 3):
            raise ValueError(f"Each tile must be 2-D or 3-D, got shape {tile.shape}")
        first_row, first_column = (-top) % stride, (-left) % stride
        part = tile[first_row::stride, first_column::stride]
        y, x = (top + first_row) // stride, (left + first_column) // stride
        if y < 0 or x < 0 or y >= out_rows or x >= out_columns:
            continue
        part = part[: out_rows - y, : out_columns - x]
        out[y : y + part.shape[0], x : x + part.shape[1]] = part
    return out


def level_area(ds) -> int:
    """Pixels in a level's total matrix (0 when it has none)."""
    shape = total_matrix(ds)
    return shape[0] * shape[1] if shape else 0


def is_level(ds) -> bool:
    """Whether an instance is a tiled pyramid level (ImageType VOLUME or THUMBNAIL)."""
    image_type = [str(v).upper() for v in (_value(ds, "ImageType") or ())]
    return is_tiled(ds) and len(image_type) > 2 and image_type[2] in LEVEL_IMAGE_TYPES


def lowest_level(headers: Sequence) -> int | None:
    """Index of the smallest level among ``headers`` (ties: the first), or None."""
    levels = [i for i, ds in enumerate(headers) if is_level(ds)]
    if not levels:
        return None
    return min(levels, key=lambda i: (level_area(headers[i]), i))


def first_plane_frames(ds) -> list[int]:
    """Frames of the first focal plane and optical path (each tile position once, first wins).

    A TILED_FULL object holds ⌈rows/Rows⌉ × ⌈columns/Columns⌉ tiles per plane, planes one
    after the other; a TILED_SPARSE object repeats a position for another plane.
    """
    seen: set[tuple[int, int]] = set()
    frames = []
    for frame, position in enumerate(tile_positions(ds)):
        if position not in seen:
            seen.add(position)
            frames.append(frame)
    return frames


def assemble_frames(
    ds,
    frames: Sequence[int],
    tiles: Iterable[np.ndarray],
    budget: int = MEMORY_BUDGET,
    stride: int | None = None,
) -> tuple[np.ndarray, int]:
    """Paste decoded frames of a tiled object into its total matrix, one tile at a time.

    Parameters
    ----------
    ds : Dataset
        Header of the tiled instance.
    frames : sequence of int
        0-based frames to paste (e.g. :func:`first_plane_frames`, or one segment's frames).
    tiles : iterable of ndarray
        The values of those frames in the same order, (Rows, Columns) or
        (Rows, Columns, 3); a generator keeps one decoded tile in memory at a time.
    budget : int
        Bytes the result may take (:func:`stride_for`).
    stride : int, optional
        Use this stride instead of the budget's (to match another array assembled so).

    Returns
    -------
    array : ndarray
        The assembled matrix, at the returned stride; its dtype is the tiles'.
    stride : int
        1 at full resolution; n when every n-th pixel was kept to stay within ``budget``.
    """
    if not frames:
        raise ValueError("Argument 'frames' must name at least one frame")
    positions = tile_positions(ds)
    shape = total_matrix(ds)
    tiles = iter(tiles)
    first = next(tiles)
    samples = first.shape[2] if first.ndim == 3 else 1
    if stride is None:
        stride = stride_for(shape, samples * first.dtype.itemsize, budget)

    def placed():
        yield (*positions[frames[0]], first)
        for frame, tile in zip(frames[1:], tiles, strict=True):
            yield (*positions[frame], tile)

    return assemble(placed(), shape, stride, first.dtype, samples), stride
