"""Tests for scripts/extract_metadata.py: one shard of the demo study into typed tables."""

from __future__ import annotations

import datetime as dt
import json
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.dataelem import RawDataElement
from pydicom.tag import Tag

import demo
import dicom_io
import extract_metadata
import scan_study
import table_schema

CT_SERIES_FOLDER = demo.CT_SERIES.relative_to(demo.STUDY).as_posix()
NO_PIXEL_FILES = [demo.SR, demo.ECG, demo.RTPLAN]


def rel(path: Path) -> str:
    """Study-relative posix path, as the tables hold it."""
    return path.relative_to(demo.STUDY).as_posix()


def run_extract(study: Path, out: Path, *extra: str) -> tuple[int, Path, Path]:
    """Scan ``study`` into one shard list, extract it; return exit code and table paths."""
    assert scan_study.main(["--study", str(study), "--out-dir", str(out / "scan")]) == 0
    (shard,) = sorted((out / "scan").glob("shard_*.jsonl"))
    instances, errors = out / "instances.parquet", out / "errors.parquet"
    args = ["--study", str(study), "--shard", str(shard)]
    args += ["--instances", str(instances), "--errors", str(errors), *extra]
    return extract_metadata.main(args), instances, errors


def study_of(tmp_path: Path, files: dict[str, Path]) -> Path:
    """A small study folder holding copies of real files under the given names."""
    study = tmp_path / "study"
    study.mkdir()
    for name, src in files.items():
        shutil.copyfile(src, study / name)
    return study


def with_raw_value(src: Path, target: Path, tag: int, vr: str, value: bytes) -> Path:
    """Copy of ``src`` with one element's bytes replaced, written without validation."""
    ds = pydicom.dcmread(src)
    ds[Tag(tag)] = RawDataElement(Tag(tag), vr, len(value), value, 0, False, True)
    ds.save_as(target)
    return target


@pytest.fixture(scope="module")
def demo_tables(tmp_path_factory):
    """Instances and errors of the whole demo study, extracted once for this module."""
    out = tmp_path_factory.mktemp("extract_demo")
    code, instances, errors = run_extract(demo.STUDY, out)
    assert code == 0
    return {"instances": pq.read_table(instances), "errors": pq.read_table(errors)}


@pytest.fixture(scope="module")
def rows_by_path(demo_tables):
    return {row["path"]: row for row in demo_tables["instances"].to_pylist()}


@pytest.fixture(scope="module")
def error_rows(demo_tables):
    return demo_tables["errors"].to_pylist()


class TestMain:
    def test_every_study_file_is_an_instance_or_an_error_exactly_once(
        self, demo_tables, error_rows
    ):
        study_files = {rel(p) for p in demo.STUDY.rglob("*") if p.is_file()}
        instance_paths = demo_tables["instances"].column("path").to_pylist()
        error_paths = [e["path"] for e in error_rows if e["severity"] == "error"]

        assert len(study_files) == demo.N_STUDY_FILES == 72
        assert len(instance_paths) == len(set(instance_paths))
        assert len(error_paths) == len(set(error_paths))
        assert not set(instance_paths) & set(error_paths)
        assert set(instance_paths) | set(error_paths) == study_files

    @pytest.mark.parametrize(
        ("path", "reason", "detail_part"),
        [
            pytest.param(demo.NO_META, "not_dicom", "DICM", id="no-meta"),
            pytest.param(demo.ZIP_MR, "not_dicom", "gzip", id="gzip"),
            pytest.param(demo.RTPLAN_TRUNCATED, "truncated", "header", id="cut-in-dataset"),
        ],
    )
    def test_files_that_are_not_instances_are_error_rows(
        self, error_rows, path, reason, detail_part
    ):
        rows = [e for e in error_rows if e["path"] == rel(path)]

        assert len(rows) == 1
        assert rows[0]["severity"] == "error"
        assert rows[0]["reason"] == reason
        assert detail_part in rows[0]["detail"]
        assert rows[0]["stage"] == "extract"

    def test_writes_instances_with_the_explicit_table_schema(self, demo_tables):
        assert demo_tables["instances"].schema.equals(
            table_schema.shard_schema(table_schema.instances_schema()), check_metadata=False
        )
        assert demo_tables["errors"].schema.equals(table_schema.ERRORS_SCHEMA, check_metadata=False)

    @pytest.mark.parametrize(
        "keyword",
        [
            "SOPInstanceUID",
            "Modality",
            "Manufacturer",
            "Rows",
            "Columns",
            "BitsAllocated",
            "PixelSpacing",
            "ImagePositionPatient",
            "ImageOrientationPatient",
            "SliceThickness",
            "RescaleIntercept",
            "ImageType",
        ],
    )
    def test_ct_small_values_equal_pydicom_values(self, rows_by_path, keyword):
        ds = pydicom.dcmread(demo.CT_SMALL, stop_before_pixels=True)
        value = ds[keyword].value

        got = rows_by_path[rel(demo.CT_SMALL)][keyword]

        if isinstance(value, pydicom.multival.MultiValue):
            expected = [float(v) if keyword != "ImageType" else v for v in value]
        elif isinstance(value, float):
            expected = float(value)
        else:
            expected = value
        assert got == expected

    def test_ct_small_modality_and_transfer_syntax(self, rows_by_path):
        row = rows_by_path[rel(demo.CT_SMALL)]

        assert row["Modality"] == "CT"
        assert row["TransferSyntaxUID"] == pydicom.uid.ExplicitVRLittleEndian
        assert row["file_size"] == demo.CT_SMALL.stat().st_size

    def test_study_date_and_time_are_python_date_and_time(self, rows_by_path):
        row = rows_by_path[rel(demo.CT_SMALL)]

        assert row["StudyDate"] == dt.date(2004, 1, 19)
        assert type(row["StudyDate"]) is dt.date
        assert row["StudyTime"] == dt.time(7, 27, 30)

    @pytest.mark.parametrize(
        ("path", "frames"),
        [
            pytest.param(demo.CT_SMALL, 1, id="ct-single-frame-no-tag"),
            pytest.param(sorted(demo.MR_SERIES.iterdir())[0], 1, id="mr-single-frame"),
            pytest.param(demo.RTDOSE, 15, id="rtdose-15-frames"),
            pytest.param(demo.US_YBR_MULTIFRAME, 30, id="us-30-frames"),
            pytest.param(demo.SR, 1, id="sr-no-pixels"),
        ],
    )
    def test_number_of_frames_is_one_when_absent_else_the_header_value(
        self, rows_by_path, path, frames
    ):
        assert rows_by_path[rel(path)]["NumberOfFrames"] == frames

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(demo.SR, id="structured-report"),
            pytest.param(demo.ECG, id="ecg-waveform"),
            pytest.param(demo.RTPLAN, id="rt-plan"),
        ],
    )
    def test_has_pixels_is_false_for_objects_without_pixel_data(self, rows_by_path, path):
        assert rows_by_path[rel(path)]["has_pixels"] is False

    def test_has_pixels_is_true_for_every_image(self, rows_by_path):
        images = {p: r for p, r in rows_by_path.items() if r["Rows"] is not None}

        assert len(images) == 66
        assert all(r["has_pixels"] for r in images.values())
        assert {p for p, r in rows_by_path.items() if not r["has_pixels"]} == {
            rel(p) for p in NO_PIXEL_FILES
        }

    def test_deidentified_ct_rows_have_an_empty_uid_warning(self, rows_by_path, error_rows):
        ct_paths = {p for p in rows_by_path if p.startswith(CT_SERIES_FOLDER + "/")}
        warned = {
            e["path"]: e
            for e in error_rows
            if e["reason"] == "empty_uid" and e["severity"] == "warning"
        }

        assert len(ct_paths) == 20
        assert set(warned) == ct_paths
        assert all("SOPInstanceUID" in e["detail"] for e in warned.values())
        for path in ct_paths:  # the dataset's UID is empty; the file meta's is used instead
            meta = pydicom.dcmread(demo.STUDY / path, stop_before_pixels=True).file_meta
            assert rows_by_path[path]["SOPInstanceUID"] == meta.MediaStorageSOPInstanceUID

    def test_truncated_pixel_data_is_an_instance_with_a_truncated_warning(
        self, rows_by_path, error_rows
    ):
        path = rel(demo.MR_TRUNCATED)
        warnings = [e for e in error_rows if e["path"] == path]

        assert rows_by_path[path]["has_pixels"] is True
        assert [(e["reason"], e["severity"]) for e in warnings] == [("truncated", "warning")]

    def test_header_json_is_dicom_json_for_every_instance(self, rows_by_path):
        for path, row in rows_by_path.items():
            ds = pydicom.Dataset.from_json(row["header_json"])
            assert "7FE00010" not in json.loads(row["header_json"]), path
            if row["SOPClassUID"]:  # from the dataset, else from the file meta (group 0002)
                expected = ds.get("SOPClassUID") or ds.get("MediaStorageSOPClassUID")
                assert expected == row["SOPClassUID"], path

    def test_rows_are_sorted_by_path(self, demo_tables, error_rows):
        paths = demo_tables["instances"].column("path").to_pylist()

        assert paths == sorted(paths)
        assert [e["path"] for e in error_rows] == sorted(e["path"] for e in error_rows)

    def test_malformed_value_becomes_null_with_a_malformed_value_warning(self, tmp_path):
        study = tmp_path / "study"
        study.mkdir()
        with_raw_value(demo.CT_SMALL, study / "bad_ds.dcm", 0x00180050, "DS", b"P1: ")

        code, instances, errors = run_extract(study, tmp_path / "out")

        assert code == 0
        (row,) = pq.read_table(instances).to_pylist()
        assert row["SliceThickness"] is None
        assert row["Modality"] == "CT"
        assert row["PixelSpacing"] == [0.661468, 0.661468]
        warnings = pq.read_table(errors).to_pylist()
        assert all(e["severity"] == "warning" for e in warnings)
        table_warnings = [e for e in warnings if e["detail"].startswith("SliceThickness:")]
        assert [e["reason"] for e in table_warnings] == ["malformed_value"]

    def test_extra_keyword_adds_a_typed_column(self, tmp_path):
        study = study_of(tmp_path, {"ct.dcm": demo.CT_SMALL, "mr.dcm": demo.MR_RLE})

        code, instances, _ = run_extract(
            study, tmp_path / "out", "--keyword", "PatientPosition", "--keyword", "ExposureTime"
        )

        assert code == 0
        table = pq.read_table(instances)
        assert table.schema.field("PatientPosition").type == table_schema.arrow_type(
            "PatientPosition"
        )
        assert str(table.schema.field("ExposureTime").type) == "int64"
        rows = {r["path"]: r for r in table.to_pylist()}
        ct = pydicom.dcmread(demo.CT_SMALL, stop_before_pixels=True)
        assert rows["ct.dcm"]["PatientPosition"] == ct.PatientPosition == "FFS"
        assert rows["ct.dcm"]["ExposureTime"] == int(ct.ExposureTime)
        names = table.schema.names
        assert names[-7:-4] == ["PatientPosition", "ExposureTime", "header_json"]
        assert names[-4:] == [f.name for f in table_schema.MOSAIC_FIELDS]

    def test_unknown_keyword_exits_with_code_2_and_writes_nothing(self, tmp_path, capsys):
        study = study_of(tmp_path, {"ct.dcm": demo.CT_SMALL})

        code, instances, errors = run_extract(
            study, tmp_path / "out", "--keyword", "NotADicomKeyword"
        )

        assert code == 2
        assert "NotADicomKeyword" in capsys.readouterr().err
        assert not instances.exists()
        assert not errors.exists()

    def test_integer_beyond_int64_becomes_null_instead_of_failing_the_shard(self, tmp_path):
        study = study_of(tmp_path, {"ok.dcm": demo.MR_RLE})
        with_raw_value(demo.CT_SMALL, study / "bad_is.dcm", 0x00200011, "IS", b"1e300 ")

        code, instances, errors = run_extract(study, tmp_path / "out")

        assert code == 0
        rows = {r["path"]: r for r in pq.read_table(instances).to_pylist()}
        assert rows["bad_is.dcm"]["SeriesNumber"] is None
        malformed = [
            e["detail"].split(":")[0]
            for e in pq.read_table(errors).to_pylist()
            if e["reason"] == "malformed_value"
        ]
        assert malformed == ["SeriesNumber"]

    def test_malformed_number_of_frames_becomes_null_not_one(self, tmp_path):
        bad_vr = get_testdata_file("badVR.dcm", download=False)
        study = study_of(tmp_path, {"bad_vr.dcm": Path(bad_vr)})

        code, instances, errors = run_extract(study, tmp_path / "out")

        assert code == 0
        warnings = pq.read_table(errors).to_pylist()
        assert len([e for e in warnings if e["detail"].startswith("NumberOfFrames:")]) == 1
        (row,) = pq.read_table(instances).to_pylist()
        assert row["NumberOfFrames"] is None

    def test_header_json_leaves_out_a_malformed_value_and_reports_it(self, tmp_path):
        study = tmp_path / "study"
        study.mkdir()
        with_raw_value(demo.CT_SMALL, study / "bad_ds.dcm", 0x00180050, "DS", b"P1: ")

        code, instances, errors = run_extract(study, tmp_path / "out")

        assert code == 0
        details = [e["detail"] for e in pq.read_table(errors).to_pylist()]
        left_out = [d for d in details if d.startswith("left out of header_json:")]
        assert len(left_out) == 1
        assert "00180050" in left_out[0] and "P1:" in left_out[0]
        (row,) = pq.read_table(instances).to_pylist()
        assert "00180050" not in json.loads(row["header_json"])
        assert row["SliceThickness"] is None

    def test_a_file_that_cannot_be_opened_is_one_unreadable_file_error_row(
        self, tmp_path, monkeypatch
    ):
        study = study_of(tmp_path, {"locked.dcm": demo.CT_SMALL, "ok.dcm": demo.MR_RLE})
        real_open = open

        def refuse_locked(path, *args, **kwargs):
            if str(path).endswith("locked.dcm"):  # as root, chmod 000 would not stop a read
                raise PermissionError(13, "Permission denied", str(path))
            return real_open(path, *args, **kwargs)

        monkeypatch.setattr(dicom_io, "open", refuse_locked, raising=False)

        code, instances, errors = run_extract(study, tmp_path / "out")

        assert code == 0
        assert pq.read_table(instances).column("path").to_pylist() == ["ok.dcm"]
        assert pq.read_table(errors).to_pylist() == [
            {
                "path": "locked.dcm",
                "reason": "unreadable_file",
                "detail": "PermissionError: Permission denied",
                "severity": "error",
                "stage": "extract",
            }
        ]
