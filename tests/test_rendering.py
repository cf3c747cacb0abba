"""Tests for scripts/rendering.py on real DICOM files from the demo study."""

from __future__ import annotations

import shutil
import subprocess
import warnings

import imageio.v3 as iio
import numpy as np
import pydicom
import pytest
from pydicom.pixels import apply_modality_lut, apply_voi_lut

import demo
import rendering

CT_FILE = demo.CT_SERIES / "CT.1.3.12.2.1107.5.1.4.60064.30000022120808113428000016573"
"""Demo CT slice (JPEG 2000 lossless): RescaleType HU, two windows 40/300 and 300/1500."""
MR_FILE = demo.MR_SERIES / "IM_0018"
"""Demo MR slice (uncompressed, MONOCHROME2), one window in the header."""
MR_FIRST_FILE = demo.MR_SERIES / "IM_0001"
"""Demo MR slice whose header window is 378/740."""

DCMJ2PNM = shutil.which("dcmj2pnm")
needs_dcmtk = pytest.mark.skipif(DCMJ2PNM is None, reason="dcmtk's dcmj2pnm is not on PATH")
DCMTK_FIXTURES = demo.ROOT / "tests" / "fixtures" / "dcmtk"
"""dcmj2pnm outputs kept for machines without dcmtk (tests/fixtures/make_reference_outputs.py)."""


def read(path):
    return pydicom.dcmread(path)


@pytest.fixture(scope="module")
def mr_monochrome1(tmp_path_factory):
    """The demo MR slice rewritten as MONOCHROME1 (pydicom bundles no MONOCHROME1 file).

    Only PhotometricInterpretation changes: stored values, window and spacing stay real.
    """
    ds = read(MR_FILE)
    ds.PhotometricInterpretation = "MONOCHROME1"
    target = tmp_path_factory.mktemp("mono1") / "IM_0018_mono1.dcm"
    ds.save_as(target)
    return target


class TestModalityValues:
    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(CT_FILE, id="demo-ct-jpeg2000"),
            pytest.param(demo.CT_SMALL, id="ct-small"),
            pytest.param(MR_FILE, id="demo-mr-without-rescale"),
        ],
    )
    def test_modality_values_equal_pydicoms_modality_lut(self, path):
        ds = read(path)
        stored = ds.pixel_array
        expected = apply_modality_lut(stored, ds)
        got = rendering.modality_values(stored, ds)
        assert got.dtype == np.float32
        assert got.shape == stored.shape
        np.testing.assert_allclose(got, expected, rtol=0, atol=1e-3)

    @pytest.mark.parametrize(
        "path",
        [pytest.param(CT_FILE, id="demo-ct"), pytest.param(demo.CT_SMALL, id="ct-small")],
    )
    def test_ct_values_are_hounsfield_units_reaching_air_or_lung(self, path):
        ds = read(path)
        values = rendering.modality_values(ds.pixel_array, ds)
        assert values.min() <= -800
        assert values.max() < 4000

    def test_modality_values_leave_the_stored_array_unchanged(self):
        ds = read(demo.CT_SMALL)
        stored = ds.pixel_array
        before = stored.copy()
        rendering.modality_values(stored, ds)
        np.testing.assert_array_equal(stored, before)

    def test_rtdose_values_are_scaled_by_dose_grid_scaling(self):
        ds = read(demo.RTDOSE)
        stored = ds.pixel_array[4]
        got = rendering.modality_values(stored, ds, frame=4)
        expected = stored.astype(np.float64) * float(ds.DoseGridScaling)
        np.testing.assert_allclose(got, expected, rtol=1e-6)

    def test_a_modality_lut_sequence_wins_over_rescale_slope_and_intercept(self):
        ds = read(demo.CT_SMALL)
        stored = ds.pixel_array
        assert float(ds.RescaleIntercept) == -1024  # present, and must be ignored
        first, n = 500, 1000
        lut = (np.arange(n, dtype=np.int64) * 3 + 7).astype(np.uint16)  # not a rescale
        item = pydicom.Dataset()
        item.LUTDescriptor = [n, first, 16]
        item.ModalityLUTType = "HU"
        item.LUTData = lut.tolist()
        ds.ModalityLUTSequence = [item]
        # stored values fall below, inside and above the LUT's input range
        assert stored.min() < first < first + n - 1 < stored.max()

        got = rendering.modality_values(stored, ds)

        expected = lut[np.clip(stored.astype(np.int64) - first, 0, n - 1)]
        assert got.dtype == np.float32
        np.testing.assert_array_equal(got, expected.astype(np.float32))
        assert got[stored <= first].tolist() == [7.0] * int((stored <= first).sum())
        assert got[stored >= first + n - 1].max() == 7 + 3 * (n - 1)


class TestValueUnits:
    @pytest.mark.parametrize(
        ("path", "units"),
        [
            pytest.param(CT_FILE, "HU", id="demo-ct-rescale-type-hu"),
            pytest.param(demo.CT_SMALL, "HU", id="ct-small-without-rescale-type"),
            pytest.param(MR_FILE, "US", id="demo-mr-unspecified"),
            pytest.param(demo.RTDOSE, "RELATIVE", id="rtdose-dose-units"),
        ],
    )
    def test_value_units_follow_the_header(self, path, units):
        assert rendering.value_units(read(path)) == units

    @pytest.mark.parametrize(
        ("units", "rescale_type", "expected"),
        [
            pytest.param("BQML", None, "BQML", id="pet-bqml"),
            pytest.param("CNTS", None, "CNTS", id="pet-counts"),
            pytest.param(None, None, "US", id="pet-without-units"),
            pytest.param("BQML", "SUVbw", "SUVbw", id="rescale-type-wins"),
        ],
    )
    def test_pet_values_take_the_units_attribute(self, units, rescale_type, expected):
        ds = read(MR_FILE)  # a real image header, relabelled as PET
        ds.Modality = "PT"
        if units is not None:
            ds.Units = units
        if rescale_type is not None:
            ds.RescaleType = rescale_type
        assert rendering.value_units(ds) == expected


class TestHeaderWindow:
    @pytest.mark.parametrize(
        ("path", "window"),
        [
            pytest.param(CT_FILE, (40.0, 300.0), id="demo-ct-first-of-two-pairs"),
            pytest.param(MR_FIRST_FILE, (378.0, 740.0), id="demo-mr-single-pair"),
            pytest.param(demo.CT_SMALL, None, id="ct-small-without-window"),
        ],
    )
    def test_header_window_returns_the_first_center_width_pair(self, path, window):
        assert rendering.header_window(read(path)) == window

    def test_demo_ct_really_holds_two_window_pairs(self):
        ds = read(CT_FILE)
        assert len(ds.WindowCenter) == 2
        assert len(ds.WindowWidth) == 2


class TestApplyWindow:
    CENTER, WIDTH = 40.0, 400.0
    LOW = CENTER - 0.5 - (WIDTH - 1) / 2
    HIGH = CENTER - 0.5 + (WIDTH - 1) / 2

    @pytest.mark.parametrize(
        ("value", "grey"),
        [
            pytest.param(-1000.0, 0, id="far-below-is-black"),
            pytest.param(LOW, 0, id="lower-edge-is-black"),
            pytest.param(CENTER, 128, id="center-is-mid-grey"),
            pytest.param(HIGH, 255, id="upper-edge-is-white"),
            pytest.param(3000.0, 255, id="far-above-is-white"),
        ],
    )
    def test_apply_window_matches_the_dicom_linear_formula_at_known_points(self, value, grey):
        out = rendering.apply_window(np.array([[value]]), self.CENTER, self.WIDTH)
        assert out.dtype == np.uint8
        assert int(out[0, 0]) == grey

    def test_apply_window_matches_the_formula_on_real_ct_values(self):
        ds = read(CT_FILE)
        values = rendering.modality_values(ds.pixel_array, ds)
        c, w = 40.0, 300.0
        x = values.astype(np.float64)
        linear = ((x - (c - 0.5)) / (w - 1) + 0.5) * 255
        expected = np.where(
            x <= c - 0.5 - (w - 1) / 2, 0, np.where(x > c - 0.5 + (w - 1) / 2, 255, linear)
        )
        got = rendering.apply_window(values, c, w)
        assert np.abs(got.astype(np.float64) - expected).max() <= 0.5 + 1e-9

    def test_apply_window_does_not_modify_the_callers_array(self):
        ds = read(demo.CT_SMALL)
        values = rendering.modality_values(ds.pixel_array, ds)
        before = values.copy()
        out = rendering.apply_window(values, self.CENTER, self.WIDTH)
        np.testing.assert_array_equal(values, before)
        assert not np.shares_memory(out, values)

    def test_apply_window_rejects_a_3d_array_naming_the_argument(self):
        with pytest.raises(ValueError, match="'values'"):
            rendering.apply_window(np.zeros((2, 3, 4)), self.CENTER, self.WIDTH)

    def test_width_one_is_a_clean_threshold_at_center_minus_half(self):
        values = np.array([[9.0, 9.5, 10.0, 11.0]])
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            out = rendering.apply_window(values, 10.0, 1.0)
        np.testing.assert_array_equal(out, [[0, 0, 255, 255]])


class TestRenderGrey:
    def test_monochrome1_renders_high_values_dark(self, mr_monochrome1):
        ds = read(mr_monochrome1)
        assert ds.PhotometricInterpretation == "MONOCHROME1"
        values = rendering.modality_values(ds.pixel_array, ds)
        window = rendering.header_window(ds)
        grey = rendering.render_grey(values, window, monochrome1=True)
        brightest = np.unravel_index(np.argmax(values), values.shape)
        darkest = np.unravel_index(np.argmin(values), values.shape)
        assert grey[brightest] < grey[darkest]
        assert grey[darkest] == 255

    def test_monochrome1_is_the_negative_of_monochrome2(self, mr_monochrome1):
        ds = read(mr_monochrome1)
        values = rendering.modality_values(ds.pixel_array, ds)
        window = rendering.header_window(ds)
        mono1 = rendering.render_grey(values, window, monochrome1=True)
        mono2 = rendering.render_grey(values, window, monochrome1=False)
        np.testing.assert_array_equal(mono1.astype(int), 255 - mono2.astype(int))

    def test_monochrome2_renders_high_values_bright(self):
        ds = read(MR_FILE)
        values = rendering.modality_values(ds.pixel_array, ds)
        grey = rendering.render_grey(values, rendering.header_window(ds), monochrome1=False)
        brightest = np.unravel_index(np.argmax(values), values.shape)
        darkest = np.unravel_index(np.argmin(values), values.shape)
        assert grey[brightest] > grey[darkest]
        assert grey[darkest] == 0

    @staticmethod
    def assert_agrees_with_dcmj2pnm(ours: np.ndarray, theirs: np.ndarray) -> None:
        """dcmj2pnm truncates the window formula where we round: same image, at most one
        level lighter, 0.27 levels on average for this slice."""
        assert theirs.shape == ours.shape
        difference = ours.astype(int) - theirs.astype(int)
        assert set(np.unique(difference).tolist()) <= {0, 1}
        assert difference.mean() < 0.3

    def test_monochrome1_rendering_agrees_with_dcmj2pnm_fixture(self, mr_monochrome1):
        ds = read(mr_monochrome1)
        values = rendering.modality_values(ds.pixel_array, ds)
        ours = rendering.render_grey(values, rendering.header_window(ds), monochrome1=True)
        theirs = iio.imread(DCMTK_FIXTURES / "mr-monochrome1" / "IM_0018.png")
        self.assert_agrees_with_dcmj2pnm(ours, theirs)

    @needs_dcmtk
    def test_monochrome1_rendering_agrees_with_dcmj2pnm(self, mr_monochrome1, tmp_path):
        ds = read(mr_monochrome1)
        values = rendering.modality_values(ds.pixel_array, ds)
        ours = rendering.render_grey(values, rendering.header_window(ds), monochrome1=True)
        target = tmp_path / "dcmtk.png"
        subprocess.run([DCMJ2PNM, "+Wi", "1", "+on", str(mr_monochrome1), str(target)], check=True)
        self.assert_agrees_with_dcmj2pnm(ours, iio.imread(target))


class TestDisplaySize:
    @pytest.mark.parametrize(
        ("shape", "spacing", "longest", "size"),
        [
            pytest.param((100, 100), [0.5, 1.0], 200, (100, 200), id="rows-half-as-far-apart"),
            pytest.param((100, 100), [1.0, 0.5], 200, (200, 100), id="columns-half-as-far-apart"),
            pytest.param((100, 100), [0.7, 0.7], 200, (200, 200), id="square-spacing"),
            pytest.param((100, 100), None, 64, (64, 64), id="no-spacing-is-square"),
            pytest.param((512, 512), [0.976562, 0.976562], 256, (256, 256), id="demo-ct"),
            pytest.param((300, 484), [0.72314, 0.72314], 256, (159, 256), id="mr-overlay-wide"),
        ],
    )
    def test_display_size_keeps_true_aspect_with_the_longest_side_fixed(
        self, shape, spacing, longest, size
    ):
        assert rendering.display_size(shape, spacing, longest) == size

    def test_non_square_spacing_gives_height_to_width_of_one_to_two(self):
        height, width = rendering.display_size((100, 100), [0.5, 1.0], 300)
        assert width == 2 * height


class TestResample:
    @pytest.mark.parametrize(
        ("size", "channels"),
        [
            pytest.param((64, 128), None, id="grey"),
            pytest.param((100, 40), 3, id="rgb"),
        ],
    )
    def test_resample_returns_the_requested_shape_as_uint8(self, size, channels):
        ds = read(demo.CT_SMALL)
        grey = rendering.apply_window(rendering.modality_values(ds.pixel_array, ds), 40, 400)
        image = grey if channels is None else np.stack([grey] * channels, axis=-1)
        out = rendering.resample(image, size)
        expected = size if channels is None else (*size, channels)
        assert out.shape == expected
        assert out.dtype == np.uint8

    def test_resample_rejects_float_images_naming_the_argument(self):
        with pytest.raises(ValueError, match="'image'"):
            rendering.resample(np.zeros((4, 4), dtype=np.float32), (2, 2))


class TestRobustWindow:
    def test_robust_window_ignores_nan(self):
        ds = read(demo.CT_SMALL)
        values = rendering.modality_values(ds.pixel_array, ds)
        holed = values.copy()
        holed[::7, ::5] = np.nan
        expected = rendering.robust_window(values[np.isfinite(holed)])
        got = rendering.robust_window(holed)
        assert all(np.isfinite(got))
        assert got == pytest.approx(expected)

    def test_robust_window_spans_the_half_percent_tails(self):
        ds = read(CT_FILE)
        values = rendering.modality_values(ds.pixel_array, ds)
        low, high = np.percentile(values.astype(np.float64), [0.5, 99.5])
        center, width = rendering.robust_window(values)
        assert center == pytest.approx((low + high) / 2)
        assert width == pytest.approx(high - low)

    @pytest.mark.parametrize(
        "values",
        [
            pytest.param(np.full((4, 4), np.nan), id="all-nan"),
            pytest.param(np.array([]), id="empty"),
        ],
    )
    def test_robust_window_without_finite_values_is_a_unit_window(self, values):
        assert rendering.robust_window(values) == (0.0, 1.0)

    def test_robust_window_spans_real_dose_values_narrower_than_one_unit(self):
        ds = read(demo.RTDOSE)
        values = rendering.modality_values(ds.pixel_array[7], ds, frame=7)
        low, high = np.percentile(values.astype(np.float64), [0.5, 99.5])
        assert 0 < high - low < 1
        assert rendering.robust_window(values)[1] == pytest.approx(high - low)

    def test_robust_window_of_a_constant_slice_has_width_one(self):
        assert rendering.robust_window(np.full((8, 8), 7.0)) == (7.0, 1.0)


def with_voi_lut(ds, first_mapped: int, n_entries: int, bits: int = 12) -> np.ndarray:
    """Give ``ds`` a VOI LUT Sequence (and no window): a square-root curve over ``n_entries``
    inputs from ``first_mapped``, spanning 0..2**bits - 1; return the LUT.
    """
    lut = np.rint((2**bits - 1) * np.linspace(0, 1, n_entries) ** 0.5).astype(np.uint16)
    item = pydicom.Dataset()
    item.LUTDescriptor = [n_entries, first_mapped, bits]
    item.LUTData = lut.tolist()
    ds.VOILUTSequence = [item]
    for keyword in ("WindowCenter", "WindowWidth"):
        if keyword in ds:
            delattr(ds, keyword)
    return lut


def pydicom_voi_lut_as_uint8(ds, bits: int = 12) -> np.ndarray:
    """The oracle: pydicom's modality LUT then VOI LUT, scaled from 0..2**bits - 1 to 0..255."""
    modality = np.rint(apply_modality_lut(ds.pixel_array, ds)).astype(np.int64)
    out = apply_voi_lut(modality, ds, prefer_lut=True)
    return np.rint(out.astype(np.float64) / (2**bits - 1) * 255).astype(np.uint8)


class TestVoiLutToUint8:
    @pytest.mark.parametrize(
        ("path", "first_mapped", "n_entries"),
        [
            pytest.param(MR_FILE, 100, 1700, id="demo-mr-first-mapped-100"),
            pytest.param(demo.CT_SMALL, -200, 600, id="ct-small-hu-first-mapped-minus-200"),
        ],
    )
    def test_voi_lut_rendering_equals_pydicoms_apply_voi_lut(self, path, first_mapped, n_entries):
        ds = read(path)
        values = rendering.modality_values(ds.pixel_array, ds)
        with_voi_lut(ds, first_mapped, n_entries)
        # the LUT's ends are really used: values below its first input and above its last
        assert (values < first_mapped).any()
        assert (values > first_mapped + n_entries - 1).any()

        got = rendering.voi_lut_to_uint8(values, ds)

        np.testing.assert_array_equal(got, pydicom_voi_lut_as_uint8(ds))

    def test_a_lut_claiming_16_bits_but_holding_12_is_scaled_by_its_own_range(self):
        ds = read(MR_FILE)
        values = rendering.modality_values(ds.pixel_array, ds)
        lut = with_voi_lut(ds, 100, 1700, bits=12)
        ds.VOILUTSequence[0].LUTDescriptor = [len(lut), 100, 16]  # as some vendors write it

        got = rendering.voi_lut_to_uint8(values, ds)

        ds.VOILUTSequence[0].LUTDescriptor = [len(lut), 100, 12]
        np.testing.assert_array_equal(got, pydicom_voi_lut_as_uint8(ds, bits=12))


class TestApplyWindowFunctions:
    def test_sigmoid_is_half_grey_at_the_center_and_saturates_far_away(self):
        values = np.array([[-1000.0, 40.0, 1000.0]])
        out = rendering.apply_window(values, 40.0, 400.0, "SIGMOID")
        assert out.tolist() == [[0, 128, 255]]

    def test_linear_exact_maps_center_plus_minus_half_width_to_the_ends(self):
        values = np.array([[-160.0, 40.0, 240.0]])
        out = rendering.apply_window(values, 40.0, 400.0, "LINEAR_EXACT")
        assert out.tolist() == [[0, 128, 255]]


@pytest.fixture(scope="module")
def images():
    """The demo MR slice as a windowed grey image, and an RGB image made of it."""
    ds = read(MR_FILE)
    values = rendering.modality_values(ds.pixel_array, ds)
    grey = rendering.render_grey(values, rendering.header_window(ds), monochrome1=False)
    rgb = np.stack([grey, grey[::-1], 255 - grey], axis=2)
    return {"grey": grey, "rgb": rgb}


class TestWritePng:
    """Every PNG of the workflow goes through ``write_png``: the pixels must come back
    exactly, and the bytes must depend on the pixels only."""

    @pytest.mark.parametrize("kind", ["grey", "rgb"])
    def test_pixels_read_back_exactly_by_imageio(self, images, kind, tmp_path):
        target = tmp_path / "out" / f"{kind}.png"
        rendering.write_png(images[kind], target)
        np.testing.assert_array_equal(iio.imread(target), images[kind])
        assert not list(target.parent.glob("*.tmp"))

    def test_bytes_hold_only_header_pixels_and_end(self, images):
        data = rendering.encode_png(images["rgb"])
        chunks, offset = [], 8
        while offset < len(data):
            length = int.from_bytes(data[offset : offset + 4], "big")
            chunks.append(data[offset + 4 : offset + 8])
            offset += 12 + length
        assert chunks[0] == b"IHDR" and chunks[-1] == b"IEND"
        assert set(chunks[1:-1]) == {b"IDAT"}
        assert rendering.encode_png(images["rgb"].copy()) == data

    def test_rejects_what_is_not_uint8(self, images):
        with pytest.raises(ValueError, match="uint8"):
            rendering.encode_png(images["grey"].astype(np.uint16))
