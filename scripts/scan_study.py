"""Walk a study folder and write stable shard lists of every regular file in it.

A file's shard is a hash of its folder (a series folder stays in one shard), and the
shard count is a power of two, so files keep their shard as a study grows (until the
count doubles). A shard list is rewritten only when its content changed, so Snakemake
re-extracts only shards that changed. Each file is listed with its stamp (size, mtime,
ctime and inode, see :func:`series_cache.stamp`), so pixels rewritten in place at the
same size, even with the mtime set back, still change the list; the merge carries the
stamps into the per-batch work lists, so the batches holding such files are redone.
"""

from __future__ import annotations

import lean_imports  # noqa: F401 - first: keeps unused packages out of this process

import argparse
import json
import logging
import os
import posixpath
import stat
import sys
from collections.abc import Sequence
from pathlib import Path

from series_cache import stamp
from sharding import bucket_count, stable_bucket, write_if_changed

log = logging.getLogger("scan_study")

ENTRY_FIELDS = ("path", "file_size", "mtime_ns", "ctime_ns", "inode")
FOLDER_SPLIT_FILES = 256
"""A folder holding more files than this is spread over shards by file name, in buckets of
at most about this many: whole 680-file series folders made shards of 235 to 3,153 files
at 10,000 vendor files, and the largest shard's job ran alone for seconds."""
SPLIT_FROM_FILES = 1000
"""From this many files a study gets at least two shards, so two extract jobs share the
work (about 2 ms a file on vendor headers: a second or more each)."""
"""Keys of a shard list line, in the order of the entries :func:`walk_files` returns."""


def walk_files(study: Path) -> list[tuple[str, int, int, int, int]]:
    """``(relative posix path, size, mtime_ns, ctime_ns, inode)`` of every regular file,
    sorted by path.

    Symlinks to files are listed like files; symlinked folders are not followed,
    which also keeps symlink loops from running forever.
    """
    unreadable = 0
    files: list[tuple[str, int, int, int, int]] = []
    folders = [(os.fspath(study), "")]
    while folders:  # os.scandir: file types come with the listing, one stat per file
        folder, prefix = folders.pop()
        try:
            with os.scandir(folder) as listing:
                entries = list(listing)
        except OSError:
            unreadable += 1
            continue
        for entry in entries:
            try:
                if entry.is_dir(follow_symlinks=False):
                    folders.append((entry.path, f"{prefix}{entry.name}/"))
                    continue
                info = entry.stat()  # follows a symlink to a file
            except OSError:
                continue
            if stat.S_ISREG(info.st_mode):
                files.append((prefix + entry.name, *stamp(info)))
    if unreadable:
        log.warning("%d folder(s) could not be listed (permission denied?)", unreadable)
    return sorted(files)


def shard_keys(paths: Sequence[str], files_per_shard: int) -> list[str]:
    """The key each file is sharded by: its folder, or folder plus a name bucket for
    folders holding more than ``files_per_shard`` or :data:`FOLDER_SPLIT_FILES` files.
    """
    folders = [path.rpartition("/")[0] for path in paths]  # posixpath.dirname, faster
    per_folder: dict[str, int] = {}
    for folder in folders:
        per_folder[folder] = per_folder.get(folder, 0) + 1
    most = min(files_per_shard, FOLDER_SPLIT_FILES)
    keys = []
    for path, folder in zip(paths, folders, strict=True):
        if per_folder[folder] <= most:
            keys.append(folder)
        else:
            split = bucket_count(per_folder[folder], most)
            keys.append(f"{folder}#{stable_bucket(posixpath.basename(path), split)}")
    return keys


def assign_shards(files: Sequence[tuple], files_per_shard: int) -> dict[int, list]:
    """Group file entries (path first) into shards; every index up to the count is present."""
    count = bucket_count(len(files), files_per_shard, split_from=SPLIT_FROM_FILES)
    shards: dict[int, list] = {i: [] for i in range(count)}
    keys = shard_keys([entry[0] for entry in files], files_per_shard)
    buckets: dict[str, int] = {}  # files of a folder share their key: hash each key once
    for entry, key in zip(files, keys, strict=True):
        bucket = buckets.get(key)
        if bucket is None:
            bucket = buckets[key] = stable_bucket(key, count)
        shards[bucket].append(entry)
    return shards


def shard_line(entry: tuple) -> str:
    """One shard-list line: the entry as a JSON object keyed by :data:`ENTRY_FIELDS`."""
    if len(entry) == len(ENTRY_FIELDS) and all(type(v) is int for v in entry[1:]):
        path, size, mtime, ctime, inode = entry  # json.dumps of the dict, without its cost
        return (
            f'{{"path": {json.dumps(path)}, "file_size": {size}, "mtime_ns": {mtime}, '
            f'"ctime_ns": {ctime}, "inode": {inode}}}\n'
        )
    return json.dumps(dict(zip(ENTRY_FIELDS, entry, strict=False))) + "\n"


def write_shards(shards: dict[int, list], out_dir: Path) -> list[str]:
    """Write one JSON-lines list per shard (``shard_0000.jsonl``) where it changed.

    Shard lists beyond the current count are removed. Returns the shard ids.
    """
    out_dir.mkdir(parents=True, exist_ok=True)
    ids = [f"{index:04d}" for index in sorted(shards)]
    for shard_id, index in zip(ids, sorted(shards), strict=True):
        lines = "".join(shard_line(e) for e in shards[index])
        write_if_changed(out_dir / f"shard_{shard_id}.jsonl", lines.encode("utf-8"))
    for stale in out_dir.glob("shard_*.jsonl"):
        if stale.stem.removeprefix("shard_") not in ids:
            stale.unlink()
    return ids


def scan(study: Path, out_dir: Path, files_per_shard: int) -> list[str]:
    """Walk the study and update its shard lists; returns shard ids (none for no files)."""
    files = walk_files(study)
    if not files:
        return []
    return write_shards(assign_shards(files, files_per_shard), out_dir)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--study", required=True, type=Path, help="study folder (read-only)")
    parser.add_argument("--out-dir", required=True, type=Path, help="folder for shard lists")
    parser.add_argument("--files-per-shard", type=int, default=1000)
    return parser.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    """Scan the study and write shard lists; exit 2 with one line when the study is unusable."""
    args = parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(name)s: %(message)s")
    if not args.study.is_dir():
        print(f"scan_study: study folder not found: {args.study}", file=sys.stderr)
        return 2
    shards = scan(args.study, args.out_dir, args.files_per_shard)
    if not shards:
        print(f"scan_study: study folder has no files: {args.study}", file=sys.stderr)
        return 2
    log.info("%d shard list(s) in %s", len(shards), args.out_dir)
    return 0


if __name__ == "__main__":
    sys.exit(main())
