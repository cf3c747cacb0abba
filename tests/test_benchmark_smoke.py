"""The benchmark script works end to end at a tiny size; no speed is asserted."""

from __future__ import annotations

import csv
import json
import logging
import re
import sys
from pathlib import Path

import pydicom
import pytest

BENCHMARKS = Path(__file__).resolve().parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import build_study  # noqa: E402 - lives in tests/benchmarks/
import file_costs  # noqa: E402
import run_benchmark  # noqa: E402

TINY = 55  # demo: one MR (35) + one CT (20) series; vendor: Toshiba (40) + 2 Siemens (13)
LINKED = 250
VENDORS = ("GE", "Philips", "Toshiba", "Siemens")


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


def uids(folder: Path, keyword: str) -> set[str]:
    found = set()
    for path in folder.rglob("*"):
        if path.is_file():
            found.add(str(pydicom.dcmread(path, stop_before_pixels=True).get(keyword)))
    return found


class TestOverhead:
    def test_overhead_is_wall_minus_job_seconds_shared_over_cores(self):
        seconds, pct = run_benchmark.overhead(10.0, 12.0, 2)
        assert seconds == pytest.approx(4.0)
        assert pct == pytest.approx(40.0)

    def test_overhead_rejects_zero_wall_time(self):
        with pytest.raises(ValueError, match="wall_s"):
            run_benchmark.overhead(0.0, 1.0, 2)


class TestPlannedJobs:
    def test_planned_jobs_reads_the_last_job_stats_total(self):
        text = "Job stats:\njob  count\nall  1\ntotal    5\n\nJob stats:\ntotal  7\n"
        assert run_benchmark.planned_jobs(text) == 7

    def test_planned_jobs_is_none_without_job_stats(self):
        assert run_benchmark.planned_jobs("Nothing to be done.") is None


class TestJobBenchmarks:
    def test_a_rerun_counts_only_benchmark_files_written_since_it_started(self, tmp_path):
        folder = tmp_path / "benchmarks"
        folder.mkdir()
        for name, seconds, mtime in (("old", 5.0, 1000.0), ("new", 2.5, 2000.0)):
            path = folder / f"{name}.tsv"
            path.write_text(f"s\th:m:s\n{seconds}\t0:00:01\n")
            run_benchmark.os.utime(path, (mtime, mtime))
        assert run_benchmark.job_benchmarks(tmp_path) == (2, 7.5)
        assert run_benchmark.job_benchmarks(tmp_path, since=1500.0) == (1, 2.5)
        assert run_benchmark.job_benchmarks(tmp_path, since=3000.0) == (0, 0.0)


class TestTreeRssPages:
    def test_tree_rss_sums_root_and_all_descendants_only(self):
        table = {10: (1, 100), 11: (10, 20), 12: (11, 3), 20: (1, 999)}
        assert run_benchmark.tree_rss_pages(table, 10) == 123

    def test_tree_rss_of_a_missing_root_is_zero(self):
        assert run_benchmark.tree_rss_pages({5: (1, 7)}, 42) == 0

    def test_peak_rss_is_the_sampled_tree_sum_floored_by_the_largest_process(self):
        assert run_benchmark.Measurement(1.0, 50.0, 30.0, 0).peak_rss_mib == 50.0
        assert run_benchmark.Measurement(1.0, 10.0, 30.0, 0).peak_rss_mib == 30.0

    def test_run_measured_sees_memory_and_time_of_a_child_process(self, tmp_path):
        code = "import time; b = bytearray(64 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]);"
        code += " time.sleep(0.5)"
        m = run_benchmark.run_measured([sys.executable, "-c", code], tmp_path, tmp_path / "log")
        assert m.returncode == 0
        assert m.wall_s >= 0.5
        assert 64 <= m.max_process_rss_mib < 64 + 32
        assert 64 <= m.tree_rss_mib < 64 + 32  # the sampler saw the child while it slept

    def test_run_measured_does_not_count_the_measuring_process_memory(self, tmp_path):
        ballast = bytearray(256 * 1024 * 1024)
        ballast[::4096] = b"x" * len(ballast[::4096])
        m = run_benchmark.run_measured(["true"], tmp_path, tmp_path / "log")
        assert m.returncode == 0
        assert m.max_process_rss_mib < 64
        assert m.tree_rss_mib < 64
        del ballast

    def test_run_measured_reports_the_command_exit_status(self, tmp_path):
        code = "import sys; print('out'); sys.exit(3)"
        m = run_benchmark.run_measured([sys.executable, "-c", code], tmp_path, tmp_path / "log")
        assert m.returncode == 3
        assert (tmp_path / "log").read_text().startswith("out")

    def test_tree_rss_can_leave_the_root_out(self):
        table = {10: (1, 100), 11: (10, 20), 12: (11, 3)}
        assert run_benchmark.tree_rss_pages(table, 10, include_root=False) == 23


class TestTables:
    ROWS = [
        run_benchmark.Row(100, "workflow", 10.0, 10.0, 500.0, 8, 4.0, 40.0),
        run_benchmark.Row(100, "naive", 5.0, 20.0, 250.0, 1),
        run_benchmark.Row(100, "pydicom-loop", 2.0, 50.0, 90.0, 1),
        run_benchmark.Row(1000, "dry-run", 2.0, 500.0, 160.0, 5),
    ]

    def test_ratios_are_files_per_second_over_each_baseline_of_the_same_size(self):
        rows = run_benchmark.with_ratios(self.ROWS)
        assert [r.ratio_vs_naive for r in rows] == [0.5, 1.0, 2.5, None]
        assert [r.ratio_vs_pydicom for r in rows] == [0.2, 0.4, 1.0, None]

    def test_aligned_table_has_every_column_and_one_line_per_row(self):
        lines = run_benchmark.aligned_table(self.ROWS).splitlines()
        assert lines[0].split() == list(run_benchmark.COLUMNS)
        assert len(lines) == 1 + len(self.ROWS)
        assert len({len(line) for line in lines[1:]}) == 1

    def test_tsv_leaves_missing_values_empty(self, tmp_path):
        path = tmp_path / "t.tsv"
        path.write_text(run_benchmark.tsv_text(self.ROWS))
        rows = read_tsv(path)
        assert rows[1]["overhead_s"] == ""
        assert rows[0]["wall_s"] == "10.000"


class TestPlan:
    def test_plan_cycles_through_series_that_fit(self):
        assert build_study.plan([35, 20], 110) == [0, 1, 0, 1]

    def test_plan_skips_a_series_that_would_overshoot_and_ends_with_the_smallest(self):
        # 130, 680, 40, 13 (GE, Philips, Toshiba, Siemens) for 120 files.
        assert build_study.plan([130, 680, 40, 13], 120) == [2, 3, 2, 3, 3, 3]

    @pytest.mark.parametrize("n_files", [1, 13, 500, 2000])
    def test_plan_reaches_the_count_and_overshoots_by_less_than_the_smallest_series(self, n_files):
        sizes = [130, 680, 40, 13]
        total = sum(sizes[k] for k in build_study.plan(sizes, n_files))
        assert n_files <= total < n_files + min(sizes)


class TestSources:
    def test_a_missing_vendor_folder_falls_back_to_the_demo_with_a_warning(self, tmp_path, caplog):
        with caplog.at_level(logging.WARNING, logger="build_study"):
            chosen = build_study.templates("vendor", vendor_root=tmp_path / "missing")
        assert {t.vendor for t in chosen} == {"demo"}
        assert "demo study instead" in caplog.text

    def test_unknown_source_is_refused(self):
        with pytest.raises(ValueError, match="'source'"):
            build_study.resolve_source("scanner")

    @pytest.mark.skipif(not build_study.VENDOR_MR.is_dir(), reason="no ../shared/data/vendor-mr")
    def test_mixed_source_uses_every_vendor_and_the_demo(self):
        vendors = [t.vendor for t in build_study.templates("mixed")]
        assert vendors == [*VENDORS, "demo", "demo"]


class TestBuild:
    def test_the_same_size_builds_the_same_bytes_with_fresh_uids(self, tmp_path):
        a, b = tmp_path / "a", tmp_path / "b"
        assert build_study.build(a, 20, "demo") == build_study.build(b, 20, "demo") == 20
        files = sorted(p.relative_to(a) for p in a.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(b) for p in b.rglob("*") if p.is_file())
        assert all((a / f).read_bytes() == (b / f).read_bytes() for f in files)
        template_uids = uids(build_study.DEMO_SERIES[0], "SeriesInstanceUID")
        assert uids(a, "SeriesInstanceUID").isdisjoint(template_uids)
        assert len(uids(a, "SOPInstanceUID")) == 20

    def test_an_added_series_is_a_new_folder_with_its_own_uids(self, tmp_path):
        study = tmp_path / "study"
        build_study.build(study, 35, "demo")
        folder = build_study.add_series(study, "demo")
        assert folder.parent.parent == study
        assert run_benchmark.count_files(study) == 70
        assert len(uids(folder, "SeriesInstanceUID")) == 1
        assert uids(folder, "SeriesInstanceUID").isdisjoint(
            uids(study / "subject_00000", "SeriesInstanceUID")
        )
        assert build_study.add_series(study, "demo") != folder


class TestFileCosts:
    @pytest.mark.parametrize("measure", file_costs.MEASURES)
    def test_each_measure_prints_milliseconds_per_file_for_the_files_given(self, measure, capsys):
        files = build_study.Template("demo", build_study.DEMO_SERIES[0]).files()[:3]
        assert file_costs.main(["--measure", measure, *map(str, files)]) == 0
        result = json.loads(capsys.readouterr().out)
        assert result["measure"] == measure
        assert result["files"] == 3
        assert result["ms_per_file"] > 0

    def test_extract_gives_an_instance_row_with_header_json(self):
        path = build_study.Template("demo", build_study.DEMO_SERIES[0]).files()[0]
        row, errors = file_costs.operation("extract", [path])(path)
        assert errors == []
        assert row["file_size"] == path.stat().st_size
        assert json.loads(row["header_json"])["0020000E"]["vr"] == "UI"

    def test_an_unknown_measure_is_refused(self):
        with pytest.raises(ValueError, match="'measure'"):
            file_costs.operation("decode")


class TestStudies:
    def test_built_study_is_reused_on_a_second_call(self, tmp_path):
        study, files = run_benchmark.ensure_study(tmp_path, 55, "demo")
        assert files == run_benchmark.count_files(study) == 55
        stamp = {p: p.stat().st_mtime_ns for p in study.rglob("*")}
        assert run_benchmark.ensure_study(tmp_path, 55, "demo") == (study, 55)
        assert {p: p.stat().st_mtime_ns for p in study.rglob("*")} == stamp

    def test_a_built_study_with_extra_files_is_rebuilt(self, tmp_path):
        study, _files = run_benchmark.ensure_study(tmp_path, 55, "demo")
        build_study.add_series(study, "demo")
        assert run_benchmark.ensure_study(tmp_path, 55, "demo") == (study, 55)
        assert run_benchmark.count_files(study) == 55

    def test_study_too_big_for_the_disk_is_refused_before_writing(self, tmp_path, monkeypatch):
        monkeypatch.setattr(run_benchmark, "DISK_RESERVE", 2**62)
        with pytest.raises(run_benchmark.NotEnoughDisk, match="GiB free"):
            run_benchmark.ensure_study(tmp_path, 55, "demo")
        assert not (tmp_path / "studies").exists()

    def test_linked_study_has_exactly_the_requested_number_of_files(self, tmp_path):
        base, _files = run_benchmark.ensure_study(tmp_path, 55, "demo")
        linked = run_benchmark.ensure_linked_study(base, tmp_path, 120)
        assert run_benchmark.count_files(linked) == 120
        first = sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())[0]
        assert (linked / "replica_0001" / first).samefile(base / first)

    def test_link_tree_mirrors_a_study_without_copying(self, tmp_path):
        base, _files = run_benchmark.ensure_study(tmp_path, 55, "demo")
        mirror = run_benchmark.link_tree(base, tmp_path / "mirror")
        files = sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())
        assert files == sorted(p.relative_to(mirror) for p in mirror.rglob("*") if p.is_file())
        assert all((mirror / f).samefile(base / f) for f in files)


@pytest.mark.slow
def test_benchmark_runs_at_a_tiny_size_and_writes_consistent_tables(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--sizes", str(TINY), "--dry-run-sizes", str(LINKED), "--out-dir", str(out)]
    argv += ["--metadata-only-sizes", str(TINY), "--cores", "2"]
    assert run_benchmark.main(argv + ["--profile-files", "2", "--profile-repeats", "1"]) == 0

    rows = read_tsv(out / "benchmark.tsv")
    assert tuple(rows[0]) == run_benchmark.COLUMNS
    n = int(rows[0]["size"])
    source = build_study.resolve_source("vendor")
    assert n == run_benchmark.count_files(out / "work" / "studies" / f"{source}_{TINY}")
    added = int(rows[5]["size"]) - n
    assert added == (40 if source == "vendor" else 35)  # Toshiba, or the demo MR
    stages = [(int(r["size"]), r["stage"]) for r in rows]
    assert stages == [
        (n, "read-bytes"),
        (n, "pydicom-loop"),
        (n, "naive"),
        (n, "metadata"),
        (n, "workflow"),
        (n + added, "add-series"),
        (n + added, "no-change"),
        (LINKED, "dry-run"),
        (n, "metadata-only"),
        (n, "dry-run-resolved"),
    ]
    by_stage = {r["stage"]: r for r in rows}
    for stage in run_benchmark.RATED_STAGES:
        row = by_stage[stage]
        wall, rate = float(row["wall_s"]), float(row["files_per_s"])
        assert wall > 0
        # The TSV rounds to 3 decimals: files/s lies within what that rounding allows.
        assert n / (wall + 0.0006) - 0.0006 <= rate <= n / max(wall - 0.0006, 1e-6) + 0.0006
        naive, plain = (
            float(by_stage["naive"]["files_per_s"]),
            float(by_stage["pydicom-loop"]["files_per_s"]),
        )
        assert float(row["ratio_vs_naive"]) == pytest.approx(rate / naive, rel=1e-2, abs=1e-3)
        assert float(row["ratio_vs_pydicom"]) == pytest.approx(rate / plain, rel=1e-2, abs=1e-3)

    workflow, metadata = int(by_stage["workflow"]["jobs"]), int(by_stage["metadata"]["jobs"])
    assert 2 <= metadata < workflow
    assert 1 <= int(by_stage["add-series"]["jobs"]) <= workflow  # all of them at a tiny size
    assert int(by_stage["no-change"]["jobs"]) == 0
    full_wall = float(by_stage["workflow"]["wall_s"])
    for stage in ("add-series", "no-change"):
        pct = 100 * float(by_stage[stage]["wall_s"]) / full_wall
        assert float(by_stage[stage]["pct_of_full"]) == pytest.approx(pct, rel=1e-2)
    assert int(by_stage["dry-run"]["jobs"]) > 1
    assert int(by_stage["dry-run-resolved"]["jobs"]) >= workflow - metadata

    vendors = read_tsv(out / "vendors.tsv")
    expected = [*VENDORS, "demo"] if build_study.VENDOR_MR.is_dir() else ["demo"]
    assert [v["vendor"] for v in vendors] == expected
    for v in vendors:
        assert int(v["files"]) == 2
        assert float(v["pydicom_read_ms"]) > 0
        assert float(v["extract_ms"]) > 0
        assert float(v["reference_json_ms"]) > 0
        assert float(v["json_kib"]) > 0

    md = (out / "benchmark.md").read_text()
    assert md.startswith("Measured on commit ")
    assert "| " + " | ".join(run_benchmark.COLUMNS) + " |" in md
    assert "| " + " | ".join(run_benchmark.VENDOR_COLUMNS) + " |" in md
    startups = re.findall(r"^\| ([a-z_ -]+) \| ([0-9.]+) \| ([0-9.]+) \|$", md, re.MULTILINE)
    assert [name for name, _, _ in startups] == [*run_benchmark.STEPS, "snakemake --version"]
    assert all(0 < float(wall) < 30 and float(cpu) > 0 for _, wall, cpu in startups)
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == list(run_benchmark.VENDOR_COLUMNS)
