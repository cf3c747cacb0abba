"""DICOM Segmentation (SEG) objects: segment facts per frame, mask values and their colours.

A SEG stores one mask per frame; each frame belongs to one segment (its
SegmentIdentificationSequence's ReferencedSegmentNumber) and usually names the source
image it was drawn on (DerivationImageSequence → SourceImageSequence). A viewer draws
each segment in its RecommendedDisplayCIELabValue (else a colour of its own) over the
source image. Everything here works frame by frame, so a stack holding one segment or
several is handled alike. Only numpy is imported at module level: the merge uses
:func:`referenced_uids` on header JSON without pydicom.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

PALETTE = (
    (230, 25, 75),
    (60, 180, 75),
    (255, 225, 25),
    (0, 130, 200),
    (245, 130, 48),
    (145, 30, 180),
    (70, 240, 240),
    (240, 50, 230),
    (210, 245, 60),
    (250, 190, 212),
    (0, 128, 128),
    (220, 190, 255),
)
"""Colours of segments without RecommendedDisplayCIELabValue, by segment number (1 → first),
cycling; distinct on black and on grey (Trubetskoy's "20 distinct colours", first 12)."""

OVERLAY_ALPHA = 0.45
"""Opacity of a mask drawn over its source image (the outline is opaque)."""

D65_WHITE = (0.95047, 1.0, 1.08883)
"""CIE XYZ of the D65 illuminant, which DICOM's CIELab values are relative to."""

XYZ_TO_LINEAR_SRGB = np.array(
    [
        [3.2404542, -1.5371385, -0.4985314],
        [-0.9692660, 1.8760108, 0.0415560],
        [0.0556434, -0.2040259, 1.0572252],
    ]
)


def cielab_to_srgb(encoded: Sequence[int]) -> tuple[int, int, int]:
    """Colour in sRGB (0–255) of a DICOM CIELab colour such as RecommendedDisplayCIELabValue.

    DICOM scales L* 0..100 and a*, b* -128..127 linearly onto 0..65535 (PS3.3
    C.10.7.1.1), relative to D65. The conversion is CIELab → XYZ → linear sRGB → sRGB
    transfer curve; colours outside the sRGB gamut are clipped.

    Parameters
    ----------
    encoded : sequence of 3 int
        The three stored values, each 0..65535.
    """
    values = [float(v) for v in encoded]
    if len(values) != 3:
        raise ValueError(f"Argument 'encoded' must hold 3 values, got {len(values)}")
    lightness = values[0] * 100.0 / 65535.0
    a = values[1] * 255.0 / 65535.0 - 128.0
    b = values[2] * 255.0 / 65535.0 - 128.0
    fy = (lightness + 16.0) / 116.0
    f = np.array([fy + a / 500.0, fy, fy - b / 200.0])
    delta = 6.0 / 29.0
    xyz = np.where(f > delta, f**3, 3 * delta**2 * (f - 4.0 / 29.0)) * np.array(D65_WHITE)
    linear = np.clip(XYZ_TO_LINEAR_SRGB @ xyz, 0.0, 1.0)
    srgb = np.where(linear <= 0.0031308, 12.92 * linear, 1.055 * linear ** (1 / 2.4) - 0.055)
    red, green, blue = (int(v) for v in np.clip(np.rint(srgb * 255.0), 0, 255))
    return red, green, blue


@dataclass(frozen=True)
class Segment:
    """One segment: its number, label and display colour (sRGB)."""

    number: int
    label: str | None
    rgb: tuple[int, int, int]


def palette_colour(number: int) -> tuple[int, int, int]:
    """The fixed colour of segment ``number`` (1-based): :data:`PALETTE`, then, for
    segments past it, hues a golden angle apart (no two segments of a large SEG share a
    colour, and the colours do not depend on which segments are present).
    """
    number = max(int(number), 1)
    if number <= len(PALETTE):
        return PALETTE[number - 1]
    import colorsys

    hue = ((number - len(PALETTE)) * 0.6180339887) % 1.0
    r, g, b = colorsys.hsv_to_rgb(hue, 0.75, 0.95)
    return (round(r * 255), round(g * 255), round(b * 255))


def segments(ds) -> dict[int, Segment]:
    """Every segment of a SEG header by SegmentNumber: label and display colour."""
    out: dict[int, Segment] = {}
    for position, item in enumerate(ds.get("SegmentSequence") or (), start=1):
        number = int(item.get("SegmentNumber") or position)
        label = str(item.get("SegmentLabel") or "").strip() or None
        lab = item.get("RecommendedDisplayCIELabValue")
        try:
            rgb = cielab_to_srgb(lab) if lab is not None else palette_colour(number)
        except (TypeError, ValueError):
            rgb = palette_colour(number)
        out[number] = Segment(number, label, rgb)
    return out


def _functional(ds, frame: int, sequence: str):
    """A functional-group macro's first item for a frame: per-frame first, then shared."""
    per_frame = ds.get("PerFrameFunctionalGroupsSequence")
    if per_frame and frame < len(per_frame) and sequence in per_frame[frame]:
        return per_frame[frame][sequence][0]
    shared = ds.get("SharedFunctionalGroupsSequence")
    if shared and sequence in shared[0] and shared[0][sequence]:
        return shared[0][sequence][0]
    return None


def frame_segment(ds, frame: int) -> int | None:
    """ReferencedSegmentNumber of a 0-based frame.

    From the frame's (or the shared) SegmentIdentificationSequence; a TILED_FULL SEG
    without per-frame groups stores its segments one plane of tiles after the other, in
    SegmentSequence order (PS3.3 C.8.20.2.2). None when nothing says.
    """
    item = _functional(ds, frame, "SegmentIdentificationSequence")
    if item is not None and item.get("ReferencedSegmentNumber") is not None:
        return int(item.ReferencedSegmentNumber)
    import slide

    if slide.is_tiled(ds) and ds.get("SegmentSequence"):
        plane = frame // slide.tiles_per_plane(ds)
        sequence = ds.SegmentSequence
        if plane < len(sequence):
            return int(sequence[plane].get("SegmentNumber") or plane + 1)
    return None


def frame_source(ds, frame: int) -> tuple[str | None, int | None]:
    """SOPInstanceUID and 0-based frame of the source image a SEG frame was derived from.

    From DerivationImageSequence → SourceImageSequence (per-frame, else shared); the
    frame is ReferencedFrameNumber − 1, or 0 for a source without one (a single-frame
    image). ``(None, None)`` when the frame names no source.
    """
    item = _functional(ds, frame, "DerivationImageSequence")
    if item is None or not item.get("SourceImageSequence"):
        return None, None
    source = item.SourceImageSequence[0]
    uid = source.get("ReferencedSOPInstanceUID")
    if not uid:
        return None, None
    number = source.get("ReferencedFrameNumber")
    if number is not None and not isinstance(number, int):
        number = list(number)[0] if len(number) else None
    return str(uid), (int(number) - 1 if number else 0)


def mask_values(stored: np.ndarray, ds) -> np.ndarray:
    """A frame's stored values as the mask to save.

    BINARY: uint8 0/1. FRACTIONAL: float32 0..1, stored / MaximumFractionalValue
    (probability or occupancy). Other types (LABELMAP) are returned as stored.
    """
    kind = str(ds.get("SegmentationType") or "BINARY").strip().upper()
    if kind == "BINARY":
        return (stored != 0).astype(np.uint8)
    if kind == "FRACTIONAL":
        top = float(ds.get("MaximumFractionalValue") or 0) or float(np.iinfo(np.uint8).max)
        return np.clip(stored.astype(np.float32) / np.float32(top), 0.0, 1.0)
    return np.asarray(stored)


def value_units(ds) -> str:
    """Units of saved SEG values: ``mask`` (binary), ``fraction`` or ``label``."""
    kind = str(ds.get("SegmentationType") or "BINARY").strip().upper()
    return {"BINARY": "mask", "FRACTIONAL": "fraction"}.get(kind, "label")


SEG_UNITS = ("mask", "fraction")
"""``value_units`` of manifest rows drawn as coloured masks."""


def outline(mask: np.ndarray) -> np.ndarray:
    """Pixels of a boolean mask with a 4-neighbour outside it (its inner edge).

    Parameters
    ----------
    mask : (rows, columns) ndarray of bool
    """
    padded = np.pad(mask, 1, constant_values=False)
    inner = padded[:-2, 1:-1] & padded[2:, 1:-1] & padded[1:-1, :-2] & padded[1:-1, 2:] & mask
    return mask & ~inner


def draw_mask(
    mask: np.ndarray, rgb: Sequence[int], background: np.ndarray | None = None
) -> np.ndarray:
    """Draw a mask in its colour, on black or over a background image; returns new uint8 RGB.

    On black, a pixel is the colour scaled by its mask value (fractional masks fade). Over
    a background, the colour is blended in at :data:`OVERLAY_ALPHA` × the mask value and
    the mask's edge (value ≥ 0.5) drawn opaque; pixels outside the mask keep the
    background's values exactly.

    Parameters
    ----------
    mask : (rows, columns) ndarray of float in 0..1, or uint8 0..255
        uint8 input is read as value / 255 (a resampled mask).
    rgb : sequence of 3 int
    background : (rows, columns) or (rows, columns, 3) ndarray of uint8, optional
    """
    if mask.ndim != 2:
        raise ValueError(f"Argument 'mask' must be 2-D, got shape {mask.shape}")
    weight = mask.astype(np.float32) / (255.0 if mask.dtype == np.uint8 else 1.0)
    weight = np.clip(weight, 0.0, 1.0)[:, :, None]
    colour = np.asarray(rgb, dtype=np.float32).reshape(1, 1, 3)
    if background is None:
        return np.rint(weight * colour).astype(np.uint8)
    if background.shape[:2] != mask.shape:
        raise ValueError(
            f"Argument 'background' must have the mask's shape {mask.shape}, "
            f"got {background.shape[:2]}"
        )
    base = background if background.ndim == 3 else np.repeat(background[:, :, None], 3, axis=2)
    alpha = OVERLAY_ALPHA * weight
    out = np.rint(base.astype(np.float32) * (1 - alpha) + colour * alpha).astype(np.uint8)
    out[outline(weight[:, :, 0] >= 0.5)] = np.asarray(rgb, dtype=np.uint8)
    out[weight[:, :, 0] == 0] = base[weight[:, :, 0] == 0]
    return out


# ------------------------------------------------------------------ references (merge)

_DERIVATION = "00089124"
_REFERENCED_SERIES = "00081115"
_REFERENCED_SOP_INSTANCE = "00081155"
_SERIES_UID = "0020000E"


def referenced_uids(header_json: str | None) -> tuple[set[str], set[str]]:
    """Series and SOP Instance UIDs a SEG header names as its sources.

    Walks the DICOM JSON: SeriesInstanceUID in ReferencedSeriesSequence, and
    ReferencedSOPInstanceUID inside ReferencedSeriesSequence and DerivationImageSequence
    (shared or per frame). Plain JSON, no pydicom: the merge calls this.
    """
    series: set[str] = set()
    instances: set[str] = set()
    if not header_json:
        return series, instances

    def walk(node: dict, inside: bool) -> None:
        for tag, element in node.items():
            if not isinstance(element, dict):
                continue
            values = element.get("Value") or []
            if tag == _REFERENCED_SOP_INSTANCE and inside:
                instances.update(str(v) for v in values if v)
            elif tag == _SERIES_UID and inside:
                series.update(str(v) for v in values if v)
            if element.get("vr") == "SQ":
                deeper = inside or tag in (_DERIVATION, _REFERENCED_SERIES)
                for item in values:
                    if isinstance(item, dict):
                        walk(item, deeper)

    walk(json.loads(header_json), False)
    return series, instances
