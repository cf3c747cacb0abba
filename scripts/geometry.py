"""Patient-space geometry: slice normals, orientation labels, spatial sorting, spacing checks.

Positions are ImagePositionPatient projected on the slice normal (the cross product
of ImageOrientationPatient's row and column directions), never file order.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

ORIENTATION_TOLERANCE = 1e-3
"""Two ImageOrientationPatient vectors within this (max abs difference) are one orientation."""

SPACING_TOLERANCE = 0.05
"""Gaps within 5 % (and at least 0.01 mm) of the median gap count as uniform spacing."""

PLANE_THRESHOLD = 0.8
"""A normal whose largest component is at least this names its plane; below it is oblique."""


def _as_orientation(orientation) -> np.ndarray:
    arr = np.asarray(orientation, dtype=float)
    if arr.shape != (6,):
        raise ValueError(f"Argument 'orientation' must have shape (6,), got {arr.shape}")
    return arr


def slice_normal(orientation) -> np.ndarray:
    """Unit normal of the slice plane from ImageOrientationPatient (row × column)."""
    arr = _as_orientation(orientation)
    normal = np.cross(arr[:3], arr[3:])
    norm = np.linalg.norm(normal)
    if norm < 1e-6:
        raise ValueError(f"Argument 'orientation' has parallel row and column vectors: {arr}")
    return normal / norm


def orientation_label(orientation) -> str:
    """Name the plane: axial, coronal, sagittal, or oblique when no axis dominates the normal."""
    normal = np.abs(slice_normal(orientation))
    axis = int(np.argmax(normal))
    if normal[axis] < PLANE_THRESHOLD:
        return "oblique"
    return ("sagittal", "coronal", "axial")[axis]


def is_valid_orientation(orientation) -> bool:
    """True for six finite numbers whose row and column directions span a plane."""
    try:
        slice_normal(orientation)
    except (ValueError, TypeError):
        return False
    return bool(np.all(np.isfinite(np.asarray(orientation, dtype=float))))


def same_orientation(a, b, tol: float = ORIENTATION_TOLERANCE) -> bool:
    """True when two ImageOrientationPatient values agree within ``tol``."""
    return bool(np.max(np.abs(_as_orientation(a) - _as_orientation(b))) <= tol)


def project_positions(positions, orientation) -> np.ndarray:
    """Signed distance (mm) of each ImagePositionPatient along the slice normal.

    Parameters
    ----------
    positions : (N, 3) array_like of float
    orientation : (6,) array_like of float

    Returns
    -------
    (N,) ndarray of float64
    """
    arr = np.asarray(positions, dtype=float)
    if arr.ndim != 2 or arr.shape[1] != 3:
        raise ValueError(f"Argument 'positions' must have shape (N, 3), got {arr.shape}")
    return arr @ slice_normal(orientation)


def get_plane_sort_index(positions, orientation) -> list[int]:
    """Indices that put slices in patient order (ascending along the normal), stable for ties."""
    return [int(i) for i in np.argsort(project_positions(positions, orientation), kind="stable")]


@dataclass(frozen=True)
class SpacingReport:
    """Geometry checks over one stack's projected slice positions."""

    slice_spacing: float | None
    uniform_spacing: bool
    missing_slices: int
    duplicate_positions: int


def check_spacing(projections) -> SpacingReport:
    """Median gap, uniformity, missing-slice count and duplicate count of slice positions.

    A gap that is close to a whole multiple (≥ 2) of the median gap counts as that many
    minus one missing slices. Positions closer than 1 % of the spacing are duplicates.
    """
    z = np.sort(np.asarray(projections, dtype=float))
    if z.ndim != 1:
        raise ValueError(f"Argument 'projections' must be 1-D, got shape {z.shape}")
    if len(z) < 2:
        return SpacingReport(None, True, 0, 0)
    gaps = np.diff(z)
    positive = gaps[gaps > 1e-3]
    if len(positive) == 0:
        return SpacingReport(None, False, 0, int(len(z) - 1))
    spacing = float(np.median(positive))
    duplicates = int(np.sum(gaps <= max(1e-3, 0.01 * spacing)))
    tol = max(0.01, SPACING_TOLERANCE * spacing)
    ratios = positive / spacing
    multiples = np.rint(ratios)
    missing = int(
        np.sum(
            np.where(
                (multiples >= 2) & (np.abs(positive - multiples * spacing) <= tol), multiples - 1, 0
            )
        )
    )
    uniform = bool(np.all(np.abs(positive - spacing) <= tol)) and duplicates == 0
    return SpacingReport(round(spacing, 6), uniform, missing, duplicates)


def frame_positions(ds) -> np.ndarray | None:
    """Per-frame ImagePositionPatient of a (multi-frame) header, or None when unknown.

    Handles enhanced objects (PerFrame/SharedFunctionalGroupsSequence) and RT dose
    grids (GridFrameOffsetVector along the normal).
    """
    frames = int(ds.get("NumberOfFrames", 1) or 1)
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame:
        positions = []
        for item in per_frame:
            plane = item.get("PlanePositionSequence")
            if not plane or "ImagePositionPatient" not in plane[0]:
                return None
            positions.append([float(v) for v in plane[0].ImagePositionPatient])
        return np.asarray(positions, dtype=float)
    origin = ds.get("ImagePositionPatient")
    if origin is None or len(origin) != 3:
        return None
    origin = np.asarray([float(v) for v in origin])
    offsets = ds.get("GridFrameOffsetVector")
    orientation = frame_orientation(ds)
    if offsets is not None and orientation is not None and len(offsets) == frames:
        normal = slice_normal(orientation)
        steps = np.asarray([float(v) for v in offsets])
        axial = np.allclose(orientation, [1, 0, 0, 0, 1, 0], atol=1e-4)
        if axial and steps[0] != 0 and abs(steps[0] - origin[2]) < 1e-3:
            steps = steps - steps[0]  # PS3.3 C.8.8.3.2 (b): offsets are absolute z values
        return origin + np.outer(steps, normal)
    if frames == 1:
        return origin[None, :]
    return None


def frame_orientation(ds) -> list[float] | None:
    """ImageOrientationPatient of a header, from the top level or the shared functional groups."""
    value = ds.get("ImageOrientationPatient")
    if value is None:
        for seq_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
            seq = ds.get(seq_name)
            if seq and "PlaneOrientationSequence" in seq[0]:
                value = seq[0].PlaneOrientationSequence[0].get("ImageOrientationPatient")
                break
    if value is None or len(value) != 6:
        return None
    orientation = [float(v) for v in value]
    return orientation if is_valid_orientation(orientation) else None


def functional_group_spacings(ds) -> list:
    """PixelSpacing of the shared, then the first per-frame, functional group (enhanced
    objects); absent ones are left out.
    """
    found = []
    for seq_name in ("SharedFunctionalGroupsSequence", "PerFrameFunctionalGroupsSequence"):
        seq = ds.get(seq_name) if ds is not None else None
        if seq and "PixelMeasuresSequence" in seq[0]:
            found.append(seq[0].PixelMeasuresSequence[0].get("PixelSpacing"))
    return found


def first_valid_spacing(candidates) -> list[float] | None:
    """The first candidate that is two positive numbers, as floats; None when none is."""
    for value in candidates:
        try:
            if value is not None and len(value) == 2 and all(float(v) > 0 for v in value):
                return [float(value[0]), float(value[1])]
        except (TypeError, ValueError):
            continue
    return None


def pixel_spacing(ds) -> list[float] | None:
    """Row and column spacing in mm: PixelSpacing, functional groups, ImagerPixelSpacing,
    or ultrasound region deltas (cm, converted); None when the header gives none.
    """
    found = first_valid_spacing(
        [ds.get("PixelSpacing"), *functional_group_spacings(ds), ds.get("ImagerPixelSpacing")]
    )
    if found is not None:
        return found
    for region in ds.get("SequenceOfUltrasoundRegions") or []:
        try:
            if (region.PhysicalUnitsXDirection, region.PhysicalUnitsYDirection) != (3, 3):
                continue  # 3 = cm; other regions hold time, velocity or nothing spatial
            dx, dy = abs(float(region.PhysicalDeltaX)), abs(float(region.PhysicalDeltaY))
        except (AttributeError, TypeError, ValueError):
            continue
        if dx > 0 and dy > 0:
            return [dy * 10.0, dx * 10.0]
    return None


PLANE_NORMAL_AXIS = {"sagittal": 0, "coronal": 1, "axial": 2}
"""Patient (LPS) axis normal to each anatomical plane."""

DISPLAY_AXES = {
    "axial": ((1, +1), (0, +1)),
    "coronal": ((2, -1), (0, +1)),
    "sagittal": ((2, -1), (1, +1)),
}
"""Radiological display: (patient axis, direction) of image rows (top→bottom) and columns
(left→right). Axial: anterior at top, patient right on the left; coronal and sagittal:
superior at top, patient right (coronal) or anterior (sagittal) on the left."""


def voxel_axes(orientation) -> dict[int, tuple[int, int]] | None:
    """Map each patient axis to ``(volume axis, sign)`` for a (slice, row, column) volume.

    Volume axis 0 runs along the slice normal, 1 along the column direction
    (ImageOrientationPatient[3:]), 2 along the row direction ([:3]). Returns None for
    oblique volumes, whose axes do not each follow one patient axis.
    """
    arr = _as_orientation(orientation)
    directions = {
        0: slice_normal(arr),
        1: arr[3:] / np.linalg.norm(arr[3:]),
        2: arr[:3] / np.linalg.norm(arr[:3]),
    }
    mapping: dict[int, tuple[int, int]] = {}
    for axis, direction in directions.items():
        patient = int(np.argmax(np.abs(direction)))
        if abs(direction[patient]) < PLANE_THRESHOLD or patient in mapping:
            return None
        mapping[patient] = (axis, 1 if direction[patient] > 0 else -1)
    return mapping


def reformat_volume(
    volume: np.ndarray,
    orientation,
    pixel_spacing,
    slice_spacing: float,
    origin,
    plane: str,
) -> tuple[np.ndarray, tuple[float, float], np.ndarray]:
    """Reslice an axis-aligned volume into an anatomical plane, in radiological display order.

    Parameters
    ----------
    volume : (slices, rows, columns) ndarray
        Slices in patient order along the normal (ascending projection).
    orientation : (6,) array_like of float
        ImageOrientationPatient of the stack.
    pixel_spacing : (2,) array_like of float
        Row and column spacing in mm.
    slice_spacing : float
        Distance between slices along the normal, mm.
    origin : (3,) array_like of float
        ImagePositionPatient of the first slice.
    plane : {'axial', 'coronal', 'sagittal'}

    Returns
    -------
    slices : (n, rows, columns) ndarray
        A new array (the caller's volume is not modified), slices in ascending patient
        coordinate along the plane's normal.
    spacing : tuple of float
        Row and column spacing of the new slices, mm.
    positions : (n,) ndarray of float
        Patient coordinate (mm) of each slice along the plane's normal axis.
    """
    if volume.ndim != 3:
        raise ValueError(
            f"Argument 'volume' must be 3-D (slices, rows, columns), got {volume.ndim}-D"
        )
    if plane not in PLANE_NORMAL_AXIS:
        raise ValueError(f"Argument 'plane' must be axial, coronal or sagittal, got {plane!r}")
    mapping = voxel_axes(orientation)
    if mapping is None:
        raise ValueError("Argument 'orientation' is oblique; only axis-aligned volumes reslice")
    spacing = {0: float(slice_spacing), 1: float(pixel_spacing[0]), 2: float(pixel_spacing[1])}
    normal_p = PLANE_NORMAL_AXIS[plane]
    (row_p, row_sign), (col_p, col_sign) = DISPLAY_AXES[plane]
    normal_axis, normal_sign = mapping[normal_p]
    row_axis, row_dir = mapping[row_p]
    col_axis, col_dir = mapping[col_p]
    out = np.transpose(volume, (normal_axis, row_axis, col_axis))
    if row_dir != row_sign:
        out = out[:, ::-1, :]
    if col_dir != col_sign:
        out = out[:, :, ::-1]
    steps = np.arange(out.shape[0]) * spacing[normal_axis] * normal_sign
    positions = float(np.asarray(origin, dtype=float)[normal_p]) + steps
    if normal_sign < 0:
        out, positions = out[::-1], positions[::-1]
    return np.ascontiguousarray(out), (spacing[row_axis], spacing[col_axis]), positions
