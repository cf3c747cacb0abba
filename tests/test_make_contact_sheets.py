"""Tests for scripts/make_contact_sheets.py on thumbnails rendered from the real demo study."""

from __future__ import annotations

import shutil
import struct

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image

import demo
import make_contact_sheets
import render_thumbnails
import rendering
import save_slices

MR_FILE = demo.MR_SERIES / "IM_0001"
"""Demo MR slice whose header holds the patient identifiers that must never show."""
MR_FILES = sorted(demo.MR_SERIES.iterdir())
"""The 35 real files of the demo MR series, used as items to sample."""
TILES = 2
"""--tiles for main(): fewer than the three slices saved per series, so sampling is used."""


def batches(series_path) -> list[int]:
    column = pq.read_table(series_path, columns=["batch"]).column("batch").drop_null()
    return sorted(set(column.to_pylist()))


def patient_identifiers(path) -> dict[str, str]:
    ds = pydicom.dcmread(path, stop_before_pixels=True)
    found = {k: str(ds.get(k) or "") for k in ("PatientName", "PatientID", "PatientBirthDate")}
    assert all(found.values()), f"{path.name} lacks an identifier: {found}"
    return found


def non_pixel_bytes(png: bytes) -> bytes:
    """Every byte of a PNG but the compressed pixels (IDAT data): where text could hide.
    (Compressed pixels hold any short byte string by chance: the demo's PatientName is
    the three letters "HFS".)"""
    out, pos = [png[:8]], 8
    while pos < len(png):
        length = struct.unpack(">I", png[pos : pos + 4])[0]
        kind = png[pos + 4 : pos + 8]
        out.append(png[pos : pos + 8] if kind == b"IDAT" else png[pos : pos + 12 + length])
        pos += 12 + length
    return b"".join(out)


def draw_sheets(metadata, results, work) -> list[dict]:
    """Save slices, render thumbnails and draw sheets for every batch; return sheet rows."""
    rows = []
    for batch in batches(metadata["series"]):
        manifest = work / f"batch_{batch}.manifest.parquet"
        thumbs = work / f"batch_{batch}.thumbnails.parquet"
        sheets = work / f"batch_{batch}.sheets.parquet"
        if not manifest.exists():
            args = ["--study", str(demo.STUDY), "--results", str(results)]
            args += ["--instances", str(metadata["instances"])]
            args += ["--series", str(metadata["series"]), "--batch", str(batch)]
            args += ["--manifest", str(manifest), "--errors", str(work / f"{batch}.err.parquet")]
            assert save_slices.main(args) == 0
            args = ["--results", str(results), "--manifest", str(manifest), "--out", str(thumbs)]
            assert render_thumbnails.main(args) == 0
        args = ["--results", str(results), "--manifest", str(manifest), "--thumbnails"]
        args += [str(thumbs), "--series", str(metadata["series"]), "--tiles", str(TILES)]
        assert make_contact_sheets.main(args + ["--out", str(sheets)]) == 0
        rows += pq.read_table(sheets).to_pylist()
    return rows


@pytest.fixture(scope="module")
def sheets(demo_metadata, tmp_path_factory):
    results = tmp_path_factory.mktemp("sheets")
    work = results / "_work"
    work.mkdir()
    rows = draw_sheets(demo_metadata, results, work)
    manifest_keys = set()
    for part in sorted(work.glob("*.manifest.parquet")):
        manifest_keys |= set(pq.read_table(part, columns=["series_key"]).column(0).to_pylist())
    return {"results": results, "work": work, "rows": rows, "manifest_keys": manifest_keys}


@pytest.fixture(scope="module")
def mr_series(demo_metadata) -> dict:
    series = pq.read_table(demo_metadata["series"]).to_pylist()
    (record,) = [s for s in series if s["SeriesDescription"] == "t1_fl2d_sag"]
    return record


class TestGridShape:
    @pytest.mark.parametrize(
        ("n_tiles", "shape"),
        [
            pytest.param(0, (1, 1), id="none-is-one-cell"),
            pytest.param(1, (1, 1), id="one"),
            pytest.param(2, (1, 2), id="two-side-by-side"),
            pytest.param(3, (2, 2), id="three"),
            pytest.param(5, (2, 3), id="five"),
            pytest.param(16, (4, 4), id="sixteen-square"),
            pytest.param(17, (4, 5), id="seventeen"),
            pytest.param(35, (6, 6), id="demo-mr-series"),
        ],
    )
    def test_grid_shape_is_near_square(self, n_tiles, shape):
        assert make_contact_sheets.grid_shape(n_tiles) == shape

    @pytest.mark.parametrize("n_tiles", [pytest.param(n, id=str(n)) for n in range(1, 40)])
    def test_grid_holds_every_tile_without_an_empty_row(self, n_tiles):
        rows, columns = make_contact_sheets.grid_shape(n_tiles)
        assert rows * columns >= n_tiles
        assert (rows - 1) * columns < n_tiles
        assert rows <= columns


class TestSampleEvenly:
    @pytest.mark.parametrize("count", [pytest.param(c, id=f"{c}-of-35") for c in (2, 3, 9, 16)])
    def test_sample_includes_first_and_last_and_respects_the_count(self, count):
        chosen = make_contact_sheets.sample_evenly(MR_FILES, count)
        assert len(chosen) == count
        assert chosen[0] == MR_FILES[0]
        assert chosen[-1] == MR_FILES[-1]
        assert len(set(chosen)) == count
        assert chosen == sorted(chosen, key=MR_FILES.index)

    def test_sample_is_evenly_spread(self):
        chosen = make_contact_sheets.sample_evenly(MR_FILES, 5)
        indices = [MR_FILES.index(c) for c in chosen]
        gaps = [b - a for a, b in zip(indices, indices[1:], strict=False)]
        assert max(gaps) - min(gaps) <= 1

    @pytest.mark.parametrize(
        "count",
        [pytest.param(35, id="exactly-all"), pytest.param(50, id="more-than-all")],
    )
    def test_short_lists_are_returned_whole(self, count):
        assert make_contact_sheets.sample_evenly(MR_FILES, count) == MR_FILES

    def test_a_single_tile_is_the_middle_item(self):
        assert make_contact_sheets.sample_evenly(MR_FILES, 1) == [MR_FILES[17]]

    def test_sample_does_not_modify_the_callers_list(self):
        items = list(MR_FILES)
        make_contact_sheets.sample_evenly(items, 4)
        assert items == MR_FILES


class TestTileLabel:
    BASE = {"plane": "axial", "index": 1, "n_in_plane": 3, "position_mm": 104.27}

    def test_a_slice_is_labelled_by_plane_and_position(self):
        assert make_contact_sheets.tile_label(self.BASE) == "axial +104.3 mm  #2/3"

    def test_a_seg_mask_is_labelled_by_its_segment_label(self):
        row = {**self.BASE, "segment_number": 2, "segment_label": "second segment"}
        assert make_contact_sheets.tile_label(row) == "second segment +104.3 mm  #2/3"

    def test_a_segment_without_label_is_named_by_number_and_long_labels_are_cut(self):
        row = {**self.BASE, "segment_number": 7, "segment_label": None, "position_mm": None}
        assert make_contact_sheets.tile_label(row) == "segment 7  #2/3"
        row["segment_label"] = "left lower lobe of the lung, posterior"
        label = make_contact_sheets.tile_label(row)
        assert label == "left lower lobe of the …  #2/3"

    def test_an_assembled_slide_is_labelled_by_its_size(self):
        row = {"plane": "slide", "index": 0, "n_in_plane": 1, "rows": 25, "columns": 40}
        assert make_contact_sheets.tile_label(row) == "slide 40 × 25 px"


class TestSheetTitle:
    @pytest.mark.parametrize(
        "fact",
        [
            pytest.param("MR", id="modality"),
            pytest.param("series 3", id="series-number"),
            pytest.param("t1_fl2d_sag", id="description"),
            pytest.param("35 instance", id="instance-count"),
            pytest.param("spacing 4.80 mm", id="slice-spacing"),
            pytest.param("sagittal", id="orientation"),
        ],
    )
    def test_title_names_the_series_facts(self, mr_series, fact):
        assert fact in make_contact_sheets.sheet_title(mr_series)

    @pytest.mark.parametrize("keyword", ["PatientName", "PatientID", "PatientBirthDate"])
    def test_title_holds_no_patient_identifier(self, mr_series, keyword):
        value = patient_identifiers(MR_FILE)[keyword]
        assert value not in make_contact_sheets.sheet_title(mr_series)

    def test_title_has_two_lines(self, mr_series):
        assert len(make_contact_sheets.sheet_title(mr_series).splitlines()) == 2


class TestMain:
    def test_main_writes_one_png_per_series_in_the_manifest(self, sheets):
        keys = [r["series_key"] for r in sheets["rows"]]
        assert sorted(keys) == sorted(sheets["manifest_keys"])
        for row in sheets["rows"]:
            path = sheets["results"] / row["sheet_path"]
            assert path == sheets["results"] / "contact_sheets" / f"{row['series_key']}.png"
            with Image.open(path) as image:
                assert image.format == "PNG"
        saved: dict[str, int] = {}
        for part in sorted(sheets["work"].glob("*.manifest.parquet")):
            for key in pq.read_table(part, columns=["series_key"]).column(0).to_pylist():
                saved[key] = saved.get(key, 0) + 1
        assert {r["series_key"]: r["n_tiles"] for r in sheets["rows"]} == {
            key: min(n, TILES) for key, n in saved.items()
        }
        assert sorted(set(saved.values())) == [1, 2, 9]  # single images, the 2 NM files, 9 slices
        written = sorted(p.stem for p in (sheets["results"] / "contact_sheets").iterdir())
        assert written == sorted(keys)

    def test_sheets_hold_no_patient_identifiers_in_text_chunks_or_bytes(self, sheets):
        identifiers = patient_identifiers(MR_FILE)
        for row in sheets["rows"]:
            path = sheets["results"] / row["sheet_path"]
            with Image.open(path) as image:
                image.load()
                text = " ".join(f"{k} {v}" for k, v in {**image.info, **image.text}.items())
            data = non_pixel_bytes(path.read_bytes())
            for keyword, value in identifiers.items():
                assert value not in text, f"{keyword} in text chunks of {path.name}"
                assert value.encode() not in data, f"{keyword} in bytes of {path.name}"

    def test_sheets_hold_no_software_or_date_text_chunks(self, sheets):
        for row in sheets["rows"]:
            with Image.open(sheets["results"] / row["sheet_path"]) as image:
                image.load()
                assert not image.text

    def test_png_bytes_are_identical_across_two_runs(self, sheets, demo_metadata, tmp_path):
        first = {
            r["sheet_path"]: (sheets["results"] / r["sheet_path"]).read_bytes()
            for r in sheets["rows"]
        }
        results = tmp_path / "again"
        shutil.copytree(sheets["results"] / "thumbnails", results / "thumbnails")
        again = draw_sheets(demo_metadata, results, sheets["work"])
        assert sorted(r["sheet_path"] for r in again) == sorted(first)
        for sheet, data in first.items():
            assert (results / sheet).read_bytes() == data, sheet


class TestDrawing:
    @pytest.fixture(scope="class")
    def drawn(self, sheets, mr_series):
        """The demo MR series' sheet and the thumbnails it was drawn from."""
        (row,) = [r for r in sheets["rows"] if r["series_key"] == mr_series["series_key"]]
        work = sheets["work"]
        manifest = [
            r for p in sorted(work.glob("*.manifest.parquet")) for r in pq.read_table(p).to_pylist()
        ]
        mine = [m for m in manifest if m["series_key"] == mr_series["series_key"]]
        chosen = make_contact_sheets.choose_tiles(mine, TILES)
        sheet = np.asarray(Image.open(sheets["results"] / row["sheet_path"]))
        tiles = [np.asarray(Image.open(sheets["results"] / r["png_path"])) for r in chosen]
        return sheet, tiles, chosen

    def test_each_thumbnail_sits_in_its_cell_pixel_for_pixel(self, drawn):
        sheet, tiles, _ = drawn
        _, n_cols = make_contact_sheets.grid_shape(len(tiles))
        grid, (cell_h, cell_w) = make_contact_sheets.montage(tiles, n_cols)
        x0 = (sheet.shape[1] - grid.shape[1]) // 2
        for i, tile in enumerate(tiles):
            row, col = divmod(i, n_cols)
            top = make_contact_sheets.TITLE_PX + row * cell_h + make_contact_sheets.LABEL_PX
            top += (cell_h - make_contact_sheets.LABEL_PX - tile.shape[0]) // 2
            left = x0 + col * cell_w + (cell_w - tile.shape[1]) // 2
            placed = sheet[top : top + tile.shape[0], left : left + tile.shape[1]]
            np.testing.assert_array_equal(placed, tile)

    def test_labels_drawn_from_the_text_cache_give_the_same_bytes(self, drawn, tmp_path):
        _, tiles, chosen = drawn
        labels = [make_contact_sheets.tile_label(r) for r in chosen]
        labelled = list(zip(tiles, labels, strict=True))
        make_contact_sheets.text_image.cache_clear()
        make_contact_sheets.draw_sheet({"n_instances": 1}, labelled, tmp_path / "cold.png")
        cold_hits = make_contact_sheets.text_image.cache_info().hits
        make_contact_sheets.draw_sheet({"n_instances": 1}, labelled, tmp_path / "warm.png")
        assert make_contact_sheets.text_image.cache_info().hits - cold_hits >= len(labels)
        assert (tmp_path / "cold.png").read_bytes() == (tmp_path / "warm.png").read_bytes()
        coverage, _ = make_contact_sheets.text_image(labelled[0][1], make_contact_sheets.LABEL_PT)
        assert not coverage.flags.writeable  # shared between sheets: nobody may draw into it

    def test_a_sheet_of_grey_tiles_is_a_grey_png_and_colour_stays_rgb(self, drawn, tmp_path):
        sheet, tiles, _ = drawn
        assert sheet.ndim == 2 and all(t.ndim == 2 for t in tiles)  # the MR series
        colour = [np.stack([tiles[0], tiles[0] // 2, tiles[0] // 3], axis=2)]
        target = tmp_path / "colour.png"
        make_contact_sheets.draw_sheet({"n_instances": 1}, [(colour[0], "rgb")], target)
        with Image.open(target) as image:
            assert image.mode == "RGB"
            drawn_rgb = np.asarray(image)
        assert (drawn_rgb[..., 0] != drawn_rgb[..., 1]).any()

    def test_title_and_labels_are_drawn_in_their_bands(self, drawn):
        sheet, tiles, _ = drawn
        title = sheet[: make_contact_sheets.TITLE_PX]
        assert title.max() == 255  # white title text
        assert (title > 128).sum() > 200  # two lines of glyphs, not a speck
        band = sheet[make_contact_sheets.TITLE_PX : make_contact_sheets.TITLE_PX + 16]
        assert 180 < band.max() <= 221  # label grey #dddddd, antialiased
        assert (band > 100).sum() > 50 * len(tiles)

    def test_text_image_is_wider_for_longer_text_and_knows_its_baseline(self):
        short, short_baseline = make_contact_sheets.text_image("axial", 10)
        long, _ = make_contact_sheets.text_image("axial +12.5 mm  #3/40", 10)
        assert long.shape[1] > short.shape[1] > 10
        assert short.dtype == np.uint8 and short.max() == 255
        assert np.flatnonzero(short.any(axis=1))[-1] == short_baseline  # no descender
        hanging, baseline = make_contact_sheets.text_image("sagittal", 10)
        assert np.flatnonzero(hanging.any(axis=1))[-1] >= baseline + 2  # the g hangs below

    def test_texts_share_the_baseline(self):
        plain, with_descender = np.zeros((2, 20, 60, 3), np.uint8)
        make_contact_sheets.draw_text(plain, "ax", 10, (255,) * 3, 30, 14)
        make_contact_sheets.draw_text(with_descender, "ax g", 10, (255,) * 3, 30, 14)
        assert not plain[15:].any() and with_descender[15:].any()  # only the g goes below
        assert np.flatnonzero(plain.any(axis=(1, 2)))[-1] == 14

    def test_text_is_clipped_at_the_canvas_edge(self):
        canvas = np.zeros((20, 30, 3), np.uint8)
        make_contact_sheets.draw_text(canvas, "a long label past both edges", 7, (9, 9, 9), 15, 12)
        assert canvas.max() == 9 and canvas[:, :3].any() and canvas[:, -3:].any()
        make_contact_sheets.draw_text(canvas, "gone", 7, (255,) * 3, 500, 12)
        assert canvas.max() == 9  # wholly outside: nothing drawn


class TestReadThumbnail:
    @pytest.mark.parametrize("shape", [(40, 56), (40, 56, 3)], ids=["grey", "rgb"])
    def test_a_thumbnail_reads_back_as_the_uint8_array_that_was_written(self, tmp_path, shape):
        pixels = np.random.default_rng(7).integers(0, 256, size=shape, dtype=np.uint8)
        path = tmp_path / "thumb.png"
        rendering.write_png(pixels, path)
        read = make_contact_sheets.read_thumbnail(path)
        assert read.dtype == np.uint8
        assert read.shape == shape
        np.testing.assert_array_equal(read, pixels)

    def test_the_demo_thumbnails_read_as_pillow_decodes_them(self, sheets):
        pngs = sorted(sheets["results"].glob("thumbnails/*/*.png"))
        assert len(pngs) > 20
        for path in pngs:
            with Image.open(path) as image:
                np.testing.assert_array_equal(
                    make_contact_sheets.read_thumbnail(path), np.asarray(image)
                )
