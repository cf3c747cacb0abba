"""Tests for scripts/scan_study.py on the real demo study and temp copies of it."""

from __future__ import annotations

import hashlib
import json
import os
import posixpath
import shutil
from concurrent.futures import ThreadPoolExecutor

import pytest

import demo
import scan_study
from sharding import stable_bucket

FILES_PER_SHARD = 10
"""Gives 8 shards for the 72 demo files (the count doubles past 80 files)."""
WALK_TIMEOUT_S = 20


def study_files() -> list[tuple[str, int]]:
    """Every regular file of the demo study with its size, found independently of walk_files."""
    found = []
    for path in demo.STUDY.rglob("*"):
        if path.is_file() and not path.is_symlink():
            found.append((path.relative_to(demo.STUDY).as_posix(), path.stat().st_size))
    return sorted(found)


def checksum(folder) -> str:
    """Digest of every entry's path, type, size, mtime and content under ``folder``."""
    digest = hashlib.sha256()
    for root, dirs, files in os.walk(folder):
        dirs.sort()
        for name in sorted(dirs + files):
            path = os.path.join(root, name)
            stat = os.lstat(path)
            digest.update(
                f"{os.path.relpath(path, folder)}|{stat.st_mode}|{stat.st_size}|".encode()
            )
            digest.update(str(stat.st_mtime_ns).encode())
            if os.path.isfile(path) and not os.path.islink(path):
                with open(path, "rb") as fh:
                    digest.update(hashlib.sha256(fh.read()).digest())
    return digest.hexdigest()


def walk(folder) -> list[tuple[str, int]]:
    """walk_files in a worker thread, failing instead of hanging forever."""
    with ThreadPoolExecutor(max_workers=1) as pool:
        found = pool.submit(lambda: list(scan_study.walk_files(folder))).result(WALK_TIMEOUT_S)
    return [(path, size) for path, size, *_ in found]


def unusable_study(tmp_path, kind: str):
    """A study path that scan_study must refuse: missing, empty, hollow or a file."""
    study = tmp_path / "study"
    if kind == "missing":
        return study
    study.mkdir()
    if kind == "only-folders":
        (study / "a" / "b").mkdir(parents=True)
    if kind == "file":
        shutil.copy(demo.CT_SMALL, study / "CT_small.dcm")
        return study / "CT_small.dcm"
    return study


@pytest.fixture(scope="module")
def demo_walk():
    return walk(demo.STUDY)


@pytest.fixture
def study_copy(tmp_path):
    target = tmp_path / "study"
    shutil.copytree(demo.STUDY, target)
    return target


class TestWalkFiles:
    def test_walk_lists_every_demo_file_once_with_its_size(self, demo_walk):
        assert len(demo_walk) == demo.N_STUDY_FILES
        assert len({path for path, _ in demo_walk}) == demo.N_STUDY_FILES
        assert sorted(demo_walk) == study_files()

    def test_walk_yields_paths_in_sorted_order(self, demo_walk):
        paths = [path for path, _ in demo_walk]
        assert paths == sorted(paths)

    def test_paths_are_relative_posix_paths(self, demo_walk):
        for path, _ in demo_walk:
            assert not path.startswith("/")
            assert "\\" not in path
            assert (demo.STUDY / path).is_file()

    def test_walk_is_sorted_when_a_file_sits_beside_a_folder(self, tmp_path):
        (tmp_path / "a_series").mkdir()
        shutil.copy(demo.CT_SMALL, tmp_path / "a_series" / "CT_small.dcm")
        shutil.copy(demo.MR_RLE, tmp_path / "z_first.dcm")
        paths = [path for path, _ in walk(tmp_path)]
        assert paths == sorted(paths)

    def test_a_symlink_loop_to_a_folder_does_not_hang_and_is_not_followed(self, study_copy):
        os.symlink("..", study_copy / "misc_samples" / "loop")
        os.symlink(study_copy / "patient01_head_MR", study_copy / "unsorted" / "mr_again")
        found = walk(study_copy)
        assert sorted(found) == study_files()

    def test_a_symlink_to_a_file_is_listed_like_a_file(self, study_copy):
        os.symlink(study_copy / "misc_samples" / "ct" / "CT_small.dcm", study_copy / "link.dcm")
        found = dict(walk(study_copy))
        assert found["link.dcm"] == demo.CT_SMALL.stat().st_size
        assert len(found) == demo.N_STUDY_FILES + 1

    def test_a_broken_symlink_is_skipped(self, study_copy):
        os.symlink(study_copy / "gone.dcm", study_copy / "dangling.dcm")
        assert len(walk(study_copy)) == demo.N_STUDY_FILES


class TestAssignShards:
    def test_every_file_lands_in_exactly_one_shard(self, demo_walk):
        shards = scan_study.assign_shards(demo_walk, FILES_PER_SHARD)
        assert sorted(shards) == list(range(8))
        assigned = [f for files in shards.values() for f in files]
        assert sorted(assigned) == sorted(demo_walk)

    def test_files_keep_their_shard_when_files_are_added(self, demo_walk):
        before = scan_study.assign_shards(demo_walk, FILES_PER_SHARD)
        added = [(f"new/IM_{i:04d}", 100) for i in range(80 - len(demo_walk))]
        after = scan_study.assign_shards(demo_walk + added, FILES_PER_SHARD)
        assert len(after) == len(before)
        where = {path: shard for shard, files in after.items() for path, _ in files}
        for shard, files in before.items():
            for path, _ in files:
                assert where[path] == shard, path

    def test_when_the_count_doubles_a_file_stays_or_moves_up_by_the_old_count(self, demo_walk):
        before = scan_study.assign_shards(demo_walk, FILES_PER_SHARD)
        added = [(f"new/IM_{i:04d}", 100) for i in range(81 - len(demo_walk))]
        after = scan_study.assign_shards(demo_walk + added, FILES_PER_SHARD)
        assert len(after) == 2 * len(before)
        where = {path: shard for shard, files in after.items() for path, _ in files}
        for shard, files in before.items():
            for path, _ in files:
                assert where[path] in (shard, shard + len(before)), path

    def test_shards_follow_the_stable_hash_of_the_folder(self, demo_walk):
        shards = scan_study.assign_shards(demo_walk, 40)  # every demo folder fits one shard
        for shard, files in shards.items():
            for path, _ in files:
                assert stable_bucket(posixpath.dirname(path), len(shards)) == shard

    def test_a_series_folder_stays_in_one_shard(self, demo_walk):
        shards = scan_study.assign_shards(demo_walk, 40)
        mr = demo.MR_SERIES.relative_to(demo.STUDY).as_posix()
        holding = {s for s, files in shards.items() for path, _ in files if path.startswith(mr)}
        assert len(holding) == 1

    def test_a_folder_larger_than_a_shard_is_split_by_file_name(self):
        files = [(f"big/IM_{i:05d}", 1) for i in range(50)]
        shards = scan_study.assign_shards(files, 10)
        assert len(shards) == 8
        assert sum(1 for f in shards.values() if f) > 1
        assert sorted(e for f in shards.values() for e in f) == files

    def test_a_large_series_folder_is_spread_over_shards_of_even_size(self):
        files = [(f"philips/IM_{i:05d}", 1) for i in range(680)] + [
            (f"ge/{i:05d}", 1) for i in range(130)
        ]
        files += [(f"toshiba_{k}/{i:04d}.dcm", 1) for k in range(5) for i in range(40)]
        shards = scan_study.assign_shards(sorted(files), 2000)
        assert len(shards) == 2
        sizes = sorted(len(f) for f in shards.values())
        assert sum(sizes) == len(files) and sizes[0] > 300
        ge = {s for s, f in shards.items() for path, _ in f if path.startswith("ge/")}
        assert len(ge) == 1  # a folder of up to 256 files stays together


class TestWriteShards:
    def test_unchanged_shard_lists_are_not_rewritten(self, tmp_path):
        study = tmp_path / "study"
        shutil.copytree(demo.MR_SERIES, study / "mr")
        shutil.copytree(demo.CT_SERIES, study / "ct")
        out = tmp_path / "scan"
        ids = scan_study.scan(study, out, 40)
        stamps = {p.name: p.stat().st_mtime_ns for p in out.iterdir()}
        assert scan_study.scan(study, out, 40) == ids
        assert {p.name: p.stat().st_mtime_ns for p in out.iterdir()} == stamps

    def test_adding_a_folder_rewrites_only_the_shard_it_lands_in(self, tmp_path):
        study = tmp_path / "study"
        for i in range(6):
            shutil.copytree(demo.CT_SERIES, study / f"ct{i}")
        out = tmp_path / "scan"
        ids = scan_study.scan(study, out, 40)
        before = {p.name: p.read_bytes() for p in out.iterdir()}
        shutil.copytree(demo.CT_SERIES, study / "ct_new")
        assert scan_study.scan(study, out, 40) == ids  # 140 files: still 4 shards
        after = {p.name: p.read_bytes() for p in out.iterdir()}
        assert sum(before[name] != after[name] for name in before) == 1


class TestStamps:
    """A shard list changes whenever a file's bytes may have, not only when its size does."""

    @pytest.fixture
    def scanned(self, tmp_path):
        study = tmp_path / "study"
        shutil.copytree(demo.MR_SERIES, study / "mr")
        out = tmp_path / "scan"
        scan_study.scan(study, out, 40)
        return study, out

    @staticmethod
    def lists(out) -> dict[str, bytes]:
        return {p.name: p.read_bytes() for p in sorted(out.iterdir())}

    def test_each_entry_holds_size_mtime_ctime_and_inode_from_stat(self, scanned):
        study, out = scanned
        (shard,) = sorted(out.iterdir())
        entry = json.loads(shard.read_text(encoding="utf-8").splitlines()[0])
        info = os.stat(study / entry["path"])
        assert entry == {
            "path": entry["path"],
            "file_size": info.st_size,
            "mtime_ns": info.st_mtime_ns,
            "ctime_ns": info.st_ctime_ns,
            "inode": info.st_ino,
        }

    def test_pixels_rewritten_at_the_same_size_with_the_mtime_restored_change_the_list(
        self, scanned
    ):
        study, out = scanned
        before = self.lists(out)
        target = sorted((study / "mr").iterdir())[3]
        info = target.stat()
        data = bytearray(target.read_bytes())
        data[-100:] = bytes(255 - b for b in data[-100:])
        target.write_bytes(bytes(data))
        os.utime(target, ns=(info.st_atime_ns, info.st_mtime_ns))
        assert (target.stat().st_size, target.stat().st_mtime_ns) == (
            info.st_size,
            info.st_mtime_ns,
        )
        scan_study.scan(study, out, 40)
        assert self.lists(out) != before

    def test_a_file_replaced_by_a_copy_of_another_of_the_same_size_changes_the_list(self, scanned):
        study, out = scanned
        before = self.lists(out)
        by_size: dict[int, list] = {}
        for path in sorted((study / "mr").iterdir()):
            by_size.setdefault(path.stat().st_size, []).append(path)
        first, second = next(paths for paths in by_size.values() if len(paths) > 1)[:2]
        info = first.stat()
        shutil.copy(second, study / "replacement")
        os.utime(study / "replacement", ns=(info.st_atime_ns, info.st_mtime_ns))
        os.replace(study / "replacement", first)
        scan_study.scan(study, out, 40)
        assert self.lists(out) != before

    def test_reading_every_file_leaves_the_lists_untouched(self, scanned):
        study, out = scanned
        before = {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()}
        for path in (study / "mr").iterdir():
            path.read_bytes()
        scan_study.scan(study, out, 40)
        assert {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in out.iterdir()} == before


class TestMain:
    def test_main_writes_shard_lists_holding_every_file_once(self, tmp_path, demo_walk):
        out = tmp_path / "scan"
        args = ["--study", str(demo.STUDY), "--out-dir", str(out)]
        assert scan_study.main(args + ["--files-per-shard", str(FILES_PER_SHARD)]) == 0
        shards = sorted(out.iterdir())
        assert [p.name for p in shards] == [f"shard_{i:04d}.jsonl" for i in range(8)]
        listed = []
        for shard in shards:
            for line in shard.read_text(encoding="utf-8").splitlines():
                row = json.loads(line)
                listed.append((row["path"], row["file_size"]))
        assert sorted(listed) == sorted(demo_walk)

    @pytest.mark.parametrize(
        "kind",
        [
            pytest.param("missing", id="missing-folder"),
            pytest.param("empty", id="empty-folder"),
            pytest.param("only-folders", id="only-empty-sub-folders"),
            pytest.param("file", id="a-file-not-a-folder"),
        ],
    )
    def test_unusable_study_returns_2_with_one_line_on_stderr(self, tmp_path, capsys, kind):
        study = unusable_study(tmp_path, kind)
        out = tmp_path / "scan"
        assert scan_study.main(["--study", str(study), "--out-dir", str(out)]) == 2
        lines = capsys.readouterr().err.strip().splitlines()
        assert len(lines) == 1
        assert lines[0].startswith("scan_study: ")
        assert str(study) in lines[0]
        assert not out.exists()

    def test_main_never_writes_into_the_study(self, tmp_path):
        before = checksum(demo.STUDY)
        assert scan_study.main(["--study", str(demo.STUDY), "--out-dir", str(tmp_path)]) == 0
        assert checksum(demo.STUDY) == before

    def test_main_is_byte_identical_across_two_runs(self, tmp_path):
        for run in ("a", "b"):
            args = ["--study", str(demo.STUDY), "--out-dir", str(tmp_path / run)]
            assert scan_study.main(args + ["--files-per-shard", "16"]) == 0
        first = sorted((tmp_path / "a").iterdir())
        assert first
        for path in first:
            assert path.read_bytes() == (tmp_path / "b" / path.name).read_bytes()
