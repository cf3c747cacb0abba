"""The whole header as the DICOM JSON model (PS3.18 F.2), one element at a time.

``Dataset.to_json_dict`` raises for a whole file when a single vendor value is
malformed; here a bad element is left out and reported with its raw value, so one
bad element never costs the rest of the header and the JSON still loads with
``Dataset.from_json`` (which rejects such values even when stored as UN).
"""

from __future__ import annotations

import json

from pydicom.datadict import dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset

BULK_THRESHOLD = 1024
"""Binary values longer than this many bytes are bulk data and left out."""

_BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}

CSA_IMAGE_HEADER = 0x00291010
"""Siemens CSA Image Header Info: kept whatever its size (up to :data:`CSA_LIMIT`), as it
holds what a mosaic needs (NumberOfImagesInMosaic, SliceNormalVector) and the slice
timing (MosaicRefAcqTimes) and diffusion facts researchers look for."""
CSA_LIMIT = 64 * 1024


def _vr_of(tag: int, vr: str | None) -> str:
    """The element's VR; implicit-VR raw elements carry none, so ask the dictionary."""
    if vr:
        return vr
    try:
        return dictionary_VR(tag).split(" or ")[0]
    except KeyError:
        return "UN"  # private or unknown tag: its bytes are opaque


def _is_bulk(tag: int, vr: str | None, length: int) -> bool:
    """Pixel data, overlay data and large binary values are bulk data."""
    if (
        tag in (0x7FE00010, 0x7FE00008, 0x7FE00009)
        or (tag >> 16) & 0xFF01 == 0x6000
        and (tag & 0xFFFF) == 0x3000
    ):
        return True
    if tag == CSA_IMAGE_HEADER and length <= CSA_LIMIT:
        return False
    return _vr_of(tag, vr) in _BINARY_VRS and length > BULK_THRESHOLD


def _raw_length(raw) -> int:
    """Length in bytes of a raw or converted element's value, for the bulk rule."""
    if isinstance(raw, RawDataElement):
        return 0 if raw.length == 0xFFFFFFFF else raw.length
    value = raw.value
    return len(value) if isinstance(value, (bytes, bytearray)) else 0


def dataset_to_json_dict(
    ds: Dataset, problems: list[str], prefix: str = "", check: bool = False
) -> dict:
    """Convert a dataset to a DICOM JSON dict, collecting one message per element kept raw.

    Parameters
    ----------
    ds : Dataset
        Header to convert; file meta is not included (pass ``ds.file_meta`` separately).
    problems : list of str
        Receives ``"(gggg,eeee) VR: message"`` for each element that failed to convert.
    prefix : str
        Path of enclosing sequence items, used in problem messages.
    check : bool
        Also reject each value that standard JSON cannot hold (NaN, infinity); slower,
        so only used when the whole header failed that test.
    """
    out: dict = {}
    for tag in sorted(ds.keys()):
        key = f"{int(tag):08X}"
        entry = element_entry(ds, tag, problems, prefix, check)
        if entry is not None:
            out[key] = entry
    return out


def element_entry(ds: Dataset, tag, problems: list[str], prefix: str = "", check: bool = False):
    """The DICOM JSON entry of one element of ``ds``; None when it is bulk data or failed.

    A failure appends ``"{prefix}(gggg,eeee) VR: message"`` to ``problems``.
    """
    raw = ds.get_item(tag)
    vr = getattr(raw, "VR", None)
    if _is_bulk(int(tag), vr, _raw_length(raw)):
        return None
    key = f"{int(tag):08X}"
    try:
        elem = ds[tag]
        if elem.VR == "SQ":
            items = [
                dataset_to_json_dict(item, problems, f"{prefix}{key}[{i}].", check)
                for i, item in enumerate(elem.value)
            ]
            return {"vr": "SQ", "Value": items} if items else {"vr": "SQ"}
        if elem.VR in _BINARY_VRS and _is_bulk(int(tag), elem.VR, _raw_length(elem)):
            return None
        entry = elem.to_json_dict(None, BULK_THRESHOLD)
        if check:
            json.dumps(entry, allow_nan=False)
        return entry
    except Exception as exc:  # noqa: BLE001 - any vendor oddity costs only its element
        problems.append(f"{prefix}{key} {vr}: {type(exc).__name__}: {exc}"[:300])
        return None


def _model(ds: Dataset, check: bool) -> tuple[dict, list[str]]:
    problems: list[str] = []
    model = {}
    file_meta = getattr(ds, "file_meta", None)
    if file_meta is not None:
        model.update(dataset_to_json_dict(file_meta, problems, check=check))
    model.update(dataset_to_json_dict(ds, problems, check=check))
    return model, problems


def header_json(ds: Dataset) -> tuple[str, list[str]]:
    """Serialise file meta and dataset as one compact, key-sorted DICOM JSON object."""
    model, problems = _model(ds, check=False)
    try:
        text = json.dumps(model, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:  # a NaN or infinity somewhere: convert again, element by element
        model, problems = _model(ds, check=True)
        text = json.dumps(model, sort_keys=True, separators=(",", ":"), allow_nan=False)
    return text, problems
