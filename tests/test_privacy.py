"""Privacy: no identifying value in what people share; keyed pseudonyms on request."""

from __future__ import annotations

import shutil
from functools import cache

import pyarrow.parquet as pq
import pydicom
import pytest

import demo
import privacy
from workflow_run import snakemake

KEY = "correct-horse-battery-staple"
SHOWN_BY_DESIGN = {"StudyDescription", "SeriesDescription", "ImageComments"}


@cache
def identifying_values() -> frozenset[str]:
    """Every Basic Profile value (5+ characters: shorter ones match by chance) of the demo."""
    values, equipment = set(), set()
    for path in demo.STUDY.rglob("*"):
        try:
            ds = pydicom.dcmread(path, stop_before_pixels=True)
        except Exception:  # noqa: BLE001 - the bad files of the demo study
            continue
        # an institution named like its maker ('TOSHIBA' of 'TOSHIBA_MEC') says no more
        equipment |= {str(ds.get(k, "")) for k in ("Manufacturer", "ManufacturerModelName")}
        for keyword in set(privacy.IDENTIFYING_KEYWORDS) - SHOWN_BY_DESIGN:
            value = ds.get(keyword)
            if value is None or isinstance(value, pydicom.Sequence):
                continue
            for item in value if isinstance(value, pydicom.multival.MultiValue) else [value]:
                text = str(item).strip()
                if len(text) >= 5 and len(set(text)) > 2:  # '000000' matches pixel bytes
                    values.add(text)
    return frozenset(v for v in values if not any(v in maker for maker in equipment))


def shared_outputs(results) -> dict[str, bytes]:
    """Every output people share: our paths, PNGs, page, logs, benchmarks."""
    return {
        p.relative_to(results).as_posix(): p.read_bytes()
        for p in results.rglob("*")
        # tables, pixel arrays, and the scan's lists and the caches' records of study paths
        # (the user's own folder names)
        if p.is_file() and p.suffix not in (".parquet", ".npy", ".jsonl", ".json")
    }


def table_text(results) -> str:
    """All values of all Parquet tables under results, as one string, file paths left out
    (folder names are the user's own; pseudonymisation covers header values), and so are
    the work lists' file stamps: sizes, nanosecond times and inodes of the copied study,
    new on every run, once held the demo's 5-digit DeviceSerialNumber by chance."""
    paths = {"path", "source_path", "npy_path", "png_path", "sheet_path", "file_stamp"}
    texts = []
    for parquet in results.rglob("*.parquet"):
        table = pq.read_table(parquet)
        texts.append(
            str(table.drop_columns([c for c in table.column_names if c in paths]).to_pylist())
        )
    return "\n".join(texts)


def test_the_demo_study_has_identifying_values_to_look_for():
    values = identifying_values()
    assert len(values) > 20
    assert str(pydicom.dcmread(demo.MR_SERIES / "IM_0001").PatientID) in values


@pytest.mark.slow
class TestDefaultMode:
    def test_no_identifying_value_in_paths_pngs_page_logs_or_benchmarks(self, demo_run):
        _, results, snakemake_log = demo_run
        outputs = shared_outputs(results)
        assert any(name.endswith(".png") for name in outputs)
        for value in identifying_values():
            needle = value.encode("utf-8")
            leaks = [name for name, data in outputs.items() if needle in data or value in name]
            assert not leaks, f"{value!r} appears in {leaks[:3]}"
            assert value not in snakemake_log


@pytest.fixture(scope="module")
def pseudonymized(tmp_path_factory):
    """The workflow in pseudonymize mode, key given in the environment only."""
    cwd = tmp_path_factory.mktemp("pseudonymized")
    shutil.copytree(demo.STUDY, cwd / "study")
    config = ["--config", "study=study", "results=results", "privacy={'mode': 'pseudonymize'}"]
    proc = snakemake(cwd, "--cores", "2", *config, env={privacy.KEY_ENV: KEY})
    return cwd, cwd / "results", proc.stderr


@pytest.mark.slow
class TestPseudonymizeMode:
    def test_tables_and_headers_hold_no_identifying_value(self, pseudonymized):
        _, results, _ = pseudonymized
        text = table_text(results)
        for value in identifying_values():
            assert value not in text, f"{value!r} left in the tables"

    def test_the_key_is_never_written_anywhere(self, pseudonymized):
        cwd, results, log = pseudonymized
        assert KEY not in log
        for path in [*results.rglob("*"), *(cwd / ".snakemake").rglob("*")]:
            if path.is_file():
                assert KEY.encode() not in path.read_bytes(), path

    def test_pseudonyms_keep_series_and_studies_joinable(self, pseudonymized):
        _, results, _ = pseudonymized
        rows = pq.read_table(results / "metadata" / "instances.parquet").to_pylist()
        mr = [r for r in rows if r["path"].startswith("patient01_head_MR/")]
        assert len(mr) == 35
        assert len({r["SeriesInstanceUID"] for r in mr}) == 1
        assert mr[0]["SeriesInstanceUID"].startswith("2.25.")
        expected = privacy.pseudonym(
            str(pydicom.dcmread(demo.MR_SERIES / "IM_0001").SeriesInstanceUID), KEY.encode(), "UI"
        )
        assert mr[0]["SeriesInstanceUID"] == expected
        assert all(r["StudyDate"] is None for r in rows)
        series = pq.read_table(results / "metadata" / "series.parquet").to_pylist()
        assert [s["n_instances"] for s in series if s["SeriesInstanceUID"] == expected] == [35]

    def test_header_json_still_loads_and_keeps_the_geometry(self, pseudonymized):
        _, results, _ = pseudonymized
        rows = pq.read_table(results / "metadata" / "instances.parquet").to_pylist()
        row = next(r for r in rows if r["path"].endswith("IM_0001"))
        ds = pydicom.Dataset.from_json(row["header_json"])
        original = pydicom.dcmread(demo.MR_SERIES / "IM_0001", stop_before_pixels=True)
        assert list(ds.ImagePositionPatient) == list(original.ImagePositionPatient)
        assert str(ds.PatientName).startswith("anon-")
        assert not any(elem.tag.is_private for elem in ds)

    def test_missing_key_stops_with_one_line(self, tmp_path):
        config = ["--config", f"study={demo.STUDY}", "privacy={'mode': 'pseudonymize'}"]
        proc = snakemake(tmp_path, "-n", *config, check=False, env={privacy.KEY_ENV: ""})
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert proc.returncode != 0 and len(lines) == 1 and privacy.KEY_ENV in lines[0]


class TestPatientIdentifiersInFreeText:
    IDS = privacy.identifier_variants(["Doe^John", "021234567", "19700606", None, ""])

    def test_dates_get_their_other_spellings_and_empty_values_are_dropped(self):
        assert (
            sorted(["Doe^John", "021234567", "19700606", "1970-06-06", "06.06.1970", "06/06/1970"])
            == self.IDS
        )

    @pytest.mark.parametrize(
        "text",
        [
            pytest.param("Doe^John", id="same"),
            pytest.param("john doe", id="other-order-and-case"),
            pytest.param("DOE, JOHN", id="comma"),
            pytest.param("Head MR DOE JOHN", id="contains-the-name"),
            pytest.param("021234567", id="patient-id"),
            pytest.param("born 1970-06-06", id="birth-date-spelt-otherwise"),
        ],
    )
    def test_text_repeating_an_identifier_is_blanked(self, text):
        assert privacy.repeats_identifier(text, self.IDS)
        assert privacy.blank_identifying(text, self.IDS) is None

    @pytest.mark.parametrize(
        "text", ["t1_mprage_sag", "Doe", "John", "abdomen^liver", "", None, "0212345"]
    )
    def test_other_text_is_kept(self, text):
        assert privacy.blank_identifying(text, self.IDS) == text

    def test_a_short_identifier_must_match_whole(self):
        ids = privacy.identifier_variants(["HFS"])
        assert privacy.repeats_identifier("hfs", ids)
        assert not privacy.repeats_identifier("HFS head first supine", ids)

    def test_identifiers_in_paths_are_cut_out(self):
        path = "JOHN_DOE_19700606/MR/IM_0001"
        assert privacy.redact_identifiers(path, self.IDS) == "…_DOE_…/MR/IM_0001"
        assert privacy.redact_identifiers(None, self.IDS) is None


class TestSeriesWithoutIdentifyingText:
    """What make_contact_sheets titles sheets with, given the study folder."""

    def manifest(self, key: str, source: str):
        import pyarrow as pa

        return pa.table({"series_key": [key], "source_path": [source]})

    def test_a_description_equal_to_the_patient_name_is_blanked(self):
        ds = pydicom.dcmread(demo.MR_OVERLAY, stop_before_pixels=True)
        record = {
            "series_key": "k",
            "SeriesDescription": str(ds.PatientName).replace("^", " "),
            "StudyDescription": ds.PatientID,
            "Modality": "MR",
        }
        source = demo.MR_OVERLAY.relative_to(demo.STUDY).as_posix()
        (out,) = privacy.series_without_identifying_text(
            [record], self.manifest("k", source), demo.STUDY
        )
        assert out["SeriesDescription"] is None and out["StudyDescription"] is None
        assert out["Modality"] == "MR" and record["SeriesDescription"], "input left alone"

    def test_identifiers_carried_by_the_work_list_need_no_header(self, tmp_path):
        ds = pydicom.dcmread(demo.MR_OVERLAY, stop_before_pixels=True)
        ids = privacy.identifier_variants([str(ds.PatientName), ds.PatientID])
        record = {"series_key": "k", "SeriesDescription": ds.PatientID, "patient_identifiers": ids}
        missing = self.manifest("k", "no/such/file.dcm")  # a header read would find nothing
        (out,) = privacy.series_without_identifying_text([record], missing, tmp_path)
        assert out == {"series_key": "k", "SeriesDescription": None}
        kept = {**record, "SeriesDescription": "t1_fl2d_sag"}
        (out,) = privacy.series_without_identifying_text([kept], missing, None)
        assert out == {"series_key": "k", "SeriesDescription": "t1_fl2d_sag"}

    def test_json_patient_identifiers_read_the_header_json(self):
        ds = pydicom.dcmread(demo.MR_OVERLAY, stop_before_pixels=True)
        found = privacy.json_identifiers(ds.to_json())
        assert {str(ds.PatientName), ds.PatientID} <= set(found)
        assert privacy.json_identifiers(None) == []

    def test_other_descriptions_are_kept_and_no_study_changes_nothing(self):
        record = {"series_key": "k", "SeriesDescription": "marked lesion<MPR Collection>"}
        source = demo.MR_OVERLAY.relative_to(demo.STUDY).as_posix()
        manifest = self.manifest("k", source)
        assert privacy.series_without_identifying_text([record], manifest, demo.STUDY) == [record]
        assert privacy.series_without_identifying_text([record], manifest, None) == [record]

    def test_an_unreadable_source_names_nobody(self, tmp_path):
        (tmp_path / "x.dcm").write_bytes(b"not dicom")
        assert privacy.header_patient_identifiers(tmp_path / "x.dcm") == []
        assert privacy.header_patient_identifiers(tmp_path / "missing.dcm") == []
