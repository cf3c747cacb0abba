"""Per-series results kept between runs, so a batch job redoes only the series that changed.

Snakemake reruns a whole batch job when one of its series changes; each series' rows are
stored under a fingerprint of everything they depend on (the series' inputs, the
settings and the code of every script), and reused while the fingerprint and the files
they name are unchanged.
"""

from __future__ import annotations

import hashlib
import json
import os
from functools import cache
from pathlib import Path

SCRIPTS = Path(__file__).resolve().parent


@cache
def code_version() -> str:
    """Digest of every script's source: any code change invalidates every cached series."""
    digest = hashlib.sha256()
    for path in sorted(SCRIPTS.glob("*.py")):
        digest.update(path.name.encode())
        digest.update(path.read_bytes())
    return digest.hexdigest()


def fingerprint(*parts) -> str:
    """Stable digest of JSON-able parts plus the code version."""
    text = json.dumps([code_version(), *parts], sort_keys=True, default=str)
    return hashlib.sha256(text.encode("utf-8")).hexdigest()


def load(folder: Path, key: str, expected: str) -> dict | None:
    """The stored payload of a series when its fingerprint matches, else None."""
    try:
        stored = json.loads((folder / f"{key}.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    return stored["payload"] if stored.get("fingerprint") == expected else None


def store(folder: Path, key: str, fingerprint_: str, payload: dict) -> None:
    """Keep a series' payload under its fingerprint (written atomically, after its files)."""
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / f"{key}.json"
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_text(json.dumps({"fingerprint": fingerprint_, "payload": payload}), encoding="utf-8")
    os.replace(tmp, target)


def stamp(info: os.stat_result) -> tuple[int, int, int, int]:
    """``(size, mtime_ns, ctime_ns, inode)`` of a file's stat.

    Size alone misses pixels rewritten in place, and a scrubber may restore the mtime
    with ``os.utime``; the ctime cannot be set back that way, and a file replaced by
    another (renamed over it, copied in) has a new inode.
    """
    return (info.st_size, info.st_mtime_ns, info.st_ctime_ns, info.st_ino)


def stamps(files) -> list | None:
    """``(file, size, mtime_ns, ctime_ns, inode)`` of each file; None when one is missing."""
    out = []
    for path in files:
        try:
            info = os.stat(path)
        except OSError:
            return None
        out.append((os.fspath(path), *stamp(info)))
    return out
