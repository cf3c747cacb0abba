"""Tests of slide.py on real tiled whole-slide images (highdicom's sm_image.dcm and copies)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest

import save_slices
import slide
import steps

FIXTURE = Path(__file__).parent / "fixtures" / "seg_sm" / "study"
SM_FULL = FIXTURE / "sm" / "sm_image.dcm"
"""TILED_FULL RGB, 25 tiles of 10 × 10, total matrix 50 × 50."""
SM_LEVEL2 = FIXTURE / "sm" / "sm_image_level2.dcm"
"""Derived 25 × 25 level of the same series (9 tiles, the last row and column padded)."""
SM_SPARSE = FIXTURE / "sm_sparse" / "sm_image_sparse.dcm"
"""Derived TILED_SPARSE copy of SM_FULL, tiles in reverse order."""


def assembled(path: Path, **kwargs) -> tuple[np.ndarray, int]:
    ds = pydicom.dcmread(path)
    frames = ds.pixel_array
    chosen = slide.first_plane_frames(ds)
    return slide.assemble_frames(ds, chosen, (frames[f] for f in chosen), **kwargs)


class TestTilePositions:
    def test_tiled_full_tiles_are_row_major(self):
        ds = pydicom.dcmread(SM_FULL, stop_before_pixels=True)
        positions = slide.tile_positions(ds)
        assert positions[:6] == [(0, 0), (0, 10), (0, 20), (0, 30), (0, 40), (10, 0)]
        assert positions[24] == (40, 40)

    def test_tiled_sparse_positions_come_from_plane_position_slide(self):
        ds = pydicom.dcmread(SM_SPARSE, stop_before_pixels=True)
        assert slide.tile_positions(ds)[0] == (40, 40)  # tiles stored in reverse order
        assert slide.tile_positions(ds)[24] == (0, 0)


class TestAssemble:
    def test_assembled_slide_has_the_total_pixel_matrix_shape(self):
        values, stride = assembled(SM_FULL)
        assert stride == 1
        assert values.shape == (50, 50, 3) and values.dtype == np.uint8

    def test_a_known_tile_pixel_lands_at_its_place_in_the_matrix(self):
        ds = pydicom.dcmread(SM_FULL)
        values, _ = assembled(SM_FULL)
        tile_7 = ds.pixel_array[7]  # second tile row, third column: top-left (10, 20)
        assert np.array_equal(values[13, 25], tile_7[3, 5])
        assert np.array_equal(values[10:20, 20:30], tile_7)

    def test_tiled_sparse_assembles_to_the_same_slide_as_tiled_full(self):
        assert np.array_equal(assembled(SM_SPARSE)[0], assembled(SM_FULL)[0])

    def test_padding_of_edge_tiles_is_cut_off(self):
        values, _ = assembled(SM_LEVEL2)
        assert values.shape == (25, 25, 3)

    def test_a_level_over_the_budget_is_assembled_at_a_stride(self):
        full, _ = assembled(SM_FULL)
        budget = 25 * 25 * 3  # the 50 × 50 RGB level takes four times this
        values, stride = assembled(SM_FULL, budget=budget)
        assert stride == 2
        assert values.shape == (25, 25, 3)
        assert np.array_equal(values, full[::2, ::2])

    def test_tiles_of_odd_offsets_keep_the_global_stride_grid(self):
        tiles = [(0, 0, np.full((3, 3), 1, np.uint8)), (0, 3, np.full((3, 3), 2, np.uint8))]
        out = slide.assemble(tiles, (3, 6), stride=2)
        assert out.tolist() == [[1, 1, 2], [1, 1, 2]]  # columns 0, 2 (tile 1) and 4 (tile 2)

    def test_stride_below_one_is_refused(self):
        with pytest.raises(ValueError, match="'stride' must be >= 1, got 0"):
            slide.assemble([], (2, 2), stride=0)


class TestStrideFor:
    @pytest.mark.parametrize(
        ("shape", "bytes_per_pixel", "budget", "stride"),
        [
            pytest.param((100, 100), 3, 30000, 1, id="fits"),
            pytest.param((100, 100), 3, 29999, 2, id="one-byte-over"),
            pytest.param((100_000, 80_000), 3, slide.MEMORY_BUDGET, 19, id="40x-slide"),
        ],
    )
    def test_smallest_stride_within_the_budget(self, shape, bytes_per_pixel, budget, stride):
        assert slide.stride_for(shape, bytes_per_pixel, budget) == stride
        rows, columns = slide.assembled_shape(shape, stride)
        assert rows * columns * bytes_per_pixel <= budget
        if stride > 1:
            rows, columns = slide.assembled_shape(shape, stride - 1)
            assert rows * columns * bytes_per_pixel > budget


class TestLowestLevel:
    def test_the_smallest_volume_level_is_chosen(self):
        headers = [pydicom.dcmread(p, stop_before_pixels=True) for p in (SM_FULL, SM_LEVEL2)]
        assert slide.lowest_level(headers) == 1

    def test_label_and_overview_images_are_not_levels(self):
        ds = pydicom.dcmread(SM_LEVEL2, stop_before_pixels=True)
        ds.ImageType = ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]
        assert not slide.is_level(ds)
        assert slide.lowest_level([ds]) is None


@pytest.fixture
def slide_study(tmp_path):
    """Index a study of the two-level pyramid; returns (study, batch work lists folder)."""
    study = tmp_path / "study"
    study.mkdir()
    for path in (SM_FULL, SM_LEVEL2):
        shutil.copy(path, study / path.name)
    return study, steps.index_study(study, tmp_path / "work")["batches"]


def save(study: Path, batches: Path, results: Path) -> tuple[list[dict], list[dict]]:
    series = pq.read_table(batches / "batch_0.series.parquet").to_pylist()
    instances = pq.read_table(batches / "batch_0.instances.parquet").to_pylist()
    assert len(series) == 1
    manifest, errors, _ = save_slices.save_series(
        study, results, series[0], instances, save_slices.Selection()
    )
    return manifest, errors


class TestSaveSlide:
    def test_only_the_lowest_level_is_saved_assembled(self, slide_study, tmp_path):
        manifest, errors = save(*slide_study, tmp_path / "results")
        assert errors == []
        (row,) = manifest
        assert (row["plane"], row["source_path"]) == ("slide", SM_LEVEL2.name)
        assert np.load(tmp_path / "results" / row["npy_path"]).shape == (25, 25, 3)
        assert row["pixel_spacing_mm"] == pytest.approx([0.000998, 0.000998])

    def test_a_level_over_the_budget_is_strided_with_a_warning(
        self, slide_study, tmp_path, monkeypatch
    ):
        monkeypatch.setattr(slide, "MEMORY_BUDGET", 13 * 13 * 3)
        manifest, errors = save(*slide_study, tmp_path / "results")
        (row,) = manifest
        values = np.load(tmp_path / "results" / row["npy_path"])
        full, _ = assembled(SM_LEVEL2)
        assert np.array_equal(values, full[::2, ::2]) and values.shape == (13, 13, 3)
        assert row["pixel_spacing_mm"] == pytest.approx([0.001996, 0.001996])
        (warning,) = errors
        assert (warning["reason"], warning["severity"]) == ("slide_downsampled", "warning")
        assert "25 x 25" in warning["detail"] and "1 pixel in 2" in warning["detail"]

    def test_a_label_image_stays_an_ordinary_image(self, slide_study, tmp_path):
        study, _ = slide_study
        label = pydicom.dcmread(study / SM_LEVEL2.name)
        label.ImageType = ["ORIGINAL", "PRIMARY", "LABEL", "NONE"]
        label.save_as(study / SM_LEVEL2.name)
        batches = steps.index_study(study, tmp_path / "work2")["batches"]
        manifest, _ = save(study, batches, tmp_path / "results")
        slides = [r for r in manifest if r["plane"] == "slide"]
        assert [r["source_path"] for r in slides] == [SM_FULL.name]  # now the lowest level
        others = [r for r in manifest if r["plane"] != "slide"]
        assert others and {r["source_path"] for r in others} == {SM_LEVEL2.name}
