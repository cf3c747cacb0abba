"""Tests for scripts/dicom_json.py: the header as DICOM JSON, one element at a time."""

from __future__ import annotations

import base64
import json

import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

import demo
from dicom_io import read_header
from dicom_json import header_json

CT_J2K = sorted(demo.CT_SERIES.iterdir())[0]
MR_NATIVE = sorted(demo.MR_SERIES.iterdir())[0]

SLICE_THICKNESS = Tag(0x00180050)
BAD_DS = b"P1: "
"""A malformed Decimal String as vendors write it (even length, space padded)."""

BINARY_VRS = {"OB", "OW", "OF", "OD", "OL", "OV", "UN"}


def pydicom_file(name: str) -> str:
    """Path of a file bundled with pydicom (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not installed"
    return path


def is_bulk(elem) -> bool:
    """Pixel data, overlay data and binary values over 1024 bytes: what header_json leaves
    out; a Siemens CSA image header (0029,1010) is kept up to 64 KiB.
    """
    tag = int(elem.tag)
    if tag in (0x7FE00010, 0x7FE00008, 0x7FE00009):
        return True
    if 0x6000 <= tag >> 16 <= 0x601E and tag & 0xFFFF == 0x3000:
        return True
    if tag == 0x00291010 and len(elem.value or b"") <= 64 * 1024:
        return False
    return elem.VR in BINARY_VRS and len(elem.value or b"") > 1024


def expected_tags(path) -> set[str]:
    """Top-level tags of an independent pydicom header read, file meta included, bulk left out."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    elems = [*ds.file_meta, *ds]
    return {f"{int(e.tag):08X}" for e in elems if not is_bulk(e)}


def expected_keywords(path) -> set[str]:
    """Keywords (standard elements only) of the same independent header read, bulk left out."""
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    return {e.keyword for e in [*ds.file_meta, *ds] if e.keyword and not is_bulk(e)}


def with_bad_slice_thickness(tmp_path):
    """CT_small with its SliceThickness value replaced by a malformed DS, written as-is."""
    ds = pydicom.dcmread(demo.CT_SMALL)
    ds[SLICE_THICKNESS] = RawDataElement(SLICE_THICKNESS, "DS", len(BAD_DS), BAD_DS, 0, False, True)
    target = tmp_path / "ct_bad_slice_thickness.dcm"
    ds.save_as(target)
    return target


ROUND_TRIP_FILES = [
    pytest.param(demo.CT_SMALL, id="ct-ge-private-tags"),
    pytest.param(CT_J2K, id="ct-j2k-deidentified"),
    pytest.param(MR_NATIVE, id="mr-siemens-csa"),
    pytest.param(demo.MR_RLE, id="mr-rle"),
    pytest.param(demo.MR_OVERLAY, id="mr-overlay"),
    pytest.param(demo.MR_TRUNCATED, id="mr-truncated-pixels"),
    pytest.param(demo.NM_JPEG_EXTENDED, id="nm-jpeg-extended"),
    pytest.param(demo.JPEG_LOSSY, id="nm-jpeg-lossy"),
    pytest.param(demo.RTDOSE, id="rtdose-implicit"),
    pytest.param(demo.RTPLAN, id="rtplan-sequences"),
    pytest.param(demo.SR, id="sr-nested-sequences"),
    pytest.param(demo.ECG, id="ecg-waveform"),
    pytest.param(demo.US_JPEG2K, id="us-j2k"),
    pytest.param(demo.US_PALETTE, id="us-palette-lut"),
    pytest.param(demo.US_RGB, id="us-rgb"),
    pytest.param(demo.US_YBR_MULTIFRAME, id="us-ybr-multiframe"),
    pytest.param(pydicom_file("nested_priv_SQ.dcm"), id="nested-private-sequence"),
    pytest.param(pydicom_file("MR_small_bigendian.dcm"), id="mr-big-endian"),
]


class TestHeaderJson:
    @pytest.mark.parametrize("path", ROUND_TRIP_FILES)
    def test_round_trips_every_non_bulk_element_through_pydicom_from_json(self, path):
        text, problems = header_json(read_header(path).dataset)

        back = pydicom.Dataset.from_json(text)

        assert problems == []
        assert {f"{int(e.tag):08X}" for e in back} == expected_tags(path)
        assert {e.keyword for e in back if e.keyword} == expected_keywords(path)

    @pytest.mark.parametrize(
        "keyword",
        ["SOPInstanceUID", "Modality", "PixelSpacing", "ImagePositionPatient", "StudyDate"],
    )
    def test_round_trip_keeps_element_values(self, keyword):
        original = pydicom.dcmread(demo.CT_SMALL, stop_before_pixels=True)

        back = pydicom.Dataset.from_json(header_json(read_header(demo.CT_SMALL).dataset)[0])

        assert back[keyword].value == original[keyword].value

    def test_keeps_private_tags_and_their_creators(self):
        model = json.loads(header_json(read_header(demo.CT_SMALL).dataset)[0])

        assert model["00430010"]["Value"] == ["GEMS_PARM_01"]
        private = {key for key in model if int(key[:4], 16) % 2 == 1}
        assert len(private) == 178  # every private element of the GE header
        assert {"0043104E", "00091001"} <= private

    def test_keeps_nested_private_sequences(self):
        path = pydicom_file("nested_priv_SQ.dcm")

        model = json.loads(header_json(read_header(path).dataset)[0])

        outer = model["00010001"]
        assert outer["vr"] == "SQ"
        inner = outer["Value"][0]["00010001"]
        assert inner["vr"] == "SQ"
        assert base64.b64decode(inner["Value"][0]["00010001"]["InlineBinary"]).startswith(
            b"Double Nested SQ"
        )

    def test_includes_file_meta_elements(self):
        model = json.loads(header_json(read_header(demo.CT_SMALL).dataset)[0])

        assert model["00020010"]["Value"] == [pydicom.uid.ExplicitVRLittleEndian]
        assert model["00020003"]["Value"] == ["1.3.6.1.4.1.5962.1.1.1.1.1.20040119072730.12322"]

    def test_leaves_out_pixel_data_from_a_full_read(self):
        ds = pydicom.dcmread(demo.CT_SMALL)
        assert "PixelData" in ds

        model = json.loads(header_json(ds)[0])

        assert "7FE00010" not in model
        assert model["00280010"]["Value"] == [128]

    def test_leaves_out_overlay_data(self):
        ds = read_header(demo.MR_OVERLAY).dataset
        assert 0x60003000 in ds

        model = json.loads(header_json(ds)[0])

        assert "60003000" not in model
        assert model["60000010"]["Value"] == [ds[0x60000010].value]

    def test_leaves_out_large_binary_values_and_keeps_small_ones(self):
        ds = read_header(MR_NATIVE).dataset
        assert len(ds[0x00291020].value) > 1024  # CSA series header (the MR protocol)
        assert len(ds[0x00291010].value) > 1024  # CSA image header

        model = json.loads(header_json(ds)[0])

        assert "00291020" not in model
        assert model["00020001"] == {"vr": "OB", "InlineBinary": "AAE="}
        csa = base64.b64decode(model["00291010"]["InlineBinary"])
        assert csa == ds[0x00291010].value and csa.startswith(b"SV10")

    def test_writes_compact_key_sorted_json(self):
        text, _ = header_json(read_header(demo.CT_SMALL).dataset)

        keys = list(json.loads(text))
        assert keys == sorted(keys)
        assert ", " not in text[:200] and '": ' not in text[:200]

    def test_malformed_element_is_reported_and_every_other_element_kept(self, tmp_path):
        path = with_bad_slice_thickness(tmp_path)

        text, problems = header_json(read_header(path).dataset)

        model = json.loads(text)
        assert len(problems) == 1
        assert problems[0].startswith("00180050 DS:")
        assert set(model) == expected_tags(demo.CT_SMALL) - {"00180050"}
        assert "P1:" in problems[0]  # the raw value is kept in the report
        assert pydicom.Dataset.from_json(text).Rows == 128  # and the JSON still loads

    def test_malformed_element_does_not_change_other_values(self, tmp_path):
        path = with_bad_slice_thickness(tmp_path)

        bad = json.loads(header_json(read_header(path).dataset)[0])
        good = json.loads(header_json(read_header(demo.CT_SMALL).dataset)[0])

        for key in ("00180050", "00020000", "00020003"):
            # SliceThickness itself, the meta group length and instance UID written by save_as
            bad.pop(key, None)
            good.pop(key, None)
        assert bad == good

    def test_reports_a_malformed_element_even_after_its_value_was_read(self, tmp_path):
        ds = read_header(with_bad_slice_thickness(tmp_path)).dataset
        assert ds.SliceThickness == "P1:"  # reading validation is off: the text is returned

        text, problems = header_json(ds)

        assert len(problems) == 1 and "P1:" in problems[0]
        assert "00180050" not in json.loads(text)

    def test_keeps_long_text_elements_of_implicit_vr_files(self, tmp_path):
        path = pydicom_file("MR_small_implicit.dcm")
        ds = pydicom.dcmread(path)
        assert ds.file_meta.TransferSyntaxUID == pydicom.uid.ImplicitVRLittleEndian
        ds.ImageComments = "long free-text comment " * 60  # LT, 1380 characters
        target = tmp_path / "implicit_long_comment.dcm"
        ds.save_as(target)

        model = json.loads(header_json(read_header(target).dataset)[0])

        assert "00204000" in model


def with_nan_values(tmp_path):
    """CT_small with NaN stored in an FD element at the top level and inside a sequence item
    (float64 NaN bytes in the file, as a faulty exporter writes them)."""
    ds = pydicom.dcmread(demo.CT_SMALL)
    ds.add_new(0x00189306, "FD", float("nan"))  # SingleCollimationWidth
    item = pydicom.Dataset()
    item.add_new(0x00189307, "FD", float("nan"))  # TotalCollimationWidth
    item.add_new(0x00189305, "FD", 1.5)  # RevolutionTime, a good value beside it
    ds.add_new(0x00189325, "SQ", [item])  # CTExposureSequence
    target = tmp_path / "ct_nan.dcm"
    ds.save_as(target)
    return target


class TestHeaderJsonNaNFallback:
    def test_nan_values_are_left_out_and_reported_and_the_text_is_standard_json(self, tmp_path):
        text, problems = header_json(read_header(with_nan_values(tmp_path)).dataset)

        model = json.loads(text, parse_constant=lambda name: pytest.fail(f"{name} in JSON"))
        assert "NaN" not in text
        assert "00189306" not in model
        assert model["00189325"]["Value"] == [{"00189305": {"vr": "FD", "Value": [1.5]}}]
        assert [p.split(":")[0] for p in problems] == ["00189306 FD", "00189325[0].00189307 FD"]

    def test_every_other_element_is_kept_as_without_the_nan_values(self, tmp_path):
        text, _ = header_json(read_header(with_nan_values(tmp_path)).dataset)

        model = json.loads(text)
        assert set(model) == expected_tags(demo.CT_SMALL) | {"00189325"}
        original = json.loads(header_json(read_header(demo.CT_SMALL).dataset)[0])
        for key in ("00020000", "00020003", "00189325"):  # group length, UID, the new sequence
            model.pop(key, None)
            original.pop(key, None)
        assert model == original
