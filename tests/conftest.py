"""Shared fixtures: the demo study's metadata tables and one full workflow run on it.

``pytest`` runs on up to 2 pytest-xdist workers with ``--dist loadfile`` (pyproject.toml):
all tests of a file run on one worker, so module fixtures are built once, the one SLURM
test cluster is started once, and no two processes run snakemake in one folder. Session
fixtures are built once per worker, each in the worker's own temp folder. ``pytest -n 0``
runs everything in one process.
"""

from __future__ import annotations

import pytest

import demo


@pytest.fixture(scope="session")
def demo_metadata(tmp_path_factory):
    """Scan, extract and merge the demo study into a temp folder; return the table paths."""
    from steps import index_study

    return index_study(demo.STUDY, tmp_path_factory.mktemp("demo_metadata"))


@pytest.fixture(scope="session")
def demo_run(tmp_path_factory):
    """One full workflow run on a copy of the demo study: ``(cwd, results, snakemake log)``."""
    from workflow_run import run_demo

    return run_demo(tmp_path_factory)
