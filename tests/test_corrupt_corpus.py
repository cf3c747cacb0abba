"""End-to-end runs of the workflow on a deterministic corpus of bad files (``tests/corpus.py``).

Two corpus sizes share the same checks: ``fast`` (about 175 files, in the default run) and
``slow`` (over 1,300 files, 1,000+ of them bad; marked slow, CI-only). Each run must end
with exit code 0; every regular file must be an instance or an error row exactly once,
with the outcome predicted for it (random header damage: an instance or a documented
reason); no traceback may be all a user gets; and the valid files in the mix must come out
exactly as they do alone.
"""

from __future__ import annotations

import os
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pytest

import corpus
from workflow_run import snakemake

FAST_VARIANTS = 25
"""Random variants on top of the ~150 fixed cases: about 175 files, well under a minute."""
SLOW_VARIANTS = 1200
"""Random variants for the CI-only run: over 1,000 bad files."""

EDGE_CASES = [
    pytest.param(
        f"truncated/{name}/at_value_of_first_8_byte_element.dcm",
        "truncated",
        id=f"{name.replace('_', '-')}-cut-right-after-an-element-header",
    )
    for name in corpus.SOURCES
] + [
    pytest.param(
        "transfer_syntax/ct_small_implicit_le_for_explicit_data.dcm",
        corpus.INSTANCE,
        id="implicit-syntax-on-explicit-data-warns-no-truncation",
    ),
    pytest.param(
        "transfer_syntax/ct_small_explicit_be_for_le_data.dcm",
        "unreadable_header",
        id="big-endian-syntax-on-little-endian-data-is-not-truncated",
    ),
]


def _read(path: Path) -> pa.Table | None:
    return pq.read_table(path) if path.is_file() else None


@dataclass
class WorkflowRun:
    """One workflow run over a study folder, with its tables and what we expected."""

    study: Path
    results: Path
    expected: dict[str, str]
    returncode: int
    stderr: str
    seconds: float
    instances: pa.Table | None
    errors: pa.Table | None
    series: pa.Table | None
    slices: pa.Table | None
    outcomes: dict[str, str] = field(default_factory=dict)
    """Observed outcome of each path, in the vocabulary of ``corpus`` (last one wins)."""
    accounted: Counter = field(default_factory=Counter)
    """How often each path is an instance row or an ``error`` row."""

    def __post_init__(self):
        instances = self.instances.to_pylist() if self.instances is not None else []
        errors = self.errors.to_pylist() if self.errors is not None else []
        truncated = {
            e["path"]
            for e in errors
            if e["severity"] == "warning" and e["reason"] == "truncated" and e["stage"] == "extract"
        }
        for row in instances:
            self.accounted[row["path"]] += 1
            self.outcomes[row["path"]] = (
                corpus.INSTANCE_TRUNCATED if row["path"] in truncated else corpus.INSTANCE
            )
        for error in errors:
            if error["severity"] == "error":
                self.accounted[error["path"]] += 1
                self.outcomes[error["path"]] = error["reason"]

    def size(self, rel: str) -> int:
        return (self.study / rel).stat().st_size


def run_workflow(cwd: Path, expected: dict[str, str]) -> WorkflowRun:
    """Run the whole workflow on ``cwd/study`` on 2 cores, checking the study stays untouched."""
    study = cwd / "study"
    before = corpus.tree_state(study)
    start = time.monotonic()
    proc = snakemake(cwd, "--cores", "2", "--config", "study=study", "results=results", check=False)
    seconds = time.monotonic() - start
    assert corpus.tree_state(study) == before, "the workflow changed the study folder"
    meta = cwd / "results" / "metadata"
    return WorkflowRun(
        study=study,
        results=cwd / "results",
        expected=expected,
        returncode=proc.returncode,
        stderr=proc.stderr,
        seconds=seconds,
        instances=_read(meta / "instances.parquet"),
        errors=_read(meta / "errors.parquet"),
        series=_read(meta / "series.parquet"),
        slices=_read(meta / "slices.parquet"),
    )


@pytest.fixture(
    scope="module",
    params=[
        pytest.param(FAST_VARIANTS, id="fast"),
        pytest.param(SLOW_VARIANTS, id="slow", marks=pytest.mark.slow),
    ],
)
def corpus_run(request, tmp_path_factory) -> WorkflowRun:
    cwd = tmp_path_factory.mktemp(f"corpus_{request.param}")
    expected = corpus.build_corpus(cwd / "study", request.param)
    return run_workflow(cwd, expected)


@pytest.fixture(scope="module")
def valid_alone_run(tmp_path_factory) -> WorkflowRun:
    cwd = tmp_path_factory.mktemp("valid_alone")
    paths = corpus.copy_valid(cwd / "study")
    return run_workflow(cwd, dict.fromkeys(paths, corpus.INSTANCE))


def mismatches(run: WorkflowRun, kind: str) -> list[str]:
    """Files of ``kind`` whose outcome differs from the prediction (known bugs left out)."""
    found = []
    for rel, expected in run.expected.items():
        if corpus.kind(rel) != kind:
            continue
        got = run.outcomes.get(rel, "missing")
        if expected == corpus.UNPREDICTABLE:
            ok = got in (corpus.INSTANCE, corpus.INSTANCE_TRUNCATED) or got in corpus.ERROR_REASONS
        else:
            ok = got == expected
        if not ok:
            found.append(f"{rel}: expected {expected}, got {got}")
    return found


def rows_for(table: pa.Table, column: str, values) -> pa.Table:
    """Rows of ``table`` whose ``column`` is in ``values``, sorted by every key column."""
    chosen = table.filter(pc.is_in(table[column], value_set=pa.array(sorted(values))))
    keys = [k for k in ("path", "series_key", "plane", "index") if k in chosen.column_names]
    return chosen.sort_by([(k, "ascending") for k in keys])


def differences(left: pa.Table, right: pa.Table) -> list[str]:
    """Human-readable cell differences of two tables with the same schema and row order."""
    if left.schema != right.schema:
        return [f"schemas differ: {left.schema} vs {right.schema}"]
    if left.num_rows != right.num_rows:
        return [f"{left.num_rows} rows vs {right.num_rows}"]
    found = []
    for i, (a, b) in enumerate(zip(left.to_pylist(), right.to_pylist(), strict=True)):
        found += [f"row {i} {k}: {a[k]!r} != {b[k]!r}" for k in a if a[k] != b[k]]
    return found


class TestCorpusGeneration:
    def test_same_seed_writes_the_same_files_and_expectations(self, tmp_path):
        first = corpus.build_corpus(tmp_path / "a", FAST_VARIANTS)
        second = corpus.build_corpus(tmp_path / "b", FAST_VARIANTS)

        assert first == second
        assert corpus.tree_state(tmp_path / "a") == corpus.tree_state(tmp_path / "b")

    def test_another_seed_damages_other_bytes(self, tmp_path):
        corpus.build_corpus(tmp_path / "a", FAST_VARIANTS, seed=1)
        corpus.build_corpus(tmp_path / "b", FAST_VARIANTS, seed=2)

        assert corpus.tree_state(tmp_path / "a") != corpus.tree_state(tmp_path / "b")

    def test_every_regular_file_has_an_expected_outcome(self, tmp_path):
        expected = corpus.build_corpus(tmp_path, FAST_VARIANTS)

        assert len(expected) == 178  # the README's count for the quick run
        assert sorted(expected) == corpus.regular_files(tmp_path)
        assert {corpus.kind(rel) for rel in expected} == set(corpus.KINDS)

    def test_slow_corpus_holds_1332_bad_files(self, tmp_path):
        expected = corpus.build_corpus(tmp_path, SLOW_VARIANTS)

        bad = [rel for rel in expected if corpus.kind(rel) not in corpus.GOOD_KINDS]
        assert len(bad) == 1332
        assert len(expected) == 1353

    def test_refuses_a_folder_that_is_not_empty(self, tmp_path):
        (tmp_path / "x").write_bytes(b"")

        with pytest.raises(ValueError, match="Argument 'out' must be an empty folder"):
            corpus.build_corpus(tmp_path, 1)

    @pytest.mark.parametrize(
        ("source", "label", "expected"),
        [
            pytest.param("ct_small", "inside_preamble", "not_dicom", id="preamble"),
            pytest.param("ct_small", "inside_transfer_syntax_value", "truncated", id="meta-group"),
            pytest.param("sr", "inside_longest_sequence", "truncated", id="sequence"),
            pytest.param(
                "ct_small", "inside_pixel_data_value", corpus.INSTANCE_TRUNCATED, id="pixel-data"
            ),
            pytest.param(
                "ct_j2k", "inside_first_fragment", corpus.INSTANCE_TRUNCATED, id="fragment"
            ),
        ],
    )
    def test_named_cuts_are_predicted_by_where_they_fall(self, tmp_path, source, label, expected):
        outcomes = corpus.build_corpus(tmp_path, 0)

        assert outcomes[f"truncated/{source}/{label}.dcm"] == expected


@pytest.mark.slow
class TestWorkflowOnCorruptCorpus:
    def test_run_finishes_with_exit_code_0(self, corpus_run):
        assert corpus_run.returncode == 0, corpus_run.stderr[-4000:]
        assert corpus_run.instances is not None and corpus_run.errors is not None

    def test_every_regular_file_is_an_instance_or_an_error_exactly_once(self, corpus_run):
        on_disk = corpus.regular_files(corpus_run.study)

        assert sorted(corpus_run.expected) == on_disk
        assert set(corpus_run.accounted) == set(on_disk)
        assert {rel: n for rel, n in corpus_run.accounted.items() if n != 1} == {}

    @pytest.mark.parametrize(
        "kind", [pytest.param(k, id=k.replace("_", "-")) for k in corpus.KINDS]
    )
    def test_each_file_gets_the_outcome_predicted_for_its_damage(self, corpus_run, kind):
        assert any(corpus.kind(rel) == kind for rel in corpus_run.expected)

        assert mismatches(corpus_run, kind) == []

    @pytest.mark.parametrize(("rel", "expected"), EDGE_CASES)
    def test_edge_case_file_gets_its_predicted_outcome(self, corpus_run, rel, expected):
        assert corpus_run.outcomes[rel] == expected

    def test_error_rows_name_a_documented_reason_and_say_why(self, corpus_run):
        bad = []
        for row in corpus_run.errors.to_pylist():
            reasons = corpus.ERROR_REASONS if row["severity"] == "error" else corpus.WARNING_REASONS
            if row["severity"] not in ("error", "warning") or row["reason"] not in reasons:
                bad.append(f"{row['path']}: {row['severity']} {row['reason']}")
            elif " " not in row["detail"].strip() or "Traceback" in row["detail"]:
                bad.append(f"{row['path']}: {row['reason']} detail {row['detail']!r}")
        assert bad == []

    def test_no_traceback_in_snakemake_output_or_rule_logs(self, corpus_run):
        logs = sorted((corpus_run.results / "logs").rglob("*.log"))
        assert logs
        with_traceback = [
            p.relative_to(corpus_run.results).as_posix()
            for p in logs
            if "Traceback" in p.read_text(errors="replace")
        ]
        if "Traceback" in corpus_run.stderr:
            with_traceback.append("snakemake stderr")

        assert with_traceback == []

    @pytest.mark.parametrize(
        ("rel", "kind_name"),
        [pytest.param(rel, name, id=rel) for rel, name in corpus.NOT_DICOM_KINDS.items()],
    )
    def test_non_dicom_file_is_named_by_its_kind(self, corpus_run, rel, kind_name):
        rows = rows_for(corpus_run.errors, "path", [f"not_dicom/{rel}"]).to_pylist()

        assert [r["reason"] for r in rows] == ["not_dicom"]
        assert kind_name in rows[0]["detail"]

    @pytest.mark.parametrize(
        ("kind", "has_pixels"),
        [
            pytest.param("no_pixels", False, id="sr-rt-ecg-without-pixels"),
            pytest.param("dicomdir", False, id="dicomdir"),
        ],
    )
    def test_objects_without_pixels_are_instances_without_pixels(
        self, corpus_run, kind, has_pixels
    ):
        paths = [rel for rel in corpus_run.expected if corpus.kind(rel) == kind]
        rows = rows_for(corpus_run.instances, "path", paths).to_pylist()

        assert [r["path"] for r in rows] == sorted(paths)
        assert {r["has_pixels"] for r in rows} == {has_pixels}

    @pytest.mark.parametrize(
        ("rel", "modality"),
        [
            pytest.param("raw_dataset/ct_small_no_preamble_no_meta.dcm", "CT", id="ct"),
            pytest.param("raw_dataset/rtdose_no_preamble_no_meta.dcm", "RTDOSE", id="rtdose"),
            pytest.param("raw_dataset/ct_small_meta_without_preamble", "CT", id="meta-kept"),
        ],
    )
    def test_raw_dataset_without_preamble_is_read_with_its_pixels(self, corpus_run, rel, modality):
        rows = rows_for(corpus_run.instances, "path", [rel]).to_pylist()

        assert [(r["Modality"], r["has_pixels"]) for r in rows] == [(modality, True)]

    def test_symlink_to_a_file_is_its_own_path_and_folder_loops_are_not_walked(self, corpus_run):
        assert corpus_run.outcomes["links/report_link.dcm"] == corpus.INSTANCE
        assert corpus_run.outcomes["no_pixels/sr_reportsi.dcm"] == corpus.INSTANCE
        assert not [p for p in corpus_run.accounted if p.startswith("links/loop_to_")]

    def test_file_without_read_permission_is_unreadable_unless_we_are_root(self, corpus_run):
        # root reads a mode-000 file like any other, so there it is simply an instance
        expected = corpus.INSTANCE if os.geteuid() == 0 else "unreadable_file"

        assert corpus_run.outcomes["permissions/no_read.dcm"] == expected


@pytest.mark.slow
class TestValidFilesInTheMix:
    """The valid files come out of the corpus run exactly as out of a run on them alone."""

    def _valid_paths(self, run: WorkflowRun) -> list[str]:
        return [rel for rel in run.expected if corpus.kind(rel) == "valid"]

    def _series_keys(self, run: WorkflowRun) -> list[str]:
        rows = rows_for(run.instances, "path", self._valid_paths(run))
        return sorted(set(rows["series_key"].to_pylist()))

    def test_only_the_valid_files_are_in_their_series(self, corpus_run, valid_alone_run):
        keys = self._series_keys(valid_alone_run)
        members = rows_for(corpus_run.instances, "series_key", keys)["path"].to_pylist()

        assert members == self._valid_paths(corpus_run)

    def test_instance_and_error_rows_equal_those_of_a_run_on_them_alone(
        self, corpus_run, valid_alone_run
    ):
        paths = self._valid_paths(valid_alone_run)
        mixed = rows_for(corpus_run.instances, "path", paths)
        alone = rows_for(valid_alone_run.instances, "path", paths)

        assert alone.num_rows == len(paths)
        assert differences(mixed, alone) == []
        mixed_errors = rows_for(corpus_run.errors, "path", paths)
        assert differences(mixed_errors, rows_for(valid_alone_run.errors, "path", paths)) == []

    def test_series_row_equals_that_of_a_run_on_them_alone(self, corpus_run, valid_alone_run):
        keys = self._series_keys(valid_alone_run)
        mixed = rows_for(corpus_run.series, "series_key", keys).drop_columns(["batch"])
        alone = rows_for(valid_alone_run.series, "series_key", keys).drop_columns(["batch"])

        assert alone.num_rows == 1
        assert differences(mixed, alone) == []

    def test_saved_slices_thumbnails_and_sheet_equal_those_of_a_run_on_them_alone(
        self, corpus_run, valid_alone_run
    ):
        keys = self._series_keys(valid_alone_run)
        mixed = rows_for(corpus_run.slices, "series_key", keys)
        alone = rows_for(valid_alone_run.slices, "series_key", keys)
        assert alone.num_rows == 5
        assert differences(mixed, alone) == []

        files = [f"contact_sheets/{key}.png" for key in keys]
        for row in alone.to_pylist():
            files += [row["npy_path"], row["png_path"]]
        changed = [
            f
            for f in files
            if (corpus_run.results / f).read_bytes() != (valid_alone_run.results / f).read_bytes()
        ]
        assert changed == []
