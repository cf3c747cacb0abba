"""Write a static results/index.html: studies → series, each with its sheet and facts.

The page opens from disk (relative image paths, inline CSS and JS), filters by
modality, and shows no patient name, ID or birth date.
"""

from __future__ import annotations

import lean_imports  # noqa: F401 - first: keeps unused packages out of this process

import argparse
import html
import logging
import os
import sys
from collections import Counter
from collections.abc import Sequence

import pyarrow.parquet as pq

from sharding import short_hash
from table_schema import SHEETS_SCHEMA, read_parts

log = logging.getLogger("build_review_page")

CSS = """
body{font-family:system-ui,sans-serif;margin:1.5rem;background:#111;color:#eee}
h1{font-size:1.4rem}h2{font-size:1.15rem;border-bottom:1px solid #444;padding-bottom:.3rem}
.study{display:inline-block;vertical-align:top;margin-right:1.5rem;max-width:100%}
.series{display:inline-block;vertical-align:top;margin:0 1rem 1rem 0;padding:.6rem;
background:#1c1c1c;border-radius:6px;max-width:44rem}
.series img{max-width:100%;display:block;margin-bottom:.4rem}
table{border-collapse:collapse;font-size:.85rem}td,th{padding:.1rem .6rem .1rem 0;text-align:left}
.flag-bad{color:#ff8a80}.flag-ok{color:#a5d6a7}.nosheet{color:#aaa;font-style:italic}
#filters label{margin-right:1rem}.summary{color:#bbb}[hidden]{display:none!important}
"""

JS = """
function applyFilter(){
  const on=new Set([...document.querySelectorAll('#filters input:checked')].map(e=>e.value));
  document.querySelectorAll('.series').forEach(e=>{e.hidden=!on.has(e.dataset.modality)});
}
document.querySelectorAll('#filters input').forEach(e=>e.addEventListener('change',applyFilter));
"""

CHECKS = ("single_orientation", "uniform_spacing", "is_volume")


def _fmt(value) -> str:
    if value is None:
        return "—"
    if isinstance(value, float):
        return f"{value:.3g}"
    if isinstance(value, list):
        return " × ".join(_fmt(v) for v in value)
    return str(value)


def _flag(name: str, value) -> str:
    if value is None:
        return f"<td>{name}</td><td>—</td>"
    css = "flag-ok" if value else "flag-bad"
    return f'<td>{name}</td><td class="{css}">{"yes" if value else "no"}</td>'


def series_card(series: dict, sheet: str | None, n_slices: int) -> str:
    """HTML of one series: its contact sheet (or why there is none) and its facts."""
    e = html.escape
    modality = series.get("Modality") or "?"
    facts = [
        ("series key", series["series_key"]),
        ("series number", series.get("SeriesNumber")),
        ("description", series.get("SeriesDescription")),
        ("instances", series["n_instances"]),
        ("frames", series["n_frames"]),
        ("size (MB)", round(series["total_file_size"] / 1e6, 2)),
        ("matrix", f"{series['Rows']} × {series['Columns']}" if series.get("Rows") else None),
        ("orientation", series.get("orientation")),
        ("slice spacing (mm)", series.get("slice_spacing")),
        ("pixel spacing (mm)", series.get("PixelSpacing")),
        ("missing slices", series.get("missing_slices")),
        ("duplicate positions", series.get("duplicate_positions")),
        ("grouped by", series.get("grouped_by")),
    ]
    rows = "".join(f"<tr><td>{e(k)}</td><td>{e(_fmt(v))}</td></tr>" for k, v in facts)
    rows += "".join(f"<tr>{_flag(c.replace('_', ' '), series.get(c))}</tr>" for c in CHECKS)
    if sheet:
        picture = f'<img src="{e(sheet)}" alt="contact sheet of series {e(series["series_key"])}">'
    elif series.get("has_pixels"):
        picture = '<p class="nosheet">No sheet: no slice of this series could be decoded.</p>'
    else:
        picture = '<p class="nosheet">No sheet: this object has no pixel data.</p>'
    title = e(f"{modality} · {_fmt(series.get('SeriesDescription'))}")
    return (
        f'<div class="series" data-modality="{e(modality)}"><h3>{title}</h3>{picture}'
        f"<table>{rows}<tr><td>saved slices</td><td>{n_slices}</td></tr></table></div>"
    )


def build_page(
    series: list[dict], sheets: dict[str, str], slices: Counter, errors: list[dict]
) -> str:
    """The whole page as a string, studies and series in a stable order."""
    e = html.escape
    studies: dict[str, list[dict]] = {}
    for record in series:
        studies.setdefault(record.get("StudyInstanceUID") or "", []).append(record)
    modalities = sorted({s.get("Modality") or "?" for s in series})
    filters = "".join(
        f'<label><input type="checkbox" value="{e(m)}" checked> {e(m)}</label>' for m in modalities
    )
    n_errors = Counter(r["reason"] for r in errors if r["severity"] == "error")
    n_warnings = Counter(r["reason"] for r in errors if r["severity"] == "warning")
    summary = (
        f"{len(studies)} stud{'y' if len(studies) == 1 else 'ies'}, {len(series)} series/stacks, "
        f"{sum(s['n_instances'] for s in series)} instances, {len(sheets)} contact sheets. "
        "Files not indexed: "
        + (", ".join(f"{k} {v}" for k, v in sorted(n_errors.items())) or "none")
        + ". Warnings: "
        + (", ".join(f"{k} {v}" for k, v in sorted(n_warnings.items())) or "none")
        + ". Details in metadata/errors.parquet."
    )
    parts = [
        "<!DOCTYPE html>",
        '<html lang="en"><head><meta charset="utf-8">',
        "<title>DICOM study review</title>",
        f"<style>{CSS}</style></head><body>",
        "<h1>DICOM study review</h1>",
        f'<p class="summary">{e(summary)}</p>',
        f'<div id="filters">Modality: {filters}</div>',
    ]
    ordered = sorted(
        studies.items(),
        key=lambda kv: (kv[1][0].get("StudyDescription") or "", kv[0]),
    )
    for uid, members in ordered:
        label = f"Study {short_hash(uid or 'unknown', 8)}"
        description = members[0].get("StudyDescription")
        if description:
            label += f" · {description}"
        parts.append(f'<section class="study"><h2>{e(label)}</h2>')
        members = sorted(
            members,
            key=lambda s: (
                s.get("SeriesNumber") is None,
                s.get("SeriesNumber") or 0,
                s["series_key"],
            ),
        )
        for record in members:
            key = record["series_key"]
            parts.append(series_card(record, sheets.get(key), slices.get(key, 0)))
        parts.append("</section>")
    parts.append(f"<script>{JS}</script></body></html>")
    return "\n".join(parts) + "\n"


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", required=True)
    parser.add_argument("--slices", required=True)
    parser.add_argument("--errors", required=True)
    parser.add_argument("--sheets", nargs="*", default=[], help="sheets tables of the batches")
    parser.add_argument("--out", required=True)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the review page."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    series = pq.read_table(args.series).to_pylist()
    sheets_rows = read_parts(args.sheets, SHEETS_SCHEMA).to_pylist()
    sheets = {r["series_key"]: r["sheet_path"] for r in sheets_rows}
    slices = Counter(pq.read_table(args.slices, columns=["series_key"]).column(0).to_pylist())
    errors = pq.read_table(args.errors, columns=["reason", "severity"]).to_pylist()
    page = build_page(series, sheets, slices, errors)
    tmp = f"{args.out}.tmp"
    with open(tmp, "w", encoding="utf-8") as fh:
        fh.write(page)
    os.replace(tmp, args.out)
    log.info("review page with %d series and %d sheets", len(series), len(sheets))
    return 0


if __name__ == "__main__":
    sys.exit(main())
