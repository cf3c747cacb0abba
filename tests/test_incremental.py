"""Incremental reruns: only the work a change calls for is redone (counting jobs, not timing)."""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter

import pydicom
import pytest

import demo
from workflow_run import ROOT, snakemake

CONFIG = ("study=study", "results=results")
RUN = ("--cores", "2", "--configfile", "small_batches.yaml", "--config", *CONFIG)


def jobs_run(stderr: str) -> Counter:
    """How many jobs of each rule a snakemake run executed, from its log."""
    return Counter(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", stderr, flags=re.M))


SMALL_BATCHES = "metadata:\n  series_per_batch: 4\n"
"""Small batches, so the demo's 11 image series spread over 4 batches."""


@pytest.fixture
def finished(tmp_path):
    """A finished run on a copy of the demo study; returns its working folder.

    For the tests that change the study folder: each gets its own copy and run.
    """
    shutil.copytree(demo.STUDY, tmp_path / "study")
    (tmp_path / "small_batches.yaml").write_text(SMALL_BATCHES)
    snakemake(tmp_path, *RUN)
    return tmp_path


@pytest.fixture(scope="module")
def finished_once(tmp_path_factory):
    """One finished run, for the tests that change only settings: ``(working folder, study)``.

    The study folder lies outside the working folder and is never changed, so a copy of
    the working folder (:func:`finished_settings`) run on it finds every file as the
    first run recorded it (size, mtime, ctime and inode).
    """
    base = tmp_path_factory.mktemp("incremental")
    study, cwd = base / "study", base / "run"
    shutil.copytree(demo.STUDY, study)
    cwd.mkdir()
    (cwd / "small_batches.yaml").write_text(SMALL_BATCHES)
    snakemake(cwd, *run_args(study))
    return cwd, study


@pytest.fixture
def finished_settings(finished_once, tmp_path):
    """A copy of :func:`finished_once`'s working folder (results, .snakemake and config file,
    times kept): ``(working folder, arguments of a run like the first)``."""
    cwd, study = finished_once
    copy = tmp_path / "run"
    shutil.copytree(cwd, copy, symlinks=True)
    return copy, study


def run_args(study, configfile: str = "small_batches.yaml") -> tuple[str, ...]:
    """Arguments of a run on ``study`` (a path) with ``configfile``."""
    return (
        "--cores",
        "2",
        "--configfile",
        str(configfile),
        "--config",
        f"study={study}",
        "results=results",
    )


def add_series(study, name: str = "new_series") -> None:
    """A new one-slice CT series folder, from a real file with fresh UIDs."""
    ds = pydicom.dcmread(demo.CT_SMALL)
    ds.SeriesInstanceUID = "1.2.826.0.1.3680043.8.498.1"
    ds.SOPInstanceUID = ds.file_meta.MediaStorageSOPInstanceUID = "1.2.826.0.1.3680043.8.498.2"
    (study / name).mkdir()
    ds.save_as(study / name / "IM_0001")


def scrub_in_place(path) -> None:
    """Rewrite a file's pixel bytes at the same size and set its mtime back (a scrubber's edit)."""
    pixels = bytes(pydicom.dcmread(path).PixelData)
    info = os.stat(path)
    data = path.read_bytes()
    start = data.rindex(pixels)
    path.write_bytes(data[:start] + bytes(b ^ 0x5A for b in pixels) + data[start + len(pixels) :])
    os.utime(path, ns=(info.st_atime_ns, info.st_mtime_ns))
    assert (os.stat(path).st_size, os.stat(path).st_mtime_ns) == (info.st_size, info.st_mtime_ns)


def outputs_match_tables(results) -> None:
    """Every array, thumbnail and sheet on disk is one the final tables list, and back."""
    import pyarrow.parquet as pq

    rows = pq.read_table(results / "metadata" / "slices.parquet").to_pylist()
    listed = {r["npy_path"] for r in rows} | {r["png_path"] for r in rows}
    listed |= {f"contact_sheets/{r['series_key']}.png" for r in rows}
    on_disk = {
        p.relative_to(results).as_posix()
        for folder in ("slices", "thumbnails", "contact_sheets")
        for p in (results / folder).rglob("*")
        if p.is_file()
    }
    assert on_disk == listed
    folders = {p.name for p in (results / "slices").iterdir()}
    assert folders == {r["series_key"] for r in rows}


def series_files(results, key: str) -> dict[str, bytes]:
    """The bytes of a series' arrays, thumbnails and sheet, by result-relative path."""
    paths = [*(results / "slices" / key).iterdir(), *(results / "thumbnails" / key).iterdir()]
    paths.append(results / "contact_sheets" / f"{key}.png")
    return {p.relative_to(results).as_posix(): p.read_bytes() for p in paths}


@pytest.mark.slow
class TestReruns:
    def test_unchanged_inputs_rerun_nothing(self, finished_settings):
        cwd, study = finished_settings
        proc = snakemake(cwd, *run_args(study))
        assert jobs_run(proc.stderr) == Counter()
        assert "Nothing to be done" in proc.stderr

    def test_a_new_series_folder_redoes_only_its_shard_its_batch_and_the_merges(self, finished):
        add_series(finished / "study")
        ran = jobs_run(snakemake(finished, *RUN).stderr)
        assert ran["extract_metadata"] == 1
        assert ran["merge_metadata"] == 1
        # of the demo's batches of series only the one holding the new series is redone
        assert ran["save_slices"] == ran["render_thumbnails"] == ran["make_contact_sheets"] == 1
        assert ran["finalize_tables"] == ran["build_review_page"] == 1
        series = (finished / "results" / "contact_sheets").glob("*.png")
        assert len(list(series)) == 12  # the demo's 11 sheets and the new series' one
        # inside the redone batch only the new series is decoded; the others are reused
        logs = (finished / "results" / "logs" / "save_slices").glob("*.log")
        reruns = [
            line for log in logs for line in log.read_text().splitlines() if "unchanged" in line
        ]
        counts = [
            tuple(int(w) for w in re.findall(r"(\d+) series, (\d+) unchanged", line)[0])
            for line in reruns
        ]
        redone = [(n, kept) for n, kept in counts if kept]  # first-run logs show 0 kept
        assert redone and all(kept == n - 1 for n, kept in redone)

    def test_thumbnail_settings_rerender_without_reading_headers_or_pixels(self, finished_settings):
        cwd, study = finished_settings
        config = (ROOT / "config" / "config.yaml").read_text().replace("size: 256", "size: 128")
        config = re.sub(r"series_per_batch: \d+", "series_per_batch: 4", config)
        (cwd / "small.yaml").write_text(config)
        ran = jobs_run(snakemake(cwd, *run_args(study, cwd / "small.yaml")).stderr)
        assert ran["extract_metadata"] == ran["merge_metadata"] == ran["save_slices"] == 0
        batches = len(list((cwd / "results" / "_work" / "batches").glob("*.series.parquet")))
        assert batches == 3  # the demo's series hash into 3 of the 4 batches
        assert ran["render_thumbnails"] == ran["make_contact_sheets"] == batches
        assert ran["build_review_page"] == 1

    def test_fewer_slices_leave_no_stale_arrays_or_thumbnails(self, finished_settings):
        import pyarrow.parquet as pq

        cwd, study = finished_settings
        config = (ROOT / "config" / "config.yaml").read_text().replace("count: 9", "count: 3")
        config = re.sub(r"series_per_batch: \d+", "series_per_batch: 4", config)
        (cwd / "three.yaml").write_text(config)
        ran = jobs_run(snakemake(cwd, *run_args(study, cwd / "three.yaml")).stderr)
        assert ran["extract_metadata"] == ran["merge_metadata"] == 0
        results = cwd / "results"
        rows = pq.read_table(results / "metadata" / "slices.parquet").to_pylist()
        listed = {r["npy_path"] for r in rows} | {r["png_path"] for r in rows}
        on_disk = {
            p.relative_to(results).as_posix()
            for folder in ("slices", "thumbnails")
            for p in (results / folder).rglob("*")
            if p.is_file()
        }
        assert on_disk == listed
        assert max(r["index"] for r in rows if r["n_in_plane"] == 35) < 35
        assert sum(1 for r in rows if r["n_in_plane"] == 35) == 3

    def test_pixels_rewritten_in_place_with_the_mtime_set_back_are_redone(self, finished):
        import pyarrow.parquet as pq

        results = finished / "results"
        path = "misc_samples/ct/CT_small.dcm"
        instances = pq.read_table(results / "metadata" / "instances.parquet").to_pylist()
        key = next(r["series_key"] for r in instances if r["path"] == path)
        before = series_files(results, key)
        scrub_in_place(finished / "study" / path)
        ran = jobs_run(snakemake(finished, *RUN).stderr)
        assert ran["extract_metadata"] == 1
        # only the batch holding the scrubbed series is redone, and all of its outputs
        assert ran["save_slices"] == ran["render_thumbnails"] == ran["make_contact_sheets"] == 1
        after = series_files(results, key)
        assert set(after) == set(before)
        assert all(after[p] != before[p] for p in before), "an output still shows the old pixels"
        assert jobs_run(snakemake(finished, *RUN).stderr) == Counter()

    def test_a_removed_series_folder_leaves_no_arrays_thumbnails_or_sheets(self, finished):
        import pyarrow.parquet as pq

        results = finished / "results"
        before = pq.read_table(results / "metadata" / "series.parquet").to_pylist()
        shutil.rmtree(finished / "study" / "misc_samples" / "us")
        snakemake(finished, *RUN)
        after = pq.read_table(results / "metadata" / "series.parquet").to_pylist()
        gone = {r["series_key"] for r in before} - {r["series_key"] for r in after}
        assert len(gone) == 4  # the four ultrasound files are four series
        for key in gone:
            assert not (results / "slices" / key).exists()
            assert not (results / "thumbnails" / key).exists()
            assert not (results / "contact_sheets" / f"{key}.png").exists()
        outputs_match_tables(results)
