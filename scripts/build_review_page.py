"""Write the static review page: results/index.html, its data file and grid previews.

The page is a quality-control tool that opens from disk (no server, no network): a
virtualised grid of series with small previews, a detail view with the contact sheet,
every saved slice, the facts and the error rows of the series' files, filters, search,
sort, keyboard navigation, and ratings kept in the browser and downloaded as a CSV
(``review.ratings`` joins them back into ``series.parquet``). Its data lives in
``review/series.js`` next to it (a ``<script src>`` works from ``file://`` where
``fetch()`` does not); previews are the middle thumbnail of each series scaled down to
``review/previews/<series_key>.png``. No free text that repeats the series' PatientName,
PatientID or PatientBirthDate is shown, and no patient identifier is written at all.
"""

from __future__ import annotations

import lean_imports  # noqa: F401 - first: keeps unused packages out of this process

import argparse
import json
import logging
import os
import sys
from collections import Counter
from collections.abc import Iterable, Sequence
from pathlib import Path

import pyarrow.parquet as pq

import privacy
import ratings
from sharding import short_hash
from table_schema import IDENTIFIERS_SCHEMA, SHEETS_SCHEMA, read_parts, read_table

log = logging.getLogger("build_review_page")

DATA_FILE = "review/series.js"
"""The page's data, relative to the results folder: ``window.REVIEW_DATA=JSON.parse("...");``."""
PREVIEW_DIR = "review/previews"
"""Grid previews, one ``<series_key>.png`` per series with a thumbnail."""
PREVIEW_SIZE = 160
"""Longest side of a grid preview in pixels (cards show them at up to 160 CSS px)."""
CACHE_FILE = "_work/cache/build_review_page/previews.json"
"""Which thumbnail (path, size, mtime) each preview was made from, to redo only changed ones."""
PLANE_ORDER = ("acquired", "axial", "coronal", "sagittal")
MAX_ERRORS_PER_SERIES = 50
"""Error rows of one series kept in the page data (the count is always complete)."""
MAX_UNATTRIBUTED_ERRORS = 500
"""Rows of files that are no instance (so belong to no series) listed on the page."""
GEOMETRY_CHECKS = ("single_orientation", "uniform_spacing")
FREE_TEXT = (
    "SeriesDescription",
    "StudyDescription",
    "BodyPartExamined",
    "Manufacturer",
    "ManufacturerModelName",
)
"""Series columns shown as text; blanked when they repeat a patient identifier."""


# ---------------------------------------------------------------- patient identifiers


def _error_cells(row: dict, identifiers) -> list:
    """An error row as the page shows it: path, severity, reason, detail, identifiers cut out."""
    return [
        privacy.redact_identifiers(row["path"], identifiers),
        row["severity"],
        row["reason"],
        privacy.redact_identifiers(row.get("detail"), identifiers),
    ]


def read_identifiers(path: str) -> dict[str, dict[str, list[str]]]:
    """Series key → ``{"patient": [...], "other": [...]}``, as the merge wrote them
    (:data:`IDENTIFIERS_SCHEMA`; from each series' first header, so the page
    need not read the instances' ``header_json``).
    """
    table = read_table(path, schema=IDENTIFIERS_SCHEMA)
    keys, patient, other = (table.column(c).to_pylist() for c in table.column_names)
    return {k: {"patient": p, "other": o} for k, p, o in zip(keys, patient, other, strict=True)}


def series_of_paths(instances_path: str) -> dict[str, str]:
    """Instance path → its series key."""
    table = read_table(instances_path, columns=["path", "series_key"])
    return dict(zip(table.column(0).to_pylist(), table.column(1).to_pylist(), strict=True))


def segmentation_links(instances_path: str, slices: Iterable[dict]) -> dict[str, list[str]]:
    """Series key → related series keys: a source series' SEGs, and a SEG's source series.

    From the SEG slices' ``source_sop_instance_uid`` (slices.parquet) and the instances'
    SOPInstanceUID; a source outside the study links nothing. Keys ``sg:<key>`` hold the
    SEGs drawn on series ``key``, keys ``so:<key>`` the series SEG ``key`` was drawn on.
    """
    wanted: dict[str, set[str]] = {}
    for row in slices:
        if row.get("source_sop_instance_uid"):
            wanted.setdefault(row["source_sop_instance_uid"], set()).add(row["series_key"])
    if not wanted or not instances_path:
        return {}
    table = read_table(instances_path, columns=["SOPInstanceUID", "series_key"])
    links: dict[str, set[str]] = {}
    for uid, key in zip(*(c.to_pylist() for c in table.columns), strict=True):
        for seg in wanted.get(uid, ()):
            if key != seg:
                links.setdefault(f"sg:{key}", set()).add(seg)
                links.setdefault(f"so:{seg}", set()).add(key)
    return {k: sorted(v) for k, v in sorted(links.items())}


# ---------------------------------------------------------------- previews


def choose_preview(slices: Sequence[dict]) -> dict | None:
    """The slice a series is shown by in the grid: the middle one of its first plane."""
    with_png = [s for s in slices if s.get("png_path")]
    if not with_png:
        return None
    planes = sorted(
        {s["plane"] for s in with_png},
        key=lambda p: (PLANE_ORDER.index(p) if p in PLANE_ORDER else 9, p),
    )
    chosen = sorted((s for s in with_png if s["plane"] == planes[0]), key=lambda s: s["index"])
    return chosen[(len(chosen) - 1) // 2]


def write_preview(source: Path, target: Path, size: int = PREVIEW_SIZE) -> None:
    """Scale a thumbnail PNG down to ``size`` pixels on its longest side (never up)."""
    import numpy as np
    from PIL import Image

    from rendering import write_png

    with Image.open(source) as image:
        image.load()
        scaled = image.copy()
    scaled.thumbnail((size, size), Image.Resampling.LANCZOS)
    write_png(np.asarray(scaled), target)


def _stamp(path: Path) -> list | None:
    try:
        st = path.stat()
    except OSError:
        return None
    return [st.st_size, st.st_mtime_ns]


def update_previews(results: Path, sources: dict[str, str]) -> dict[str, str]:
    """Make or refresh each series' preview from its thumbnail; drop previews of gone series.

    Parameters
    ----------
    results : Path
        The results folder.
    sources : dict
        Series key → result-relative path of the thumbnail to preview.

    Returns
    -------
    dict
        Series key → result-relative preview path, for thumbnails that exist.
    """
    cache_path = results / CACHE_FILE
    try:
        cache = json.loads(cache_path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        cache = {}
    previews, made, new_cache = {}, 0, {}
    for key, source in sorted(sources.items()):
        stamp = _stamp(results / source)
        if stamp is None:
            continue
        target = f"{PREVIEW_DIR}/{key}.png"
        expected = [source, *stamp, PREVIEW_SIZE]
        if cache.get(key) != expected or not (results / target).is_file():
            write_preview(results / source, results / target)
            made += 1
        new_cache[key] = expected
        previews[key] = target
    folder = results / PREVIEW_DIR
    removed = 0
    if folder.is_dir():
        for path in folder.iterdir():
            if path.name.removesuffix(".png") not in previews or not path.name.endswith(".png"):
                path.unlink()
                removed += 1
    cache_path.parent.mkdir(parents=True, exist_ok=True)
    cache_path.write_text(json.dumps(new_cache, sort_keys=True), encoding="utf-8")
    log.info("%d preview(s) made, %d kept, %d removed", made, len(previews) - made, removed)
    return previews


# ---------------------------------------------------------------- page data


def _number(value):
    if isinstance(value, float):
        return float(f"{value:.4g}")
    if isinstance(value, list):
        return [_number(v) for v in value]
    return value


def _thumb_path(key: str, plane: str, index: int) -> str:
    return f"thumbnails/{key}/{plane}_{index:04d}.png"


def _slices_by_plane(key: str, rows: Sequence[dict]) -> dict[str, dict]:
    """``{plane: {"n": n_in_plane, "i": [index, ...], "p": [position_mm, ...]}}``.

    ``"png": [path, ...]`` is added only when a thumbnail is not at the usual
    ``thumbnails/<key>/<plane>_<index>.png``.
    """
    planes: dict[str, dict] = {}
    for row in sorted(rows, key=lambda r: (r["plane"], r["index"])):
        if not row.get("png_path"):
            continue
        plane = planes.setdefault(row["plane"], {"n": row.get("n_in_plane"), "i": [], "p": []})
        plane["i"].append(row["index"])
        position = row.get("position_mm")
        plane["p"].append(None if position is None else round(position, 2))
        plane.setdefault("_png", []).append(row["png_path"])
    for plane_name, plane in planes.items():
        pngs = plane.pop("_png")
        usual = [_thumb_path(key, plane_name, i) for i in plane["i"]]
        if pngs != usual:
            plane["png"] = pngs
    return planes


def _qc(record: dict) -> dict | None:
    if record.get("qc_rating") is None and not record.get("qc_tags") and not record.get("qc_note"):
        return None
    return {
        "rating": record.get("qc_rating"),
        "tags": list(record.get("qc_tags") or []),
        "note": record.get("qc_note") or "",
        "rater": record.get("qc_rater") or "",
        "rated_at": record.get("qc_rated_at") or "",
    }


def geometry_fails(record: dict) -> bool:
    """Whether a geometry check of the series fails (a single image or no geometry passes)."""
    if any(record.get(c) is False for c in GEOMETRY_CHECKS):
        return True
    return bool(record.get("missing_slices")) or bool(record.get("duplicate_positions"))


def review_data(
    series: Sequence[dict],
    sheets: dict[str, str],
    slices: Sequence[dict],
    errors: Sequence[dict],
    series_by_path: dict[str, str],
    identifiers: dict[str, list[str]],
    previews: dict[str, str],
    links: dict[str, list[str]] | None = None,
) -> dict:
    """Everything the page shows, as one JSON-ready dict in a fixed order.

    Parameters
    ----------
    series : sequence of dict
        Rows of ``series.parquet`` (with the ``qc_*`` columns when rated).
    sheets : dict
        Series key → contact sheet path (relative to the results folder).
    slices : sequence of dict
        Rows of ``slices.parquet`` (``series_key``, ``plane``, ``index``, ``n_in_plane``,
        ``png_path``, ``position_mm``).
    errors : sequence of dict
        Rows of ``errors.parquet``.
    series_by_path : dict
        Instance path → series key, to give each error row of an instance its series.
    identifiers : dict
        Series key → its identifying values (:func:`read_identifiers`): free text
        repeating a patient's is blanked; paths and details have all of them cut out.
    previews : dict
        Series key → grid preview path.
    links : dict, optional
        SEG links (:func:`segmentation_links`): a series' SEGs (``sg``) and a SEG's source
        series (``so``).

    Returns
    -------
    dict
        ``studies``, ``series``, ``summary``, ``unattributed`` (error rows of files
        that are no instance), ``n_unattributed``, ``tags``, ``ratings``, ``columns``
        (of the ratings CSV) and ``defaults`` (:data:`SERIES_DEFAULTS`).
    """
    slices_of: dict[str, list[dict]] = {}
    for row in slices:
        slices_of.setdefault(row["series_key"], []).append(row)
    errors_of: dict[str, list[dict]] = {}
    unattributed = []
    for row in errors:
        key = series_by_path.get(row["path"])
        if key is None:
            unattributed.append(row)
        else:
            errors_of.setdefault(key, []).append(row)

    def patient(key: str) -> list[str]:
        return identifiers.get(key, {}).get("patient", [])

    def every(key: str) -> list[str]:
        found = identifiers.get(key, {})
        return found.get("patient", []) + found.get("other", [])

    folder_ids: dict[str, set[str]] = {}
    for path, key in series_by_path.items():
        folder_ids.setdefault(os.path.dirname(path), set()).update(every(key))

    by_study: dict[str, list[dict]] = {}
    for record in series:
        by_study.setdefault(record.get("StudyInstanceUID") or "", []).append(record)
    studies = []
    for uid, members in by_study.items():
        ids = sorted({i for m in members for i in patient(m["series_key"])})
        descriptions = sorted({m.get("StudyDescription") or "" for m in members} - {""})
        description = descriptions[0] if descriptions else None
        studies.append(
            {
                "id": short_hash(uid or "unknown", 8),
                "desc": privacy.blank_identifying(description, ids),
                "uid": uid,
            }
        )
    studies.sort(key=lambda s: (s["desc"] is None, s["desc"] or "", s["id"]))
    study_index = {s["uid"]: i for i, s in enumerate(studies)}

    out_series = []
    for record in series:
        key = record["series_key"]
        ids = every(key)
        text = {c: privacy.blank_identifying(record.get(c), patient(key)) for c in FREE_TEXT}
        rows = errors_of.get(key, [])
        reasons = sorted({r["reason"] for r in rows})
        has_pixels = bool(record.get("has_pixels"))
        entry = {
            "k": key,
            "st": study_index[record.get("StudyInstanceUID") or ""],
            "m": record.get("Modality") or "?",
            "no": record.get("SeriesNumber"),
            "d": text["SeriesDescription"],
            "bp": text["BodyPartExamined"],
            "man": " ".join(t for t in (text["Manufacturer"], text["ManufacturerModelName"]) if t)
            or None,
            "n": record["n_instances"],
            "f": record["n_frames"],
            "b": record["total_file_size"],
            "mx": [record["Rows"], record["Columns"]] if record.get("Rows") else None,
            "o": record.get("orientation"),
            "sp": _number(record.get("slice_spacing")),
            "px": _number(record.get("PixelSpacing")),
            "ck": [record.get(c) for c in ("single_orientation", "uniform_spacing", "is_volume")],
            "ms": record.get("missing_slices"),
            "dp": record.get("duplicate_positions"),
            "gb": record.get("grouped_by"),
            "pix": has_pixels,
            "sheet": sheets.get(key),
            "pv": previews.get(key),
            "pl": _slices_by_plane(key, slices_of.get(key, [])),
            "geo": geometry_fails(record),
            "ne": len(rows),
            "er": reasons,
            "und": has_pixels and (key not in sheets or "undecodable_pixels" in reasons),
            "e": [_error_cells(r, ids) for r in rows[:MAX_ERRORS_PER_SERIES]],
            "q": _qc(record),
            "sg": (links or {}).get(f"sg:{key}", []),
            "so": (links or {}).get(f"so:{key}", []),
        }
        out_series.append(entry)
    out_series.sort(
        key=lambda s: (s["st"], s["no"] is None, s["no"] if s["no"] is not None else 0, s["k"])
    )
    for study in studies:
        del study["uid"]

    n_errors = Counter(r["reason"] for r in errors if r["severity"] == "error")
    n_warnings = Counter(r["reason"] for r in errors if r["severity"] == "warning")
    return {
        "studies": studies,
        "series": out_series,
        "summary": {
            "instances": sum(s["n"] for s in out_series),
            "sheets": len(sheets),
            "not_indexed": dict(sorted(n_errors.items())),
            "warnings": dict(sorted(n_warnings.items())),
        },
        "unattributed": [
            _error_cells(r, near)
            for r in unattributed[:MAX_UNATTRIBUTED_ERRORS]
            # a file that is no instance is redacted with what its folder's instances hold
            for near in [sorted(folder_ids.get(os.path.dirname(r["path"]), ()))]
        ],
        "n_unattributed": len(unattributed),
        "tags": list(ratings.ARTIFACT_TAGS),
        "ratings": {str(k): v for k, v in ratings.RATINGS.items()},
        "columns": list(ratings.COLUMNS),
        "defaults": SERIES_DEFAULTS,
    }


SERIES_DEFAULTS = {
    "bp": None,
    "d": None,
    "dp": None,
    "e": [],
    "er": [],
    "gb": None,
    "geo": False,
    "man": None,
    "ms": None,
    "mx": None,
    "ne": 0,
    "no": None,
    "o": None,
    "pix": False,
    "pl": {},
    "pv": None,
    "px": None,
    "q": None,
    "sheet": None,
    "sg": [],
    "so": [],
    "sp": None,
    "und": False,
}
"""Values a series entry of the data file leaves out (the page reads a missing key so)."""


def _usual(key: str) -> dict[str, str]:
    return {"pv": f"{PREVIEW_DIR}/{key}.png", "sheet": f"contact_sheets/{key}.png"}


def compact_series(entry: dict) -> dict:
    """A series entry without its default values, usual preview and sheet paths as ``1``."""
    out = {}
    usual = _usual(entry["k"])
    for name, value in entry.items():
        if (
            name in SERIES_DEFAULTS
            and value == SERIES_DEFAULTS[name]
            and type(value) is type(SERIES_DEFAULTS[name])
        ):
            continue
        out[name] = 1 if usual.get(name) == value else value
    return out


def expand_series(entry: dict) -> dict:
    """The inverse of :func:`compact_series`."""
    usual = _usual(entry["k"])
    out = {name: (list(v) if isinstance(v, list) else v) for name, v in SERIES_DEFAULTS.items()}
    out.update({k: v for k, v in entry.items()})
    for name, path in usual.items():
        if out[name] == 1:
            out[name] = path
    out["pl"] = dict(out["pl"]) if out["pl"] else {}
    return out


def data_script(data: dict) -> str:
    """The data file's text: deterministic JSON (sorted keys, ASCII) assigned to a global.

    Series entries leave out default values (:func:`compact_series`). The JSON goes in as
    one string for ``JSON.parse``, which Chromium reads several times faster than the
    same data written as a JavaScript object literal.
    """
    data = {**data, "series": [compact_series(s) for s in data["series"]]}
    text = json.dumps(data, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return f"window.REVIEW_DATA=JSON.parse({json.dumps(text)});\n"


def read_data_script(text: str) -> dict:
    """The data a data file's text holds (the inverse of :func:`data_script`)."""
    prefix, suffix = "window.REVIEW_DATA=JSON.parse(", ");\n"
    if not (text.startswith(prefix) and text.endswith(suffix)):
        raise ValueError("not a review page data file")
    data = json.loads(json.loads(text[len(prefix) : -len(suffix)]))
    data["series"] = [expand_series(s) for s in data["series"]]
    return data


# ---------------------------------------------------------------- the page

PAGE_TEMPLATE = Path(__file__).with_name("review_page.html")
"""The page itself: HTML, CSS and the viewer's JavaScript, with no data in it."""


def page_html(data_file: str = DATA_FILE) -> str:
    """index.html: the template with the data file's relative path filled in."""
    template = PAGE_TEMPLATE.read_text(encoding="utf-8")
    return template.replace("{{DATA_FILE}}", data_file)


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text(text, encoding="utf-8")
    os.replace(tmp, path)


def write_review(out: Path, data: dict) -> None:
    """Write ``index.html`` at ``out`` and the data file beside it."""
    _write_text(out.parent / DATA_FILE, data_script(data))
    _write_text(out, page_html())


def read_inputs(args: argparse.Namespace) -> dict:
    """The tables the page is built from, as lists and dicts."""
    series = read_table(args.series).to_pylist()
    sheets_rows = read_parts(args.sheets, SHEETS_SCHEMA).to_pylist()
    slice_columns = ["series_key", "plane", "index", "n_in_plane", "png_path", "position_mm"]
    seg_columns = ["series_key", "source_sop_instance_uid"]
    has_segs = "source_sop_instance_uid" in pq.read_schema(args.slices).names
    segs = read_table(args.slices, columns=seg_columns).to_pylist() if has_segs else []
    return {
        "series": series,
        "sheets": {r["series_key"]: r["sheet_path"] for r in sheets_rows},
        "slices": read_table(args.slices, columns=slice_columns).to_pylist(),
        "errors": read_table(args.errors).to_pylist(),
        "series_by_path": series_of_paths(args.instances) if args.instances else {},
        "identifiers": read_identifiers(args.identifiers) if args.identifiers else {},
        "links": segmentation_links(args.instances, segs),
    }


def preview_sources(slices: Iterable[dict]) -> dict[str, str]:
    """Series key → thumbnail to preview (:func:`choose_preview`)."""
    by_key: dict[str, list[dict]] = {}
    for row in slices:
        by_key.setdefault(row["series_key"], []).append(row)
    chosen = {key: choose_preview(rows) for key, rows in by_key.items()}
    return {key: row["png_path"] for key, row in chosen.items() if row}


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--series", required=True, help="series.parquet (with qc_* columns)")
    parser.add_argument("--slices", required=True)
    parser.add_argument("--errors", required=True)
    parser.add_argument("--instances", help="instances.parquet: error rows' series and SEG links")
    parser.add_argument(
        "--identifiers", help="the merge's identifiers table: text the page must not show"
    )
    parser.add_argument("--sheets", nargs="*", default=[], help="sheets tables of the batches")
    parser.add_argument("--out", required=True, help="index.html; the data file goes beside it")
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Build the review page, its data file and the grid previews."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    inputs = read_inputs(args)
    out = Path(args.out)
    previews = update_previews(out.parent, preview_sources(inputs["slices"]))
    data = review_data(**inputs, previews=previews)
    write_review(out, data)
    log.info(
        "review page with %d series, %d sheets, %d previews",
        len(data["series"]),
        len(inputs["sheets"]),
        len(previews),
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
