"""Stable hash buckets: the same key lands in the same bucket on every run and machine.

Bucket counts are powers of two so that keys keep their bucket as a study grows,
until the count doubles.
"""

from __future__ import annotations

import hashlib
import math


def bucket_count(n_items: int, items_per_bucket: int, split_from: int | None = None) -> int:
    """Smallest power of two giving at most about ``items_per_bucket`` items per bucket.

    With ``split_from``, at least two buckets once there are that many items, so that a
    study too small to fill two buckets still keeps two cores busy.
    """
    if items_per_bucket < 1:
        raise ValueError(f"Argument 'items_per_bucket' must be >= 1, got {items_per_bucket}")
    needed = max(1, math.ceil(n_items / items_per_bucket))
    count = 1 << (needed - 1).bit_length()
    if split_from is not None and n_items >= split_from:
        count = max(count, 2)
    return count


def stable_bucket(key: str, n_buckets: int) -> int:
    """Bucket of a string key, from its SHA-1 (never Python's randomised ``hash``)."""
    digest = hashlib.sha1(key.encode("utf-8", "surrogateescape")).digest()
    return int.from_bytes(digest[:8], "big") % n_buckets


def short_hash(key: str, length: int = 12) -> str:
    """Short hex digest used to name series in paths without exposing their UIDs."""
    return hashlib.sha1(key.encode("utf-8", "surrogateescape")).hexdigest()[:length]


def write_if_changed(target, data: bytes) -> bool:
    """Write ``data`` atomically unless the file already holds exactly it; True when written.

    Unchanged work lists keep their modification time, so Snakemake re-runs only the
    jobs whose lists really changed.
    """
    from pathlib import Path

    target = Path(target)
    try:
        if target.read_bytes() == data:
            return False
    except FileNotFoundError:
        pass
    tmp = target.with_name(target.name + ".tmp")
    tmp.write_bytes(data)
    tmp.replace(target)
    return True
