"""The benchmark script works end to end at a tiny size; no timing is asserted."""

from __future__ import annotations

import csv
import sys
from pathlib import Path

import pytest

BENCHMARKS = Path(__file__).resolve().parent / "benchmarks"
sys.path.insert(0, str(BENCHMARKS))

import run_benchmark  # noqa: E402 - lives in tests/benchmarks/

TINY = 110  # one MR (35) + one CT (20) series, twice
LINKED = 250


def read_tsv(path: Path) -> list[dict[str, str]]:
    with open(path, newline="") as fh:
        return list(csv.DictReader(fh, delimiter="\t"))


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


class TestTreeRssPages:
    def test_tree_rss_sums_root_and_all_descendants_only(self):
        table = {10: (1, 100), 11: (10, 20), 12: (11, 3), 20: (1, 999)}
        assert run_benchmark.tree_rss_pages(table, 10) == 123

    def test_tree_rss_of_a_missing_root_is_zero(self):
        assert run_benchmark.tree_rss_pages({5: (1, 7)}, 42) == 0

    def test_run_measured_sees_memory_of_a_child_process(self, tmp_path):
        code = "import time; b = bytearray(64 * 1024 * 1024); b[::4096] = b'x' * len(b[::4096]);"
        code += " time.sleep(0.5)"
        m = run_benchmark.run_measured([sys.executable, "-c", code], tmp_path, tmp_path / "log")
        assert m.returncode == 0
        assert m.max_process_rss_mib >= 64
        assert m.peak_rss_mib >= m.max_process_rss_mib


class TestTables:
    ROWS = [
        run_benchmark.Row(100, "workflow", 10.0, 10.0, 500.0, 8, 4.0, 40.0),
        run_benchmark.Row(100, "naive", 5.0, 20.0, 250.0, 1),
        run_benchmark.Row(1000, "dry-run", 2.0, 500.0, 160.0, 5),
    ]

    def test_ratio_is_workflow_files_per_second_over_naive(self):
        rows = run_benchmark.with_ratios(self.ROWS)
        assert [r.ratio_vs_naive for r in rows] == [0.5, 1.0, None]

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


class TestStudies:
    def test_built_study_is_reused_on_a_second_call(self, tmp_path):
        study, files = run_benchmark.ensure_study(tmp_path, 55)
        assert files == run_benchmark.count_files(study) == 55
        stamp = {p: p.stat().st_mtime_ns for p in study.rglob("*")}
        assert run_benchmark.ensure_study(tmp_path, 55) == (study, 55)
        assert {p: p.stat().st_mtime_ns for p in study.rglob("*")} == stamp

    def test_study_too_big_for_the_disk_is_refused_before_writing(self, tmp_path, monkeypatch):
        monkeypatch.setattr(run_benchmark, "DISK_RESERVE", 2**62)
        with pytest.raises(run_benchmark.NotEnoughDisk, match="GiB free"):
            run_benchmark.ensure_study(tmp_path, 55)
        assert not (tmp_path / "studies").exists()

    def test_linked_study_has_exactly_the_requested_number_of_files(self, tmp_path):
        base, _files = run_benchmark.ensure_study(tmp_path, 55)
        linked = run_benchmark.ensure_linked_study(base, tmp_path, 120)
        assert run_benchmark.count_files(linked) == 120
        first = sorted(p.relative_to(base) for p in base.rglob("*") if p.is_file())[0]
        assert (linked / "replica_0001" / first).samefile(base / first)


@pytest.mark.slow
def test_benchmark_runs_at_a_tiny_size_and_writes_the_table(tmp_path, capsys):
    out = tmp_path / "bench"
    argv = ["--sizes", str(TINY), "--dry-run-sizes", str(LINKED), "--out-dir", str(out)]
    assert run_benchmark.main(argv + ["--metadata-only-sizes", str(TINY), "--cores", "2"]) == 0

    rows = read_tsv(out / "benchmark.tsv")
    assert tuple(rows[0]) == run_benchmark.COLUMNS
    stages = [(r["size"], r["stage"]) for r in rows]
    assert stages == [
        (str(TINY), "workflow"),
        (str(TINY), "naive"),
        (str(LINKED), "dry-run"),
        (str(TINY), "metadata-only"),
        (str(TINY), "dry-run-resolved"),
    ]
    workflow = rows[0]
    for column in ("wall_s", "files_per_s", "peak_rss_mib", "overhead_s", "overhead_pct"):
        float(workflow[column])
    assert int(workflow["jobs"]) > 1
    assert float(workflow["ratio_vs_naive"]) > 0

    md = (out / "benchmark.md").read_text()
    assert md.startswith("Machine: ")
    assert "| " + " | ".join(run_benchmark.COLUMNS) + " |" in md
    printed = capsys.readouterr().out
    assert printed.splitlines()[0].split() == list(run_benchmark.COLUMNS)
