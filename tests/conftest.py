"""Shared fixtures: the demo study's metadata tables, built once per test session."""

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
