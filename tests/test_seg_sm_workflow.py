"""The workflow end to end on real SEG and whole-slide objects (tests/fixtures/seg_sm).

The study holds a 4-slice CT (pydicom's CT2), three SEGs drawn on it (binary, binary
with two overlapping segments, fractional), a 1,250-frame TILED_FULL SEG drawn on a
slide, that slide with a second, smaller level, and a TILED_SPARSE slide.
"""

from __future__ import annotations

import os
import re
import shutil
from collections import Counter
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest

import build_review_page
import segmentation
from workflow_run import snakemake

pytestmark = pytest.mark.slow

STUDY = Path(__file__).parent / "fixtures" / "seg_sm" / "study"
SEG_BINARY = "seg/seg_image_ct_binary.dcm"
SEG_OVERLAP = "seg/seg_image_ct_binary_overlap.dcm"
SEG_FRACTIONAL = "seg/seg_image_ct_true_fractional.dcm"
SEG_TILED = "seg/seg_image_sm_dots_tiled_full.dcm"
SM_LEVEL1 = "sm/sm_image.dcm"
SM_LEVEL2 = "sm/sm_image_level2.dcm"
SM_SPARSE = "sm_sparse/sm_image_sparse.dcm"
CT_FILES = ("ct/17106", "ct/17136", "ct/17166", "ct/17196")
ONE_SERIES_PER_BATCH = "metadata:\n  series_per_batch: 1\n"
RUN = ("--cores", "2", "--configfile", "batches.yaml", "--config", "study=study")


def jobs_run(stderr: str) -> Counter:
    """How many jobs of each rule a snakemake run executed, from its log."""
    return Counter(re.findall(r"^(?:local)?(?:rule|checkpoint) (\w+):", stderr, flags=re.M))


@pytest.fixture(scope="module")
def run(tmp_path_factory) -> Path:
    """A finished run on a copy of the fixture study; returns its working folder."""
    cwd = tmp_path_factory.mktemp("seg_sm")
    shutil.copytree(STUDY, cwd / "study")
    (cwd / "batches.yaml").write_text(ONE_SERIES_PER_BATCH)
    snakemake(cwd, *RUN, "results=results")
    return cwd


@pytest.fixture(scope="module")
def slices(run) -> list[dict]:
    return pq.read_table(run / "results" / "metadata" / "slices.parquet").to_pylist()


def rows_of(slices: list[dict], path: str) -> list[dict]:
    return sorted((r for r in slices if r["source_path"] == path), key=lambda r: r["index"])


def ct_by_uid() -> dict[str, str]:
    return {pydicom.dcmread(STUDY / p).SOPInstanceUID: p for p in CT_FILES}


class TestSegManifest:
    def test_each_mask_names_its_segment_and_the_ct_slice_it_was_drawn_on(self, slices):
        rows = rows_of(slices, SEG_OVERLAP)
        assert len(rows) == 8
        labels = Counter((r["segment_number"], r["segment_label"]) for r in rows)
        assert labels == {(1, "first segment"): 4, (2, "second segment"): 4}
        ds = pydicom.dcmread(STUDY / SEG_OVERLAP)
        by_uid = ct_by_uid()
        for row in rows:
            uid, frame = segmentation.frame_source(ds, row["frame"])
            assert row["source_sop_instance_uid"] == uid
            assert row["source_frame"] == frame == 0
            ct = pydicom.dcmread(STUDY / by_uid[uid])
            assert row["position_mm"] == pytest.approx(float(ct.ImagePositionPatient[2]), abs=1e-3)

    def test_segment_colours_differ_and_come_from_the_palette(self, slices):
        colours = {
            r["segment_number"]: tuple(r["segment_rgb"]) for r in rows_of(slices, SEG_OVERLAP)
        }
        assert colours == {1: segmentation.PALETTE[0], 2: segmentation.PALETTE[1]}

    def test_binary_npy_holds_the_mask_and_its_source_the_ct_values(self, run, slices):
        results = run / "results"
        ds = pydicom.dcmread(STUDY / SEG_BINARY)
        for row in rows_of(slices, SEG_BINARY):
            mask = np.load(results / row["npy_path"])
            assert mask.dtype == np.uint8
            assert np.array_equal(mask, (ds.pixel_array[row["frame"]] != 0).astype(np.uint8))
            ct = pydicom.dcmread(STUDY / ct_by_uid()[row["source_sop_instance_uid"]])
            hu = ct.pixel_array * float(ct.RescaleSlope) + float(ct.RescaleIntercept)
            assert np.allclose(np.load(results / row["source_npy_path"]), hu)

    def test_fractional_npy_holds_values_between_zero_and_one(self, run, slices):
        ds = pydicom.dcmread(STUDY / SEG_FRACTIONAL)
        for row in rows_of(slices, SEG_FRACTIONAL):
            mask = np.load(run / "results" / row["npy_path"])
            assert row["value_units"] == "fraction" and mask.dtype == np.float32
            expected = ds.pixel_array[row["frame"]] / float(ds.MaximumFractionalValue)
            assert np.allclose(mask, expected)


class TestSegThumbnails:
    def test_mask_is_drawn_in_its_colour_over_the_ct_slice_outside_unchanged(self, run, slices):
        results = run / "results"
        row = rows_of(slices, SEG_OVERLAP)[1]  # segment 2 on the first CT slice
        assert row["segment_number"] == 2
        mask = np.load(results / row["npy_path"])
        overlay = iio.imread(results / row["png_path"]).astype(int)
        ct_row = next(
            r
            for r in slices
            if r["source_path"] == ct_by_uid()[row["source_sop_instance_uid"]]
            and r["segment_number"] is None
        )
        ct_png = iio.imread(results / ct_row["png_path"]).astype(int)
        assert overlay.shape[:2] == ct_png.shape[:2] == (256, 256)
        scale = overlay.shape[0] // mask.shape[0]  # 16 × 16 shown at 256 × 256
        far = np.ones(mask.shape, bool)
        ys, xs = np.nonzero(mask)
        far[max(ys.min() - 1, 0) : ys.max() + 2, max(xs.min() - 1, 0) : xs.max() + 2] = False
        far_px = np.kron(far, np.ones((scale, scale), bool))
        grey = ct_png if ct_png.ndim == 2 else ct_png[..., 0]
        for channel in range(3):  # away from the mask: the CT's own thumbnail, grey
            assert np.array_equal(overlay[..., channel][far_px], grey[far_px])
        centre = (int(ys.mean()) * scale + scale // 2, int(xs.mean()) * scale + scale // 2)
        red, green, blue = overlay[centre]
        assert green > red and green > blue  # segment 2 is the palette's green
        assert row["segment_label"] == "second segment"

    def test_tiled_seg_masks_are_coloured_dots_not_white_tiles(self, run, slices):
        rows = rows_of(slices, SEG_TILED)
        assert len(rows) == 9 and {r["plane"] for r in rows} == {"slide"}
        ds = pydicom.dcmread(STUDY / SEG_TILED)
        frames = ds.pixel_array
        for row in rows:
            mask = np.load(run / "results" / row["npy_path"])
            assert mask.shape == (ds.TotalPixelMatrixRows, ds.TotalPixelMatrixColumns)
            plane = row["segment_number"] - 1  # TILED_FULL: 25 tiles per segment
            assert int(mask.sum()) == int(frames[plane * 25 : plane * 25 + 25].sum())
            png = iio.imread(run / "results" / row["png_path"])
            if mask.any():
                colour = np.asarray(row["segment_rgb"])
                assert (np.abs(png.astype(int) - colour).sum(axis=-1) < 8).any()
            assert not (png == 255).all()


class TestSlides:
    def test_pyramid_shows_its_lowest_level_assembled(self, run, slices):
        rows = [r for r in slices if r["source_path"] in (SM_LEVEL1, SM_LEVEL2)]
        assert [r["source_path"] for r in rows] == [SM_LEVEL2]
        level = pydicom.dcmread(STUDY / SM_LEVEL2)
        values = np.load(run / "results" / rows[0]["npy_path"])
        assert values.shape == (level.TotalPixelMatrixRows, level.TotalPixelMatrixColumns, 3)
        assert values.dtype == np.uint8
        tile_4 = level.pixel_array[4]  # middle tile of 3 × 3: top-left (10, 10)
        assert np.array_equal(values[10:20, 10:20], tile_4)
        png = iio.imread(run / "results" / rows[0]["png_path"])
        assert png.shape == (256, 256, 3)  # square slide, square pixels

    def test_tiled_sparse_slide_equals_the_tiled_full_one(self, run, slices):
        (row,) = rows_of(slices, SM_SPARSE)
        full = pydicom.dcmread(STUDY / SM_LEVEL1)
        tiles = full.pixel_array
        expected = np.zeros((50, 50, 3), np.uint8)
        for i, tile in enumerate(tiles):
            expected[i // 5 * 10 : i // 5 * 10 + 10, i % 5 * 10 : i % 5 * 10 + 10] = tile
        assert np.array_equal(np.load(run / "results" / row["npy_path"]), expected)


class TestPageAndSheets:
    def test_every_series_has_a_sheet(self, run):
        series = pq.read_table(run / "results" / "metadata" / "series.parquet").to_pylist()
        for record in series:
            assert (run / "results" / "contact_sheets" / f"{record['series_key']}.png").is_file()

    def test_the_ct_card_links_to_its_three_segs(self, run, slices):
        data = build_review_page.read_data_script(
            (run / "results" / "review" / "series.js").read_text()
        )
        by_key = {s["k"]: s for s in data["series"]}
        ct_key = next(r["series_key"] for r in slices if r["source_path"] == CT_FILES[0])
        seg_keys = sorted(  # the SEG with two segments is two stacks, one per segment
            {
                r["series_key"]
                for p in (SEG_BINARY, SEG_OVERLAP, SEG_FRACTIONAL)
                for r in rows_of(slices, p)
            }
        )
        assert len(seg_keys) == 4
        assert by_key[ct_key]["sg"] == seg_keys
        assert all(by_key[k]["so"] == [ct_key] for k in seg_keys)


def test_rewriting_a_source_ct_file_redoes_the_batches_of_its_segs(run):
    """A source file's new stamp changes its SEGs' work lists: their batches rerun."""
    series = pq.read_table(run / "results" / "_work" / "series.parquet").to_pylist()
    slices = pq.read_table(run / "results" / "metadata" / "slices.parquet").to_pylist()
    paths = (CT_FILES[1], SEG_BINARY, SEG_OVERLAP, SEG_FRACTIONAL)
    affected = {r["series_key"] for r in slices if r["source_path"] in paths}
    batch_of = {r["series_key"]: r["batch"] for r in series}
    expected = {batch_of[k] for k in affected}
    untouched = {r["series_key"]: r["batch"] for r in series if r["series_key"] not in affected}
    assert untouched, "every stack is affected: the test would prove nothing"
    target = run / "study" / CT_FILES[1]
    copy = target.with_name("copy")
    shutil.copy2(target, copy)
    os.replace(copy, target)  # same bytes and mtime, a new inode: rewritten in place
    proc = snakemake(run, *RUN, "results=results")
    assert jobs_run(proc.stderr)["save_slices"] == len(expected)
    for batch in set(untouched.values()):  # in a rerun batch, unaffected stacks are reused
        n = sum(b == batch for b in untouched.values())
        log = (run / "results" / "logs" / "save_slices" / f"batch_{batch}.log").read_text()
        reused = int(re.search(rf"batch {batch}: \d+ series, (\d+) unchanged", log).group(1))
        assert reused == n
