"""Walk a study folder and write stable shard lists of every regular file in it.

A file's shard is a hash of its relative path, and the shard count is a power of two,
so files keep their shard as a study grows (until the count doubles).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from collections.abc import Sequence
from pathlib import Path

from sharding import bucket_count, stable_bucket

log = logging.getLogger("scan_study")


def walk_files(study: Path) -> list[tuple[str, int]]:
    """``(relative posix path, size)`` of every regular file, sorted by path.

    Symlinks to files are listed like files; symlinked folders are not followed,
    which also keeps symlink loops from running forever.
    """
    unreadable: list[str] = []
    files: list[tuple[str, int]] = []

    def onerror(exc: OSError) -> None:
        unreadable.append(exc.filename)

    for dirpath, dirnames, filenames in os.walk(study, onerror=onerror, followlinks=False):
        dirnames.sort()
        for name in sorted(filenames):
            full = os.path.join(dirpath, name)
            try:
                if not os.path.isfile(full):
                    continue
                size = os.path.getsize(full)
            except OSError:
                continue
            files.append((Path(os.path.relpath(full, study)).as_posix(), size))
    if unreadable:
        log.warning("%d folder(s) could not be listed (permission denied?)", len(unreadable))
    return sorted(files)


def assign_shards(files: Sequence[tuple[str, int]], files_per_shard: int) -> dict[int, list]:
    """Group files into shards by path hash; every shard index up to the count is present."""
    count = bucket_count(len(files), files_per_shard)
    shards: dict[int, list] = {i: [] for i in range(count)}
    for path, size in files:
        shards[stable_bucket(path, count)].append((path, size))
    return shards


def write_shards(shards: dict[int, list], out_dir: Path) -> None:
    """Write one JSON-lines file per shard (``shard_0000.jsonl``), robust to any file name."""
    out_dir.mkdir(parents=True, exist_ok=True)
    for index, files in sorted(shards.items()):
        target = out_dir / f"shard_{index:04d}.jsonl"
        lines = "".join(
            json.dumps({"path": path, "file_size": size}) + "\n" for path, size in files
        )
        tmp = target.with_suffix(".tmp")
        tmp.write_text(lines, encoding="utf-8")
        os.replace(tmp, target)


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
    files = walk_files(args.study)
    if not files:
        print(f"scan_study: study folder has no files: {args.study}", file=sys.stderr)
        return 2
    shards = assign_shards(files, args.files_per_shard)
    write_shards(shards, args.out_dir)
    log.info("%d files in %d shard(s)", len(files), len(shards))
    return 0


if __name__ == "__main__":
    sys.exit(main())
