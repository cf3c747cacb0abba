"""Shared fixtures (the demo study's metadata tables, one full workflow run on it) and the
order in which pytest-xdist hands tests to its workers.

``pytest`` runs on up to 2 pytest-xdist workers (pyproject.toml), scheduled by
:func:`pytest_xdist_make_scheduler`. Each unit of work runs on one worker: by default all
tests of a file (as ``--dist loadfile``), so module fixtures are built once, the one SLURM
test cluster is started once, and no two processes run snakemake in one folder. The
tests that use :func:`demo_run` form one unit (:data:`UNITS`), so the demo study is run
once; a few long tests that share nothing form units of their own. The longest units go
first (:data:`SECONDS`), and a worker gets its next unit only once it is down to its last
test, so the two workers finish together. Session fixtures are built once per worker that
needs them, each in the worker's own temp folder. ``pytest -n 0`` runs everything in one
process, in the same order.
"""

from __future__ import annotations

import pytest

import demo

UNITS = {
    # the tests of the demo run
    "test_privacy.py::": "demo_run",
    "test_query.py::": "demo_run",
    "test_readme_recipes.py::": "demo_run",
    "test_resilience.py::": "demo_run",
    "test_review_page_browser.py::": "demo_run",
    "test_workflow.py::TestWorkflowOnDemoStudy::": "demo_run",
    "test_workflow.py::TestSnakemakeReport::": "demo_run",
    # long tests that share no module fixture: each on its own
    "test_benchmark_smoke.py::test_benchmark_runs_at_a_tiny_size": None,
    "test_fast_header.py::test_fast_path_equals_the_reference_on_every_shared": None,
    "test_incremental.py::TestReruns::test_a_new_series": None,
    "test_incremental.py::TestReruns::test_pixels": None,
    "test_incremental.py::TestReruns::test_a_removed": None,
    "test_rerun_property.py::": None,
    "test_workflow.py::TestAwkwardFileNames::": None,
    "test_workflow.py::TestSnakemakeChecks::": None,
}
"""Units of work other than a whole file, by the start of the test id (without ``tests/``):
a named unit, or None for a unit of one test. A test listed here as a unit of its own
must use no module- or class-scoped fixture (checked at collection)."""

SECONDS = {
    "test_rerun_property.py::test_a_random_sequence": 250,
    "test_cluster.py::": 120,
    "test_benchmark_smoke.py::test_benchmark_runs_at_a_tiny_size": 90,
    "test_resilience.py::TestKillAndResume::test_outputs_written_by": 40,
    "test_rerun_property.py::test_two_reruns": 50,
    "test_incremental.py::TestReruns::test_unchanged": 45,  # with the others of finished_once
    "test_corrupt_corpus.py::TestWorkflowOnCorruptCorpus": 35,
    "test_incremental.py::TestReruns::test_pixels": 35,
    "test_incremental.py::TestReruns::test_a_new_series": 30,
    "test_incremental.py::TestReruns::test_a_removed": 28,
    "test_resilience.py::TestKillAndResume::test_a_job_killed_at": 38,
    "test_fast_header.py::test_fast_path_equals_the_reference_on_every_shared": 23,
    "test_seg_sm_workflow.py::": 40,
    "test_multiframe.py::": 28,
    "test_privacy.py::TestPseudonymizeMode": 18,
    "test_pixel_decoders.py::": 15,
    "test_resilience.py::TestDeterminism": 16,
    "demo_run": 15,  # the run itself
    "test_workflow.py::TestAwkwardFileNames": 11,
    "test_workflow.py::TestConfigReachesTheSteps": 10,
    "test_build_review_page.py::": 8,
    "test_workflow.py::TestSnakemakeReport": 4,
    "test_workflow.py::TestSnakemakeChecks": 3,
}
"""Rough seconds of the longest tests or units, by the start of their test ids: a unit
counts each matching start once, and 0.1 s for each test that matches none (``demo_run``
counts for the unit of that name). Only the order matters."""


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


def unit_of(nodeid: str) -> str:
    """The unit of work of a test id: a name from :data:`UNITS`, the test id, or its file."""
    short = nodeid.removeprefix("tests/")
    for prefix, unit in UNITS.items():
        if short.startswith(prefix):
            return nodeid if unit is None else unit
    return nodeid.split("::", 1)[0]


def _seconds(unit: str, nodeids: list[str]) -> float:
    """Rough seconds of a unit of work, from :data:`SECONDS`."""
    matched = {unit} & set(SECONDS)
    rest = 0.0
    for nodeid in nodeids:
        short = nodeid.removeprefix("tests/")
        prefix = next((p for p in SECONDS if short.startswith(p)), None)
        if prefix is None:
            rest += 0.1
        else:
            matched.add(prefix)
    return rest + sum(SECONDS[p] for p in matched)


def _shares_a_fixture(item: pytest.Item) -> bool:
    """Whether the test uses a fixture kept for its module or class (or a package)."""
    info = getattr(item, "_fixtureinfo", None)
    return info is not None and any(
        fixturedefs[-1].scope in ("module", "class", "package")
        for fixturedefs in info.name2fixturedefs.values()
    )


@pytest.hookimpl(tryfirst=True)
def pytest_collection_modifyitems(config, items):
    """Order the units of work (:func:`unit_of`) by :data:`SECONDS`, longest first; within
    a unit, and among equals, the collected order stays."""
    units: dict[str, list[pytest.Item]] = {}
    for item in items:
        unit = unit_of(item.nodeid)
        if unit == item.nodeid and _shares_a_fixture(item):
            raise pytest.UsageError(
                f"{item.nodeid} uses a module- or class-scoped fixture: it cannot be a unit "
                "of its own in tests/conftest.py UNITS"
            )
        units.setdefault(unit, []).append(item)
    ordered = sorted(units, key=lambda u: -_seconds(u, [i.nodeid for i in units[u]]))
    items[:] = [item for unit in ordered for item in units[unit]]


def pytest_xdist_make_scheduler(config, log):
    """Units of work of :func:`unit_of`, in the collected order, each given to a worker once
    it is down to the one test it holds back (a worker runs a test once it knows the next
    one), so no long unit waits behind another on a busy worker while the other idles.

    (``--dist loadgroup`` with ``xdist_group`` marks would group tests too, but with
    pytest 9 pytest-xdist 3.8 can no longer rename the test ids it groups by.)
    """
    if config.getvalue("dist") != "loadfile":  # pyproject.toml's; other modes as asked
        return None
    from xdist.scheduler import LoadScopeScheduling

    class Units(LoadScopeScheduling):
        def _split_scope(self, nodeid: str) -> str:
            return unit_of(nodeid)

        def _reschedule(self, node) -> None:
            if node.shutting_down:
                return
            if not self.workqueue:
                node.shutdown()
                return
            if self._pending_of(self.assigned_work[node]) > 1:
                return
            self._assign_work_unit(node)

    config.option.loadscopereorder = False  # keep the order of pytest_collection_modifyitems
    return Units(config, log)
