"""Tests for scripts/save_slices.py: index selection, spatial frame order, and the saved
arrays of the demo study compared with what pydicom decodes from the same files.
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.pixels import apply_color_lut, apply_modality_lut

import demo
import save_slices

CT_SMALL = demo.CT_SMALL.relative_to(demo.STUDY).as_posix()
RTDOSE = demo.RTDOSE.relative_to(demo.STUDY).as_posix()
US_RGB = demo.US_RGB.relative_to(demo.STUDY).as_posix()
US_PALETTE = demo.US_PALETTE.relative_to(demo.STUDY).as_posix()
US_YBR_MULTIFRAME = demo.US_YBR_MULTIFRAME.relative_to(demo.STUDY).as_posix()
NM_JPEG_EXTENDED = demo.NM_JPEG_EXTENDED.relative_to(demo.STUDY).as_posix()
JPEG_LOSSY = demo.JPEG_LOSSY.relative_to(demo.STUDY).as_posix()
MR_TRUNCATED = demo.MR_TRUNCATED.relative_to(demo.STUDY).as_posix()
CT_FOLDER = demo.CT_SERIES.relative_to(demo.STUDY).as_posix()
MR_FOLDER = demo.MR_SERIES.relative_to(demo.STUDY).as_posix()

DEMO_CT_SLICES = 20
DEMO_MR_SLICES = 35


@pytest.fixture(scope="module")
def demo_series(demo_metadata) -> list[dict]:
    return pq.read_table(demo_metadata["series"]).to_pylist()


@pytest.fixture(scope="module")
def demo_instances(demo_metadata) -> list[dict]:
    return save_slices.read_instances(demo_metadata["instances"])


def rows_under(instances: list[dict], prefix: str) -> list[dict]:
    return [r for r in instances if r["path"].startswith(prefix)]


@pytest.fixture(scope="module")
def ct_batch(demo_series) -> int:
    ct = [s for s in demo_series if s["grouped_by"] == "folder+SeriesNumber"]
    assert len(ct) == 1 and ct[0]["Modality"] == "CT"
    return ct[0]["batch"]


@pytest.fixture(scope="module")
def saved(demo_metadata, demo_series, tmp_path_factory) -> dict:
    """Run ``save_slices.main`` once per batch of the demo study; collect manifests and errors."""
    results = tmp_path_factory.mktemp("results")
    manifests, errors = {}, {}
    for batch in sorted({s["batch"] for s in demo_series if s["batch"] is not None}):
        manifest = results / "parts" / f"slices_{batch}.parquet"
        errors_path = results / "parts" / f"errors_{batch}.parquet"
        argv = ["--study", str(demo.STUDY), "--results", str(results)]
        argv += ["--instances", str(demo_metadata["instances"])]
        argv += ["--series", str(demo_metadata["series"]), "--batch", str(batch), "--count", "3"]
        argv += ["--manifest", str(manifest), "--errors", str(errors_path)]
        assert save_slices.main(argv) == 0
        manifests[batch] = pq.read_table(manifest).to_pylist()
        errors[batch] = pq.read_table(errors_path).to_pylist()
    return {
        "results": results,
        "by_batch": manifests,
        "manifest": [row for rows in manifests.values() for row in rows],
        "errors": [row for rows in errors.values() for row in rows],
    }


def manifest_rows(saved: dict, source_prefix: str) -> list[dict]:
    rows = [r for r in saved["manifest"] if r["source_path"].startswith(source_prefix)]
    assert rows, f"no saved slice from {source_prefix}"
    return sorted(rows, key=lambda r: r["index"])


def load(saved: dict, row: dict) -> np.ndarray:
    return np.load(saved["results"] / row["npy_path"], allow_pickle=False)


def source(row: dict) -> pydicom.Dataset:
    return pydicom.dcmread(demo.STUDY / row["source_path"])


class TestSelectIndices:
    def test_three_of_the_35_demo_mr_slices_include_the_middle_one(self):
        picks = save_slices.select_indices(DEMO_MR_SLICES, 3)
        assert picks == [9, 17, 26]
        assert DEMO_MR_SLICES // 2 in picks

    @pytest.mark.parametrize(
        ("n", "count", "expected"),
        [
            pytest.param(35, 1, [17], id="one_of_35_is_the_middle"),
            pytest.param(20, 3, [5, 10, 14], id="three_of_20_ct_slices"),
            pytest.param(30, 3, [7, 15, 22], id="three_of_30_us_frames"),
            pytest.param(15, 3, [4, 7, 11], id="three_of_15_dose_frames"),
            pytest.param(3, 3, [0, 1, 2], id="count_equal_to_n_gives_all"),
            pytest.param(2, 3, [0, 1], id="count_above_n_gives_all"),
            pytest.param(1, 3, [0], id="single_slice"),
            pytest.param(0, 3, [], id="no_slices"),
        ],
    )
    def test_selection_table(self, n, count, expected):
        assert save_slices.select_indices(n, count) == expected

    @pytest.mark.parametrize("n", [5, 35, 200])
    def test_picks_are_distinct_sorted_and_in_range(self, n):
        for count in range(1, n):
            picks = save_slices.select_indices(n, count)
            assert picks == sorted(set(picks))
            assert picks[0] >= 0 and picks[-1] < n


class TestStackFrames:
    def test_shuffled_demo_mr_rows_come_back_in_patient_order(self, demo_instances):
        rows = rows_under(demo_instances, MR_FOLDER)
        assert len(rows) == DEMO_MR_SLICES
        random.Random(35).shuffle(rows)
        frames = save_slices.stack_frames(rows, rows[0]["ImageOrientationPatient"])

        positions = [f.position for f in frames]
        assert all(b > a for a, b in zip(positions, positions[1:], strict=False))
        # Sagittal normal is -x: patient order runs from IM_0035 (x = +81.6) to IM_0001.
        expected = [f"{MR_FOLDER}/IM_{i:04d}" for i in range(DEMO_MR_SLICES, 0, -1)]
        assert [f.path for f in frames] == expected
        assert positions[0] == pytest.approx(-81.6, abs=1e-4)

    def test_demo_ct_rows_come_back_from_inferior_to_superior(self, demo_instances):
        rows = rows_under(demo_instances, CT_FOLDER)
        random.Random(20).shuffle(rows)
        frames = save_slices.stack_frames(rows, [1, 0, 0, 0, 1, 0])
        assert [f.position for f in frames] == [-804.5 + 2 * i for i in range(DEMO_CT_SLICES)]
        assert [f.instance_number for f in frames] == list(range(286, 266, -1))

    def test_rtdose_frames_are_listed_per_frame_along_the_grid(self, demo_instances):
        rows = rows_under(demo_instances, RTDOSE)
        frames = save_slices.stack_frames(rows, rows[0]["ImageOrientationPatient"])
        assert [f.frame for f in frames] == list(range(15))
        assert {f.n_frames for f in frames} == {15}
        assert [f.position for f in frames] == pytest.approx([-761.87 + 5 * i for i in range(15)])

    def test_rows_without_orientation_keep_frame_order_without_positions(self, demo_instances):
        rows = rows_under(demo_instances, US_YBR_MULTIFRAME)
        frames = save_slices.stack_frames(rows, None)
        assert [f.frame for f in frames] == list(range(30))
        assert all(f.position is None for f in frames)


class TestMain:
    def test_ct_batch_holds_three_demo_ct_slices(self, saved, ct_batch):
        ct_rows = [r for r in saved["by_batch"][ct_batch] if r["source_path"].startswith(CT_FOLDER)]
        assert [r["index"] for r in ct_rows] == [5, 10, 14]
        assert {r["n_in_plane"] for r in ct_rows} == {DEMO_CT_SLICES}
        assert {r["plane"] for r in ct_rows} == {"axial"}

    def test_ct_slices_hold_hounsfield_units_as_float32(self, saved):
        for row in manifest_rows(saved, CT_FOLDER):
            values = load(saved, row)
            ds = source(row)
            expected = apply_modality_lut(ds.pixel_array, ds)
            assert values.dtype == np.float32
            assert values.shape == (512, 512) == (row["rows"], row["columns"])
            for y, x in [(0, 0), (256, 256), (300, 200), (511, 511)]:
                assert values[y, x] == pytest.approx(expected[y, x])
            np.testing.assert_array_equal(values, expected.astype(np.float32))
            assert values.min() < -900  # air around the body, so values are HU, not stored
            assert row["value_units"] == "HU"

    def test_ct_positions_increase_with_index_and_match_the_source_files(self, saved):
        rows = manifest_rows(saved, CT_FOLDER)
        positions = [r["position_mm"] for r in rows]
        assert positions == sorted(positions) and len(set(positions)) == len(positions)
        for row in rows:
            ds = pydicom.dcmread(demo.STUDY / row["source_path"], stop_before_pixels=True)
            assert row["position_mm"] == pytest.approx(float(ds.ImagePositionPatient[2]))
            assert row["frame"] == 0
            assert row["pixel_spacing_mm"] == pytest.approx([0.9765625, 0.9765625])

    def test_mr_slices_equal_the_stored_pixel_values(self, saved):
        rows = manifest_rows(saved, MR_FOLDER)
        assert [r["index"] for r in rows] == [9, 17, 26]
        assert rows[1]["source_path"].endswith("IM_0018")
        for row in rows:
            values = load(saved, row)
            ds = source(row)
            assert "RescaleSlope" not in ds
            assert values.dtype == np.float32
            np.testing.assert_array_equal(values, ds.pixel_array.astype(np.float32))

    def test_rgb_ultrasound_is_saved_as_uint8_rgb(self, saved):
        row = only(manifest_rows(saved, US_RGB))
        values = load(saved, row)
        assert values.dtype == np.uint8
        assert values.shape == (240, 320, 3)
        assert row["photometric"] == "RGB" and row["value_units"] == "RGB"
        np.testing.assert_array_equal(values, source(row).pixel_array)

    def test_palette_colour_is_saved_as_rgb_through_its_lookup_table(self, saved):
        row = only(manifest_rows(saved, US_PALETTE))
        values = load(saved, row)
        ds = source(row)
        assert ds.PhotometricInterpretation == "PALETTE COLOR"
        assert values.dtype == np.uint8
        assert values.shape == (350, 800, 3)
        lut_bits = int(ds.RedPaletteColorLookupTableDescriptor[2])
        rgb16 = apply_color_lut(ds.pixel_array, ds).astype(np.float64)
        expected = np.rint(rgb16 / (2**lut_bits - 1) * 255).astype(np.uint8)
        np.testing.assert_array_equal(values, expected)
        assert row["photometric"] == "RGB"

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(NM_JPEG_EXTENDED, id="jpg_extended_12_bit"),
            pytest.param(JPEG_LOSSY, id="jpeg_lossy_12_bit_nonconforming_sos"),
        ],
    )
    def test_12_bit_jpeg_extended_is_saved_as_its_nm_counts(self, saved, path):
        row = only(manifest_rows(saved, path))
        values = load(saved, row)
        assert values.dtype == np.float32 and values.shape == (1024, 256)
        assert float(values.max()) == 264.0  # the brightest pixel's count (dcmtk agrees)
        assert not [e for e in saved["errors"] if e["path"] == path]

    @pytest.mark.parametrize(
        ("path", "detail"),
        [
            pytest.param(MR_TRUNCATED, "less than expected", id="truncated_pixel_data"),
        ],
    )
    def test_undecodable_pixels_become_one_warning_row(self, saved, path, detail):
        rows = [e for e in saved["errors"] if e["path"] == path]
        assert len(rows) == 1
        assert rows[0]["reason"] == "undecodable_pixels"
        assert rows[0]["severity"] == "warning"
        assert rows[0]["stage"] == "save_slices"
        assert detail in rows[0]["detail"]
        assert not [r for r in saved["manifest"] if r["source_path"] == path]

    def test_multiframe_ybr_ultrasound_saves_the_frames_chosen_by_index(self, saved):
        rows = manifest_rows(saved, US_YBR_MULTIFRAME)
        assert [r["index"] for r in rows] == [7, 15, 22]
        assert [r["frame"] for r in rows] == [7, 15, 22]
        all_frames = source(rows[0]).pixel_array  # pydicom converts YBR_FULL_422 to RGB
        assert all_frames.shape == (30, 240, 320, 3)
        for row in rows:
            values = load(saved, row)
            assert values.dtype == np.uint8
            np.testing.assert_array_equal(values, all_frames[row["frame"]])
        assert not np.array_equal(load(saved, rows[0]), load(saved, rows[-1]))

    def test_rtdose_frames_are_saved_in_grid_order(self, saved):
        rows = manifest_rows(saved, RTDOSE)
        assert [(r["index"], r["frame"]) for r in rows] == [(4, 4), (7, 7), (11, 11)]
        assert [r["position_mm"] for r in rows] == pytest.approx([-741.87, -726.87, -706.87])

    def test_rtdose_values_are_scaled_by_dose_grid_scaling(self, saved):
        rows = manifest_rows(saved, RTDOSE)
        ds = source(rows[0])
        for row in rows:
            expected = ds.pixel_array[row["frame"]] * float(ds.DoseGridScaling)
            values = load(saved, row)
            assert values.dtype == np.float32
            np.testing.assert_allclose(values, expected, rtol=1e-6)

    @pytest.mark.parametrize(
        ("path", "units"),
        [
            pytest.param(CT_FOLDER, "HU", id="demo_ct_with_rescale_type"),
            pytest.param(CT_SMALL, "HU", id="ct_small_without_rescale_type"),
            pytest.param(RTDOSE, "RELATIVE", id="rtdose_dose_units"),
            pytest.param(MR_FOLDER, "US", id="mr_unspecified"),
        ],
    )
    def test_value_units_follow_the_source_header(self, saved, path, units):
        rows = manifest_rows(saved, path)
        assert {r["value_units"] for r in rows} == {units}

    @pytest.mark.parametrize(
        ("path", "spacing"),
        [
            pytest.param(US_PALETTE, 0.2622878766196998, id="palette_us"),
            pytest.param(US_YBR_MULTIFRAME, 0.5104970559477806, id="multiframe_ybr_us"),
        ],
    )
    def test_ultrasound_pixel_spacing_comes_from_its_calibrated_region(self, saved, path, spacing):
        for row in manifest_rows(saved, path):
            assert row["pixel_spacing_mm"] == pytest.approx([spacing, spacing])

    def test_manifest_paths_are_named_by_key_plane_and_index(self, saved):
        for row in saved["manifest"]:
            name = f"{row['plane']}_{row['index']:04d}"
            assert row["npy_path"] == f"slices/{row['series_key']}/{name}.npy"
            assert row["png_path"] == f"thumbnails/{row['series_key']}/{name}.png"
            assert (saved["results"] / row["npy_path"]).is_file()
        assert not list(saved["results"].rglob("*.tmp"))


def only(rows: list[dict]) -> dict:
    assert len(rows) == 1, rows
    return rows[0]


@pytest.fixture(scope="module")
def resliced(demo_metadata, demo_series, tmp_path_factory) -> dict:
    """save_slices.main with every plane asked for, on the batch holding the demo MR volume."""
    mr = next(s for s in demo_series if s["Modality"] == "MR" and s["n_instances"] == 35)
    results = tmp_path_factory.mktemp("resliced")
    argv = ["--study", str(demo.STUDY), "--results", str(results)]
    argv += [
        "--instances",
        str(demo_metadata["instances"]),
        "--series",
        str(demo_metadata["series"]),
    ]
    argv += ["--batch", str(mr["batch"]), "--count", "5"]
    argv += ["--planes", "acquired", "axial", "coronal", "sagittal"]
    argv += ["--manifest", str(results / "m.parquet"), "--errors", str(results / "e.parquet")]
    assert save_slices.main(argv) == 0
    rows = pq.read_table(results / "m.parquet").to_pylist()
    return {"results": results, "mr": mr, "rows": rows, "series": demo_series}


class TestReslicedPlanes:
    def test_a_sagittal_volume_gets_axial_and_coronal_reformats_besides_its_own_plane(
        self, resliced
    ):
        key = resliced["mr"]["series_key"]
        planes = {r["plane"] for r in resliced["rows"] if r["series_key"] == key}
        assert planes == {"sagittal", "axial", "coronal"}

    def test_reformats_carry_true_millimetre_spacing_and_no_source_file(self, resliced):
        key = resliced["mr"]["series_key"]
        axial = [r for r in resliced["rows"] if r["series_key"] == key and r["plane"] == "axial"]
        assert len(axial) == 5
        for row in axial:
            # rows run anterior→posterior (MR column spacing), columns across the 4.8 mm slices
            assert row["pixel_spacing_mm"] == pytest.approx([1.015625, 4.8], abs=1e-4)
            assert row["source_path"] is None and row["frame"] is None
            assert np.load(resliced["results"] / row["npy_path"]).shape == (256, 35)
        positions = [r["position_mm"] for r in sorted(axial, key=lambda r: r["index"])]
        assert positions == sorted(positions)

    def test_axial_reformat_voxel_equals_the_acquired_voxel_at_the_same_place(self, resliced):
        key = resliced["mr"]["series_key"]
        axial = next(
            r for r in resliced["rows"] if r["series_key"] == key and r["plane"] == "axial"
        )
        image = np.load(resliced["results"] / axial["npy_path"])
        files = sorted(demo.MR_SERIES.iterdir())
        headers = [pydicom.dcmread(f) for f in files]
        # sagittal slices sorted along their normal (-x): ascending projection
        headers.sort(key=lambda ds: -float(ds.ImagePositionPatient[0]))
        k, j = 10, 120  # slice k of the stack, column j of the acquired image
        acquired = headers[k].pixel_array.astype(np.float32)
        # axial row index i ↔ acquired column j (A→P); axial column ↔ slice, flipped to R→L
        row_in_axial = j
        col_in_axial = 35 - 1 - k
        # the acquired image's row (S→I) that lies at this axial slice's height
        z0 = float(headers[k].ImagePositionPatient[2])
        i = round((z0 - axial["position_mm"]) / 1.015625)
        assert image[row_in_axial, col_in_axial] == acquired[i, j]

    def test_coronal_reformat_shows_superior_at_top_and_patient_right_on_the_left(self, resliced):
        key = resliced["mr"]["series_key"]
        coronal = [
            r for r in resliced["rows"] if r["series_key"] == key and r["plane"] == "coronal"
        ]
        assert len(coronal) == 5
        headers = [pydicom.dcmread(f) for f in sorted(demo.MR_SERIES.iterdir())]
        # patient right (-x) first: the column order a coronal view shows left to right
        by_x = sorted(headers, key=lambda ds: float(ds.ImagePositionPatient[0]))
        y0, row_mm = float(headers[0].ImagePositionPatient[1]), float(headers[0].PixelSpacing[1])
        for row in coronal:
            image = np.load(resliced["results"] / row["npy_path"])
            assert image.shape == (256, 35)
            assert row["pixel_spacing_mm"] == pytest.approx([1.015625, 4.8], abs=1e-4)
            j = round((row["position_mm"] - y0) / row_mm)  # acquired column at this y
            for column, ds in enumerate(by_x):
                # acquired rows already run superior to inferior
                np.testing.assert_array_equal(image[:, column], ds.pixel_array[:, j])

    def test_the_acquired_sagittal_plane_is_saved_from_the_source_files(self, resliced):
        key = resliced["mr"]["series_key"]
        sagittal = [
            r for r in resliced["rows"] if r["series_key"] == key and r["plane"] == "sagittal"
        ]
        # 5 evenly spaced of 35: round((i + 1) / 6 * 34) for i = 0..4
        assert [r["index"] for r in sagittal] == [6, 11, 17, 23, 28]
        x = [
            float(pydicom.dcmread(demo.STUDY / r["source_path"]).ImagePositionPatient[0])
            for r in sagittal
        ]
        assert x == sorted(x, reverse=True)  # along the normal (-x): patient left to right
        for row in sagittal:
            assert row["source_path"].startswith(MR_FOLDER)
            expected = pydicom.dcmread(demo.STUDY / row["source_path"]).pixel_array
            np.testing.assert_array_equal(np.load(resliced["results"] / row["npy_path"]), expected)

    def test_series_that_are_not_volumes_keep_only_their_acquired_plane(self, resliced):
        not_volumes = {s["series_key"] for s in resliced["series"] if not s["is_volume"]}
        for row in resliced["rows"]:
            if row["series_key"] in not_volumes:
                assert row["source_path"] is not None


class TestSelectIndicesWithFractions:
    @pytest.mark.parametrize(
        ("n", "fractions", "expected"),
        [
            pytest.param(35, (0.0, 0.5, 1.0), [0, 17, 34], id="ends-and-middle"),
            pytest.param(20, (0.25, 0.25), [5], id="duplicates-merge"),
            pytest.param(1, (0.3, 0.9), [0], id="single-slice"),
        ],
    )
    def test_fractions_pick_slices_along_the_plane(self, n, fractions, expected):
        assert save_slices.select_indices(n, 9, fractions) == expected


class TestMainWithFractions:
    def test_fractions_choose_the_saved_slices_of_the_demo_ct(
        self, demo_metadata, ct_batch, tmp_path
    ):
        argv = ["--study", str(demo.STUDY), "--results", str(tmp_path)]
        argv += ["--instances", str(demo_metadata["instances"])]
        argv += ["--series", str(demo_metadata["series"]), "--batch", str(ct_batch)]
        argv += ["--fractions", "0", "0.5", "1", "--count", "9"]
        argv += ["--manifest", str(tmp_path / "m.parquet"), "--errors", str(tmp_path / "e.parquet")]

        assert save_slices.main(argv) == 0

        rows = pq.read_table(tmp_path / "m.parquet").to_pylist()
        ct = sorted(
            (r for r in rows if r["source_path"].startswith(CT_FOLDER)), key=lambda r: r["index"]
        )
        # first, middle (round(0.5 * 19) = 10) and last of the 20 slices, inferior to superior
        assert [r["index"] for r in ct] == [0, 10, 19]
        z = [
            float(pydicom.dcmread(demo.STUDY / r["source_path"]).ImagePositionPatient[2])
            for r in ct
        ]
        all_z = sorted(
            float(pydicom.dcmread(f).ImagePositionPatient[2]) for f in demo.CT_SERIES.iterdir()
        )
        assert z == [all_z[0], all_z[10], all_z[19]]
