"""Tests for scripts/make_contact_sheets.py on thumbnails rendered from the real demo study."""

from __future__ import annotations

import shutil

import pyarrow.parquet as pq
import pydicom
import pytest
from PIL import Image

import demo
import make_contact_sheets
import render_thumbnails
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
        assert sorted(set(saved.values())) == [1, 9]  # single images and 9-slice series
        written = sorted(p.stem for p in (sheets["results"] / "contact_sheets").iterdir())
        assert written == sorted(keys)

    def test_sheets_hold_no_patient_identifiers_in_text_chunks_or_bytes(self, sheets):
        identifiers = patient_identifiers(MR_FILE)
        for row in sheets["rows"]:
            path = sheets["results"] / row["sheet_path"]
            with Image.open(path) as image:
                image.load()
                text = " ".join(f"{k} {v}" for k, v in {**image.info, **image.text}.items())
            data = path.read_bytes()
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
