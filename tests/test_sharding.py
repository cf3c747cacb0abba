"""Tests for scripts/sharding.py: buckets pinned to golden values.

Shard lists and batches must land in the same bucket on every run, machine and Python
version, or every rerun would redo everything. The golden values below were computed
outside Python with coreutils: the first 16 hex digits of ``printf %s KEY | sha1sum``,
read as an unsigned integer, modulo the bucket count.
"""

from __future__ import annotations

import pytest

from sharding import bucket_count, short_hash, stable_bucket

DEMO_FOLDER_BUCKETS = {
    # folder of the bundled demo study: (bucket of 8, bucket of 4)
    "misc_samples/ct": (7, 3),
    "misc_samples/ecg": (3, 3),
    "misc_samples/mr": (2, 2),
    "misc_samples/nm": (5, 1),
    "misc_samples/rt": (0, 0),
    "misc_samples/sr": (1, 1),
    "misc_samples/us": (7, 3),
    "patient01_head_MR/20220407_brain/003_t1_fl2d_sag": (6, 2),
    "patient02_abdomen_CT/20221208_ct_body_3.0": (6, 2),
    "unsorted": (1, 1),
}


class TestStableBucket:
    @pytest.mark.parametrize(
        ("key", "n_buckets", "bucket"),
        [
            pytest.param("patient01_head_MR/20220407_brain/003_t1_fl2d_sag", 16, 14, id="mr-16"),
            pytest.param("patient01_head_MR/20220407_brain/003_t1_fl2d_sag", 1024, 78, id="mr-1k"),
            pytest.param("misc_samples/ct", 1024, 623, id="ct-1k"),
            pytest.param("", 1024, 781, id="empty-key"),
            pytest.param("uid:1.2.3.4", 1024, 369, id="series-identity"),
            pytest.param("anything", 1, 0, id="one-bucket"),
        ],
    )
    def test_bucket_equals_the_golden_sha1_value(self, key, n_buckets, bucket):
        assert stable_bucket(key, n_buckets) == bucket

    @pytest.mark.parametrize("folder", sorted(DEMO_FOLDER_BUCKETS))
    def test_demo_study_folders_land_in_their_golden_buckets(self, folder):
        assert (stable_bucket(folder, 8), stable_bucket(folder, 4)) == DEMO_FOLDER_BUCKETS[folder]

    def test_a_key_keeps_its_bucket_modulo_the_smaller_count_when_the_count_doubles(self):
        keys = [f"study/folder_{i:03d}" for i in range(200)]
        for key in keys:
            assert stable_bucket(key, 8) % 4 == stable_bucket(key, 4), key
        assert len({stable_bucket(key, 8) for key in keys}) == 8

    def test_a_file_name_that_is_not_utf8_has_a_golden_bucket(self):
        # b"caf\xe9/x" as Python keeps it from os.listdir: a lone surrogate for the byte
        key = b"caf\xe9/x".decode("utf-8", "surrogateescape")
        assert stable_bucket(key, 1024) == 0xF8A4F37095FCA912 % 1024 == 274


class TestBucketCount:
    @pytest.mark.parametrize(
        ("n_items", "per_bucket", "count"),
        [
            pytest.param(0, 1000, 1, id="empty-study-one-bucket"),
            pytest.param(72, 1000, 1, id="demo-one-shard"),
            pytest.param(72, 10, 8, id="demo-ten-per-shard"),
            pytest.param(1000, 1000, 1, id="exactly-full"),
            pytest.param(1001, 1000, 2, id="one-over"),
            pytest.param(100_000, 1000, 128, id="hundred-thousand-files"),
        ],
    )
    def test_count_is_the_smallest_power_of_two_that_fits(self, n_items, per_bucket, count):
        assert bucket_count(n_items, per_bucket) == count

    @pytest.mark.parametrize(
        ("n_items", "per_bucket", "count"),
        [
            pytest.param(999, 2000, 1, id="below-the-split-one-bucket"),
            pytest.param(1000, 2000, 2, id="from-the-split-two-buckets"),
            pytest.param(2000, 2000, 2, id="a-full-bucket-still-split"),
            pytest.param(10_002, 2000, 8, id="more-than-two-unchanged"),
        ],
    )
    def test_split_from_gives_two_buckets_to_studies_that_fill_only_one(
        self, n_items, per_bucket, count
    ):
        assert bucket_count(n_items, per_bucket, split_from=1000) == count

    def test_items_per_bucket_below_one_is_refused_naming_the_argument(self):
        with pytest.raises(ValueError, match="'items_per_bucket'"):
            bucket_count(10, 0)


class TestShortHash:
    def test_short_hash_is_the_golden_sha1_prefix(self):
        assert short_hash("uid:1.2.3.4") == "2b6fc66d4827"
        assert short_hash("uid:1.2.3.4", 6) == "2b6fc6"


DEMO_PIXEL_SERIES_BATCHES = {
    # series_key: batch, for the demo's 11 image series in 2 batches (8 series per batch);
    # key = sha1("uid:" + SeriesInstanceUID)[:12] (CT: of its folder fallback), "-n" per
    # stack; batch = first 16 hex digits of sha1(key) modulo 2, both from coreutils
    "03f687752157-1": 0,
    "03f687752157-2": 0,
    "15a1c95aea5a": 0,
    "2269c1ad0a50": 1,
    "3f47545f5eb5": 0,
    "932a55d8cda2": 0,
    "a839a06db08a": 0,
    "c30a46e64356": 0,
    "dd0b149f14c6": 0,
    "e22c49a7fc28": 0,
    "ef492e5a1d5c": 0,
}


class TestDemoBatches:
    def test_demo_image_series_have_their_golden_keys_and_batches(self, demo_metadata):
        import pyarrow.parquet as pq

        rows = pq.read_table(demo_metadata["series"]).to_pylist()
        batches = {r["series_key"]: r["batch"] for r in rows if r["has_pixels"]}
        assert batches == DEMO_PIXEL_SERIES_BATCHES
        assert [r["batch"] for r in rows if not r["has_pixels"]] == [None, None, None]

    def test_the_demo_mr_key_is_the_golden_hash_of_its_series_uid(self, demo_metadata):
        import pyarrow.parquet as pq

        rows = pq.read_table(demo_metadata["series"]).to_pylist()
        (mr,) = [r for r in rows if r["SeriesDescription"] == "t1_fl2d_sag"]
        assert (
            mr["SeriesInstanceUID"] == "1.3.12.2.1107.5.2.43.67060.2022040715044210837860713.0.0.0"
        )
        assert mr["series_key"] == "15a1c95aea5a"
