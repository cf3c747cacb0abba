"""Tests for scripts/build_review_page.py on a review page built from the real demo study."""

from __future__ import annotations

import json
import re
import struct
from pathlib import PurePosixPath
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pydicom
import pytest

import build_review_page
import demo
import finalize_tables
import make_contact_sheets
import ratings
import render_thumbnails
import save_slices

MR_FILE = demo.MR_SERIES / "IM_0001"
"""Demo MR slice whose header holds the patient identifiers that must never show."""
NO_PIXEL_OBJECTS = (demo.SR, demo.RTPLAN, demo.ECG)
"""Demo instances without pixel data: their series get a note instead of a sheet."""
JPEG_EXTENDED_SERIES = demo.NM_JPEG_EXTENDED
"""12-bit JPEG Extended, decoded through the imagecodecs plugin (undecodable until then)."""
ESCAPED_DESCRIPTION = demo.MR_OVERLAY
"""Its SeriesDescription is 'marked lesion<MPR Collection>': kept as text, never as markup."""
NOT_INDEXED = (demo.NO_META, demo.ZIP_MR, demo.RTPLAN_TRUNCATED)
"""Demo files that are no instance: their error rows belong to no series."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def relative(path) -> str:
    return path.relative_to(demo.STUDY).as_posix()


def batches(series_path) -> list[int]:
    column = pq.read_table(series_path, columns=["batch"]).column("batch").drop_null()
    return sorted(set(column.to_pylist()))


def png_size(path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE, path
    return struct.unpack(">II", head[16:24])


def load_data(path) -> dict:
    """The JSON assigned to window.REVIEW_DATA in the data file."""
    return build_review_page.read_data_script(path.read_text(encoding="utf-8"))


@pytest.fixture(scope="module")
def review(demo_metadata, tmp_path_factory):
    """The demo study through slices, thumbnails, sheets and final tables to index.html."""
    results = tmp_path_factory.mktemp("review")
    work = results / "_work"
    manifests, thumbs, sheets, errors = [], [], [], [str(demo_metadata["errors"])]
    for batch in batches(demo_metadata["series"]):
        m, t, s, e = (work / f"batch_{batch}.{n}.parquet" for n in ("m", "t", "s", "e"))
        args = ["--study", str(demo.STUDY), "--results", str(results)]
        args += ["--instances", str(demo_metadata["instances"])]
        args += ["--series", str(demo_metadata["series"]), "--batch", str(batch)]
        assert save_slices.main(args + ["--manifest", str(m), "--errors", str(e)]) == 0
        args = ["--results", str(results), "--manifest", str(m), "--out", str(t)]
        assert render_thumbnails.main(args) == 0
        args = ["--results", str(results), "--manifest", str(m), "--thumbnails", str(t)]
        args += ["--series", str(demo_metadata["series"]), "--out", str(s)]
        assert make_contact_sheets.main(args) == 0
        manifests.append(str(m))
        thumbs.append(str(t))
        sheets.append(str(s))
        errors.append(str(e))
    metadata = results / "metadata"
    args = ["--manifests", *manifests, "--thumbnails", *thumbs, "--error-parts", *errors]
    args += ["--slices", str(metadata / "slices.parquet")]
    args += ["--errors", str(metadata / "errors.parquet")]
    args += ["--series", str(demo_metadata["series"])]
    assert finalize_tables.main([*args, "--series-out", str(metadata / "series.parquet")]) == 0
    index = results / "index.html"
    args = ["--series", str(metadata / "series.parquet")]
    args += [
        "--slices",
        str(metadata / "slices.parquet"),
        "--errors",
        str(metadata / "errors.parquet"),
    ]
    args += ["--instances", str(demo_metadata["instances"]), "--sheets", *sheets]
    args += ["--identifiers", str(demo_metadata["identifiers"])]
    assert build_review_page.main(args + ["--out", str(index)]) == 0
    data_file = results / build_review_page.DATA_FILE
    return {
        "results": results,
        "page": index.read_text(encoding="utf-8"),
        "data_text": data_file.read_text(encoding="utf-8"),
        "data": load_data(data_file),
        "series": pq.read_table(metadata / "series.parquet").to_pylist(),
        "instances": pq.read_table(demo_metadata["instances"], columns=["path", "series_key"]),
        "sheets": [r for p in sheets for r in pq.read_table(p).to_pylist()],
        "slices": pq.read_table(metadata / "slices.parquet").to_pylist(),
        "errors": pq.read_table(metadata / "errors.parquet").to_pylist(),
        "args": args,
        "instances_path": demo_metadata["instances"],
        "identifiers_path": demo_metadata["identifiers"],
    }


def key_of(review, path) -> str:
    rows = review["instances"].to_pylist()
    (key,) = {r["series_key"] for r in rows if r["path"] == relative(path)}
    return key


def entry_of(review, path) -> dict:
    key = key_of(review, path)
    (entry,) = [s for s in review["data"]["series"] if s["k"] == key]
    return entry


def is_relative_inside(src: str) -> bool:
    return not urlparse(src).scheme and not PurePosixPath(src).is_absolute() and ".." not in src


class TestPageData:
    def test_every_series_of_the_series_table_is_listed_once(self, review):
        keys = [s["k"] for s in review["data"]["series"]]
        assert len(keys) == len(set(keys)) == len(review["series"]) == 14
        assert sorted(keys) == sorted(s["series_key"] for s in review["series"])

    def test_every_sheet_is_listed_with_its_series_and_a_relative_path_that_exists(self, review):
        sheets = {r["series_key"]: r["sheet_path"] for r in review["sheets"]}
        listed = {s["k"]: s["sheet"] for s in review["data"]["series"] if s["sheet"]}
        assert listed == sheets
        for src in listed.values():
            assert is_relative_inside(src) and (review["results"] / src).is_file(), src

    def test_every_series_with_a_thumbnail_has_a_small_preview_file(self, review):
        with_thumbs = {r["series_key"] for r in review["slices"] if r["png_path"]}
        previews = {s["k"]: s["pv"] for s in review["data"]["series"] if s["pv"]}
        assert set(previews) == with_thumbs and len(previews) >= 9
        for key, src in previews.items():
            assert src == f"review/previews/{key}.png"
            width, height = png_size(review["results"] / src)
            assert max(width, height) <= build_review_page.PREVIEW_SIZE

    def test_a_preview_keeps_the_aspect_of_its_thumbnail(self, review):
        entry = entry_of(review, demo.US_RGB)  # 320 × 240 at 0.75 aspect
        width, height = png_size(review["results"] / entry["pv"])
        assert (width, height) == (160, 120)

    def test_every_saved_slice_is_listed_by_plane_with_a_thumbnail_that_exists(self, review):
        by_key = {s["k"]: s for s in review["data"]["series"]}
        for row in review["slices"]:
            key, plane_name = row["series_key"], row["plane"]
            plane = by_key[key]["pl"][plane_name]
            at = plane["i"].index(row["index"])
            png = plane.get("png", {at: f"thumbnails/{key}/{plane_name}_{row['index']:04d}.png"})
            assert png[at] == row["png_path"] and (review["results"] / png[at]).is_file()
            assert plane["p"][at] == pytest.approx(row["position_mm"], abs=0.005) or (
                row["position_mm"] is None and plane["p"][at] is None
            )
            assert plane["n"] == row["n_in_plane"]
        n_listed = sum(len(p["i"]) for s in by_key.values() for p in s["pl"].values())
        assert n_listed == len(review["slices"])

    def test_the_data_file_leaves_out_defaults_and_reads_back_whole(self, review):
        text = (review["results"] / build_review_page.DATA_FILE).read_text(encoding="utf-8")
        series_text = text[text.index('\\"series\\"') :]
        assert '\\"pv\\":1' in series_text and '\\"geo\\":false' not in series_text
        data = build_review_page.read_data_script(text)
        assert data == review["data"]
        assert all(set(s) >= set(build_review_page.SERIES_DEFAULTS) for s in data["series"])

    @pytest.mark.parametrize("path", [pytest.param(p, id=p.parent.name) for p in NO_PIXEL_OBJECTS])
    def test_series_without_pixels_have_no_preview_sheet_or_slices(self, review, path):
        entry = entry_of(review, path)
        assert (entry["pix"], entry["pv"], entry["sheet"], entry["pl"]) == (False, None, None, {})
        assert entry["und"] is False

    def test_series_with_an_undecodable_instance_is_flagged_undecodable(self, review):
        entry = entry_of(review, demo.MR_TRUNCATED)  # its other instance decodes
        assert entry["pix"] is True and entry["und"] is True
        assert "undecodable_pixels" in entry["er"]

    def test_12_bit_jpeg_extended_series_has_a_sheet_and_no_undecodable_flag(self, review):
        entry = entry_of(review, JPEG_EXTENDED_SERIES)
        assert entry["pix"] is True and entry["sheet"] is not None and entry["und"] is False
        assert "undecodable_pixels" not in entry["er"]

    def test_error_rows_of_an_instance_are_shown_with_its_series(self, review):
        entry = entry_of(review, demo.MR_TRUNCATED)
        rows = [e for e in entry["e"] if e[0] == relative(demo.MR_TRUNCATED)]
        assert {r[2] for r in rows} >= {"truncated", "undecodable_pixels"}
        assert entry["ne"] == len(entry["e"]) >= 2

    def test_files_that_are_no_instance_are_listed_apart(self, review):
        data = review["data"]
        assert sorted(r[0] for r in data["unattributed"]) == sorted(map(relative, NOT_INDEXED))
        assert data["n_unattributed"] == 3
        assert data["summary"]["not_indexed"] == {"not_dicom": 2, "truncated": 1}

    def test_a_series_without_errors_or_geometry_problems_has_no_flag(self, review):
        entry = entry_of(review, MR_FILE)
        assert (entry["geo"], entry["ne"], entry["und"]) == (False, 0, False)
        assert entry["ck"] == [True, True, True]

    def test_geometry_fails_on_any_failed_check_missing_or_duplicate_slices(self):
        fails = build_review_page.geometry_fails
        assert not fails({"single_orientation": True, "uniform_spacing": True})
        assert not fails({"single_orientation": None, "missing_slices": 0})
        assert fails({"uniform_spacing": False})
        assert fails({"single_orientation": False})
        assert fails({"missing_slices": 2})
        assert fails({"duplicate_positions": 1})

    def test_studies_are_named_by_a_hash_and_series_point_at_them(self, review):
        studies = review["data"]["studies"]
        assert all(re.fullmatch(r"[0-9a-f]{8}", s["id"]) for s in studies)
        assert {s["st"] for s in review["data"]["series"]} == set(range(len(studies)))

    def test_series_are_ordered_by_study_then_series_number(self, review):
        order = [(s["st"], s["no"] is None, s["no"] or 0) for s in review["data"]["series"]]
        assert order == sorted(order)

    def test_descriptions_are_kept_as_text(self, review):
        assert entry_of(review, ESCAPED_DESCRIPTION)["d"] == "marked lesion<MPR Collection>"

    def test_without_ratings_no_series_is_rated(self, review):
        assert all(s["q"] is None for s in review["data"]["series"])

    def test_the_tags_and_rating_labels_are_the_ratings_modules(self, review):
        data = review["data"]
        assert data["tags"] == list(ratings.ARTIFACT_TAGS)
        assert data["columns"] == list(ratings.COLUMNS)
        assert data["ratings"] == {"1": "exclude", "2": "poor", "3": "acceptable", "4": "excellent"}


class TestRatingsOnThePage:
    def test_rated_series_carry_their_rating_tags_and_note(self, review):
        series = [dict(s) for s in review["series"]]
        series[0].update(qc_rating=2, qc_tags=["motion"], qc_note="n", qc_rater="a")
        series[1].update(qc_rating=None, qc_tags=None, qc_note="look again")
        data = build_review_page.review_data(series, {}, [], [], {}, {}, {})
        by_key = {s["k"]: s["q"] for s in data["series"]}
        assert by_key[series[0]["series_key"]] == {
            "rating": 2,
            "tags": ["motion"],
            "note": "n",
            "rater": "a",
            "rated_at": "",
        }
        assert by_key[series[1]["series_key"]]["note"] == "look again"
        assert sum(q is not None for q in by_key.values()) == 2


class TestPrivacy:
    @pytest.mark.parametrize("keyword", ["PatientName", "PatientID", "PatientBirthDate"])
    def test_page_and_data_hold_no_patient_identifier(self, review, keyword):
        value = str(pydicom.dcmread(MR_FILE, stop_before_pixels=True).get(keyword) or "")
        assert value
        assert value not in review["page"]
        assert value not in review["data_text"]

    def test_page_and_data_hold_no_identifier_of_any_demo_patient(self, review):
        found = set()
        for path in demo.STUDY.rglob("*"):
            try:
                ds = pydicom.dcmread(path, stop_before_pixels=True)
            except (OSError, pydicom.errors.InvalidDicomError):
                continue
            for keyword in ("PatientName", "PatientID", "PatientBirthDate"):
                value = str(ds.get(keyword) or "")
                if len(value) >= 5:  # shorter ones ('PLA', '204') occur by chance ('RTPLAN')
                    found.add(value)
        assert len(found) == 20
        text = review["page"] + review["data_text"]
        assert sorted(v for v in found if v in text) == []

    def test_identifiers_are_read_from_each_series_first_header(self, review):
        identifiers = build_review_page.read_identifiers(review["identifiers_path"])
        assert set(identifiers) == {s["series_key"] for s in review["series"]}
        ds = pydicom.dcmread(MR_FILE, stop_before_pixels=True)
        mr = identifiers[key_of(review, MR_FILE)]
        assert {str(ds.PatientName), ds.PatientID, ds.PatientBirthDate} <= set(mr["patient"])
        assert "1970-06-06" in mr["patient"]  # the birth date's other spellings too
        assert {ds.StudyDate, str(ds.InstitutionName)} <= set(mr["other"])

    def test_dates_in_folder_names_of_error_rows_are_cut_out(self, review):
        ct = pydicom.dcmread(next(demo.CT_SERIES.iterdir()), stop_before_pixels=True)
        entry = entry_of(review, next(demo.CT_SERIES.iterdir()))
        assert entry["ne"] == 20 and ct.StudyDate in relative(demo.CT_SERIES)
        assert all(ct.StudyDate not in e[0] and e[0].startswith("patient02_") for e in entry["e"])

    @pytest.mark.parametrize(
        ("column", "spelling"),
        [
            pytest.param("StudyDescription", "{name}", id="study-heading-equals-name"),
            pytest.param("SeriesDescription", "{name_words}", id="series-names-patient"),
            pytest.param("SeriesDescription", "{pid}", id="series-is-patient-id"),
            pytest.param("BodyPartExamined", "{birth}", id="body-part-is-birth-date"),
        ],
    )
    def test_free_text_repeating_a_patient_identifier_is_blanked(self, review, column, spelling):
        ds = pydicom.dcmread(demo.MR_OVERLAY, stop_before_pixels=True)
        name = str(ds.PatientName)
        text = spelling.format(
            name=name,
            name_words=" ".join(reversed(name.split("^"))).upper(),
            pid=ds.PatientID,
            birth=f"{ds.PatientBirthDate[:4]}-{ds.PatientBirthDate[4:6]}-{ds.PatientBirthDate[6:]}",
        )
        key = key_of(review, demo.MR_OVERLAY)
        series = [
            dict(s, **{column: text}) if s["series_key"] == key else s for s in review["series"]
        ]
        identifiers = build_review_page.read_identifiers(review["identifiers_path"])
        data = build_review_page.review_data(series, {}, [], [], {}, identifiers, {})
        text_out = json.dumps(data)
        assert text not in text_out
        (entry,) = [s for s in data["series"] if s["k"] == key]
        if column == "StudyDescription":
            assert data["studies"][entry["st"]]["desc"] is None
        else:
            assert entry["d" if column == "SeriesDescription" else "bp"] is None

    def test_other_descriptions_of_that_patient_stay(self, review):
        identifiers = build_review_page.read_identifiers(review["identifiers_path"])
        data = build_review_page.review_data(review["series"], {}, [], [], {}, identifiers, {})
        (entry,) = [s for s in data["series"] if s["k"] == key_of(review, demo.MR_OVERLAY)]
        assert entry["d"] == "marked lesion<MPR Collection>"
        assert data["studies"][entry["st"]]["desc"] == "abdomen^liver"


class TestPage:
    def test_page_loads_its_data_file_and_nothing_from_the_network(self, review):
        page = review["page"]
        assert page.startswith("<!DOCTYPE html>")
        assert "http://" not in page and "https://" not in page and "<link" not in page
        assert re.findall(r'<script src="([^"]+)"', page) == [build_review_page.DATA_FILE]
        assert "{{" not in page

    def test_page_names_every_key_it_answers_to(self, review):
        page = review["page"]
        for key in ("<kbd>j</kbd>", "<kbd>k</kbd>", "<kbd>Enter</kbd>", "<kbd>Esc</kbd>"):
            assert key in page
        for label in ratings.RATINGS.values():
            assert label in page


class TestMain:
    def test_page_data_and_previews_are_byte_identical_when_made_again(self, review):
        results = review["results"]
        made = sorted([results / "index.html", results / build_review_page.DATA_FILE])
        made += sorted((results / build_review_page.PREVIEW_DIR).glob("*.png"))
        before = {p: p.read_bytes() for p in made}
        for preview in made[2:]:
            preview.unlink()
        assert build_review_page.main(list(review["args"]) + ["--out", str(made[0])]) == 0
        assert {p: p.read_bytes() for p in made} == before

    def test_previews_are_redone_only_when_their_thumbnail_changes(self, review, tmp_path):
        results = review["results"]
        key = key_of(review, MR_FILE)
        preview = results / build_review_page.PREVIEW_DIR / f"{key}.png"
        before = preview.stat().st_mtime_ns
        page = results / "index.html"
        assert build_review_page.main(list(review["args"]) + ["--out", str(page)]) == 0
        assert preview.stat().st_mtime_ns == before

    def test_previews_of_series_no_longer_listed_are_removed(self, review):
        results = review["results"]
        stale = results / build_review_page.PREVIEW_DIR / "000000000000.png"
        stale.write_bytes(b"x")
        assert (
            build_review_page.main(list(review["args"]) + ["--out", str(results / "index.html")])
            == 0
        )
        assert not stale.exists()
