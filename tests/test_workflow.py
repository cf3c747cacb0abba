"""End-to-end run of the workflow on the demo study, plus dry-run, lint and config errors."""

from __future__ import annotations

import os
import re

import imageio.v3 as iio
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import build_review_page
import demo
from workflow_run import snakemake

ROOT = demo.ROOT


@pytest.mark.slow
class TestWorkflowOnDemoStudy:
    def test_every_study_file_is_an_instance_or_an_error_exactly_once(self, demo_run):
        _, results, _ = demo_run
        instances = pq.read_table(results / "metadata" / "instances.parquet").to_pylist()
        errors = pq.read_table(results / "metadata" / "errors.parquet").to_pylist()
        indexed = [r["path"] for r in instances]
        failed = [r["path"] for r in errors if r["severity"] == "error"]
        assert len(indexed) + len(failed) == demo.N_STUDY_FILES
        assert set(indexed).isdisjoint(failed)
        on_disk = {
            p.relative_to(demo.STUDY).as_posix() for p in demo.STUDY.rglob("*") if p.is_file()
        }
        assert set(indexed) | set(failed) == on_disk

    def test_bad_files_are_error_rows_with_specific_reasons(self, demo_run):
        _, results, _ = demo_run
        errors = pq.read_table(results / "metadata" / "errors.parquet").to_pylist()
        reasons = {(r["path"], r["reason"]) for r in errors}
        assert ("unsorted/zipMR.gz", "not_dicom") in reasons
        assert ("unsorted/no_meta.dcm", "not_dicom") in reasons
        assert ("unsorted/rtplan_truncated.dcm", "truncated") in reasons
        assert ("unsorted/MR_truncated.dcm", "truncated") in reasons
        # its JPEG stream has non-conforming SOS parameters, yet imagecodecs and dcmtk decode it
        assert ("unsorted/JPEG-lossy.dcm", "undecodable_pixels") not in reasons
        assert ("misc_samples/nm/JPGExtended.dcm", "undecodable_pixels") not in reasons
        undecodable = sorted(p for p, reason in reasons if reason == "undecodable_pixels")
        assert undecodable == ["unsorted/MR_truncated.dcm"]

    def test_each_image_series_with_decodable_pixels_has_a_contact_sheet(self, demo_run):
        _, results, _ = demo_run
        series = pq.read_table(results / "metadata" / "series.parquet").to_pylist()
        slices = pq.read_table(results / "metadata" / "slices.parquet").to_pylist()
        with_slices = {r["series_key"] for r in slices}
        for record in series:
            sheet = results / "contact_sheets" / f"{record['series_key']}.png"
            assert sheet.is_file() == (record["series_key"] in with_slices), record["series_key"]
        # the two real volumes and every ultrasound image are among them
        volumes = {
            r["series_key"] for r in series if r["is_volume"] and r["Modality"] in ("CT", "MR")
        }
        assert len(volumes) == 2 and volumes <= with_slices
        sheet = iio.imread(results / "contact_sheets" / f"{sorted(volumes)[0]}.png")
        assert sheet.ndim == 2 and sheet.shape[0] > 256  # grey tiles: a grey sheet

    def test_ct_slices_are_in_patient_order_in_hounsfield_units(self, demo_run):
        import numpy as np
        import pydicom

        _, results, _ = demo_run
        slices = pq.read_table(results / "metadata" / "slices.parquet").to_pylist()
        ct = [r for r in slices if r["value_units"] == "HU" and r["n_in_plane"] == 20]
        assert [r["index"] for r in ct] == sorted(r["index"] for r in ct)
        positions = [r["position_mm"] for r in ct]
        assert positions == sorted(positions) and len(set(positions)) == len(ct)
        row = ct[len(ct) // 2]
        ds = pydicom.dcmread(demo.STUDY / row["source_path"])
        expected = ds.pixel_array * float(ds.RescaleSlope) + float(ds.RescaleIntercept)
        saved = np.load(results / row["npy_path"])
        assert saved.dtype == np.float32
        np.testing.assert_array_equal(saved, expected.astype(np.float32))

    def test_review_page_data_lists_every_series_with_its_sheet_and_preview(self, demo_run):
        _, results, _ = demo_run
        page = (results / "index.html").read_text(encoding="utf-8")
        assert '<script src="review/series.js">' in page
        text = (results / "review" / "series.js").read_text(encoding="utf-8")
        data = build_review_page.read_data_script(text)
        series = pq.read_table(results / "metadata" / "series.parquet").to_pylist()
        assert sorted(s["k"] for s in data["series"]) == sorted(r["series_key"] for r in series)
        sheets = [s["sheet"] for s in data["series"] if s["sheet"]]
        assert sorted(sheets) == sorted(
            p.relative_to(results).as_posix() for p in (results / "contact_sheets").glob("*.png")
        )
        for src in sheets + [s["pv"] for s in data["series"] if s["pv"]]:
            assert (results / src).is_file(), src

    def test_no_patient_identifiers_in_paths_page_or_logs(self, demo_run):
        import pydicom

        _, results, log = demo_run
        ds = pydicom.dcmread(demo.MR_SERIES / "IM_0001", stop_before_pixels=True)
        secrets = {str(ds.PatientName), str(ds.PatientID), str(ds.PatientBirthDate)} - {""}
        texts = [log, (results / "index.html").read_text(encoding="utf-8")]
        texts.append((results / "review" / "series.js").read_text(encoding="utf-8"))
        texts += [p.read_text(errors="replace") for p in (results / "logs").rglob("*.log")]
        texts += [p.as_posix() for p in results.rglob("*")]
        for secret in secrets:
            assert not any(secret in text for text in texts), "patient identifier leaked"

    def test_a_ratings_file_reruns_only_the_final_tables_and_the_page(self, demo_run):
        cwd, results, _ = demo_run
        key = pq.read_table(results / "metadata" / "series.parquet").column("series_key")[0]
        (cwd / "ratings.csv").write_text(f"series_key,rating\n{key.as_py()}\n")
        (cwd / "ratings.yaml").write_text("review:\n  ratings: ratings.csv\n")
        args = ["-n", "--configfile", "ratings.yaml", "--config", "study=study", "results=results"]
        proc = snakemake(cwd, *args)
        jobs = re.findall(r"^rule (\w+):", proc.stdout, flags=re.MULTILINE)
        assert sorted(set(jobs) - {"all"}) == ["build_review_page", "finalize_tables"], proc.stdout

    def test_second_run_has_nothing_to_do(self, demo_run):
        cwd, _, _ = demo_run
        proc = snakemake(cwd, "--cores", "2", "--config", "study=study", "results=results", "-n")
        assert "Nothing to be done" in proc.stdout + proc.stderr


@pytest.mark.slow  # each starts snakemake: 3-10 s apiece
class TestSnakemakeChecks:
    def test_lint_is_clean(self):
        proc = snakemake(ROOT, "--lint", check=False)
        assert proc.returncode == 0, proc.stdout + proc.stderr
        assert "Congratulations" in proc.stdout + proc.stderr

    def test_dry_run_plans_one_extract_job_per_shard_and_writes_only_shard_lists(self, tmp_path):
        proc = snakemake(tmp_path, "-n", "--config", f"study={demo.STUDY}", "results=results")
        assert "extract_metadata" in proc.stdout and "merge_metadata" in proc.stdout
        written = [p for p in (tmp_path / "results").rglob("*") if p.is_file()]
        assert [p.relative_to(tmp_path / "results").as_posix() for p in written] == [
            "_work/scan/shard_0000.jsonl"
        ]

    def test_larger_extract_shards_go_first(self, tmp_path):
        (tmp_path / "small_shards.yaml").write_text("scan:\n  files_per_shard: 16\n")
        args = ["-n", "--configfile", "small_shards.yaml"]
        proc = snakemake(tmp_path, *args, "--config", f"study={demo.STUDY}", "results=results")
        priorities = {}
        for job in (proc.stdout + proc.stderr).split("rule extract_metadata:")[1:]:
            shard = re.search(r"wildcards: shard=(\d+)", job).group(1)
            given = re.search(r"priority: (\d+)", job)  # not shown when 0
            priorities[shard] = int(given.group(1)) if given else 0
        lists = sorted((tmp_path / "results" / "_work" / "scan").glob("shard_*.jsonl"))
        files = {p.stem.removeprefix("shard_"): len(p.read_text().splitlines()) for p in lists}
        assert len(files) >= 4 and len(set(files.values())) > 1
        assert priorities == files  # the scheduler starts the shards with most files first

    def test_an_empty_study_folder_stops_with_one_clear_line(self, tmp_path):
        (tmp_path / "empty" / "sub").mkdir(parents=True)
        proc = snakemake(tmp_path, "-n", "--config", "study=empty", check=False)
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert proc.returncode != 0
        assert lines == ["dicom-study-pipeline: study folder has no files: empty"]

    def test_a_malformed_ratings_file_stops_with_one_line_naming_file_and_row(self, tmp_path):
        (tmp_path / "ratings.csv").write_text("series_key,rating\nabc,3\nabd,excellent\n")
        (tmp_path / "ratings.yaml").write_text("review:\n  ratings: ratings.csv\n")
        args = ["-n", "--configfile", "ratings.yaml", "--config", f"study={demo.STUDY}"]
        proc = snakemake(tmp_path, *args, check=False)
        assert proc.returncode != 0
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert lines == [
            "dicom-study-pipeline: ratings file 'ratings.csv', row 3: "
            "rating must be 1, 2, 3, 4 or empty, got 'excellent'"
        ]

    @pytest.mark.parametrize(
        ("override", "message"),
        [
            pytest.param(
                ["study=does/not/exist"],
                "study folder not found: does/not/exist",
                id="missing-study",
            ),
            pytest.param(
                ["thumbnails={'size': 'big'}"], "config key 'thumbnails.size'", id="wrong-type"
            ),
            pytest.param(["colour=1"], "'colour' was unexpected", id="unknown-key"),
            pytest.param(
                ["results=" + str(demo.STUDY / "out")],
                "inside the study folder",
                id="results-in-study",
            ),
            pytest.param(
                ["results=" + str(demo.ROOT / "README.md" / "out")],
                "is not writable",
                id="results-unwritable",
            ),
        ],
    )
    def test_bad_config_stops_with_one_clear_line(self, tmp_path, override, message):
        proc = snakemake(tmp_path, "-n", "--config", f"study={demo.STUDY}", *override, check=False)
        assert proc.returncode != 0
        lines = [line for line in (proc.stdout + proc.stderr).splitlines() if line.strip()]
        assert len(lines) == 1, lines
        assert message in lines[0] and lines[0].startswith("dicom-study-pipeline: ")


@pytest.mark.slow
class TestSnakemakeReport:
    def test_report_holds_every_contact_sheet_with_its_caption(self, demo_run):
        cwd, results, _ = demo_run
        report = cwd / "report.html"
        args = ["--config", "study=study", "results=results", "--report", str(report)]
        snakemake(cwd, *args)
        text = report.read_text(encoding="utf-8", errors="replace")
        assert "Contact sheets" in text and "Review" in text
        for sheet in (results / "contact_sheets").glob("*.png"):
            assert sheet.name in text, sheet.name


@pytest.mark.slow
class TestAwkwardFileNames:
    def test_names_that_are_not_utf8_or_hold_newlines_are_indexed_and_decoded(self, tmp_path):
        import shutil

        study = tmp_path / "study"
        study.mkdir()
        latin1 = os.fsdecode(b"caf\xe9_latin1.dcm")
        shutil.copy(demo.CT_SMALL, study / latin1)
        shutil.copy(demo.MR_RLE, study / "naïve ünïcode.dcm")
        (study / "new\nline.txt").write_text("not an image")
        snakemake(tmp_path, "--cores", "2", "--config", "study=study", "results=results")
        results = tmp_path / "results" / "metadata"
        paths = {r["path"] for r in pq.read_table(results / "instances.parquet").to_pylist()}
        assert paths == {"caf\\xe9_latin1.dcm", "naïve ünïcode.dcm"}
        errors = pq.read_table(results / "errors.parquet").to_pylist()
        assert [(e["path"], e["reason"]) for e in errors] == [("new\nline.txt", "not_dicom")]
        slices = pq.read_table(results / "slices.parquet").to_pylist()
        assert {s["source_path"] for s in slices} == paths


N_CONFIGURED_CT = 6
"""Real CT slices in the study of the configured run."""

CONFIGURED = """\
metadata:
  keywords: [ConvolutionKernel, XRayTubeCurrent]
slices:
  fractions: [0.0, 1.0]
thumbnails:
  ct_window: [40, 400]
sheets:
  tiles: 1
volumes:
  format: [nifti]
  modalities: [CT]
"""


def linear_window(values, center, width, shape) -> np.ndarray:
    """PS3.3 C.11.2.1.2 linear window to 0..255 (by hand), resized with Pillow's Lanczos."""
    from PIL import Image

    scaled = ((values - (center - 0.5)) / (width - 1) + 0.5) * 255
    grey = np.clip(np.rint(scaled), 0, 255).astype(np.uint8)
    resized = Image.fromarray(grey).resize((shape[1], shape[0]), Image.Resampling.LANCZOS)
    return np.asarray(resized).astype(int)


@pytest.fixture(scope="module")
def configured_run(tmp_path_factory):
    """A run on six real CT slices with the settings above in the user's config file."""
    import shutil

    cwd = tmp_path_factory.mktemp("configured")
    study = cwd / "study"
    study.mkdir()
    for path in sorted(demo.CT_SERIES.iterdir())[:N_CONFIGURED_CT]:
        shutil.copy(path, study / path.name)
    (cwd / "mine.yaml").write_text(CONFIGURED)
    # the user's --configfile replaces the repository's; its defaults still lie beneath
    snakemake(
        cwd,
        "--cores",
        "2",
        "--configfile",
        "mine.yaml",
        "--config",
        "study=study",
        "results=results",
    )
    return study, cwd / "results"


@pytest.mark.slow
class TestConfigReachesTheSteps:
    """metadata.keywords, slices.fractions, thumbnails.ct_window, sheets.tiles and volumes,
    set in the config, change what a run on six real CT slices writes."""

    def test_volumes_write_the_ct_stack_and_its_row(self, configured_run):
        import nibabel as nib

        _, results = configured_run
        (row,) = pq.read_table(results / "metadata" / "volumes.parquet").to_pylist()
        assert (row["format"], row["shape"], row["dtype"]) == ("nifti", [512, 512, 6], "int16")
        assert row["path"] == f"volumes/{row['series_key']}.nii.gz"
        assert nib.load(results / row["path"]).shape == (512, 512, N_CONFIGURED_CT)
        assert sorted(p.name for p in (results / "volumes").iterdir()) == [
            f"{row['series_key']}.nii.gz"
        ]

    def test_extra_keywords_are_typed_columns_holding_the_header_values(self, configured_run):
        import pydicom

        study, results = configured_run
        table = pq.read_table(results / "metadata" / "instances.parquet")
        kernel_type = table.schema.field("ConvolutionKernel").type  # LO, multi-valued
        assert pa.types.is_list(kernel_type) and kernel_type.value_type == pa.string()
        assert str(table.schema.field("XRayTubeCurrent").type) == "int64"
        for row in table.to_pylist():
            ds = pydicom.dcmread(study / row["path"], stop_before_pixels=True)
            assert row["ConvolutionKernel"] == list(ds.ConvolutionKernel) == ["Br38f", "3"]
            assert row["XRayTubeCurrent"] == int(ds.XRayTubeCurrent)

    def test_fractions_choose_the_first_and_last_slice_in_patient_order(self, configured_run):
        import pydicom

        study, results = configured_run
        slices = pq.read_table(results / "metadata" / "slices.parquet").to_pylist()
        assert [(s["index"], s["n_in_plane"]) for s in slices] == [
            (0, N_CONFIGURED_CT),
            (5, N_CONFIGURED_CT),
        ]
        heights = sorted(
            float(pydicom.dcmread(p, stop_before_pixels=True).ImagePositionPatient[2])
            for p in study.iterdir()
        )
        assert [s["position_mm"] for s in slices] == [heights[0], heights[-1]]

    def test_ct_window_preset_renders_the_thumbnails(self, configured_run):
        _, results = configured_run
        slices = pq.read_table(results / "metadata" / "slices.parquet").to_pylist()
        for row in slices:
            assert (row["window_source"], row["window_center_used"], row["window_width_used"]) == (
                "preset",
                40.0,
                400.0,
            )
            values = np.load(results / row["npy_path"]).astype(np.float64)
            png = iio.imread(results / row["png_path"]).astype(int)
            assert png.shape == (256, 256)  # 512 x 512 at square spacing, longest side 256
            preset, header = (linear_window(values, 40, w, png.shape) for w in (400, 300))
            assert np.abs(png - preset).mean() < 0.5
            assert np.abs(png - header).mean() > 3  # the header's 40/300 looks different

    def test_sheets_hold_the_configured_number_of_tiles(self, configured_run):
        _, results = configured_run
        sheets = [
            row
            for part in sorted((results / "_work" / "sheets").glob("batch_*.parquet"))
            for row in pq.read_table(part).to_pylist()
        ]
        assert [row["n_tiles"] for row in sheets] == [1]
