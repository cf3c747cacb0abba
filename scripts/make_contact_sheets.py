"""Draw one labelled contact sheet PNG per series of a batch from its thumbnails.

The title names modality, series number, description, instance count and spacing;
never patient name, ID or birth date. Tiles are labelled with slice position. Text is
drawn by FreeType through matplotlib's ``ft2font`` with matplotlib's DejaVu Sans, straight
into the pixel array: a matplotlib Figure costs about 90 ms per sheet in layout alone.
"""

from __future__ import annotations

import lean_imports  # noqa: F401 - first: keeps unused packages out of this process

import argparse
import logging
import math
import os
import shutil
import sys
from collections.abc import Sequence
from functools import cache, lru_cache
from pathlib import Path

import imageio.v3 as iio
import matplotlib
import numpy as np
import pyarrow as pa
from matplotlib.ft2font import FT2Font, LoadFlags

import privacy
import rendering
import series_cache
import table_schema

log = logging.getLogger("make_contact_sheets")

SHEETS_SCHEMA = table_schema.SHEETS_SCHEMA

DPI = 100
LABEL_PX = 18
"""Height of the label band above each tile."""
TITLE_PX = 48
"""Height of the two-line title band at the top of the sheet."""
GAP_PX = 4
FONT = Path(matplotlib.get_data_path(), "fonts", "ttf", "DejaVuSans.ttf")
TITLE_PT, LABEL_PT = 10, 7
"""Font sizes in points (at :data:`DPI`)."""
TITLE_BASELINES = (18, 38)
"""Baselines of the two title lines, in pixels from the top of the sheet."""
LABEL_BASELINE = 11
"""Baseline of a tile label, in pixels from the top of its cell."""
WHITE, LABEL_GREY = (255, 255, 255), (221, 221, 221)


def grid_shape(n_tiles: int) -> tuple[int, int]:
    """``(rows, columns)`` of a near-square grid holding ``n_tiles`` (at least 1×1)."""
    if n_tiles < 1:
        return 1, 1
    columns = math.ceil(math.sqrt(n_tiles))
    return math.ceil(n_tiles / columns), columns


def sample_evenly(items: list, count: int) -> list:
    """At most ``count`` items spread evenly over the list, first and last included."""
    if count <= 0 or len(items) <= count:
        return list(items)
    if count == 1:
        return [items[len(items) // 2]]
    step = (len(items) - 1) / (count - 1)
    return [items[round(i * step)] for i in range(count)]


PLANE_ORDER = ("acquired", "axial", "coronal", "sagittal", "oblique")


def choose_tiles(rows: list[dict], max_tiles: int) -> list[dict]:
    """Tiles for one sheet: an even sample of each plane's slices, the planes sharing the
    tile budget (at least one tile each), acquired or axial first.
    """
    by_plane: dict[str, list[dict]] = {}
    for row in sorted(rows, key=lambda r: r["index"]):
        by_plane.setdefault(row["plane"], []).append(row)
    planes = sorted(by_plane, key=lambda p: (PLANE_ORDER.index(p) if p in PLANE_ORDER else 9, p))
    per_plane = max(1, max_tiles // len(planes))
    return [row for plane in planes for row in sample_evenly(by_plane[plane], per_plane)]


def sheet_title(series: dict) -> str:
    """Two-line title with series facts only (no patient identifiers)."""
    number = series.get("SeriesNumber")
    head = " · ".join(
        str(p)
        for p in (
            series.get("Modality") or "?",
            f"series {number}" if number is not None else None,
            series.get("SeriesDescription"),
        )
        if p
    )
    facts = [f"{series['n_instances']} instance(s)"]
    if series.get("n_frames") and series["n_frames"] != series["n_instances"]:
        facts.append(f"{series['n_frames']} frames")
    if series.get("orientation"):
        facts.append(series["orientation"])
    if series.get("slice_spacing") is not None:
        facts.append(f"spacing {series['slice_spacing']:.2f} mm")
    return head + "\n" + " · ".join(facts)


SEGMENT_LABEL_CHARS = 24
"""Longest segment label shown on a tile (longer ones are cut with an ellipsis)."""


def tile_label(row: dict) -> str:
    """Slice label: position along the normal in mm, else the frame's index in the stack.

    A SEG mask is named by its segment label (else its number) instead of its plane; an
    assembled slide by its size in pixels.
    """
    where = f"#{row['index'] + 1}/{row['n_in_plane']}"
    if row.get("segment_number") is not None or row.get("segment_label"):
        name = row.get("segment_label") or f"segment {row['segment_number']}"
        if len(name) > SEGMENT_LABEL_CHARS:
            name = name[: SEGMENT_LABEL_CHARS - 1] + "…"
        if row.get("position_mm") is not None:
            return f"{name} {row['position_mm']:+.1f} mm  {where}"
        return f"{name}  {where}"
    if row["plane"] == "slide" and row.get("rows"):
        return f"slide {row['columns']} × {row['rows']} px"
    if row.get("position_mm") is not None:
        return f"{row['plane']} {row['position_mm']:+.1f} mm  {where}"
    return f"{row['plane']} {where}"


def montage(tiles: Sequence[np.ndarray], n_columns: int) -> tuple[np.ndarray, tuple[int, int]]:
    """Place uint8 grey or RGB tiles, centred, in a preallocated grid: grey when every
    tile is grey, RGB otherwise.

    Parameters
    ----------
    tiles : sequence of (rows, columns) or (rows, columns, 3) ndarray of uint8
    n_columns : int

    Returns
    -------
    grid : (H, W) or (H, W, 3) ndarray of uint8
        A new array; the tiles are not modified.
    cell : tuple of int
        ``(height, width)`` of one cell, label band included.
    """
    if not tiles:
        raise ValueError("Argument 'tiles' must hold at least one image")
    for tile in tiles:
        if tile.ndim not in (2, 3) or (tile.ndim == 3 and tile.shape[2] != 3):
            raise ValueError(
                f"Each tile must be (rows, columns) or (rows, columns, 3), got {tile.shape}"
            )
    cell_h = max(t.shape[0] for t in tiles) + LABEL_PX + GAP_PX
    cell_w = max(t.shape[1] for t in tiles) + GAP_PX
    n_rows = -(-len(tiles) // n_columns)
    grey = all(tile.ndim == 2 for tile in tiles)
    grid = np.zeros((n_rows * cell_h, n_columns * cell_w, *(() if grey else (3,))), np.uint8)
    for i, tile in enumerate(tiles):
        rgb = tile if grey or tile.ndim == 3 else np.repeat(tile[:, :, None], 3, axis=2)
        top = (i // n_columns) * cell_h + LABEL_PX + (cell_h - LABEL_PX - tile.shape[0]) // 2
        left = (i % n_columns) * cell_w + (cell_w - tile.shape[1]) // 2
        grid[top : top + tile.shape[0], left : left + tile.shape[1]] = rgb
    return grid, (cell_h, cell_w)


@cache
def _font(size_pt: float) -> FT2Font:
    font = FT2Font(str(FONT))
    font.set_size(size_pt, DPI)
    return font


@lru_cache(maxsize=4096)
def text_image(text: str, size_pt: float) -> tuple[np.ndarray, int]:
    """One line of antialiased text: its coverage (0-255, rows x columns, read-only) and
    the row of its baseline (the last row of a letter without descender).

    FT2Font's bitmap is the ink's bounding box plus one empty row below; the string's
    descent (26.6 fixed point) says how far the ink reaches under the baseline. Kept per
    text: FreeType's layout costs about 1.2 ms a label, and the stacks of one acquisition
    (DWI volumes, mosaics, echoes, time points) repeat the same slice labels.
    """
    font = _font(size_pt)
    font.set_text(text, 0.0, flags=LoadFlags.FORCE_AUTOHINT)
    font.draw_glyphs_to_bitmap(antialiased=True)
    coverage = np.array(font.get_image())
    coverage.setflags(write=False)
    return coverage, coverage.shape[0] - 2 - round(font.get_descent() / 64)


def draw_text(
    canvas: np.ndarray, text: str, size_pt: float, colour: tuple, centre_x: float, baseline: int
) -> None:
    """Draw a line of text centred on ``centre_x`` with its baseline on row ``baseline``.

    The text is blended as the brighter of canvas and text pixel (it is drawn on black
    bands); what falls outside the canvas is clipped. On a grey canvas the colour's first
    component is drawn (the sheet's colours are neutral greys).
    """
    coverage, own_baseline = text_image(text, size_pt)
    height, width = coverage.shape
    top, left = baseline - own_baseline, round(centre_x - width / 2)
    y0, x0 = max(top, 0), max(left, 0)
    y1, x1 = min(top + height, canvas.shape[0]), min(left + width, canvas.shape[1])
    if y1 <= y0 or x1 <= x0:
        return
    alpha = coverage[y0 - top : y1 - top, x0 - left : x1 - left].astype(np.uint16)
    if canvas.ndim == 3:
        alpha, ink_colour = alpha[:, :, None], np.array(colour, np.uint16)
    else:
        ink_colour = np.uint16(colour[0])
    ink = ((alpha * ink_colour + 127) // 255).astype(np.uint8)
    region = canvas[y0:y1, x0:x1]
    np.maximum(region, ink, out=region)


def draw_sheet(series: dict, tiles: list[tuple], target: Path) -> None:
    """Draw tiles ``(image, label)`` in a grid under the series title and save as PNG.

    The thumbnails are placed pixel for pixel (no resampling), labels and title are drawn
    into the black bands, and the PNG is written greyscale when every tile is grey
    (the same pixels, a third of the data to compress), RGB otherwise.
    """
    _, n_cols = grid_shape(len(tiles))
    grid, (cell_h, cell_w) = montage([image for image, _ in tiles], n_cols)
    height, width = grid.shape[0] + TITLE_PX, max(grid.shape[1], 360)
    x0 = (width - grid.shape[1]) // 2
    canvas = np.zeros((height, width, *grid.shape[2:]), dtype=np.uint8)
    canvas[TITLE_PX:, x0 : x0 + grid.shape[1]] = grid
    for line, baseline in zip(sheet_title(series).splitlines(), TITLE_BASELINES, strict=False):
        draw_text(canvas, line, TITLE_PT, WHITE, width / 2, baseline)
    for i, (_, label) in enumerate(tiles):
        row, col = divmod(i, n_cols)
        centre = x0 + col * cell_w + cell_w / 2
        draw_text(
            canvas, label, LABEL_PT, LABEL_GREY, centre, TITLE_PX + row * cell_h + LABEL_BASELINE
        )
    rendering.write_png(canvas, target)


def read_thumbnail(path: Path) -> np.ndarray:
    """A thumbnail PNG as written: (rows, columns) or (rows, columns, 3) ndarray of uint8.

    imageio's Pillow plugin named outright: letting imageio pick a plugin for each file
    costs about twice the decoding itself.
    """
    return iio.imread(path, plugin="pillow")


def link_into(target: Path, folder: Path) -> None:
    """Hard-link a sheet into a folder (a copy where links are not possible)."""
    folder.mkdir(parents=True, exist_ok=True)
    link = folder / target.name
    link.unlink(missing_ok=True)
    try:
        os.link(target, link)
    except OSError:
        shutil.copyfile(target, link)


def make_sheets(
    results: Path,
    manifest: pa.Table,
    rendered: set[str],
    series: list[dict],
    max_tiles: int,
    report_dir: Path | None = None,
) -> pa.Table:
    """Draw the sheet of every series from its rendered thumbnails; returns the sheets table.

    With ``report_dir``, each sheet is also linked there for Snakemake's report.
    """
    rows_by_key: dict[str, list[dict]] = {}
    for row in manifest.to_pylist():
        if row["png_path"] in rendered:
            rows_by_key.setdefault(row["series_key"], []).append(row)
    facts = {s["series_key"]: s for s in series}
    out = []
    cache_dir = results / "_work" / "cache" / "make_contact_sheets"
    for key in sorted(rows_by_key):
        chosen = choose_tiles(rows_by_key[key], max_tiles)
        sheet = f"contact_sheets/{key}.png"
        pngs = series_cache.stamps(results / r["png_path"] for r in chosen)
        record = {k: v for k, v in facts[key].items() if k != "batch"}
        expected = series_cache.fingerprint(chosen, pngs, record)
        hit = series_cache.load(cache_dir, key, expected)
        if hit is None or not series_cache.stamps([results / sheet]):
            tiles = [(read_thumbnail(results / r["png_path"]), tile_label(r)) for r in chosen]
            draw_sheet(facts[key], tiles, results / sheet)
            series_cache.store(cache_dir, key, expected, {"n_tiles": len(tiles)})
        if report_dir is not None:
            link_into(results / sheet, report_dir)
        out.append({"series_key": key, "sheet_path": sheet, "n_tiles": len(chosen)})
    return table_schema.table_from_rows(out, SHEETS_SCHEMA)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, type=Path)
    parser.add_argument("--manifest", required=True, help="slice manifest of the batch")
    parser.add_argument("--thumbnails", required=True, help="thumbnails table of the batch")
    parser.add_argument("--series", required=True, help="series.parquet")
    parser.add_argument("--tiles", type=int, default=16, help="most tiles per sheet")
    parser.add_argument("--out", required=True, help="sheets table to write")
    parser.add_argument("--report-dir", type=Path, help="folder to link each sheet into")
    parser.add_argument("--study", type=Path, help="study folder: titles never repeat a patient ID")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Draw one batch's contact sheets."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    manifest = table_schema.read_table(args.manifest)
    keys = set(manifest.column("series_key").to_pylist())
    series = table_schema.read_table(args.series).to_pylist()
    series = [s for s in series if s["series_key"] in keys]
    series = privacy.series_without_identifying_text(series, manifest, args.study)
    rendered = set(table_schema.read_table(args.thumbnails, ["png_path"]).column(0).to_pylist())
    if args.report_dir is not None:
        args.report_dir.mkdir(parents=True, exist_ok=True)  # exists even when no sheet is drawn
    table = make_sheets(args.results, manifest, rendered, series, args.tiles, args.report_dir)
    table_schema.write_table(table, args.out)
    log.info("%d contact sheets drawn", table.num_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
