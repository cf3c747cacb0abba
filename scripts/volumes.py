"""Whole volumes of a stack: NIfTI (``.nii.gz``) and ``.npy``, with dcm2niix's geometry.

Pure functions for the ``save_slices`` job, which decodes a stack once and passes the
arrays here: the affine from ImageOrientationPatient, the first and last
ImagePositionPatient and PixelSpacing (NIfTI's RAS+ convention), whether a stack has a
grid regular enough to be a volume (and why not), how voxel values are stored (stored
integers with ``scl_slope``/``scl_inter`` where that is exact, float32 otherwise), and
writing the files and their ``volumes.parquet`` rows.

Voxel index ``(i, j, k)`` is (column, row, slice): ``i`` runs along the row direction
(ImageOrientationPatient[:3]), ``j`` along the column direction ([3:]) and ``k`` along
the slice normal in ascending patient order, as the saved ``.npy`` slices are numbered.
nibabel is imported only when a NIfTI file is written.
"""

from __future__ import annotations

import gzip
import os
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

import geometry

FORMATS = ("nifti", "npy")
"""Volume formats: ``nifti`` writes ``<series_key>.nii.gz``, ``npy`` ``<series_key>.npy``."""

SUFFIX = {"nifti": ".nii.gz", "npy": ".npy"}

LPS_TO_RAS = np.diag([-1.0, -1.0, 1.0, 1.0])
"""DICOM patient coordinates (LPS) to NIfTI's RAS+: x and y change sign."""

GRID_TOLERANCE_MM = 0.01
"""Largest distance (mm, at least; 1 % of the slice spacing when larger) of any slice
position from the straight, evenly stepped line between the first and last slice."""

TILT_TOLERANCE = 1e-3
"""Largest sine of the angle between the slice direction and the slice normal before a
stack counts as tilted (gantry tilt, or a sheared grid); 1e-3 is 0.06 degrees."""

NIFTI_GZIP_LEVEL = 6
"""gzip level of ``.nii.gz`` files (dcm2niix's default); mtime 0 keeps bytes stable."""

XFORM_SCANNER = 1
"""NIfTI ``sform_code``/``qform_code`` 1: scanner-based anatomical coordinates (as dcm2niix)."""


@dataclass(frozen=True)
class VolumeSettings:
    """What to write: formats (empty: volumes off) and an optional modality filter."""

    formats: tuple[str, ...] = ()
    modalities: tuple[str, ...] = ()

    def wants(self, modality: str | None) -> bool:
        """True when volumes are on and ``modality`` passes the filter."""
        return bool(self.formats) and (not self.modalities or modality in self.modalities)


VOLUMES_OFF = VolumeSettings()
"""No volumes (the default)."""


@dataclass(frozen=True)
class Grid:
    """Geometry of a regular stack: RAS affine, voxel size and orientation code."""

    affine: np.ndarray
    voxel_size: tuple[float, float, float]
    orientation: str


def lps_affine(orientation, pixel_spacing, first, last, n_slices: int) -> np.ndarray:
    """Voxel ``(i, j, k)`` → DICOM patient (LPS) mm, from the stack's header geometry.

    Parameters
    ----------
    orientation : (6,) array_like of float
        ImageOrientationPatient: row direction (along a row, i) then column direction (j).
    pixel_spacing : (2,) array_like of float
        PixelSpacing: row spacing (between rows, j) then column spacing (between columns, i).
    first, last : (3,) array_like of float
        ImagePositionPatient of the first and last slice in patient order.
    n_slices : int
        Number of slices; with one slice the slice axis is the normal at unit length.

    Returns
    -------
    (4, 4) ndarray of float64
    """
    iop = np.asarray(orientation, dtype=float)
    if iop.shape != (6,):
        raise ValueError(f"Argument 'orientation' must have shape (6,), got {iop.shape}")
    spacing = np.asarray(pixel_spacing, dtype=float)
    if spacing.shape != (2,) or not np.all(spacing > 0):
        raise ValueError(f"Argument 'pixel_spacing' must be two positive numbers, got {spacing}")
    if n_slices < 1:
        raise ValueError(f"Argument 'n_slices' must be >= 1, got {n_slices}")
    first = np.asarray(first, dtype=float)
    if n_slices > 1:
        step = (np.asarray(last, dtype=float) - first) / (n_slices - 1)
    else:
        step = geometry.slice_normal(iop)
    affine = np.eye(4)
    affine[:3, 0] = iop[:3] * spacing[1]
    affine[:3, 1] = iop[3:] * spacing[0]
    affine[:3, 2] = step
    affine[:3, 3] = first
    return affine


def ras_affine(orientation, pixel_spacing, first, last, n_slices: int) -> np.ndarray:
    """Voxel ``(i, j, k)`` → RAS+ mm, the NIfTI sform: ``diag(-1, -1, 1, 1) @ LPS affine``."""
    return LPS_TO_RAS @ lps_affine(orientation, pixel_spacing, first, last, n_slices)


def orientation_code(affine) -> str:
    """Direction each voxel axis points to, e.g. ``LPS`` for an axial DICOM stack.

    nibabel's axis codes of a RAS affine (R/L, A/P, S/I for the patient axis each of
    ``i, j, k`` follows most closely), so an oblique stack is named as nibabel names it.
    """
    from nibabel.orientations import aff2axcodes

    return "".join(aff2axcodes(np.asarray(affine, dtype=float)))


def grid_problem(positions, orientation, photometric: str | None) -> str | None:
    """Why a stack's frames do not form one regular grid, or None when they do.

    Parameters
    ----------
    positions : (N, 3) array_like of float or None
        ImagePositionPatient of every frame, in patient order along the normal.
    orientation : (6,) array_like of float or None
    photometric : str or None
        PhotometricInterpretation; volumes are monochrome.

    Returns
    -------
    str or None
        A short sentence for the ``volume_skipped`` warning's detail.
    """
    if orientation is None or not geometry.is_valid_orientation(orientation):
        return "no usable ImageOrientationPatient"
    if positions is None:
        return "not every frame has an ImagePositionPatient"
    if not str(photometric or "MONOCHROME2").startswith("MONOCHROME"):
        return f"colour image ({photometric}); volumes are monochrome"
    xyz = np.asarray(positions, dtype=float)
    if len(xyz) < 2:
        return "a single slice"
    normal = geometry.slice_normal(orientation)
    report = geometry.check_spacing(xyz @ normal)
    if report.duplicate_positions:
        return f"{report.duplicate_positions} duplicate slice position(s)"
    if report.missing_slices:
        return f"{report.missing_slices} missing slice(s)"
    if not report.uniform_spacing:
        gaps = np.diff(xyz @ normal)
        return f"non-uniform slice spacing (gaps {gaps.min():.3g} to {gaps.max():.3g} mm)"
    step = (xyz[-1] - xyz[0]) / (len(xyz) - 1)
    length = float(np.linalg.norm(step))
    sine = float(np.linalg.norm(np.cross(step / length, normal)))
    if sine > TILT_TOLERANCE:
        degrees = float(np.degrees(np.arcsin(min(sine, 1.0))))
        return f"gantry tilt or sheared grid ({degrees:.2f} degrees off the slice normal)"
    line = xyz[0] + np.outer(np.arange(len(xyz)), step)
    off = float(np.max(np.linalg.norm(xyz - line, axis=1)))
    if off > max(GRID_TOLERANCE_MM, 0.01 * length):
        return f"irregular grid (a slice lies {off:.3g} mm off the even line)"
    return None


def pixel_spacing(spacing, ds=None) -> list[float] | None:
    """Row and column spacing in mm: ``spacing`` (the top-level PixelSpacing) when valid,
    else the header's functional groups (enhanced objects); None when neither has it.

    ImagerPixelSpacing and ultrasound regions are not used: they do not measure the
    patient grid a volume needs.
    """
    return geometry.first_valid_spacing([spacing, *geometry.functional_group_spacings(ds)])


def stack_grid(positions, orientation, pixel_spacing) -> Grid:
    """Affine, voxel size and orientation code of a regular stack (see :func:`grid_problem`)."""
    xyz = np.asarray(positions, dtype=float)
    affine = ras_affine(orientation, pixel_spacing, xyz[0], xyz[-1], len(xyz))
    size = tuple(float(v) for v in np.linalg.norm(affine[:3, :3], axis=0))
    return Grid(affine, size, orientation_code(affine))


def is_candidate(series: dict, n_frames: int, multi_frame: bool) -> bool:
    """True for stacks a volume is attempted for (and a skip is reported for).

    A stack passing the volume checks (``is_volume``), any stack of at least 3 frames
    with an orientation (so a failed check becomes a warning saying why), and a
    multi-frame stack of at least 2 frames with an orientation.
    """
    if series.get("is_volume"):
        return True
    if series.get("ImageOrientationPatient") is None:
        return False
    return n_frames >= 3 or (multi_frame and n_frames >= 2)


def storage(
    stored: Sequence[np.ndarray], rescale: Sequence[tuple[float, float]], has_lut: bool
) -> tuple[str, float, float]:
    """How voxel values are kept: ``('stored', slope, intercept)`` or ``('float32', 1, 0)``.

    Stored integers with ``scl_slope``/``scl_inter`` only when that gives the modality
    values exactly: integer pixels, one slope and intercept for every frame, both exact
    in NIfTI's float32 header fields, and no Modality LUT. Otherwise float32 modality
    values, the same numbers as the ``.npy`` slices.

    Parameters
    ----------
    stored : sequence of (rows, columns) ndarray
        Decoded stored values of each frame.
    rescale : sequence of (float, float)
        RescaleSlope and RescaleIntercept of each frame (dose grid scaling folded in).
    has_lut : bool
        Whether a Modality LUT Sequence maps the stored values.
    """
    if has_lut or not stored or len(set(rescale)) != 1:
        return "float32", 1.0, 0.0
    if not all(np.issubdtype(a.dtype, np.integer) for a in stored):
        return "float32", 1.0, 0.0
    slope, intercept = rescale[0]
    exact = slope != 0 and all(float(np.float32(v)) == v for v in (slope, intercept))
    return ("stored", float(slope), float(intercept)) if exact else ("float32", 1.0, 0.0)


def stored_dtype(stored: np.ndarray) -> np.dtype:
    """NIfTI integer type of stored values: int16 when they fit (as dcm2niix), else theirs."""
    if stored.size and stored.dtype != np.int16:
        low, high = int(stored.min()), int(stored.max())
        if low >= -32768 and high <= 32767:
            return np.dtype(np.int16)
    return stored.dtype


def nifti_bytes(
    data: np.ndarray, affine: np.ndarray, slope: float = 1.0, intercept: float = 0.0
) -> bytes:
    """A gzipped NIfTI-1 file (deterministic bytes) of ``data`` indexed ``(i, j, k)``.

    sform and qform both hold ``affine`` with code 1 (scanner), units mm and s; a stored
    integer array gets ``scl_slope``/``scl_inter`` (float data gets 1 and 0).
    """
    import nibabel as nib

    image = nib.Nifti1Image(data, affine, dtype=data.dtype)
    image.set_sform(affine, code=XFORM_SCANNER)
    image.set_qform(affine, code=XFORM_SCANNER)
    header = image.header
    header.set_xyzt_units("mm", "sec")
    header.set_slope_inter(slope, intercept)
    return gzip.compress(image.to_bytes(), compresslevel=NIFTI_GZIP_LEVEL, mtime=0)


def _write_atomic(target: Path, payload: bytes) -> None:
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(payload)
    os.replace(tmp, target)


def _npy_bytes(array: np.ndarray) -> bytes:
    import io

    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def write_volume(
    results: Path,
    key: str,
    formats: Sequence[str],
    stored: Sequence[np.ndarray],
    values: np.ndarray,
    rescale: Sequence[tuple[float, float]],
    has_lut: bool,
    grid: Grid,
    facts: dict,
) -> list[dict]:
    """Write ``volumes/<key>.nii.gz`` and/or ``.npy``; returns their ``volumes.parquet`` rows.

    Parameters
    ----------
    stored : sequence of (rows, columns) ndarray
        Decoded stored values of each slice, in patient order.
    values : (slices, rows, columns) ndarray of float32
        Modality values of the same slices (what the ``.npy`` slices hold).
    facts : dict
        ``value_units``, ``n_source_files`` and ``n_frames`` for the rows.
    """
    if values.ndim != 3:
        raise ValueError(
            f"Argument 'values' must be 3-D (slices, rows, columns), got {values.ndim}-D"
        )
    rows = []
    for fmt in formats:
        path = f"volumes/{key}{SUFFIX[fmt]}"
        if fmt == "nifti":
            kind, slope, intercept = storage(stored, rescale, has_lut)
            if kind == "stored":
                stack = np.stack(stored)
                stack = stack.astype(stored_dtype(stack), copy=False)
            else:
                stack = values.astype(np.float32, copy=False)
            data = np.transpose(stack, (2, 1, 0))
            _write_atomic(results / path, nifti_bytes(data, grid.affine, slope, intercept))
        else:
            data = np.transpose(values.astype(np.float32, copy=False), (2, 1, 0))
            slope, intercept = 1.0, 0.0
            _write_atomic(results / path, _npy_bytes(np.ascontiguousarray(data)))
        rows.append(
            {
                "series_key": key,
                "format": fmt,
                "path": path,
                "shape": [int(n) for n in data.shape],
                "voxel_size_mm": [round(v, 6) for v in grid.voxel_size],
                "affine": [float(v) for v in grid.affine.ravel()],
                "orientation": grid.orientation,
                "dtype": str(data.dtype),
                "scl_slope": slope,
                "scl_inter": intercept,
                **facts,
            }
        )
    return rows


def skip_row(path: str, key: str, reason: str) -> dict:
    """A ``volume_skipped`` warning for the errors table, on the stack's first file."""
    return {
        "path": path,
        "reason": "volume_skipped",
        "detail": f"series {key}: no volume written: {reason}",
        "severity": "warning",
        "stage": "save_slices",
    }


def remove_stale(results: Path, key: str, keep: set[str]) -> int:
    """Delete ``volumes/<key>.*`` files not in ``keep`` (result-relative paths)."""
    removed = 0
    for suffix in SUFFIX.values():
        relative = f"volumes/{key}{suffix}"
        if relative not in keep:
            try:
                (results / relative).unlink()
                removed += 1
            except FileNotFoundError:
                pass
    return removed
