"""Tests for scripts/render_thumbnails.py on slices saved from the real demo study."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image
from pydicom.pixels import apply_voi_lut

import demo
import render_thumbnails
import rendering
import save_slices

SIZE = 200
"""--size used for the thumbnails under test (not the default 256)."""
CT_WINDOW = (40.0, 400.0)
"""The soft-tissue CT preset passed as --ct-window."""

DCMJ2PNM = shutil.which("dcmj2pnm")
needs_dcmtk = pytest.mark.skipif(DCMJ2PNM is None, reason="dcmtk's dcmj2pnm is not on PATH")


def relative(path) -> str:
    return path.relative_to(demo.STUDY).as_posix()


def batches(series_path) -> list[int]:
    column = pq.read_table(series_path, columns=["batch"]).column("batch").drop_null()
    return sorted(set(column.to_pylist()))


def save_demo_slices(metadata, results) -> list:
    """Save the demo study's slices into ``results``, batch by batch; return the manifests."""
    manifests = []
    for batch in batches(metadata["series"]):
        manifest = results / "_work" / f"batch_{batch}.manifest.parquet"
        args = ["--study", str(demo.STUDY), "--results", str(results)]
        args += ["--instances", str(metadata["instances"]), "--series", str(metadata["series"])]
        args += ["--batch", str(batch), "--manifest", str(manifest)]
        args += ["--errors", str(results / "_work" / f"batch_{batch}.errors.parquet")]
        assert save_slices.main(args) == 0
        manifests.append(manifest)
    return manifests


def render(results, manifests, *options) -> list[dict]:
    """Run render_thumbnails.main on every manifest; return all thumbnails rows."""
    rows = []
    for manifest in manifests:
        out = results / "_work" / manifest.name.replace("manifest", "thumbnails")
        args = ["--results", str(results), "--manifest", str(manifest), "--out", str(out)]
        assert render_thumbnails.main(args + list(options)) == 0
        rows += pq.read_table(out).to_pylist()
    return rows


def copy_slices(source, target):
    """A fresh results folder holding the same saved slices."""
    shutil.copytree(source / "slices", target / "slices")
    return target


@pytest.fixture(scope="module")
def slices(demo_metadata, tmp_path_factory):
    results = tmp_path_factory.mktemp("thumbnails")
    manifests = save_demo_slices(demo_metadata, results)
    rows = [r for m in manifests for r in pq.read_table(m).to_pylist()]
    return {"results": results, "manifests": manifests, "rows": rows}


@pytest.fixture(scope="module")
def rendered(slices):
    """Thumbnails at --size SIZE with header or percentile windows."""
    thumbs = render(slices["results"], slices["manifests"], "--size", str(SIZE))
    return {**slices, "thumbs": {t["png_path"]: t for t in thumbs}}


@pytest.fixture(scope="module")
def preset(slices, tmp_path_factory):
    """Thumbnails of the same slices with --ct-window 40 400."""
    results = copy_slices(slices["results"], tmp_path_factory.mktemp("preset"))
    options = ["--size", str(SIZE), "--ct-window", *map(str, CT_WINDOW)]
    thumbs = render(results, slices["manifests"], *options)
    return {**slices, "results": results, "thumbs": {t["png_path"]: t for t in thumbs}}


def rows_from(rows, path) -> list[dict]:
    found = [r for r in rows if r["source_path"] == relative(path)]
    assert found, f"no slice saved from {path.name}"
    return found


class TestMain:
    def test_main_writes_one_png_per_manifest_row(self, rendered):
        assert len(rendered["rows"]) == 44  # 9 slices (or all frames) of 12 image series
        assert sorted(rendered["thumbs"]) == sorted(r["png_path"] for r in rendered["rows"])
        for row in rendered["rows"]:
            assert (rendered["results"] / row["png_path"]).is_file()

    def test_thumbnails_are_uint8_with_the_longest_side_equal_to_size(self, rendered):
        for row in rendered["rows"]:
            image = iio.imread(rendered["results"] / row["png_path"])
            assert image.dtype == np.uint8
            assert max(image.shape[:2]) == SIZE, row["png_path"]

    def test_thumbnails_keep_the_true_aspect_of_the_pixel_spacing(self, rendered):
        for row in rendered["rows"]:
            row_mm, col_mm = row["pixel_spacing_mm"] or (1.0, 1.0)
            ratio = (row["rows"] * row_mm) / (row["columns"] * col_mm)
            height, width = iio.imread(rendered["results"] / row["png_path"]).shape[:2]
            assert abs(height - width * ratio) <= 1, row["png_path"]

    def test_table_records_the_png_size_written(self, rendered):
        for png, thumb in rendered["thumbs"].items():
            image = iio.imread(rendered["results"] / png)
            assert (thumb["png_height"], thumb["png_width"]) == image.shape[:2]

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(demo.CT_SERIES, id="demo-ct"),
            pytest.param(demo.CT_SMALL, id="ct-small-without-rescale-type"),
        ],
    )
    def test_ct_slices_use_the_preset_window_when_one_is_given(self, preset, path):
        prefix = relative(path)
        ct_rows = [r for r in preset["rows"] if r["source_path"].startswith(prefix)]
        assert ct_rows
        for row in ct_rows:
            thumb = preset["thumbs"][row["png_path"]]
            assert thumb["window_source"] == "preset"
            used = (thumb["window_center_used"], thumb["window_width_used"])
            assert used == CT_WINDOW

    def test_preset_leaves_non_ct_slices_on_their_own_window(self, preset):
        mr = rows_from(preset["rows"], demo.MR_OVERLAY)
        assert preset["thumbs"][mr[0]["png_path"]]["window_source"] == "header"

    def test_without_preset_ct_uses_its_header_window(self, rendered):
        for row in rendered["rows"]:
            if row["source_path"].startswith(relative(demo.CT_SERIES)):
                thumb = rendered["thumbs"][row["png_path"]]
                assert thumb["window_source"] == "header"
                assert (thumb["window_center_used"], thumb["window_width_used"]) == (40, 300)

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(demo.US_RGB, id="rgb"),
            pytest.param(demo.US_JPEG2K, id="ybr-rct-jpeg2000"),
            pytest.param(demo.US_PALETTE, id="palette"),
            pytest.param(demo.US_YBR_MULTIFRAME, id="ybr-full-422-multiframe"),
        ],
    )
    def test_colour_ultrasound_stays_rgb(self, rendered, path):
        for row in rows_from(rendered["rows"], path):
            image = iio.imread(rendered["results"] / row["png_path"])
            assert image.ndim == 3
            assert image.shape[2] == 3
            assert rendered["thumbs"][row["png_path"]]["window_source"] == "colour"
            channels = image.astype(int)
            spread = np.abs(channels[..., 0] - channels[..., 1]) + np.abs(
                channels[..., 1] - channels[..., 2]
            )
            assert (spread > 30).any(), "colour collapsed to grey"

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(demo.MR_SERIES, id="demo-mr-header-window"),
            pytest.param(demo.CT_SMALL, id="ct-small-percentile-window"),
            pytest.param(demo.RTDOSE, id="rtdose-percentile-window"),
        ],
    )
    def test_grey_thumbnails_show_contrast_not_a_flat_image(self, rendered, path):
        prefix = relative(path)
        rows = [r for r in rendered["rows"] if r["source_path"].startswith(prefix)]
        assert rows
        for row in rows:
            image = iio.imread(rendered["results"] / row["png_path"])
            assert np.unique(image).size > 16, row["png_path"]

    def test_png_bytes_are_identical_across_two_runs(self, rendered, tmp_path):
        again = copy_slices(rendered["results"], tmp_path)
        render(again, rendered["manifests"], "--size", str(SIZE))
        for png in rendered["thumbs"]:
            assert (again / png).read_bytes() == (rendered["results"] / png).read_bytes(), png


class TestChooseWindow:
    def test_preset_applies_only_to_hounsfield_units(self, slices):
        mr = rows_from(slices["rows"], demo.MR_OVERLAY)[0]
        window, source = render_thumbnails.choose_window(mr, [], CT_WINDOW)
        assert source == "header"
        assert window == (mr["window_center"], mr["window_width"])

    def test_percentile_window_is_pooled_over_the_series_slices(self, slices):
        dose = rows_from(slices["rows"], demo.RTDOSE)
        assert len(dose) == 9  # 9 of the 15 dose frames
        values = [np.load(slices["results"] / r["npy_path"]) for r in dose]
        window, source = render_thumbnails.choose_window(dose[0], values, None)
        assert source == "percentile"
        pooled = np.concatenate([v.ravel() for v in values])
        assert window == pytest.approx(rendering.robust_window(pooled))


DCMTK_FIXTURES = demo.ROOT / "tests" / "fixtures" / "dcmtk"
"""dcmj2pnm's renderings of demo slices, resized to SIZE; see fixtures/make_reference_outputs.py."""

AGREEMENT_CASES = [
    # series, --ct-window, fixture folder, most mean |difference| over the series (grey
    # levels). dcmj2pnm truncates the linear window formula where we round: on the MR's
    # window that shifts up to 2/3 of a slice's pixels by one level; CT shows it less.
    pytest.param(demo.CT_SERIES, None, "ct-header-window", 0.2, id="demo-ct-header-window"),
    pytest.param(demo.CT_SERIES, CT_WINDOW, "ct-preset-40-400", 0.2, id="demo-ct-preset-window"),
    pytest.param(demo.MR_SERIES, None, "mr-header-window", 0.4, id="demo-mr-header-window"),
]
MOST_PIXEL_DIFFERENCE = 3
"""No thumbnail pixel differs from dcmj2pnm's resized rendering by more than this."""


def agreement(ours: np.ndarray, theirs: np.ndarray) -> tuple[float, int]:
    """Mean and largest absolute grey-level difference of two same-shape images."""
    assert theirs.shape == ours.shape
    difference = np.abs(ours.astype(int) - theirs.astype(int))
    return float(difference.mean()), int(difference.max())


class TestAgreementWithDcmtkFixtures:
    """Against dcmj2pnm's outputs kept in tests/fixtures: runs without dcmtk installed."""

    @pytest.mark.parametrize(("series", "window", "case", "most_mean"), AGREEMENT_CASES)
    def test_thumbnails_match_dcmj2pnm_within_the_readme_tolerance(
        self, rendered, preset, series, window, case, most_mean
    ):
        run = rendered if window is None else preset
        rows = [r for r in run["rows"] if r["source_path"].startswith(relative(series))]
        names = sorted(Path(r["source_path"]).name for r in rows)
        fixtures = sorted(p.stem for p in (DCMTK_FIXTURES / case).glob("*.png"))
        assert names == fixtures, "slice selection changed: regenerate the fixtures"
        means = []
        for row in rows:
            ours = iio.imread(run["results"] / row["png_path"])
            theirs = iio.imread(DCMTK_FIXTURES / case / f"{Path(row['source_path']).name}.png")
            mean, most = agreement(ours, theirs)
            assert most <= MOST_PIXEL_DIFFERENCE, row["source_path"]
            means.append(mean)
        assert np.mean(means) < most_mean, means


def dcmtk_render(source, target, window) -> np.ndarray:
    """dcmj2pnm's full-size rendering of ``source`` (decompressed by pydicom if needed)."""
    ds = pydicom.dcmread(source)
    if ds.file_meta.TransferSyntaxUID.is_compressed:
        ds.decompress()  # dcmtk's free build decodes no JPEG 2000
    plain = target.with_suffix(".dcm")
    ds.save_as(plain)
    voi = ["+Wi", "1"] if window is None else ["+Ww", *map(str, window)]
    subprocess.run([DCMJ2PNM, *voi, "+on", str(plain), str(target)], check=True)
    return iio.imread(target)


@needs_dcmtk
class TestAgreementWithDcmtk:
    """Against the dcmj2pnm installed here, the same tolerances as with the fixtures."""

    @pytest.mark.parametrize(("series", "window", "case", "most_mean"), AGREEMENT_CASES)
    def test_thumbnail_matches_dcmj2pnm_resized_to_the_same_size(
        self, rendered, preset, tmp_path, series, window, case, most_mean
    ):
        run = rendered if window is None else preset
        rows = [r for r in run["rows"] if r["source_path"].startswith(relative(series))]
        assert len(rows) == 9
        means = []
        for i, row in enumerate(rows):
            ours = iio.imread(run["results"] / row["png_path"])
            theirs = dcmtk_render(demo.STUDY / row["source_path"], tmp_path / f"{i}.png", window)
            assert theirs.shape == (row["rows"], row["columns"])
            size = (ours.shape[1], ours.shape[0])
            theirs = np.asarray(Image.fromarray(theirs).resize(size, Image.Resampling.LANCZOS))
            mean, most = agreement(ours, theirs)
            assert most <= MOST_PIXEL_DIFFERENCE, row["source_path"]
            means.append(mean)
        assert np.mean(means) < most_mean, means


class TestVoiLutSequence:
    def test_a_header_with_only_a_voi_lut_renders_through_it_as_pydicom_applies_it(self, tmp_path):
        from steps import index_study

        study = tmp_path / "study"
        study.mkdir()
        ds = pydicom.dcmread(demo.MR_SERIES / "IM_0018")
        first, n_entries = 100, 1700  # the LUT starts above 0 and ends below the maximum
        lut = np.rint(4095 * np.linspace(0, 1, n_entries) ** 0.5).astype(np.uint16)
        item = pydicom.Dataset()
        item.add_new(0x00283002, "US", [n_entries, first, 12])  # LUTDescriptor
        item.add_new(0x00283006, "US", lut.tolist())  # LUTData
        ds.VOILUTSequence = [item]
        del ds.WindowCenter, ds.WindowWidth
        ds.save_as(study / "IM_voi_lut.dcm")

        out = tmp_path / "results"
        meta = index_study(study, out)
        manifest = out / "_work" / "batch_0.manifest.parquet"
        args = ["--study", str(study), "--results", str(out), "--instances", str(meta["instances"])]
        args += ["--series", str(meta["series"]), "--batch", "0", "--manifest", str(manifest)]
        assert save_slices.main(args + ["--errors", str(out / "se.parquet")]) == 0

        (row,) = render(out, [manifest], "--size", "256", "--study", str(study))

        assert row["window_source"] == "voi_lut"
        png = iio.imread(out / row["png_path"])
        assert png.shape == (256, 256)  # 256 x 256 at square spacing: no resampling
        written = pydicom.dcmread(study / "IM_voi_lut.dcm")
        expected = apply_voi_lut(written.pixel_array, written, prefer_lut=True)
        expected = np.rint(expected.astype(np.float64) / 4095 * 255).astype(np.uint8)
        np.testing.assert_array_equal(png, expected)
