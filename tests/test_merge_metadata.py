"""Tests for scripts/merge_metadata.py, run through the real scan → extract → merge scripts
on small study folders built from copies of the real demo files.
"""

from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pyarrow.parquet as pq
import pydicom
import pytest

import demo
import extract_metadata
import merge_metadata
import scan_study
import table_schema
from sharding import bucket_count

MR_FILES = sorted(demo.MR_SERIES.iterdir())
CT_FILES = sorted(demo.CT_SERIES.iterdir())
MR_SERIES_UID = "1.3.12.2.1107.5.2.43.67060.2022040715044210837860713.0.0.0"
MR_MIDDLE = "IM_0018"
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
KEY = re.compile(r"^[0-9a-f]{12}$")


def run_metadata(study: Path, out: Path, files_per_shard: int = 1000, spb: int = 8) -> dict:
    """Scan, extract every shard and merge; return the three tables as lists of row dicts."""
    scan = out / "scan"
    args = ["--study", str(study), "--out-dir", str(scan)]
    assert scan_study.main([*args, "--files-per-shard", str(files_per_shard)]) == 0
    parts_i, parts_e = [], []
    for shard in sorted(scan.glob("shard_*.jsonl")):
        i, e = out / f"{shard.stem}.i.parquet", out / f"{shard.stem}.e.parquet"
        args = ["--study", str(study), "--shard", str(shard), "--instances", str(i)]
        assert extract_metadata.main([*args, "--errors", str(e)]) == 0
        parts_i.append(str(i))
        parts_e.append(str(e))
    paths = {name: out / "metadata" / f"{name}.parquet" for name in ("instances", "series")}
    paths["errors"] = out / "metadata" / "errors.parquet"
    args = ["--instance-parts", *parts_i, "--error-parts", *parts_e]
    args += [f"--{name}={path}" for name, path in paths.items()]
    assert merge_metadata.main([*args, "--series-per-batch", str(spb)]) == 0
    tables = {name: pq.read_table(path).to_pylist() for name, path in paths.items()}
    tables["paths"] = paths
    return tables


def copy_files(files, folder: Path) -> Path:
    folder.mkdir(parents=True, exist_ok=True)
    for f in files:
        shutil.copyfile(f, folder / f.name)
    return folder


def rewrite(path: Path, **values) -> None:
    """Set header values of a copied file in place (pixel data untouched)."""
    ds = pydicom.dcmread(path)
    for keyword, value in values.items():
        setattr(ds, keyword, value)
    ds.save_as(path)


def only(rows: list[dict]) -> dict:
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture
def study(tmp_path) -> Path:
    return tmp_path / "study"


@pytest.fixture
def mr_folder(study) -> Path:
    """A copy of the demo sagittal MR series."""
    return copy_files(MR_FILES, study / "head_mr")


@pytest.fixture(scope="module")
def demo_tables(demo_metadata) -> dict:
    return {
        name: pq.read_table(demo_metadata[name]).to_pylist()
        for name in ("instances", "series", "errors")
    }


class TestMain:
    def test_demo_mr_series_is_one_good_sagittal_volume(self, study, mr_folder, tmp_path):
        tables = run_metadata(study, tmp_path / "out")
        series = only(tables["series"])
        assert KEY.match(series["series_key"])
        assert series["SeriesInstanceUID"] == MR_SERIES_UID
        assert (series["Modality"], series["n_instances"], series["n_frames"]) == ("MR", 35, 35)
        assert (series["grouped_by"], series["stack"], series["n_stacks"]) == (
            "SeriesInstanceUID",
            1,
            1,
        )
        assert series["orientation"] == "sagittal"
        assert series["slice_spacing"] == pytest.approx(4.8, abs=1e-4)
        assert series["single_orientation"] is True
        assert series["uniform_spacing"] is True
        assert series["missing_slices"] == 0
        assert series["duplicate_positions"] == 0
        assert series["is_volume"] is True
        assert series["total_file_size"] == sum(f.stat().st_size for f in MR_FILES)

    def test_shards_do_not_change_the_series(self, study, mr_folder, tmp_path):
        one = run_metadata(study, tmp_path / "one")
        many = run_metadata(study, tmp_path / "many", files_per_shard=4)
        assert len(list((tmp_path / "many" / "scan").glob("shard_*.jsonl"))) > 1
        assert many["series"] == one["series"]
        assert many["instances"] == one["instances"]

    def test_a_series_longer_than_two_row_groups_merges(
        self, study, mr_folder, tmp_path, monkeypatch
    ):
        """Row groups of instances.parquet that hold only series already seen (one
        series of thousands of files does that at the real size, 1,024 rows) are written,
        their rows gathered from several shards read a few rows at a time.
        """
        one = run_metadata(study, tmp_path / "one")
        monkeypatch.setattr(merge_metadata, "OUTPUT_ROW_GROUP", 4)
        monkeypatch.setattr(merge_metadata, "SHARD_STREAM_BATCH", 3)
        small = run_metadata(study, tmp_path / "small", files_per_shard=4)
        assert len(list((tmp_path / "small" / "scan").glob("shard_*.jsonl"))) > 1
        assert pq.ParquetFile(small["paths"]["instances"]).metadata.num_row_groups == 9
        assert small["instances"] == one["instances"]
        assert small["series"] == one["series"]

    def test_series_with_a_slice_removed_has_one_missing_slice_and_is_no_volume(
        self, study, mr_folder, tmp_path
    ):
        (mr_folder / MR_MIDDLE).unlink()
        series = only(run_metadata(study, tmp_path / "out")["series"])
        assert series["n_instances"] == 34
        assert series["missing_slices"] == 1
        assert series["slice_spacing"] == pytest.approx(4.8, abs=1e-4)
        assert series["uniform_spacing"] is False
        assert series["is_volume"] is False

    def test_series_with_a_slice_duplicated_under_another_name_counts_a_duplicate(
        self, study, mr_folder, tmp_path
    ):
        shutil.copyfile(mr_folder / "IM_0010", mr_folder / "IM_0010_copy")
        series = only(run_metadata(study, tmp_path / "out")["series"])
        assert series["n_instances"] == 36
        assert series["duplicate_positions"] >= 1
        assert series["missing_slices"] == 0
        assert series["is_volume"] is False

    @pytest.mark.parametrize(
        ("mix", "other_file"),
        [
            pytest.param("mr_rewritten_axial", "IM_0020", id="mr_slice_rewritten_to_axial"),
            pytest.param("ct_joined", CT_FILES[0].name, id="ct_slice_given_the_mr_series_uid"),
        ],
    )
    def test_slice_of_another_orientation_splits_the_series_into_flagged_stacks(
        self, study, mr_folder, tmp_path, mix, other_file
    ):
        if mix == "mr_rewritten_axial":
            rewrite(mr_folder / other_file, ImageOrientationPatient=AXIAL)
        else:
            shutil.copyfile(CT_FILES[0], mr_folder / other_file)
            rewrite(mr_folder / other_file, SeriesInstanceUID=MR_SERIES_UID, Rows=256, Columns=256)
        tables = run_metadata(study, tmp_path / "out")

        series = tables["series"]
        assert len(series) == 2
        assert all(s["single_orientation"] is False for s in series)
        assert all(s["is_volume"] is False for s in series)
        assert {s["SeriesInstanceUID"] for s in series} == {MR_SERIES_UID}
        keys = sorted(s["series_key"] for s in series)
        base = keys[0][:-2]
        assert KEY.match(base)
        assert keys == [f"{base}-1", f"{base}-2"]
        assert sorted((s["stack"], s["n_stacks"]) for s in series) == [(1, 2), (2, 2)]
        by_key = {s["series_key"]: s for s in series}
        odd_key = next(
            r["series_key"] for r in tables["instances"] if r["path"].endswith(other_file)
        )
        assert by_key[odd_key]["orientation"] == "axial"
        assert by_key[odd_key]["n_instances"] == 1
        main_key = next(k for k in keys if k != odd_key)
        assert by_key[main_key]["orientation"] == "sagittal"
        assert by_key[main_key]["n_instances"] == 35 - (mix == "mr_rewritten_axial")

    def test_slice_with_an_all_zero_orientation_does_not_stop_the_merge(
        self, study, mr_folder, tmp_path
    ):
        rewrite(mr_folder / "IM_0020", ImageOrientationPatient=[0, 0, 0, 0, 0, 0])
        tables = run_metadata(study, tmp_path / "out")
        assert sum(s["n_instances"] for s in tables["series"]) == 35

    def test_deidentified_demo_ct_with_empty_uids_groups_into_one_series_by_folder(
        self, study, tmp_path
    ):
        copy_files(CT_FILES, study / "abdomen_ct")
        tables = run_metadata(study, tmp_path / "out")
        series = only(tables["series"])
        assert series["grouped_by"] == "folder+SeriesNumber"
        assert series["SeriesInstanceUID"] is None
        assert series["n_instances"] == 20
        assert KEY.match(series["series_key"])
        assert series["orientation"] == "axial"
        assert series["slice_spacing"] == pytest.approx(2.0)
        assert series["is_volume"] is True
        assert {r["series_key"] for r in tables["instances"]} == {series["series_key"]}
        assert {e["reason"] for e in tables["errors"]} == {"empty_uid"}

    def test_deidentified_copies_in_two_folders_stay_two_series(self, study, tmp_path):
        copy_files(CT_FILES, study / "first")
        copy_files(CT_FILES, study / "second")
        series = run_metadata(study, tmp_path / "out")["series"]
        assert [s["n_instances"] for s in series] == [20, 20]
        assert len({s["series_key"] for s in series}) == 2
        assert all(s["duplicate_positions"] == 0 for s in series)

    def test_files_sharing_a_series_uid_across_modalities_split_into_stacks(self, study, tmp_path):
        folder = copy_files([demo.CT_SMALL], study / "shared_uid")
        shutil.copyfile(demo.CT_SMALL, folder / "CT_small_as_PT.dcm")
        rewrite(
            folder / "CT_small_as_PT.dcm",
            Modality="PT",
            SOPInstanceUID=pydicom.uid.generate_uid(entropy_srcs=["test_merge_metadata"]),
        )
        tables = run_metadata(study, tmp_path / "out")
        series = tables["series"]
        assert sorted(s["Modality"] for s in series) == ["CT", "PT"]
        assert len({s["SeriesInstanceUID"] for s in series}) == 1
        base = series[0]["series_key"][:-2]
        assert sorted(s["series_key"] for s in series) == [f"{base}-1", f"{base}-2"]
        assert all(s["n_instances"] == 1 and s["n_stacks"] == 2 for s in series)
        assert all(s["single_orientation"] is True for s in series)
        modality_of = {s["series_key"]: s["Modality"] for s in series}
        for row in tables["instances"]:
            assert modality_of[row["series_key"]] == row["Modality"]

    def test_every_instance_row_has_the_key_of_an_existing_series(self, demo_tables):
        keys = {s["series_key"] for s in demo_tables["series"]}
        instance_keys = [r["series_key"] for r in demo_tables["instances"]]
        assert all(instance_keys)
        assert set(instance_keys) == keys
        for s in demo_tables["series"]:
            assert instance_keys.count(s["series_key"]) == s["n_instances"]

    def test_instances_are_sorted_by_path_and_series_by_key(self, demo_tables):
        paths = [r["path"] for r in demo_tables["instances"]]
        assert paths == sorted(paths)
        keys = [s["series_key"] for s in demo_tables["series"]]
        assert keys == sorted(keys)
        errors = [e["path"] for e in demo_tables["errors"]]
        assert errors == sorted(errors)

    def test_every_study_file_is_an_instance_or_an_error(self, demo_tables):
        instances = {r["path"] for r in demo_tables["instances"]}
        failed = {e["path"] for e in demo_tables["errors"] if e["severity"] == "error"}
        files = {p.relative_to(demo.STUDY).as_posix() for p in demo.STUDY.rglob("*") if p.is_file()}
        assert not instances & failed
        assert instances | failed == files
        assert len(files) == demo.N_STUDY_FILES

    def test_batch_is_assigned_only_to_series_with_pixels(self, demo_tables):
        series = demo_tables["series"]
        with_pixels = [s for s in series if s["has_pixels"]]
        without = [s for s in series if not s["has_pixels"]]
        assert {s["Modality"] for s in without} == {"ECG", "SR", "RTPLAN"}
        assert all(s["batch"] is None for s in without)
        n_batches = bucket_count(len(with_pixels), 8)
        assert all(s["batch"] in range(n_batches) for s in with_pixels)

    def test_series_per_batch_sets_how_many_batches_the_pixel_series_spread_over(
        self, study, tmp_path
    ):
        copy_files([demo.CT_SMALL, demo.US_RGB, demo.SR], study / "misc")
        series = run_metadata(study, tmp_path / "out", spb=1)["series"]
        batches = {s["Modality"]: s["batch"] for s in series}
        assert batches["SR"] is None
        assert {batches["CT"], batches["US"]} <= {0, 1}

    def test_series_table_has_exactly_the_series_schema(self, demo_metadata):
        schema = pq.read_schema(demo_metadata["series"]).remove_metadata()
        assert schema.equals(merge_metadata.SERIES_SCHEMA)

    @pytest.mark.parametrize(
        ("column", "python_type"),
        [
            pytest.param("series_key", str, id="series_key_string"),
            pytest.param("n_instances", int, id="n_instances_int"),
            pytest.param("total_file_size", int, id="total_file_size_int"),
            pytest.param("has_pixels", bool, id="has_pixels_bool"),
            pytest.param("is_volume", bool, id="is_volume_bool"),
        ],
    )
    def test_series_columns_that_are_never_null_hold_their_type(
        self, demo_tables, column, python_type
    ):
        assert all(type(s[column]) is python_type for s in demo_tables["series"])

    def test_geometry_columns_of_the_demo_series_are_typed(self, demo_tables):
        mr = next(s for s in demo_tables["series"] if s["SeriesInstanceUID"] == MR_SERIES_UID)
        assert mr["PixelSpacing"] == [1.015625, 1.015625]
        assert mr["ImageOrientationPatient"] == [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
        assert (mr["Rows"], mr["Columns"], mr["SeriesNumber"]) == (256, 256, 3)
        assert isinstance(mr["slice_spacing"], float)


class TestSeriesIdentity:
    @pytest.mark.parametrize(
        ("row", "expected"),
        [
            pytest.param(
                {"path": "a/b/IM_1", "SeriesInstanceUID": MR_SERIES_UID},
                (f"uid:{MR_SERIES_UID}", "SeriesInstanceUID"),
                id="uid_present",
            ),
            pytest.param(
                {"path": "a/b/IM_1", "SeriesInstanceUID": None, "Modality": "CT"},
                ("fallback:a/b||None|CT", "folder+SeriesNumber"),
                id="uid_missing",
            ),
            pytest.param(
                {"path": "a/b/IM_1", "SeriesInstanceUID": "", "SeriesNumber": 4},
                ("fallback:a/b||4|None", "folder+SeriesNumber"),
                id="uid_empty",
            ),
        ],
    )
    def test_identity_is_the_uid_or_the_folder_fallback(self, row, expected):
        assert merge_metadata.series_identity(row) == expected


class TestRepeatedPositions:
    def test_time_points_sharing_positions_split_into_one_volume_each(self, tmp_path):
        import pydicom

        from steps import index_study

        study = tmp_path / "study"
        (study / "fmri").mkdir(parents=True)
        for time_point in (1, 2):
            for k, source in enumerate(sorted(demo.MR_SERIES.iterdir())):
                ds = pydicom.dcmread(source)
                ds.AcquisitionNumber = time_point
                ds.InstanceNumber = (time_point - 1) * 35 + k + 1
                ds.SOPInstanceUID = f"{ds.SOPInstanceUID}.{time_point}"
                ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
                ds.save_as(study / "fmri" / f"t{time_point}_{k:03d}.dcm")
        tables = index_study(study, tmp_path / "out")
        series = pq.read_table(tables["series"]).to_pylist()
        assert len(series) == 2
        assert [s["n_instances"] for s in series] == [35, 35]
        assert all(s["is_volume"] and s["duplicate_positions"] == 0 for s in series)
        assert {s["series_key"][-2:] for s in series} == {"-1", "-2"}
        instances = pq.read_table(tables["instances"]).to_pylist()
        first = {r["series_key"] for r in instances if r["path"].startswith("fmri/t1_")}
        assert len(first) == 1  # each time point is one stack


class TestBatchWorkLists:
    """The per-batch work lists carry each file's stamp; instances.parquet does not."""

    @staticmethod
    def merge(study: Path, out: Path, spb: int = 1) -> dict[str, bytes]:
        """Scan, extract, merge with the shard lists; the work lists' bytes by name."""
        scan = out / "scan"
        assert scan_study.main(["--study", str(study), "--out-dir", str(scan)]) == 0
        (shard,) = sorted(scan.glob("shard_*.jsonl"))
        i, e = out / "i.parquet", out / "e.parquet"
        args = ["--study", str(study), "--shard", str(shard), "--instances", str(i)]
        assert extract_metadata.main([*args, "--errors", str(e)]) == 0
        args = ["--instance-parts", str(i), "--error-parts", str(e)]
        args += ["--instances", str(out / "instances.parquet"), "--series", str(out / "s.parquet")]
        args += ["--errors", str(out / "errors.parquet"), "--batch-dir", str(out / "batches")]
        args += ["--series-per-batch", str(spb), "--shard-lists", str(shard)]
        assert merge_metadata.main(args) == 0
        return {p.name: p.read_bytes() for p in sorted((out / "batches").iterdir())}

    def test_work_lists_hold_the_stamp_the_scan_listed(self, study, mr_folder, tmp_path):
        self.merge(study, tmp_path / "out")
        (instances,) = (tmp_path / "out" / "batches").glob("*.instances.parquet")
        rows = pq.read_table(instances).to_pylist()
        assert len(rows) == len(MR_FILES)
        for row in rows:
            info = (study / row["path"]).stat()
            assert row["file_stamp"] == (
                f"{info.st_size}:{info.st_mtime_ns}:{info.st_ctime_ns}:{info.st_ino}"
            )
        assert "file_stamp" not in pq.read_schema(tmp_path / "out" / "instances.parquet").names

    def test_pixels_changed_with_mtime_restored_change_only_that_batch(
        self, study, mr_folder, tmp_path
    ):
        copy_files(CT_FILES[:3], study / "ct")
        out = tmp_path / "out"
        before = self.merge(study, out)
        metadata = (out / "instances.parquet").read_bytes()
        target = mr_folder / MR_MIDDLE
        info = target.stat()
        data = bytearray(target.read_bytes())
        data[-64:] = bytes(255 - b for b in data[-64:])
        target.write_bytes(bytes(data))
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        after = self.merge(study, out)
        changed = sorted(name for name in before if before[name] != after[name])
        assert len(changed) == 1 and changed[0].endswith(".instances.parquet")
        assert (out / "instances.parquet").read_bytes() == metadata

    def test_work_lists_of_batches_that_are_gone_are_removed(self, study, mr_folder, tmp_path):
        copy_files(CT_FILES[:3], study / "ct")
        out = tmp_path / "out"
        two = self.merge(study, out)
        assert len(two) == 4  # two batches, a series and an instances list each
        shutil.rmtree(study / "ct")
        one = self.merge(study, out)
        assert len(one) == 2
        assert set(one) < set(two)


class TestPartsSchema:
    @pytest.mark.parametrize("extra", [(), ("EchoTime", "ImageType", "AcquisitionDate")])
    def test_the_shards_schema_is_the_instances_schema_list_names_included(self, tmp_path, extra):
        part = tmp_path / "part.parquet"
        args = ["--study", str(demo.STUDY), "--shard", str(self.shard(tmp_path))]
        args += ["--instances", str(part), "--errors", str(tmp_path / "e.parquet")]
        assert extract_metadata.main(args + [f"--keyword={k}" for k in extra]) == 0
        expected = table_schema.instances_schema(extra)
        found = merge_metadata.parts_schema([str(part)], extra)
        assert found.equals(expected) and str(found) == str(expected)  # list<item: …>
        assert merge_metadata.parts_schema([], extra).equals(expected)

    @staticmethod
    def shard(tmp_path: Path) -> Path:
        scan = tmp_path / "scan"
        args = ["--study", str(demo.STUDY), "--out-dir", str(scan), "--files-per-shard", "4"]
        assert scan_study.main(args) == 0
        return sorted(scan.glob("shard_*.jsonl"))[0]


def test_batch_work_lists_and_the_identifiers_table_carry_each_series_identifiers(tmp_path):
    """The sheets step and the review page keep them out of their text without reading a
    header themselves.
    """
    study = copy_files(MR_FILES[:3], tmp_path / "study" / "mr")
    out = tmp_path / "out"
    tables = run_metadata(study, out)
    batch_dir = out / "batches"
    args = ["--instance-parts", *map(str, sorted(out.glob("shard_*.i.parquet")))]
    args += ["--error-parts", *map(str, sorted(out.glob("shard_*.e.parquet")))]
    args += ["--instances", str(tmp_path / "i.parquet"), "--series", str(tmp_path / "s.parquet")]
    args += ["--errors", str(tmp_path / "e.parquet"), "--batch-dir", str(batch_dir)]
    args += ["--identifiers", str(tmp_path / "identifiers.parquet")]
    assert merge_metadata.main(args) == 0
    (part,) = sorted(batch_dir.glob("batch_*.series.parquet"))
    (record,) = pq.read_table(part).to_pylist()
    ds = pydicom.dcmread(MR_FILES[0], stop_before_pixels=True)
    expected = {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)}
    assert expected <= set(record["patient_identifiers"])
    assert "patient_identifiers" not in pq.read_schema(tmp_path / "s.parquet").names
    assert "patient_identifiers" not in tables["series"][0]
    identifiers = pq.read_table(tmp_path / "identifiers.parquet")
    assert identifiers.schema == table_schema.IDENTIFIERS_SCHEMA
    (row,) = identifiers.to_pylist()
    assert row["series_key"] == record["series_key"]
    assert row["patient"] == record["patient_identifiers"]
    assert {ds.StudyDate, str(ds.InstitutionName), str(ds.StationName)} <= set(row["other"])
    assert "1970-06-06" in row["patient"] and ds.PatientBirthDate == "19700606"
