"""Render each saved slice of a batch as a viewer-like PNG thumbnail at true aspect.

Window: a configured CT preset, else the header's first WindowCenter/Width, else a
robust percentile window shared by the series' saved slices. MONOCHROME1 is inverted.
SEG masks are drawn in their segment's colour, on black or over their source slice
(:func:`render_segment`).
"""

from __future__ import annotations

import lean_imports  # noqa: F401 - first: keeps unused packages out of this process

import argparse
import logging
import sys
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import pyarrow as pa

import rendering
import segmentation
import series_cache
import table_schema

log = logging.getLogger("render_thumbnails")

THUMBNAILS_SCHEMA = table_schema.THUMBNAILS_SCHEMA


def choose_window(
    row: dict, series_values: list[np.ndarray], ct_window: Sequence[float] | None
) -> tuple[tuple[float, float] | None, str]:
    """Pick the VOI for a slice and say where it came from.

    A configured CT preset, else the header's window, else the header's VOI LUT
    Sequence (window None, source ``voi_lut``), else a robust percentile window.
    """
    if ct_window and row["value_units"] == "HU":
        return (float(ct_window[0]), float(ct_window[1])), "preset"
    if row.get("window_center") is not None and row.get("window_width") is not None:
        return (row["window_center"], row["window_width"]), "header"
    if row.get("voi_lut_source"):
        return None, "voi_lut"
    pooled = np.concatenate([v.ravel() for v in series_values]) if series_values else np.array([])
    return rendering.robust_window(pooled), "percentile"


def render_slice(
    values: np.ndarray,
    row: dict,
    window: tuple[float, float] | None,
    size: int,
    voi_header=None,
) -> np.ndarray:
    """uint8 grey or RGB thumbnail of one saved slice, resampled to true aspect.

    ``voi_header`` (a header with a VOI LUT Sequence) is used when ``window`` is None.
    """
    monochrome1 = row["photometric"] == "MONOCHROME1"
    if values.ndim == 3:
        image = rendering.colour_to_uint8(values)
    elif window is None:
        grey = rendering.voi_lut_to_uint8(values, voi_header)
        image = 255 - grey if monochrome1 else grey
    else:
        function = row.get("voi_lut_function") or "LINEAR"
        image = rendering.render_grey(values, window, monochrome1, function)
    shape = (values.shape[0], values.shape[1])
    return rendering.resample(image, rendering.display_size(shape, row["pixel_spacing_mm"], size))


def render_segment(
    mask: np.ndarray, row: dict, size: int, source: np.ndarray | None = None
) -> tuple[np.ndarray, tuple[float, float] | None]:
    """uint8 RGB thumbnail of a SEG mask in its segment's colour, and the source's window.

    Mask and source slice are resampled to true aspect first, then combined
    (:func:`segmentation.draw_mask`), so the outline is one display pixel wide whatever
    the mask's size. The source is windowed with the row's window (its header's), else a
    robust percentile window; colour sources are shown as they are.
    """
    shape = rendering.display_size(mask.shape[:2], row["pixel_spacing_mm"], size)
    scaled = np.rint(np.clip(mask.astype(np.float32), 0.0, 1.0) * 255).astype(np.uint8)
    scaled = rendering.resample(scaled, shape, rendering.Image.Resampling.BILINEAR)
    background, window = None, None
    if source is not None:
        if source.ndim == 3:
            background = rendering.colour_to_uint8(source)
        else:
            if row.get("window_center") is not None and row.get("window_width") is not None:
                window = (row["window_center"], row["window_width"])
            else:
                window = rendering.robust_window(source)
            background = rendering.render_grey(source, window, False)
        background = rendering.resample(background, shape)
    return segmentation.draw_mask(scaled, row["segment_rgb"], background), window


write_png = rendering.write_png


def voi_lut_header(study: Path | None, row: dict):
    """Header holding the slice's VOI LUT Sequence (read without pixels), or None."""
    if study is None or not row.get("voi_lut_source"):
        return None
    import pydicom

    import dicom_io

    source = dicom_io.study_file(study, row["voi_lut_source"])
    return pydicom.dcmread(source, stop_before_pixels=True, force=True)


def render_batch(
    results: Path, manifest: pa.Table, size: int, ct_window=None, study: Path | None = None
) -> pa.Table:
    """Render every slice in a batch manifest; returns the thumbnails table."""
    rows = manifest.to_pylist()
    by_series: dict[str, list[dict]] = {}
    for row in rows:
        by_series.setdefault(row["series_key"], []).append(row)
    out = []
    cache_dir = results / "_work" / "cache" / "render_thumbnails"
    for key in sorted(by_series):
        series_rows = by_series[key]
        keep = {Path(r["png_path"]).name for r in series_rows}
        table_schema.remove_stale(results / "thumbnails" / key, keep, ".png")
        arrays = series_cache.stamps(
            results / p for r in series_rows for p in (r["npy_path"], r.get("source_npy_path")) if p
        )
        voi = [r["voi_lut_source"] for r in series_rows if r.get("voi_lut_source")]
        voi_files = series_cache.stamps((study or Path()) / p for p in voi) if voi else []
        expected = series_cache.fingerprint(series_rows, arrays, voi_files, size, ct_window)
        hit = series_cache.load(cache_dir, key, expected)
        if hit is not None and series_cache.stamps(results / r["png_path"] for r in hit["rows"]):
            out += hit["rows"]
            continue
        first = len(out)
        values = [np.load(results / r["npy_path"]) for r in series_rows]
        grey = [v for v in values if v.ndim == 2]
        for row, arr in zip(series_rows, values, strict=True):
            window, source = (None, "colour")
            if row.get("segment_rgb") and row["value_units"] in segmentation.SEG_UNITS:
                below = row.get("source_npy_path")
                below = np.load(results / below) if below else None
                image, window = render_segment(arr, row, size, below)
                source = "segment" if below is None else "segment_overlay"
            elif arr.ndim == 2:
                window, source = choose_window(row, grey, ct_window)
                if source == "voi_lut" and study is None:
                    window, source = rendering.robust_window(arr), "percentile"
            if not source.startswith("segment"):
                header = voi_lut_header(study, row) if source == "voi_lut" else None
                image = render_slice(arr, row, window, size, header)
            write_png(image, results / row["png_path"])
            out.append(
                {
                    "series_key": key,
                    "npy_path": row["npy_path"],
                    "png_path": row["png_path"],
                    "window_source": source,
                    "window_center_used": window[0] if window else None,
                    "window_width_used": window[1] if window else None,
                    "png_height": int(image.shape[0]),
                    "png_width": int(image.shape[1]),
                }
            )
        series_cache.store(cache_dir, key, expected, {"rows": out[first:]})
    return table_schema.table_from_rows(out, THUMBNAILS_SCHEMA)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", required=True, type=Path)
    parser.add_argument("--manifest", required=True, help="slice manifest of the batch")
    parser.add_argument("--size", type=int, default=256, help="longest side in pixels")
    parser.add_argument(
        "--ct-window", type=float, nargs=2, metavar=("CENTER", "WIDTH"), default=None
    )
    parser.add_argument("--out", required=True, help="thumbnails table to write")
    parser.add_argument("--study", type=Path, help="study folder, for headers' VOI LUTs")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Render one batch's thumbnails."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    table = render_batch(
        args.results, table_schema.read_table(args.manifest), args.size, args.ct_window, args.study
    )
    table_schema.write_table(table, args.out)
    log.info("%d thumbnails rendered", table.num_rows)
    return 0


if __name__ == "__main__":
    sys.exit(main())
