"""Tests for scripts/table_schema.py: column types by VR, value conversion, the instances schema."""

from __future__ import annotations

import datetime as dt

import pyarrow as pa
import pydicom
import pytest

import demo
from table_schema import (
    CORE_KEYWORDS,
    OWN_COLUMNS_AFTER,
    OWN_COLUMNS_BEFORE,
    arrow_type,
    convert_value,
    instance_keywords,
    instances_schema,
)

CT_HEADER = pydicom.dcmread(demo.CT_SMALL, stop_before_pixels=True)
"""Header of the GE CT sample: real values for every conversion below."""
MR_HEADER = pydicom.dcmread(sorted(demo.MR_SERIES.iterdir())[0], stop_before_pixels=True)
"""Header of the first Siemens MR slice: TM with a fraction, 1-n DS and IS values."""


class TestArrowType:
    @pytest.mark.parametrize(
        ("keyword", "expected"),
        [
            pytest.param("SeriesNumber", pa.int64(), id="IS-int64"),
            pytest.param("InstanceNumber", pa.int64(), id="IS-instance-number-int64"),
            pytest.param("SliceThickness", pa.float64(), id="DS-float64"),
            pytest.param("StudyDate", pa.date32(), id="DA-date32"),
            pytest.param("StudyTime", pa.time64("us"), id="TM-time64us"),
            pytest.param("SOPInstanceUID", pa.string(), id="UI-string"),
            pytest.param("Modality", pa.string(), id="CS-single-string"),
            pytest.param("PatientName", pa.string(), id="PN-string"),
            pytest.param("ImageType", pa.list_(pa.string()), id="CS-multi-list-string"),
            pytest.param("PixelSpacing", pa.list_(pa.float64()), id="DS-pair-list-double"),
            pytest.param("ImagePositionPatient", pa.list_(pa.float64()), id="DS-3-list-double"),
            pytest.param("WindowCenter", pa.list_(pa.float64()), id="DS-1-n-list-double"),
            pytest.param("Rows", pa.int64(), id="US-int64"),
            pytest.param("SmallestImagePixelValue", pa.int64(), id="US-or-SS-int64"),
            pytest.param("NumberOfFrames", pa.int64(), id="number-of-frames-int64"),
        ],
    )
    def test_types_a_keyword_column_by_its_dictionary_vr(self, keyword, expected):
        assert arrow_type(keyword) == expected

    def test_raises_value_error_for_an_unknown_keyword(self):
        with pytest.raises(ValueError, match="NotADicomKeyword"):
            arrow_type("NotADicomKeyword")


class TestConvertValue:
    @pytest.mark.parametrize(
        ("keyword", "expected"),
        [
            pytest.param("Modality", "CT", id="CS"),
            pytest.param("SOPClassUID", "1.2.840.10008.5.1.4.1.1.2", id="UI"),
            pytest.param("SeriesNumber", 1, id="IS"),
            pytest.param("AcquisitionNumber", 2, id="IS-2"),
            pytest.param("SliceThickness", 5.0, id="DS"),
            pytest.param("RescaleIntercept", -1024.0, id="DS-negative"),
            pytest.param("StudyDate", dt.date(2004, 1, 19), id="DA"),
            pytest.param("SeriesDate", dt.date(1997, 4, 30), id="DA-series"),
            pytest.param("StudyTime", dt.time(7, 27, 30), id="TM"),
            pytest.param("ImageType", ["ORIGINAL", "PRIMARY", "AXIAL"], id="CS-multi"),
            pytest.param("PixelSpacing", [0.661468, 0.661468], id="DS-pair"),
            pytest.param(
                "ImagePositionPatient", [-158.135803, -179.035797, -75.699997], id="DS-triple"
            ),
            pytest.param("Rows", 128, id="US"),
        ],
    )
    def test_converts_real_ct_values_to_their_column_type(self, keyword, expected):
        assert convert_value(CT_HEADER[keyword].value, keyword) == expected

    def test_converts_real_mr_time_with_fraction_and_multi_valued_numbers(self):
        assert convert_value(MR_HEADER.StudyTime, "StudyTime") == dt.time(15, 1, 38, 3000)
        assert convert_value(MR_HEADER.WindowCenter, "WindowCenter") == [378.0]
        assert convert_value(MR_HEADER.EchoNumbers, "EchoNumbers") == [1.0]

    @pytest.mark.parametrize(
        ("value", "keyword", "expected"),
        [
            pytest.param("20220407", "StudyDate", dt.date(2022, 4, 7), id="DA-plain"),
            pytest.param("2022.04.07", "StudyDate", dt.date(2022, 4, 7), id="DA-acr-nema-dots"),
            pytest.param("20220407 ", "StudyDate", dt.date(2022, 4, 7), id="DA-padded"),
            pytest.param("103535.317000", "StudyTime", dt.time(10, 35, 35, 317000), id="TM-frac"),
            pytest.param("103535.3", "StudyTime", dt.time(10, 35, 35, 300000), id="TM-short-frac"),
            pytest.param("1035", "StudyTime", dt.time(10, 35), id="TM-hhmm"),
            pytest.param("10", "StudyTime", dt.time(10), id="TM-hh"),
            pytest.param("10:35:35", "StudyTime", dt.time(10, 35, 35), id="TM-acr-nema-colons"),
            pytest.param("235960", "StudyTime", dt.time(23, 59, 59), id="TM-leap-second"),
            pytest.param(" 2.5 ", "SliceThickness", 2.5, id="DS-padded"),
            pytest.param("3.0", "SeriesNumber", 3, id="IS-written-as-whole-float"),
            pytest.param(["1", "", "2"], "PixelSpacing", [1.0, 2.0], id="DS-multi-empty-item"),
            pytest.param("0.5", "PixelSpacing", [0.5], id="DS-multi-single-value"),
            pytest.param(["1", "2"], "SliceThickness", 1.0, id="DS-single-keeps-first"),
            pytest.param(["CT", "MR"], "Modality", "CT\\MR", id="CS-single-joins"),
        ],
    )
    def test_parses_dicom_text_values(self, value, keyword, expected):
        assert convert_value(value, keyword) == expected

    @pytest.mark.parametrize(
        ("value", "keyword"),
        [
            pytest.param(None, "SliceThickness", id="none"),
            pytest.param("", "StudyDate", id="empty-string"),
            pytest.param("  ", "Modality", id="blank-string"),
            pytest.param([], "PixelSpacing", id="empty-list"),
        ],
    )
    def test_returns_none_for_empty_values(self, value, keyword):
        assert convert_value(value, keyword) is None

    @pytest.mark.parametrize(
        ("value", "keyword"),
        [
            pytest.param("1.0.2", "SliceThickness", id="DS-two-points"),
            pytest.param("P1:", "SliceThickness", id="DS-vendor-junk"),
            pytest.param("nan", "SliceThickness", id="DS-nan"),
            pytest.param("1e999", "SliceThickness", id="DS-infinite"),
            pytest.param("1.5", "SeriesNumber", id="IS-fraction"),
            pytest.param("20221332", "StudyDate", id="DA-month-13"),
            pytest.param("2022", "StudyDate", id="DA-year-only"),
            pytest.param("250000", "StudyTime", id="TM-hour-25"),
            pytest.param("20220407", "StudyTime", id="TM-given-a-date"),
            pytest.param(["0.5", "x"], "PixelSpacing", id="DS-multi-one-bad-item"),
        ],
    )
    def test_raises_value_error_for_a_malformed_value(self, value, keyword):
        with pytest.raises(ValueError):
            convert_value(value, keyword)

    @pytest.mark.parametrize(
        "value",
        [
            pytest.param("1e300", id="exponent"),
            pytest.param("99999999999999999999", id="twenty-digits"),
        ],
    )
    def test_raises_value_error_for_an_integer_beyond_int64(self, value):
        with pytest.raises(ValueError):
            convert_value(value, "SeriesNumber")


class TestInstanceKeywords:
    def test_lists_core_keywords_then_extras_without_repeats(self):
        keywords = instance_keywords(["PatientPosition", "Modality", "PatientPosition"])

        assert keywords == [*CORE_KEYWORDS, "PatientPosition"]

    def test_raises_value_error_for_an_unknown_extra_keyword(self):
        with pytest.raises(ValueError, match="NoSuchKeyword"):
            instance_keywords(["NoSuchKeyword"])


class TestInstancesSchema:
    def test_has_own_columns_then_core_keywords_in_order_then_header_json(self):
        names = instances_schema().names

        own_before = [name for name, _ in OWN_COLUMNS_BEFORE]
        assert names[: len(own_before)] == ["path", "file_size", "series_key", "has_pixels"]
        assert names[len(own_before) : len(own_before) + len(CORE_KEYWORDS)] == list(CORE_KEYWORDS)
        assert names[-1] == "header_json"
        assert len(names) == len(own_before) + len(CORE_KEYWORDS) + len(OWN_COLUMNS_AFTER)

    def test_appends_extra_keywords_after_the_core_keywords(self):
        names = instances_schema(["PatientPosition", "ExposureTime"]).names

        core_end = names.index(CORE_KEYWORDS[-1])
        assert names[core_end + 1 : core_end + 3] == ["PatientPosition", "ExposureTime"]
        assert names[-1] == "header_json"

    def test_does_not_repeat_a_core_keyword_given_as_extra(self):
        assert instances_schema(["Modality"]).names == instances_schema().names

    def test_types_keyword_columns_with_arrow_type(self):
        schema = instances_schema(["PatientPosition", "ExposureTime"])

        for keyword in [*CORE_KEYWORDS, "PatientPosition", "ExposureTime"]:
            assert schema.field(keyword).type == arrow_type(keyword), keyword
        assert schema.field("has_pixels").type == pa.bool_()
        assert schema.field("file_size").type == pa.int64()
        assert schema.field("header_json").type == pa.string()

    def test_raises_value_error_for_an_unknown_extra_keyword(self):
        with pytest.raises(ValueError, match="NoSuchKeyword"):
            instances_schema(["NoSuchKeyword"])


class TestReadTable:
    """``read_table`` replaces ``pq.read_table`` in the step scripts (without importing
    pyarrow.dataset); with a schema it must read a part file the way it did."""

    def test_with_a_schema_it_reads_as_pyarrow_read_table_does(self, tmp_path):
        import pyarrow.parquet as pq

        import table_schema

        stored = pa.table(
            {
                "series_key": ["a", "b"],
                "sheet_path": ["contact_sheets/a.png", "contact_sheets/b.png"],
                "extra": [1, 2],
                "spacing": pa.array(
                    [[0.5, 0.5], None], pa.list_(pa.field("element", pa.float64()))
                ),
            }
        )
        path = tmp_path / "part.parquet"
        pq.write_table(stored, path)
        wanted = pa.schema(
            [
                ("series_key", pa.string()),
                ("spacing", pa.list_(pa.float64())),
                ("n_tiles", pa.int64()),
                ("sheet_path", pa.string()),
            ]
        )
        ours = table_schema.read_table(path, schema=wanted)
        assert ours.equals(pq.read_table(path, schema=wanted), check_metadata=True)
        assert ours.column("n_tiles").to_pylist() == [None, None]
        assert ours.column("spacing").to_pylist() == [[0.5, 0.5], None]

    def test_columns_are_read_in_the_files_order_of_rows(self, tmp_path):
        import pyarrow.parquet as pq

        import table_schema

        path = tmp_path / "part.parquet"
        pq.write_table(pa.table({"x": [3, 1, 2], "y": ["c", "a", "b"]}), path)
        assert table_schema.read_table(path, ["y"]).to_pylist() == [
            {"y": "c"},
            {"y": "a"},
            {"y": "b"},
        ]
