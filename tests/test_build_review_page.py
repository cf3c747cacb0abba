"""Tests for scripts/build_review_page.py on a review page built from the real demo study."""

from __future__ import annotations

import re
from collections import Counter
from html.parser import HTMLParser
from pathlib import PurePosixPath
from urllib.parse import urlparse

import pyarrow.parquet as pq
import pydicom
import pytest

import build_review_page
import demo
import finalize_tables
import make_contact_sheets
import render_thumbnails
import save_slices

MR_FILE = demo.MR_SERIES / "IM_0001"
"""Demo MR slice whose header holds the patient identifiers that must never show."""
NO_PIXEL_OBJECTS = (demo.SR, demo.RTPLAN, demo.ECG)
"""Demo instances without pixel data: their series get a note instead of a sheet."""
UNDECODABLE_SERIES = demo.NM_JPEG_EXTENDED
"""A series with pixel data that no installed decoder reads (12-bit JPEG Extended)."""
ESCAPED_DESCRIPTION = demo.MR_OVERLAY
"""Its SeriesDescription is 'marked lesion<MPR Collection>': must be escaped in HTML."""


def relative(path) -> str:
    return path.relative_to(demo.STUDY).as_posix()


def batches(series_path) -> list[int]:
    column = pq.read_table(series_path, columns=["batch"]).column("batch").drop_null()
    return sorted(set(column.to_pylist()))


class PageParser(HTMLParser):
    """Collects image sources, checkbox values and each series card's text."""

    def __init__(self):
        super().__init__()
        self.images: list[str] = []
        self.checkboxes: list[str] = []
        self.cards: list[dict] = []
        self._depth = 0

    def handle_starttag(self, tag, attrs):
        attrs = dict(attrs)
        if tag == "div":
            if self._depth:
                self._depth += 1
            elif "series" in (attrs.get("class") or "").split():
                self._depth = 1
                self.cards.append({"modality": attrs.get("data-modality"), "text": [], "img": []})
        if tag == "img":
            self.images.append(attrs["src"])
            if self._depth:
                self.cards[-1]["img"].append(attrs["src"])
        if tag == "input" and attrs.get("type") == "checkbox":
            self.checkboxes.append(attrs["value"])

    def handle_endtag(self, tag):
        if tag == "div" and self._depth:
            self._depth -= 1

    def handle_data(self, data):
        if self._depth:
            self.cards[-1]["text"].append(data)


def parse(page: str) -> PageParser:
    parser = PageParser()
    parser.feed(page)
    for card in parser.cards:
        card["text"] = " ".join(card["text"])
        match = re.search(r"series key ([0-9a-f]{12}(?:-\d+)?)", card["text"])
        card["key"] = match.group(1) if match else None
    return parser


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
        assert (
            render_thumbnails.main(
                ["--results", str(results), "--manifest", str(m)] + ["--out", str(t)]
            )
            == 0
        )
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
    assert finalize_tables.main(args + ["--errors", str(metadata / "errors.parquet")]) == 0
    index = results / "index.html"
    args = ["--series", str(demo_metadata["series"]), "--slices", str(metadata / "slices.parquet")]
    args += ["--errors", str(metadata / "errors.parquet"), "--sheets", *sheets]
    assert build_review_page.main(args + ["--out", str(index)]) == 0
    page = index.read_text(encoding="utf-8")
    return {
        "results": results,
        "page": page,
        "parsed": parse(page),
        "series": pq.read_table(demo_metadata["series"]).to_pylist(),
        "instances": pq.read_table(demo_metadata["instances"], columns=["path", "series_key"]),
        "sheets": [r for p in sheets for r in pq.read_table(p).to_pylist()],
        "slices": pq.read_table(metadata / "slices.parquet", columns=["series_key"]),
        "errors": pq.read_table(metadata / "errors.parquet").to_pylist(),
        "args": args,
    }


def card_of(review, path) -> dict:
    rows = review["instances"].to_pylist()
    (key,) = {r["series_key"] for r in rows if r["path"] == relative(path)}
    (card,) = [c for c in review["parsed"].cards if c["key"] == key]
    return card


def build(review) -> str:
    sheets = {r["series_key"]: r["sheet_path"] for r in review["sheets"]}
    slices = Counter(review["slices"].column(0).to_pylist())
    return build_review_page.build_page(review["series"], sheets, slices, review["errors"])


class TestBuildPage:
    def test_page_lists_every_series_of_the_series_table_once(self, review):
        keys = [card["key"] for card in review["parsed"].cards]
        assert len(keys) == len(review["series"]) == 14
        assert sorted(keys) == sorted(s["series_key"] for s in review["series"])

    def test_every_sheet_is_shown_with_a_relative_src_that_exists(self, review):
        images = review["parsed"].images
        assert sorted(images) == sorted(r["sheet_path"] for r in review["sheets"])
        for src in images:
            assert not urlparse(src).scheme
            assert not PurePosixPath(src).is_absolute()
            assert ".." not in PurePosixPath(src).parts
            assert (review["results"] / src).is_file(), src

    def test_each_sheet_sits_in_the_card_of_its_own_series(self, review):
        sheets = {r["series_key"]: r["sheet_path"] for r in review["sheets"]}
        for card in review["parsed"].cards:
            assert card["img"] == ([sheets[card["key"]]] if card["key"] in sheets else [])

    @pytest.mark.parametrize("path", [pytest.param(p, id=p.parent.name) for p in NO_PIXEL_OBJECTS])
    def test_series_without_pixels_get_a_no_pixel_data_note(self, review, path):
        card = card_of(review, path)
        assert "no pixel data" in card["text"]
        assert card["img"] == []

    def test_series_whose_slices_cannot_be_decoded_say_so(self, review):
        card = card_of(review, UNDECODABLE_SERIES)
        assert card["img"] == []
        assert "could be decoded" in card["text"]
        assert "no pixel data" not in card["text"]

    def test_a_checkbox_exists_for_every_modality(self, review):
        modalities = {s["Modality"] for s in review["series"]}
        assert {"CT", "MR", "US", "SR", "RTPLAN", "ECG"} <= modalities
        assert sorted(review["parsed"].checkboxes) == sorted(modalities)
        for card in review["parsed"].cards:
            assert card["modality"] in modalities

    @pytest.mark.parametrize("keyword", ["PatientName", "PatientID", "PatientBirthDate"])
    def test_page_holds_no_patient_identifier(self, review, keyword):
        value = str(pydicom.dcmread(MR_FILE, stop_before_pixels=True).get(keyword) or "")
        assert value
        assert value not in review["page"]

    def test_page_holds_no_identifier_of_any_demo_patient(self, review):
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
        assert sorted(v for v in found if v in review["page"]) == []

    def test_descriptions_are_html_escaped(self, review):
        card = card_of(review, ESCAPED_DESCRIPTION)
        assert "marked lesion<MPR Collection>" in card["text"]
        assert "<MPR Collection>" not in review["page"]
        assert "marked lesion&lt;MPR Collection&gt;" in review["page"]

    def test_summary_counts_files_not_indexed_by_reason(self, review):
        counts = Counter(r["reason"] for r in review["errors"] if r["severity"] == "error")
        assert counts
        for reason, n in counts.items():
            assert f"{reason} {n}" in review["page"]

    def test_build_page_is_what_main_wrote(self, review):
        assert build(review) == review["page"]


class TestMain:
    def test_page_is_byte_identical_across_two_runs(self, review, tmp_path):
        args = list(review["args"])
        target = tmp_path / "index.html"
        assert build_review_page.main(args + ["--out", str(target)]) == 0
        assert target.read_bytes() == (review["results"] / "index.html").read_bytes()

    def test_page_is_self_contained(self, review):
        page = review["page"]
        assert page.startswith("<!DOCTYPE html>")
        assert "http://" not in page
        assert "https://" not in page
        assert "<link" not in page
        assert "<script src" not in page
