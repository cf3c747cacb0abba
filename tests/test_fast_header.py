"""The fast header path gives exactly what the reference path gives, on real files."""

from __future__ import annotations

import shutil
from pathlib import Path

import pydicom.data
import pytest

import demo
import extract_metadata
import fast_header
import table_schema
from dicom_io import FileProblem, read_header
from dicom_json import header_json

VENDOR = Path(__file__).resolve().parent / "fixtures" / "vendor-mr"
SHARED_VENDOR = demo.ROOT.parent / "shared" / "data" / "vendor-mr"
KEYWORDS = table_schema.instance_keywords(
    ["SliceLocation", "DiffusionBValue", "ImagesInAcquisition"]
)


def _pydicom_test_files() -> list[Path]:
    folder = Path(pydicom.data.get_testdata_file("CT_small.dcm", download=False)).parent
    return sorted(p for p in folder.rglob("*") if p.is_file())


def _real_files() -> list[Path]:
    files = sorted(p for p in demo.STUDY.rglob("*") if p.is_file())
    files += sorted(p for p in VENDOR.rglob("*") if p.is_file() and "LICENSE" not in p.name)
    return files + _pydicom_test_files()


def _reference(path: Path):
    """Header, JSON and typed row by the reference path alone (pydicom read + to_json)."""
    try:
        header = read_header(path)
    except FileProblem as problem:
        return ("problem", problem.reason, problem.detail)
    text, problems = header_json(header.dataset)
    return header, text, problems


@pytest.mark.parametrize("path", _real_files(), ids=lambda p: p.name)
def test_fast_path_gives_the_reference_json_and_pixel_facts_for_every_real_file(path):
    fast_header._memo.clear()
    reference = _reference(path)
    for _ in range(2):  # cold and memoised
        fast = fast_header.read_header_fast(path)
        if fast is None:
            return  # this file takes the reference path in extract
        assert reference[0] != "problem", (
            f"fast path accepted a file the reference rejects: {reference}"
        )
        header, text, problems = fast
        assert text == reference[1]
        assert problems == reference[2]
        assert header.has_pixels == reference[0].has_pixels
        assert header.warnings == reference[0].warnings


def _rows_by_both_paths(study: Path, paths: list[str], monkeypatch):
    fast_rows = [extract_metadata.extract_file(study, p, 1, KEYWORDS) for p in paths]
    with monkeypatch.context() as patch:
        patch.setattr(extract_metadata, "read_header_fast", lambda path, keep=None: None)
        reference_rows = [extract_metadata.extract_file(study, p, 1, KEYWORDS) for p in paths]
    return fast_rows, reference_rows


def test_fast_path_gives_the_reference_typed_columns_and_errors_for_the_demo_study(monkeypatch):
    paths = sorted(
        p.relative_to(demo.STUDY).as_posix() for p in demo.STUDY.rglob("*") if p.is_file()
    )
    fast_rows, reference_rows = _rows_by_both_paths(demo.STUDY, paths, monkeypatch)
    assert fast_rows == reference_rows
    reasons = {e["reason"] for _, errors in fast_rows for e in errors}
    assert {"not_dicom", "truncated"} <= reasons


def test_fast_path_gives_the_reference_typed_columns_for_vendor_headers(monkeypatch):
    paths = sorted(p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*.dcm")) + [
        p.relative_to(VENDOR).as_posix() for p in VENDOR.rglob("*.MRDC.*")
    ]
    fast_rows, reference_rows = _rows_by_both_paths(VENDOR, paths, monkeypatch)
    assert fast_rows == reference_rows
    rows = {row["path"]: row for row, _ in fast_rows}
    philips = rows["Philips_Achieva_DTI/0016.dcm"]
    assert philips["Manufacturer"] == "Philips Medical Systems"
    assert (
        isinstance(philips["ImagePositionPatient"], list)
        and len(philips["ImagePositionPatient"]) == 3
    )
    ge = rows["GE_SIGNA_Pioneer_3D_T1/i152.MRDC.5"]
    assert ge["Manufacturer"].startswith("GE")
    assert ge["Rows"] == 256 and ge["Columns"] == 256
    assert isinstance(ge["SliceThickness"], float)


@pytest.mark.parametrize(
    "vendor",
    ["GE_SIGNA_Pioneer_3D_T1", "Philips_Achieva_DTI", "Toshiba_Galan_DTI_b0", "Siemens_mosaic_DWI"],
)
def test_fast_path_takes_no_fallback_on_vendor_headers(vendor):
    files = sorted((VENDOR / vendor).iterdir())
    assert files
    for path in files:
        assert fast_header.read_header_fast(path) is not None, path


@pytest.mark.skipif(
    not SHARED_VENDOR.is_dir(), reason="../shared/data/vendor-mr is not beside the project"
)
@pytest.mark.slow
def test_fast_path_equals_the_reference_on_every_shared_vendor_file():
    fast_header._memo.clear()
    files = sorted(
        p
        for p in SHARED_VENDOR.rglob("*")
        if p.is_file() and "LICENSE" not in p.parts[-2] and p.suffix != ".md"
    )
    checked = 0
    for path in files:
        fast = fast_header.read_header_fast(path)
        assert fast is not None, path
        reference = _reference(path)
        assert fast[1] == reference[1], path
        assert fast[2] == reference[2], path
        checked += 1
    assert checked == 863


def _cut(src: Path, dst: Path, size: int) -> Path:
    dst.write_bytes(src.read_bytes()[:size])
    return dst


@pytest.mark.parametrize("fraction", [0.001, 0.01, 0.05, 0.2, 0.5, 0.9, 0.999])
@pytest.mark.parametrize(
    "source", ["Philips_Achieva_DTI/0016.dcm", "GE_SIGNA_Pioneer_3D_T1/i152.MRDC.5"]
)
def test_cut_off_vendor_files_get_the_reference_error_reasons(
    tmp_path, monkeypatch, source, fraction
):
    src = VENDOR / source
    size = max(1, int(src.stat().st_size * fraction))
    _cut(src, tmp_path / "cut.dcm", size)
    fast_rows, reference_rows = _rows_by_both_paths(tmp_path, ["cut.dcm"], monkeypatch)
    assert fast_rows == reference_rows
    row, errors = fast_rows[0]
    assert row is not None or errors[0]["severity"] == "error"


def test_bit_flipped_vendor_headers_get_the_reference_rows_and_errors(tmp_path, monkeypatch):
    import random

    rng = random.Random(11)
    names = []
    for source in sorted(VENDOR.rglob("*")):
        if not source.is_file() or "LICENSE" in source.name or source.suffix == ".md":
            continue
        data = bytearray(source.read_bytes())
        for i in range(6):
            damaged = bytearray(data)
            for _ in range(4):
                damaged[rng.randrange(132, min(len(damaged), 20000))] ^= 1 << rng.randrange(8)
            name = f"{source.stem}_{i}.dcm"
            (tmp_path / name).write_bytes(bytes(damaged))
            names.append(name)
    fast_rows, reference_rows = _rows_by_both_paths(tmp_path, names, monkeypatch)
    assert fast_rows == reference_rows


def test_memo_does_not_leak_one_files_values_into_another(tmp_path):
    """Two files that differ in one value give their own JSON even when read alternately."""
    import pydicom

    src = VENDOR / "Philips_Achieva_DTI" / "0016.dcm"
    ds = pydicom.dcmread(src)
    ds.SeriesDescription = "first"
    ds.save_as(tmp_path / "a.dcm")
    ds.SeriesDescription = "second"
    ds.save_as(tmp_path / "b.dcm")
    for _ in range(2):
        for name, expected in (("a.dcm", "first"), ("b.dcm", "second")):
            _, text, _ = fast_header.read_header_fast(tmp_path / name)
            assert f'"0008103E":{{"Value":["{expected}"],"vr":"LO"}}' in text
    shutil.rmtree(tmp_path)


def _pydicom_json(vr: str, value: bytes, charset: str | None) -> str | None:
    """JSON text of one element by the reference rules (pydicom's conversion)."""
    import json

    from pydicom.dataelem import RawDataElement
    from pydicom.dataset import Dataset
    from pydicom.tag import BaseTag

    from dicom_json import element_entry

    tag = BaseTag(0x00111001)  # private: pydicom keeps the explicit VR as given
    ds = Dataset({tag: RawDataElement(tag, vr, len(value), value, 0, False, True)})
    encoding = "iso8859" if charset is None else fast_header.convert_encodings(charset)
    ds.set_original_encoding(False, True, encoding)
    problems: list[str] = []
    entry = element_entry(ds, tag, problems)
    if entry is None:
        return None
    try:
        return json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False)
    except ValueError:
        return None


_GENERATED = {
    "DS": [b"1.5", b" 120 ", b"-0.25\\3e2\\.5", b"1.0\\", b"abc", b"1e400", b"", b"  ", b"7\\ 8 "],
    "IS": [b"12", b" 7", b"-3\\+4", b"1.0", b"", b"1\\\\2", b"0012 "],
    "UI": [b"1.2.840.10008.1.2\x00", b"1.2.3\\4.5", b"", b" "],
    "CS": [b"ORIGINAL\\PRIMARY\\M\\ND", b"A \\B ", b"\\", b"", b"X\x00"],
    "TM": [b"120000.123456", b"", b"1200 "],
    "DA": [b"20240101", b"2024.01.01 "],
    "LO": [b"T1 MPRAGE ", b"a\\b \\ c", b"caf\xe9", b"\x1b$B", b"", b"x\x00"],
    "SH": [b"ABC", b"\\"],
    "LT": [b"free text \\ with backslash  "],
    "FL": [b"\x00\x00\xc0?", b"\x00\x00\xc0?\x00\x00\x80\x7f", b"\x00\x00\xc0", b""],
    "FD": [b"\x00" * 8, b"\x00\x00\x00\x00\x00\x00\xf8\x7f"],
    "US": [b"\x01\x00", b"\x01\x00\x02\x00", b"\x01"],
    "SS": [b"\xff\xff"],
    "SL": [b"\xff\xff\xff\xff\x01\x00\x00\x00"],
    "UL": [b"\x10\x00\x00\x00"],
    "OB": [b"\x00\x01\x02", b""],
    "UN": [b"\xde\xad\xbe\xef"],
}


@pytest.mark.parametrize("charset", [None, "ISO_IR 100", "ISO_IR 192", "ISO 2022 IR 87"])
@pytest.mark.parametrize(
    ("vr", "value"), [(vr, v) for vr, values in _GENERATED.items() for v in values]
)
def test_direct_conversion_equals_pydicom_or_declines(vr, value, charset):
    key = None if charset is None else fast_header.convert_encodings(charset)
    key = "iso8859" if key is None else tuple(key)
    direct = fast_header._direct_json(vr, value, key)
    if direct is not None:
        assert direct == _pydicom_json(vr, value, charset)


def _pixels(read, path):
    try:
        return read(path).pixel_array
    except Exception as exc:  # noqa: BLE001 - the same failure on both paths is agreement
        return type(exc).__name__


@pytest.mark.parametrize("path", _real_files(), ids=lambda p: p.name)
def test_fast_dataset_decodes_to_the_reference_pixels_for_every_real_file(path):
    from dicom_io import read_for_pixels

    fast = fast_header.read_dataset_fast(path)
    if fast is None:
        return  # save_slices reads this file with the reference reader
    expected = _pixels(read_for_pixels, path)
    got = _pixels(lambda p: fast, path)
    if isinstance(expected, str):
        assert got == expected
    else:
        assert not isinstance(got, str), got
        assert got.dtype == expected.dtype and got.shape == expected.shape
        assert (got == expected).all()
        assert fast.get("RescaleSlope") == read_for_pixels(path).get("RescaleSlope")


def test_fast_dataset_reads_vendor_pixels_without_falling_back():
    for path in sorted(VENDOR.rglob("*")):
        if path.is_file() and "LICENSE" not in path.name and path.suffix != ".md":
            assert fast_header.read_dataset_fast(path) is not None, path


def test_memo_keeps_no_long_values_and_stays_bounded(monkeypatch):
    """Per-file megabyte sequences (enhanced multi-frame) must not pile up in memory."""
    fast_header._memo.clear()
    fast_header._remember(("long",), ("x", ()), fast_header.MEMO_MAX_BYTES + 1)
    assert ("long",) not in fast_header._memo
    monkeypatch.setattr(fast_header, "MEMO_LIMIT", 3)
    for i in range(5):
        fast_header._remember(("short", i), ("x", ()), 10)
    assert 1 <= len(fast_header._memo) <= 3
    assert ("short", 4) in fast_header._memo
