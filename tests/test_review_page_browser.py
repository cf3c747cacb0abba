"""The review page ``results/index.html`` of a real workflow run, opened in headless Chromium.

Needs the PyPI package ``playwright`` and Debian's ``chromium`` at ``/usr/bin/chromium``
(never ``playwright install``: it downloads browsers). Without either, the module skips.
"""

from __future__ import annotations

import shutil
import struct
from pathlib import Path

import pytest

CHROMIUM = "/usr/bin/chromium"
"""Debian's Chromium, installed with apt (CI too); Playwright drives it, never its own build."""
CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]
"""Offline, root-safe flags: no sandbox (runs as root), no background downloads."""

sync_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is missing")

pytestmark = [
    pytest.mark.slow,
    pytest.mark.skipif(shutil.which(CHROMIUM) is None, reason=f"no Chromium at {CHROMIUM}"),
]

TITLE = "DICOM study review"
VIEWPORT = {"width": 1280, "height": 900}
FILTERED_MODALITY = "US"
"""The demo study has several US series (cine and single frames) besides other modalities."""
NO_PIXEL_MODALITIES = ("SR", "RTPLAN", "ECG")
"""Demo objects without pixel data: their cards carry a note instead of a contact sheet."""
NO_PIXEL_NOTE = "no pixel data"
ASPECT_TOLERANCE = 0.02
MIN_SCREENSHOT_BYTES = 50_000
SCREENSHOT_COPY = Path("/tmp/review_page.png")
"""A copy of the full-page screenshot left for people to look at."""
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"

IMAGES_JS = """() => [...document.images].map(i => {
  const r = i.getBoundingClientRect();
  return {src: i.getAttribute('src'), complete: i.complete,
          naturalWidth: i.naturalWidth, naturalHeight: i.naturalHeight,
          width: r.width, height: r.height};
})"""
CARDS_JS = """() => [...document.querySelectorAll('.series')].map(e => ({
  modality: e.dataset.modality, text: e.innerText, images: e.querySelectorAll('img').length,
}))"""


def png_size(path: Path) -> tuple[int, int]:
    """(width, height) read from a PNG file's IHDR chunk."""
    head = path.read_bytes()[:24]
    assert head[:8] == PNG_SIGNATURE and head[12:16] == b"IHDR", f"{path} is not a PNG"
    return struct.unpack(">II", head[16:24])


@pytest.fixture(scope="module")
def page_url(demo_run) -> str:
    _, results, _ = demo_run
    page = results / "index.html"
    assert page.is_file(), f"the workflow wrote no {page}"
    return page.resolve().as_uri()


@pytest.fixture(scope="module")
def sheets(demo_run) -> dict[str, tuple[int, int]]:
    """Contact sheet path relative to results → its (width, height) in the PNG file."""
    _, results, _ = demo_run
    return {
        p.relative_to(results).as_posix(): png_size(p)
        for p in sorted((results / "contact_sheets").glob("*.png"))
    }


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as playwright:
        browser = playwright.chromium.launch(
            executable_path=CHROMIUM, args=CHROMIUM_ARGS, headless=True
        )
        yield browser
        browser.close()


class LoadedPage:
    """A fresh tab with the review page loaded, and the errors it reported while loading."""

    def __init__(self, browser, url: str, viewport: dict):
        self.context = browser.new_context(viewport=viewport, device_scale_factor=1)
        self.page = self.context.new_page()
        self.errors: list[str] = []
        self.page.on(
            "console",
            lambda m: (
                self.errors.append(f"console.{m.type}: {m.text}") if m.type == "error" else None
            ),
        )
        self.page.on("pageerror", lambda exc: self.errors.append(f"pageerror: {exc}"))
        self.response = self.page.goto(url, wait_until="load")
        self.page.wait_for_function("[...document.images].every(i => i.complete)", timeout=10_000)

    def cards(self) -> list[dict]:
        return self.page.evaluate(CARDS_JS)

    def visible_modalities(self) -> list[tuple[str, bool]]:
        cards = self.page.locator(".series")
        return [
            (cards.nth(i).get_attribute("data-modality"), cards.nth(i).is_visible())
            for i in range(cards.count())
        ]


@pytest.fixture
def open_page(browser, page_url):
    """Open the page in a new tab at a given viewport; every tab is closed afterwards."""
    opened: list[LoadedPage] = []

    def _open(viewport: dict = VIEWPORT) -> LoadedPage:
        loaded = LoadedPage(browser, page_url, viewport)
        opened.append(loaded)
        return loaded

    yield _open
    for loaded in opened:
        loaded.context.close()


def test_page_opens_from_disk_with_its_title_and_every_contact_sheet_loaded(open_page, sheets):
    loaded = open_page()
    assert loaded.page.url.startswith("file://")
    assert loaded.page.title() == TITLE
    images = loaded.page.evaluate(IMAGES_JS)
    broken = [i["src"] for i in images if not (i["complete"] and i["naturalWidth"] > 0)]
    assert broken == [], f"images that did not load from disk: {broken}"
    assert sheets, "the run wrote no contact sheet"
    assert len(images) == len(sheets)
    assert sorted(i["src"] for i in images) == sorted(sheets)


@pytest.mark.parametrize(
    "viewport",
    [
        pytest.param(VIEWPORT, id="desktop"),
        pytest.param({"width": 420, "height": 800}, id="narrow-window-scales-sheets-down"),
    ],
)
def test_each_contact_sheet_is_shown_at_its_true_aspect(open_page, sheets, viewport):
    images = open_page(viewport).page.evaluate(IMAGES_JS)
    assert len(images) == len(sheets)
    for image in images:
        width, height = sheets[image["src"]]
        assert (image["naturalWidth"], image["naturalHeight"]) == (width, height), image
        assert image["width"] > 0 and image["height"] > 0, f"{image['src']} is not rendered"
        shown = image["width"] / image["height"]
        assert shown == pytest.approx(width / height, rel=ASPECT_TOLERANCE), (
            f"{image['src']} is {width}×{height} but shown "
            f"{image['width']:.0f}×{image['height']:.0f}: squashed by CSS"
        )


def test_unchecking_a_modality_hides_its_series_and_rechecking_shows_them(open_page):
    loaded = open_page()
    page = loaded.page
    cards = loaded.visible_modalities()
    modalities = {m for m, _ in cards}
    assert FILTERED_MODALITY in modalities and len(modalities) > 1, modalities
    assert all(visible for _, visible in cards), "every card is visible before filtering"

    checkbox = page.locator(f'#filters input[type="checkbox"][value="{FILTERED_MODALITY}"]')
    checkbox.uncheck()
    after_uncheck = loaded.visible_modalities()
    shown_filtered = [m for m, visible in after_uncheck if m == FILTERED_MODALITY and visible]
    hidden_others = [m for m, visible in after_uncheck if m != FILTERED_MODALITY and not visible]
    assert hidden_others == [], f"unchecking {FILTERED_MODALITY} hid other cards: {hidden_others}"
    assert shown_filtered == [], (
        f"{len(shown_filtered)} {FILTERED_MODALITY} cards still visible after unchecking it"
    )

    checkbox.check()
    assert all(visible for _, visible in loaded.visible_modalities()), "re-checking shows all"


def test_series_without_pixel_data_are_listed_with_a_note_instead_of_a_sheet(open_page):
    cards = open_page().cards()
    for modality in NO_PIXEL_MODALITIES:
        matching = [c for c in cards if c["modality"] == modality]
        assert matching, f"no {modality} series card on the page"
        for card in matching:
            assert NO_PIXEL_NOTE in card["text"], card["text"]
            assert card["images"] == 0, f"a {modality} card shows an image"


def test_full_page_screenshot_is_a_substantial_png(open_page, tmp_path):
    page = open_page().page
    shot = tmp_path / "review_page.png"
    page.screenshot(path=str(shot), full_page=True)
    shutil.copyfile(shot, SCREENSHOT_COPY)
    width, height = png_size(shot)
    assert width == VIEWPORT["width"]
    assert height > VIEWPORT["height"], "the full page is taller than one screen"
    assert shot.stat().st_size > MIN_SCREENSHOT_BYTES


def test_page_loads_without_console_errors(open_page):
    loaded = open_page()
    assert loaded.response is not None and loaded.response.ok
    assert loaded.errors == []
