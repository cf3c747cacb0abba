"""Running the workflow from tests: a helper and a shared demo run."""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
from pathlib import Path

import demo

ROOT = demo.ROOT
CONFIG = ROOT / "config" / "config.yaml"


def snakemake(
    cwd: Path, *args: str, check: bool = True, env: dict | None = None
) -> subprocess.CompletedProcess:
    """Run snakemake from this interpreter's environment, with the repo's Snakefile and config."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
    env = dict(os.environ, PATH=path, **(env or {}))
    cmd = [sys.executable, "-m", "snakemake", "-s", str(ROOT / "Snakefile")]
    cmd += ["--configfile", str(CONFIG), *args]
    proc = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    if check and proc.returncode != 0:
        raise AssertionError(f"snakemake failed ({proc.returncode}):\n{proc.stderr[-4000:]}")
    return proc


def tree_digest(folder: Path) -> dict[str, str]:
    """SHA-256 of every file under a folder, by relative path."""
    return {
        p.relative_to(folder).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def run_demo(tmp_path_factory):
    """One full run of the workflow on a copy of the demo study; returns (cwd, results, log)."""
    cwd = tmp_path_factory.mktemp("workflow")
    study = cwd / "study"
    shutil.copytree(demo.STUDY, study)
    before = tree_digest(study)
    proc = snakemake(cwd, "--cores", "2", "--config", "study=study", "results=results")
    assert tree_digest(study) == before, "the workflow wrote into or changed the study folder"
    return cwd, cwd / "results", proc.stderr
