"""How merge_metadata splits one series into stacks, on the real rows of the demo MR series.

The demo's 35 sagittal MR slices are one echo, one time point and one orientation. Each
test changes one fact of some of their rows, as a multi-echo, dynamic or re-planned
acquisition would have it, and checks the stacks that come out.
"""

from __future__ import annotations

import copy

import pyarrow.parquet as pq
import pytest

import demo
from merge_metadata import build_series

MR_FOLDER = demo.MR_SERIES.relative_to(demo.STUDY).as_posix()
N_MR = 35


@pytest.fixture(scope="module")
def mr_rows(demo_metadata) -> list[dict]:
    """The demo MR series' instance rows, sorted by path (IM_0001 … IM_0035)."""
    rows = pq.read_table(demo_metadata["instances"]).to_pylist()
    mr = sorted((r for r in rows if r["path"].startswith(MR_FOLDER)), key=lambda r: r["path"])
    assert len(mr) == N_MR
    return mr


def copies(rows: list[dict], tag: str, **changes) -> list[dict]:
    """Copies of ``rows`` under new paths (``<path>.<tag>``) with some values changed."""
    out = []
    for row in rows:
        new = copy.deepcopy(row)
        new.update(path=f"{row['path']}.{tag}", **changes)
        out.append(new)
    return out


def stacks(rows: list[dict]) -> list[dict]:
    """Series records built from ``rows``, largest stack first."""
    records, _ = build_series(rows, series_per_batch=8)
    return sorted(records, key=lambda r: (-r["n_instances"], r["series_key"]))


def tilted(row: dict, by: float) -> dict:
    """The row with its ImageOrientationPatient's first column component moved by ``by``."""
    iop = list(row["ImageOrientationPatient"])
    iop[3] += by
    return {**row, "ImageOrientationPatient": iop}


class TestOrientationTolerance:
    def test_the_demo_series_is_one_volume(self, mr_rows):
        (record,) = stacks(mr_rows)
        assert (record["n_instances"], record["n_stacks"], record["is_volume"]) == (N_MR, 1, True)
        assert record["ImageOrientationPatient"] == [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]

    @pytest.mark.parametrize(
        "by",
        [
            pytest.param(0.0009, id="just-inside"),
            pytest.param(0.001, id="at-the-tolerance"),
        ],
    )
    def test_orientations_within_the_tolerance_stay_one_stack(self, mr_rows, by):
        rows = [tilted(r, by) if i % 2 else r for i, r in enumerate(mr_rows)]

        (record,) = stacks(rows)

        assert record["n_instances"] == N_MR
        assert record["single_orientation"] is True
        assert record["is_volume"] is True

    def test_orientations_just_beyond_the_tolerance_split_the_series(self, mr_rows):
        rows = [tilted(r, 0.0011) if i >= 30 else r for i, r in enumerate(mr_rows)]

        records = stacks(rows)

        assert [r["n_instances"] for r in records] == [30, 5]
        assert [r["n_stacks"] for r in records] == [2, 2]
        assert all(r["single_orientation"] is False for r in records)
        assert all(r["is_volume"] is False for r in records)
        assert records[1]["ImageOrientationPatient"][3] == pytest.approx(0.0011)


class TestEchoAndTimeSplits:
    @pytest.mark.parametrize(
        "changes",
        [
            pytest.param({"EchoNumbers": [2.0]}, id="second-echo"),
            pytest.param({"TemporalPositionIdentifier": 2}, id="second-time-point"),
        ],
    )
    def test_a_second_echo_or_time_point_of_some_positions_is_its_own_stack(self, mr_rows, changes):
        # ten positions acquired again: repeated positions alone would not split this stack
        second = copies(mr_rows[10:20], "second", **changes)

        records = stacks(mr_rows + second)

        assert [r["n_instances"] for r in records] == [N_MR, 10]
        first, other = records
        assert first["is_volume"] is True and first["duplicate_positions"] == 0
        assert other["duplicate_positions"] == 0 and other["uniform_spacing"] is True
        _, keys = build_series(mr_rows + second, series_per_batch=8)
        second_keys = set(keys[N_MR:])
        assert second_keys == {other["series_key"]}
        base = first["series_key"].rsplit("-", 1)[0]
        assert sorted([first["series_key"], other["series_key"]]) == [f"{base}-1", f"{base}-2"]

    def test_without_an_echo_or_time_point_the_same_rows_stay_one_faulty_stack(self, mr_rows):
        second = copies(mr_rows[10:20], "second")

        (record,) = stacks(mr_rows + second)

        assert record["n_instances"] == N_MR + 10
        assert record["duplicate_positions"] == 10
        assert record["is_volume"] is False

    def test_a_complete_second_echo_gives_two_complete_volumes_in_the_same_order(self, mr_rows):
        assert {tuple(r["EchoNumbers"]) for r in mr_rows} == {(1.0,)}
        second = copies(mr_rows, "echo2", EchoNumbers=[2.0])

        records = stacks(mr_rows + second)

        assert [r["n_instances"] for r in records] == [N_MR, N_MR]
        assert all(r["is_volume"] and r["slice_spacing"] == pytest.approx(4.8) for r in records)
        _, keys = build_series(mr_rows + second, series_per_batch=8)
        assert len(set(keys[:N_MR])) == 1 and len(set(keys[N_MR:])) == 1
        assert keys[0] != keys[N_MR]
