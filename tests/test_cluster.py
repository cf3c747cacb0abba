"""The workflow on a real single-node SLURM cluster through workflow/profiles/slurm.

tests/cluster/start_slurm.sh installs Debian's slurm-wlm and munge when needed and starts
munged, slurmctld and slurmd; the workflow then runs on the demo study once through the
SLURM profile and once through the local profile, on the same study folder, and the two
results folders must be identical byte for byte. The daemons are stopped afterwards.
Skipped only when SLURM cannot be installed here (or another test cluster holds the
machine's /etc/slurm/slurm.conf), or without the SLURM executor plugin
(requirements-cluster.txt; `.ci/run` installs it).
"""

from __future__ import annotations

import importlib.util
import re
import shutil
import subprocess
import time
from datetime import datetime, timedelta
from pathlib import Path

import pytest

import demo
from workflow_run import snakemake, tree_digest

ROOT = demo.ROOT
CLUSTER_SCRIPTS = ROOT / "tests" / "cluster"
SLURM_PROFILE = ROOT / "workflow" / "profiles" / "slurm"
LOCAL_PROFILE = ROOT / "workflow" / "profiles" / "default"
# start_slurm.sh exit codes that mean "no cluster can be had here", not "SLURM is broken"
CANNOT_INSTALL, SLOT_TAKEN = 3, 4
# per-run records, not results: logs hold times and host names, benchmarks hold timings,
# and _work/ the file stamps and times its caches and work lists are keyed by (the README's
# rerun guarantee sets all three aside)
NOT_RESULTS = ("logs", "benchmarks", "_work")
CLUSTER_CPUS = 2

pytestmark = pytest.mark.slow


def _cluster_script(name: str, state: Path, timeout: int) -> subprocess.CompletedProcess:
    return subprocess.run(
        ["bash", str(CLUSTER_SCRIPTS / name), str(state)],
        capture_output=True,
        text=True,
        timeout=timeout,
    )


@pytest.fixture(scope="module")
def slurm_cluster(tmp_path_factory):
    """A running single-node SLURM cluster (its state folder), stopped after this module."""
    if importlib.util.find_spec("snakemake_executor_plugin_slurm") is None:
        pytest.skip("no SLURM executor plugin: pip install -r requirements-cluster.txt")
    state = tmp_path_factory.mktemp("slurm")
    proc = _cluster_script("start_slurm.sh", state, timeout=900)
    if proc.returncode in (CANNOT_INSTALL, SLOT_TAKEN):
        pytest.skip(f"no SLURM cluster here: {proc.stderr.strip().splitlines()[-1]}")
    try:
        assert proc.returncode == 0, f"start_slurm.sh failed:\n{proc.stderr[-4000:]}"
        yield state
    finally:
        stop = _cluster_script("stop_slurm.sh", state, timeout=120)
        assert stop.returncode == 0, stop.stderr


def _results(folder: Path) -> dict[str, str]:
    return {
        path: digest
        for path, digest in tree_digest(folder).items()
        if path.split("/", 1)[0] not in NOT_RESULTS
    }


def _sacct_completed_jobs(run_id: str, since: datetime) -> dict[str, str]:
    """Job id -> state of the jobs named ``run_id``, from the job completion log."""
    proc = subprocess.run(
        [
            "sacct",
            "--completion",
            "--parsable2",
            "--noheader",
            "--format=JobIDRaw,JobName,State",
            f"--starttime={since:%Y-%m-%dT%H:%M:%S}",
            f"--name={run_id}",
        ],
        capture_output=True,
        text=True,
        timeout=60,
        check=True,
    )
    rows = [line.split("|") for line in proc.stdout.splitlines() if line.strip()]
    return {job_id: state for job_id, name, state in rows if name == run_id}


@pytest.fixture(scope="module")
def cluster_and_local_runs(slurm_cluster, tmp_path_factory):
    """The demo study run through the SLURM profile and through the local profile."""
    base = tmp_path_factory.mktemp("cluster_run")
    study = base / "study"  # one study folder for both runs: shard lists record mtimes
    shutil.copytree(demo.STUDY, study)
    before = tree_digest(study)
    config = ["--config", f"study={study}", "results=results"]
    runs = {}
    for name, options in {
        "slurm": [
            "--profile",
            str(SLURM_PROFILE),
            # the cluster's size: caps the CPUs of all running jobs and of each group job
            "--cores",
            str(CLUSTER_CPUS),
            # no slurmdbd here: the plugin asks squeue (finished jobs stay for MinJobAge)
            "--slurm-status-command",
            "squeue",
            "--slurm-init-seconds-before-status-checks",
            "2",
        ],
        "local": ["--profile", str(LOCAL_PROFILE), "--cores", str(CLUSTER_CPUS)],
    }.items():
        cwd = base / name
        cwd.mkdir()
        since = datetime.now() - timedelta(minutes=1)
        start = time.monotonic()
        proc = snakemake(cwd, *options, *config)
        runs[name] = {
            "cwd": cwd,
            "results": cwd / "results",
            "log": proc.stderr,
            "seconds": time.monotonic() - start,
            "since": since,
        }
    assert tree_digest(study) == before, "a run wrote into or changed the study folder"
    return runs


class TestWorkflowOnSlurm:
    def test_jobs_are_submitted_to_slurm_and_complete_there(self, cluster_and_local_runs):
        run = cluster_and_local_runs["slurm"]
        run_id = re.search(r"SLURM run ID: (\S+)", run["log"]).group(1)
        submitted = set(re.findall(r"submitted with SLURM jobid (\d+)", run["log"]))
        assert submitted, "no job was submitted to SLURM"
        in_sacct = _sacct_completed_jobs(run_id, run["since"])
        assert set(in_sacct) == submitted
        assert set(in_sacct.values()) == {"COMPLETED"}, in_sacct

    def test_per_batch_steps_go_to_slurm_as_group_jobs(self, cluster_and_local_runs):
        log = cluster_and_local_runs["slurm"]["log"]
        submissions = re.findall(r"submitted with SLURM jobid \d+ \(log: (\S+)\)", log)
        steps = int(re.search(r"(\d+) of \1 steps \(100%\) done", log).group(1))
        assert any("/group_series_batch_" in path for path in submissions)
        assert not any("/rule_save_slices/" in path for path in submissions)
        # `all` runs in the main process; every other step is in some SLURM job
        assert len(submissions) < steps - 1

    def test_outputs_are_byte_identical_to_a_local_run(self, cluster_and_local_runs):
        on_slurm = _results(cluster_and_local_runs["slurm"]["results"])
        local = _results(cluster_and_local_runs["local"]["results"])
        assert "index.html" in local and "metadata/instances.parquet" in local
        assert sorted(on_slurm) == sorted(local)
        differing = sorted(path for path in local if on_slurm[path] != local[path])
        assert not differing

    def test_a_second_run_through_the_profile_has_nothing_to_do(self, cluster_and_local_runs):
        run = cluster_and_local_runs["slurm"]
        study = run["cwd"].parent / "study"
        proc = snakemake(
            run["cwd"],
            "--profile",
            str(SLURM_PROFILE),
            "--slurm-status-command",
            "squeue",
            "-n",
            "--config",
            f"study={study}",
            "results=results",
        )
        assert "Nothing to be done" in proc.stdout + proc.stderr
