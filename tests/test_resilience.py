"""Determinism and kill/resume: same input, same bytes; an interrupted run resumes cleanly."""

from __future__ import annotations

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

VOLATILE = ("logs/", "benchmarks/", "_work/cache/")
"""Logs and benchmark files hold timings and the per-series caches file times; every other
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


def wait_for(condition, timeout: float = 120.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError("the workflow never reached the stage to interrupt")
        time.sleep(0.02)


@pytest.mark.slow
class TestKillAndResume:
    @pytest.mark.parametrize(
        "stage",
        [
            pytest.param("slices", id="killed-while-saving-slices"),
            pytest.param("thumbnails", id="killed-while-rendering-thumbnails"),
        ],
    )
    def test_rerun_incomplete_after_sigkill_matches_an_uninterrupted_run(
        self, demo_run, tmp_path, stage
    ):
        _, reference, _ = demo_run
        shutil.copytree(demo.STUDY, tmp_path / "study")
        stage_dir = tmp_path / "results" / stage
        proc = start_workflow(tmp_path)
        try:
            wait_for(lambda: stage_dir.is_dir() and any(stage_dir.rglob("*.*")))
        finally:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        assert not (tmp_path / "results" / "index.html").exists(), "killed too late"

        # what the README tells users to do after a crash
        snakemake(tmp_path, "--unlock", "--config", "study=study", "results=results")
        run = ("--cores", "2", "--rerun-incomplete", "--config", "study=study", "results=results")
        snakemake(tmp_path, *run)

        resumed = outputs(tmp_path / "results")
        expected = outputs(reference)
        assert resumed.keys() == expected.keys(), set(resumed) ^ set(expected)
        assert [name for name in expected if resumed[name] != expected[name]] == []
