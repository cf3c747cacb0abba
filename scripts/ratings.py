"""Quality ratings of series: the CSV the review page downloads, read back and checked.

The review page keeps each series' rating, artifact tags and note in the browser and
downloads them as a CSV with the columns :data:`COLUMNS`. Given back to the workflow as
``review.ratings``, the file is checked here (once while Snakemake builds its plan, so a
malformed file stops the run before any job) and joined into ``series.parquet`` as the
``qc_*`` columns by ``finalize_tables``.
"""

from __future__ import annotations

import csv
import re
from collections.abc import Iterable
from pathlib import Path

COLUMNS = ("series_key", "rating", "tags", "note", "rater", "rated_at")
"""Columns of a ratings CSV, in the order the page writes them."""
REQUIRED = ("series_key", "rating")
"""Columns a ratings CSV must have; the others may be missing (then empty)."""

RATINGS = {1: "exclude", 2: "poor", 3: "acceptable", 4: "excellent"}
"""Rating value → label (keys 1–4 on the page)."""

ARTIFACT_TAGS = (
    "motion",
    "ghosting",
    "wrap",
    "noise",
    "truncated_coverage",
    "wrong_series",
    "artifact_other",
)
"""Artifact tags the page offers; a CSV may carry other tags too."""

TAG_SEPARATOR = ";"
"""Tags of one series in the ``tags`` cell, e.g. ``motion;ghosting``."""

_TAG = re.compile(r"^[\w .-]{1,64}$")


class RatingsError(ValueError):
    """A ratings CSV that cannot be read; the message names the file and the row."""


def _fail(path: Path, line: int, problem: str) -> RatingsError:
    return RatingsError(f"ratings file {str(path)!r}, row {line}: {problem}")


def parse_tags(cell: str) -> list[str]:
    """Tags of a ``tags`` cell: split on ``;``, stripped, empty ones and repeats dropped.

    Raises
    ------
    ValueError
        When a tag has characters other than letters, digits, space, ``_``, ``.``, ``-``
        or is longer than 64 characters.
    """
    tags: list[str] = []
    for raw in cell.split(TAG_SEPARATOR):
        tag = raw.strip()
        if not tag or tag in tags:
            continue
        if not _TAG.match(tag):
            raise ValueError(f"tag {tag!r} is not letters, digits, ' ', '_', '.' or '-'")
        tags.append(tag)
    return tags


def parse_row(row: dict) -> dict:
    """One CSV row as ``{series_key, rating, tags, note, rater, rated_at}``.

    ``rating`` is an int 1–4 or None; ``tags`` a list; the texts None when empty.

    Raises
    ------
    ValueError
        When ``series_key`` is empty or ``rating`` is not empty nor 1–4.
    """
    key = (row.get("series_key") or "").strip()
    if not key:
        raise ValueError("series_key is empty")
    text = (row.get("rating") or "").strip()
    if text and (not text.isdigit() or int(text) not in RATINGS):
        raise ValueError(f"rating must be 1, 2, 3, 4 or empty, got {text!r}")
    return {
        "series_key": key,
        "rating": int(text) if text else None,
        "tags": parse_tags(row.get("tags") or ""),
        "note": (row.get("note") or "").strip() or None,
        "rater": (row.get("rater") or "").strip() or None,
        "rated_at": (row.get("rated_at") or "").strip() or None,
    }


def read_ratings(path: str | Path) -> dict[str, dict]:
    """Every series' rating in a ratings CSV, by series key (a later row wins).

    Rows with neither rating, tags nor note are skipped. The file may start with a
    byte-order mark (spreadsheets write one).

    Raises
    ------
    RatingsError
        When the file cannot be read, lacks a header with :data:`REQUIRED`, or a row has
        too many cells, an empty series key or a rating other than 1–4 or empty. The
        message names the file and the row (row 1 is the header).
    """
    path = Path(path)
    try:
        with open(path, encoding="utf-8-sig", newline="") as fh:
            reader = csv.DictReader(fh)
            header = reader.fieldnames
            if not header:
                raise _fail(path, 1, f"no header; expected columns {','.join(COLUMNS)}")
            missing = [c for c in REQUIRED if c not in header]
            if missing:
                raise _fail(
                    path,
                    1,
                    f"header lacks {', '.join(missing)}; expected columns {','.join(COLUMNS)}",
                )
            ratings: dict[str, dict] = {}
            for row in reader:
                if None in row:
                    raise _fail(path, reader.line_num, f"more cells than the {len(header)} columns")
                if not any((v or "").strip() for v in row.values()):
                    continue  # a blank line
                try:
                    parsed = parse_row(row)
                except ValueError as exc:
                    raise _fail(path, reader.line_num, str(exc)) from None
                if parsed["rating"] is None and not parsed["tags"] and not parsed["note"]:
                    ratings.pop(parsed["series_key"], None)
                    continue
                ratings[parsed["series_key"]] = parsed
    except UnicodeDecodeError as exc:
        raise RatingsError(f"ratings file {str(path)!r}: not UTF-8 text ({exc.reason})") from None
    except csv.Error as exc:
        raise RatingsError(f"ratings file {str(path)!r}: {exc}") from None
    except OSError as exc:
        raise RatingsError(f"ratings file {str(path)!r}: {exc.strerror or exc}") from None
    return ratings


def read_all(paths: Iterable[str | Path]) -> dict[str, dict]:
    """Ratings of several CSVs, a later file's row winning over an earlier one's."""
    merged: dict[str, dict] = {}
    for path in paths:
        merged.update(read_ratings(path))
    return merged
