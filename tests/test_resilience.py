"""Determinism and kill/resume: same input, same bytes; an interrupted run resumes cleanly."""

from __future__ import annotations

import base64
import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

import demo
from workflow_run import CONFIG, ROOT, snakemake, tree_digest

VOLATILE = ("logs/", "benchmarks/", "_work/")
"""Logs and benchmark files hold timings, and the work files under ``_work/`` hold file
stamps and times of the run (the README's rerun guarantee sets all three aside); every
output must be identical."""


def outputs(results: Path) -> dict[str, str]:
    """Digest of every output file but logs and benchmarks."""
    return {k: v for k, v in tree_digest(results).items() if not k.startswith(VOLATILE)}


@pytest.mark.slow
class TestDeterminism:
    def test_two_runs_give_byte_identical_outputs(self, demo_run, tmp_path):
        _, first, _ = demo_run
        shutil.copytree(demo.STUDY, tmp_path / "study")
        snakemake(tmp_path, "--cores", "2", "--config", "study=study", "results=results")
        a, b = outputs(first), outputs(tmp_path / "results")
        assert a.keys() == b.keys()
        differing = [name for name in a if a[name] != b[name]]
        assert not differing, differing[:10]
        kinds = {Path(name).suffix for name in a}
        assert {".parquet", ".npy", ".png", ".html"} <= kinds


def start_workflow(cwd: Path) -> subprocess.Popen:
    """snakemake in its own process group, so the whole tree can be killed at once."""
    env = dict(os.environ, PATH=f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}")
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
    cmd += ["--configfile", str(CONFIG), "--cores", "1"]
    cmd += ["--config", "study=study", "results=results"]
    return subprocess.Popen(
        cmd,
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )


def wait_for(condition, timeout: float = 300.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the workflow never reached the stage to interrupt")
        time.sleep(0.005)


def marked_incomplete(cwd: Path) -> set[str]:
    """Outputs Snakemake has marked incomplete: it names a marker in .snakemake/incomplete
    after each output path (base64) when a job starts and removes it when the job is done."""
    folder = cwd / ".snakemake" / "incomplete"
    names = [p.name for p in folder.iterdir()] if folder.is_dir() else []
    return {base64.urlsafe_b64decode(name).decode() for name in names}


def first_file(folder: Path) -> Path | None:
    """A file written under ``folder`` (at any depth), if any."""
    if folder.is_dir():
        return next((p for p in folder.rglob("*") if p.is_file()), None)
    return None


def resume_and_compare(cwd: Path, reference: Path) -> None:
    """What the README tells users to do after a crash; then the outputs must be complete."""
    snakemake(cwd, "--unlock", "--config", "study=study", "results=results")
    run = ("--cores", "2", "--rerun-incomplete", "--config", "study=study", "results=results")
    snakemake(cwd, *run)
    resumed = outputs(cwd / "results")
    expected = outputs(reference)
    assert resumed.keys() == expected.keys(), set(resumed) ^ set(expected)
    assert [name for name in expected if resumed[name] != expected[name]] == []


@pytest.mark.slow
class TestKillAndResume:
    @pytest.mark.parametrize(
        ("stage", "table"),
        [
            pytest.param("slices", "slices", id="killed-while-saving-slices"),
            pytest.param("thumbnails", "thumbnails", id="killed-while-rendering-thumbnails"),
        ],
    )
    def test_a_job_killed_at_its_first_output_file_is_redone_by_rerun_incomplete(
        self, demo_run, tmp_path, stage, table
    ):
        _, reference, _ = demo_run
        shutil.copytree(demo.STUDY, tmp_path / "study")
        stage_dir = tmp_path / "results" / stage
        proc = start_workflow(tmp_path)
        try:
            wait_for(lambda: first_file(stage_dir) is not None)
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()

        # the job was cut off: Snakemake holds its outputs for incomplete, none was finished
        work = f"results/_work/{table}/"
        cut = {p for p in marked_incomplete(tmp_path) if p.startswith(work)}
        assert cut, marked_incomplete(tmp_path)
        assert not any((tmp_path / p).exists() for p in cut if p.endswith(".parquet"))
        assert not (tmp_path / "results" / "index.html").exists(), "killed too late"

        resume_and_compare(tmp_path, reference)

    def test_outputs_written_by_a_job_whose_end_snakemake_never_saw_count_as_incomplete(
        self, demo_run, tmp_path
    ):
        _, reference, _ = demo_run
        shutil.copytree(demo.STUDY, tmp_path / "study")
        extract = "results/_work/extract/shard_0000"
        written = {f"{extract}.instances.parquet", f"{extract}.errors.parquet"}
        proc = start_workflow(tmp_path)
        try:
            # the job's shell has started once it opened its log (Snakemake marks the
            # outputs incomplete just before); from then on it runs without Snakemake
            log = tmp_path / "results" / "logs" / "extract_metadata" / "shard_0000.log"
            wait_for(lambda: log.exists() and written <= marked_incomplete(tmp_path))
            os.kill(proc.pid, signal.SIGSTOP)  # Snakemake freezes; its running job goes on
            wait_for(lambda: all((tmp_path / p).exists() for p in written))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert written <= marked_incomplete(tmp_path)

        snakemake(tmp_path, "--unlock", "--config", "study=study", "results=results")
        refused = snakemake(
            tmp_path, "--cores", "2", "--config", "study=study", "results=results", check=False
        )

        # whole files, but their job never finished as far as Snakemake knows: it refuses
        # to go on and names them, until told to redo them
        assert refused.returncode != 0
        assert "IncompleteFilesException" in refused.stderr
        for path in written:
            assert path in refused.stderr
        assert not (tmp_path / "results" / "metadata").exists()
        resume_and_compare(tmp_path, reference)
