"""Pseudonymisation of identifying header values with keyed hashes (PS3.15 Basic Profile).

With ``privacy: pseudonymize`` the metadata tables and ``header_json`` hold keyed
HMAC-SHA256 pseudonyms instead of names, IDs and UIDs (so joins across series and
studies still work), dates and times are removed, and private elements are dropped.
The key comes from an environment variable and is never written to any output.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
from collections import Counter
from collections.abc import Iterable
from functools import cache
from pathlib import Path

KEY_ENV = "DICOM_PIPELINE_PSEUDONYM_KEY"
"""Environment variable holding the pseudonymisation key."""

IDENTIFYING_KEYWORDS = (
    # patient
    "PatientName",
    "PatientID",
    "IssuerOfPatientID",
    "OtherPatientIDs",
    "OtherPatientNames",
    "OtherPatientIDsSequence",
    "PatientBirthName",
    "PatientMotherBirthName",
    "PatientAddress",
    "PatientTelephoneNumbers",
    "PatientBirthDate",
    "PatientBirthTime",
    "PatientAge",
    "PatientSex",
    "PatientSize",
    "PatientWeight",
    "MedicalRecordLocator",
    "EthnicGroup",
    "Occupation",
    "MilitaryRank",
    "BranchOfService",
    "AdditionalPatientHistory",
    "PatientComments",
    "PatientInsurancePlanCodeSequence",
    "ResponsiblePerson",
    # people and places
    "ReferringPhysicianName",
    "ReferringPhysicianAddress",
    "ReferringPhysicianTelephoneNumbers",
    "PerformingPhysicianName",
    "NameOfPhysiciansReadingStudy",
    "PhysiciansOfRecord",
    "OperatorsName",
    "RequestingPhysician",
    "ScheduledPerformingPhysicianName",
    "InstitutionName",
    "InstitutionAddress",
    "InstitutionalDepartmentName",
    "StationName",
    "DeviceSerialNumber",
    # study identifiers
    "AccessionNumber",
    "StudyID",
    "RequestedProcedureID",
    "PerformedProcedureStepID",
    "ScheduledProcedureStepID",
    "AdmissionID",
    # UIDs
    "StudyInstanceUID",
    "SeriesInstanceUID",
    "SOPInstanceUID",
    "MediaStorageSOPInstanceUID",
    "FrameOfReferenceUID",
    "ReferencedSOPInstanceUID",
    "ReferencedFrameOfReferenceUID",
    "SynchronizationFrameOfReferenceUID",
    "IrradiationEventUID",
    "ConcatenationUID",
    "DimensionOrganizationUID",
    # dates and times
    "StudyDate",
    "SeriesDate",
    "AcquisitionDate",
    "ContentDate",
    "InstanceCreationDate",
    "StudyTime",
    "SeriesTime",
    "AcquisitionTime",
    "ContentTime",
    "InstanceCreationTime",
    "AcquisitionDateTime",
    # free text that often names people
    "StudyDescription",
    "SeriesDescription",
    "ImageComments",
    "RequestAttributesSequence",
)
"""Keywords of PS3.15 Table E.1-1 (Basic Profile) commonly found in headers."""


@cache
def _dictionary():
    """The DICOM data dictionary, imported on first use: steps that only blank page or sheet
    text (review page, contact sheets) need not pay for importing pydicom.

    Returns ``(dictionary_VR, tag_for_keyword, UID_dictionary, identifying tags)``.
    """
    from pydicom.datadict import dictionary_VR, tag_for_keyword
    from pydicom.uid import UID_dictionary

    tags = {tag_for_keyword(k): k for k in IDENTIFYING_KEYWORDS if tag_for_keyword(k)}
    return dictionary_VR, tag_for_keyword, UID_dictionary, tags


def load_key(env: dict | None = None) -> bytes:
    """The pseudonymisation key from the environment; raises ValueError when unset."""
    value = (env if env is not None else os.environ).get(KEY_ENV, "")
    if not value:
        raise ValueError(f"privacy: pseudonymize needs a key in the environment variable {KEY_ENV}")
    return value.encode("utf-8")


def pseudonym(value: str, key: bytes, vr: str) -> str:
    """Keyed, stable stand-in for a value: a valid UID for UIs, a short token otherwise."""
    digest = hmac.new(key, value.encode("utf-8"), hashlib.sha256).digest()
    if vr == "UI":
        return "2.25." + str(int.from_bytes(digest[:16], "big"))
    return "anon-" + digest[:8].hex()


_REMOVED_VRS = {"DA", "DT", "TM", "AS"}
_NUMERIC_VRS = {"DS", "IS", "FL", "FD", "US", "UL", "SS", "SL", "SV", "UV"}


def _is_registered_uid(value: str) -> bool:
    """Class and syntax UIDs from the DICOM registry identify nothing; keep them."""
    return value in _dictionary()[2]


def _value_action(tag: int, vr: str | None) -> str:
    """``keep``, ``remove`` or ``hash`` for an element, by its tag and VR."""
    if vr in _REMOVED_VRS:
        return "remove"
    if vr in ("PN", "UI", "AE") or tag in _dictionary()[3]:  # names, UIDs, station AE titles
        return "remove" if vr in _NUMERIC_VRS or vr == "SQ" else "hash"
    return "keep"


def _hash_value(value, key: bytes, vr: str):
    if vr == "UI" and _is_registered_uid(str(value)):
        return value
    return pseudonym(str(value), key, vr)


def pseudonymize_row(row: dict, key: bytes) -> dict:
    """A new instance row: identifying keyword columns hashed, dates and times removed."""
    dictionary_VR, tag_for_keyword, _, _ = _dictionary()
    out = dict(row)
    for keyword, value in row.items():
        tag = tag_for_keyword(keyword)
        if tag is None or value is None:
            continue
        vr = dictionary_VR(tag).split(" or ")[0]
        action = _value_action(tag, vr)
        if action == "remove":
            out[keyword] = None
        elif action == "hash":
            items = value if isinstance(value, list) else [value]
            hashed = [_hash_value(v, key, vr) for v in items]
            out[keyword] = hashed if isinstance(value, list) else hashed[0]
    return out


def pseudonymize_json(model: dict, key: bytes) -> dict:
    """A new DICOM JSON model, recursively: names, IDs and instance UIDs hashed, dates and
    times emptied, private elements and identifying sequences dropped.
    """
    out = {}
    for tag_hex, element in model.items():
        tag = int(tag_hex, 16)
        if (tag >> 16) % 2 == 1:
            continue  # private elements may hold anything
        vr = element.get("vr")
        action = _value_action(tag, vr)
        if action == "keep" or "Value" not in element:
            if vr == "SQ" and "Value" in element:
                items = [pseudonymize_json(item, key) for item in element["Value"]]
                element = {**element, "Value": items}
            out[tag_hex] = element
        elif action == "remove":
            out[tag_hex] = {"vr": vr}
        elif vr == "PN":
            names = [
                str(v.get("Alphabetic", "")) if isinstance(v, dict) else str(v)
                for v in element["Value"]
            ]
            out[tag_hex] = {
                "vr": vr,
                "Value": [{"Alphabetic": pseudonym(n, key, vr)} for n in names],
            }
        else:
            out[tag_hex] = {"vr": vr, "Value": [_hash_value(v, key, vr) for v in element["Value"]]}
    return out


PATIENT_KEYWORDS = ("PatientName", "PatientID", "PatientBirthDate")
"""Values no free text on the review page or a contact sheet may repeat."""

_SEPARATORS = re.compile(r"[\s^,;:=_./\\-]+")
_MIN_CONTAINED = 6
"""An identifier this long (separators aside) is also removed when text merely contains it."""


def _tokens(text: str) -> list[str]:
    return [t for t in _SEPARATORS.split(text.casefold()) if t]


def identifier_variants(identifiers: Iterable[str | None]) -> list[str]:
    """Patient values with the other spellings of a date (``19700606`` → ``1970-06-06``…).

    Empty values are dropped; the result is sorted and free of repeats.
    """
    out = set()
    for value in identifiers:
        text = str(value or "").strip()
        if not text:
            continue
        out.add(text)
        if re.fullmatch(r"\d{8}", text):
            y, m, d = text[:4], text[4:6], text[6:]
            out.update({f"{y}-{m}-{d}", f"{d}.{m}.{y}", f"{d}/{m}/{y}", f"{m}/{d}/{y}"})
    return sorted(out)


def repeats_identifier(text: str | None, identifiers: Iterable[str]) -> bool:
    """Whether free text equals a patient identifier, or contains a long one.

    Names compare word by word, ignoring case, order and separators (``Doe^John`` equals
    ``john doe`` and ``DOE, JOHN``); an identifier of at least six characters also
    matches when all its words occur in the text (``Head MR DOE JOHN``).
    """
    if not text:
        return False
    words = _tokens(str(text))
    if not words:
        return False
    have = Counter(words)
    for identifier in identifiers:
        need = _tokens(identifier)
        if not need:
            continue
        if sorted(need) == sorted(words):
            return True
        if len("".join(need)) >= _MIN_CONTAINED and not Counter(need) - have:
            return True
    return False


def blank_identifying(text: str | None, identifiers: Iterable[str]) -> str | None:
    """``text``, or None when it repeats a patient identifier (:func:`repeats_identifier`)."""
    return None if repeats_identifier(text, identifiers) else text


def redact_identifiers(text: str | None, identifiers: Iterable[str]) -> str | None:
    """``text`` with every occurrence of an identifier, or of a name's word of four or more
    letters, replaced by ``…`` (for paths and error details, which are not dropped whole).
    """
    if not text:
        return text
    parts = set()
    for identifier in identifiers:
        parts.add(identifier)
        parts.update(w for w in re.split(r"[\s^]+", identifier) if len(w) >= 4)
    for part in sorted((p for p in parts if len(p) >= 4), key=len, reverse=True):
        text = re.sub(re.escape(part), "…", text, flags=re.IGNORECASE)
    return text


SERIES_FREE_TEXT = (
    "SeriesDescription",
    "StudyDescription",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
)
"""Series columns shown as text on sheets and the review page."""


PATIENT_TAGS = {"PatientName": "00100010", "PatientID": "00100020", "PatientBirthDate": "00100030"}
"""Tags of :data:`PATIENT_KEYWORDS` as DICOM JSON keys."""
_PN_PARTS = ("Alphabetic", "Ideographic", "Phonetic")


def json_element_values(header: str, tag: str) -> list[str]:
    """String values of one top-level element of a DICOM JSON header, without parsing it all."""
    import json

    at = header.find(f'"{tag}"')
    if at < 0:
        return []
    start = header.find("{", at)
    if start < 0:
        return []
    try:
        element, _ = json.JSONDecoder().raw_decode(header, start)
    except ValueError:
        return []
    values = []
    for value in element.get("Value") or []:
        if isinstance(value, dict):
            values.extend(str(value[p]) for p in _PN_PARTS if value.get(p))
        elif value is not None:
            values.append(str(value))
    return values


def json_identifiers(header: str | None, tags: dict = PATIENT_TAGS) -> list[str]:
    """Values of ``tags`` (keyword → JSON tag; by default PatientName, PatientID and
    PatientBirthDate) in a DICOM JSON header, with :func:`identifier_variants`.
    """
    raw = [v for tag in tags.values() for v in json_element_values(header or "", tag)]
    return identifier_variants(raw)


OTHER_TAGS = {
    "StudyDate": "00080020",
    "SeriesDate": "00080021",
    "AcquisitionDate": "00080022",
    "ContentDate": "00080023",
    "AccessionNumber": "00080050",
    "InstitutionName": "00080080",
    "ReferringPhysicianName": "00080090",
    "StationName": "00081010",
    "PerformingPhysicianName": "00081050",
    "OperatorsName": "00081070",
    "DeviceSerialNumber": "00181000",
    "StudyID": "00200010",
}
"""Identifying values the review page also cuts out of file paths and error details
(folder names often hold a date or an accession number)."""


def header_identifiers(header: str | None) -> dict[str, list[str]]:
    """``{"patient": [...], "other": [...]}``: the values of :data:`PATIENT_TAGS` and of
    :data:`OTHER_TAGS` in a DICOM JSON header, each with :func:`identifier_variants`.
    """
    return {"patient": json_identifiers(header), "other": json_identifiers(header, OTHER_TAGS)}


def header_patient_identifiers(path: str | os.PathLike) -> list[str]:
    """PatientName, PatientID and PatientBirthDate of one DICOM file (with
    :func:`identifier_variants`), read without pixels; empty when it cannot be read.
    """
    import pydicom

    try:
        ds = pydicom.dcmread(
            path, stop_before_pixels=True, force=True, specific_tags=list(PATIENT_KEYWORDS)
        )
        values = [ds.get(k) for k in PATIENT_KEYWORDS]
    except Exception:  # noqa: BLE001 - a header that cannot be read names nobody
        return []
    return identifier_variants(str(v) for v in values if v is not None)


def series_without_identifying_text(series: list[dict], manifest, study) -> list[dict]:
    """Series records whose :data:`SERIES_FREE_TEXT` repeating the patient's identifiers is
    set to None, without their ``patient_identifiers``.

    The identifiers come from the record's ``patient_identifiers`` (the merge's batch work
    lists carry them, from the first instance's header), else from one saved slice's source
    file per series: ``manifest`` is a batch's slice manifest table (``series_key``,
    ``source_path``). Without either the records are returned unchanged.
    """
    carried = [s for s in series if s.get("patient_identifiers") is not None]
    if carried and len(carried) == len(series):
        return [_blanked(s, s.pop("patient_identifiers")) for s in (dict(r) for r in series)]
    series = [{k: v for k, v in s.items() if k != "patient_identifiers"} for s in series]
    if study is None or not series:
        return series
    from dicom_io import study_file

    sources: dict[str, str] = {}
    for row in manifest.select(["series_key", "source_path"]).to_pylist():
        if row["source_path"]:
            sources.setdefault(row["series_key"], row["source_path"])
    out = []
    for record in series:
        source = sources.get(record["series_key"])
        if not source or not any(record.get(c) for c in SERIES_FREE_TEXT):
            out.append(record)  # nothing to compare: no header read, no pydicom import
            continue
        out.append(_blanked(record, header_patient_identifiers(study_file(Path(study), source))))
    return out


def _blanked(record: dict, identifiers: list[str]) -> dict:
    texts = [c for c in SERIES_FREE_TEXT if c in record]
    return {**record, **{c: blank_identifying(record[c], identifiers) for c in texts}}
