"""Tests for scripts/finalize_tables.py on slices and errors from the real demo study."""

from __future__ import annotations

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

import demo
import finalize_tables
import ratings
import render_thumbnails
import save_slices
import table_schema

UNDECODABLE = (demo.MR_TRUNCATED,)
"""Demo files whose header reads but whose pixels do not decode (slice-stage errors)."""
NOT_INDEXED = (demo.NO_META, demo.ZIP_MR, demo.RTPLAN_TRUNCATED)
"""Demo files that never become instances (extract-stage errors)."""


def relative(path) -> str:
    return path.relative_to(demo.STUDY).as_posix()


def batches(series_path) -> list[int]:
    column = pq.read_table(series_path, columns=["batch"]).column("batch").drop_null()
    return sorted(set(column.to_pylist()))


def sort_key(row: dict) -> tuple:
    """Python's view of the table order: path, severity, reason, detail, stage; nulls last."""
    return tuple(
        (row[c] is None, row[c] or "") for c in ("path", "severity", "reason", "detail", "stage")
    )


@pytest.fixture(scope="module")
def parts(demo_metadata, tmp_path_factory):
    """Per-batch manifests, thumbnails and slice errors, plus the extract errors."""
    results = tmp_path_factory.mktemp("finalize")
    work = results / "_work"
    found = {"results": results, "manifests": [], "thumbnails": [], "slice_errors": []}
    for batch in batches(demo_metadata["series"]):
        manifest = work / f"batch_{batch}.manifest.parquet"
        errors = work / f"batch_{batch}.errors.parquet"
        thumbs = work / f"batch_{batch}.thumbnails.parquet"
        args = ["--study", str(demo.STUDY), "--results", str(results)]
        args += ["--instances", str(demo_metadata["instances"])]
        args += ["--series", str(demo_metadata["series"]), "--batch", str(batch)]
        assert save_slices.main(args + ["--manifest", str(manifest), "--errors", str(errors)]) == 0
        args = ["--results", str(results), "--manifest", str(manifest), "--out", str(thumbs)]
        assert render_thumbnails.main(args) == 0
        found["manifests"].append(str(manifest))
        found["thumbnails"].append(str(thumbs))
        found["slice_errors"].append(str(errors))
    found["error_parts"] = [str(demo_metadata["errors"]), *found["slice_errors"]]
    return found


@pytest.fixture(scope="module")
def finalized(parts):
    slices = parts["results"] / "metadata" / "slices.parquet"
    errors = parts["results"] / "metadata" / "errors.parquet"
    args = ["--manifests", *parts["manifests"], "--thumbnails", *parts["thumbnails"]]
    args += ["--error-parts", *parts["error_parts"], "--slices", str(slices)]
    assert finalize_tables.main(args + ["--errors", str(errors)]) == 0
    return {"slices": pq.read_table(slices), "errors": pq.read_table(errors), **parts}


def read_rows(paths) -> list[dict]:
    return [row for p in paths for row in pq.read_table(p).to_pylist()]


class TestSlicesTable:
    def test_every_manifest_row_appears_once(self, parts):
        table = finalize_tables.slices_table(parts["manifests"], parts["thumbnails"])
        manifest = read_rows(parts["manifests"])
        assert len(manifest) >= 15
        assert sorted(table.column("png_path").to_pylist()) == sorted(
            r["png_path"] for r in manifest
        )

    def test_thumbnail_facts_are_joined_onto_each_slice(self, parts):
        table = finalize_tables.slices_table(parts["manifests"], parts["thumbnails"])
        thumbs = {r["png_path"]: r for r in read_rows(parts["thumbnails"])}
        for row in table.to_pylist():
            thumb = thumbs[row["png_path"]]
            assert row["window_source"] in ("header", "preset", "percentile", "colour")
            for column in ("window_source", "window_center_used", "png_height", "png_width"):
                assert row[column] == thumb[column], (column, row["png_path"])

    def test_slices_are_sorted_by_series_plane_and_index(self, parts):
        rows = finalize_tables.slices_table(parts["manifests"], parts["thumbnails"]).to_pylist()
        keys = [(r["series_key"], r["plane"], r["index"]) for r in rows]
        assert keys == sorted(keys)

    def test_table_has_the_slices_schema(self, parts):
        table = finalize_tables.slices_table(parts["manifests"], parts["thumbnails"])
        assert table.schema.equals(finalize_tables.SLICES_SCHEMA)
        assert "window_source" in table.column_names

    def test_slices_without_thumbnails_keep_null_render_facts(self, parts):
        table = finalize_tables.slices_table(parts["manifests"], [])
        assert table.num_rows == len(read_rows(parts["manifests"]))
        assert table.column("window_source").null_count == table.num_rows


class TestErrorsTable:
    def test_errors_include_extract_and_slice_stage_rows(self, parts):
        table = finalize_tables.errors_table(parts["error_parts"])
        assert {"extract", "save_slices"} <= set(table.column("stage").to_pylist())

    @pytest.mark.parametrize(
        ("path", "stage"),
        [pytest.param(p, "extract", id=f"extract-{p.name}") for p in NOT_INDEXED]
        + [pytest.param(p, "save_slices", id=f"slices-{p.name}") for p in UNDECODABLE],
    )
    def test_each_known_bad_file_has_a_row_of_its_stage(self, parts, path, stage):
        rows = finalize_tables.errors_table(parts["error_parts"]).to_pylist()
        assert any(r["path"] == relative(path) and r["stage"] == stage for r in rows)

    def test_errors_are_sorted_by_path_severity_reason_detail_and_stage(self, parts):
        rows = finalize_tables.errors_table(parts["error_parts"]).to_pylist()
        assert len(rows) > 2
        assert rows == sorted(rows, key=sort_key)

    def test_errors_keep_every_row_of_every_part(self, parts):
        rows = finalize_tables.errors_table(parts["error_parts"]).to_pylist()
        expected = read_rows(parts["error_parts"])
        assert sorted(rows, key=sort_key) == sorted(expected, key=sort_key)

    def test_part_order_does_not_change_the_table(self, parts):
        forward = finalize_tables.errors_table(parts["error_parts"])
        backward = finalize_tables.errors_table(list(reversed(parts["error_parts"])))
        assert forward.equals(backward)

    def test_no_parts_give_an_empty_table_with_the_errors_schema(self):
        table = finalize_tables.errors_table([])
        assert table.num_rows == 0
        assert table.schema.equals(table_schema.ERRORS_SCHEMA)


class TestMain:
    def test_main_writes_slices_and_errors_tables(self, finalized):
        assert finalized["slices"].num_rows == len(read_rows(finalized["manifests"]))
        assert finalized["errors"].num_rows == len(read_rows(finalized["error_parts"]))
        assert finalized["slices"].column("window_source").null_count == 0

    def test_tables_are_byte_identical_across_two_runs(self, finalized, tmp_path):
        paths = {name: tmp_path / f"{name}.parquet" for name in ("slices", "errors")}
        args = ["--manifests", *finalized["manifests"], "--thumbnails", *finalized["thumbnails"]]
        args += ["--error-parts", *finalized["error_parts"]]
        args += ["--slices", str(paths["slices"]), "--errors", str(paths["errors"])]
        assert finalize_tables.main(args) == 0
        metadata = finalized["results"] / "metadata"
        for name, path in paths.items():
            assert path.read_bytes() == (metadata / f"{name}.parquet").read_bytes(), name


class TestSeriesWithRatings:
    def test_ratings_become_qc_columns_of_their_series_and_others_stay_null(self, demo_metadata):
        series = pq.read_table(demo_metadata["series"])
        keys = series.column("series_key").to_pylist()
        rated = {
            keys[0]: {
                "rating": 3,
                "tags": ["motion"],
                "note": "n",
                "rater": "ann",
                "rated_at": "t",
            },
            keys[2]: {"rating": 1, "tags": [], "note": None, "rater": None, "rated_at": None},
        }
        table, unknown = finalize_tables.series_with_ratings(series, rated)
        assert unknown == []
        assert table.column_names == series.column_names + table_schema.QC_SCHEMA.names
        assert table.schema.field("qc_rating").type == pa.int64()
        assert table.select(series.column_names).equals(series)
        rows = {r["series_key"]: r for r in table.to_pylist()}
        assert rows[keys[0]]["qc_rating"] == 3
        assert rows[keys[0]]["qc_tags"] == ["motion"]
        assert (rows[keys[0]]["qc_note"], rows[keys[0]]["qc_rater"]) == ("n", "ann")
        assert rows[keys[2]]["qc_rating"] == 1 and rows[keys[2]]["qc_tags"] is None
        assert [r["qc_rating"] for r in rows.values()].count(None) == len(keys) - 2

    def test_ratings_of_unknown_series_are_returned_not_joined(self, demo_metadata):
        series = pq.read_table(demo_metadata["series"])
        rated = {"nosuchseries": {"rating": 2, "tags": []}}
        table, unknown = finalize_tables.series_with_ratings(series, rated)
        assert unknown == ["nosuchseries"]
        assert table.column("qc_rating").null_count == series.num_rows

    def test_no_ratings_give_null_qc_columns(self, demo_metadata):
        series = pq.read_table(demo_metadata["series"])
        table, _ = finalize_tables.series_with_ratings(series, {})
        for name in table_schema.QC_SCHEMA.names:
            assert table.column(name).null_count == series.num_rows


class TestMainWithRatings:
    def args(self, finalized, tmp_path, series_path) -> list[str]:
        args = ["--manifests", *finalized["manifests"], "--thumbnails", *finalized["thumbnails"]]
        args += ["--error-parts", *finalized["error_parts"]]
        args += ["--slices", str(tmp_path / "s.parquet"), "--errors", str(tmp_path / "e.parquet")]
        return args + ["--series", str(series_path), "--series-out", str(tmp_path / "series.pq")]

    def test_ratings_csv_is_joined_and_unknown_keys_are_logged(
        self, finalized, demo_metadata, tmp_path, caplog
    ):
        key = pq.read_table(demo_metadata["series"]).column("series_key")[0].as_py()
        csv = tmp_path / "ratings.csv"
        csv.write_text(f"{','.join(ratings.COLUMNS)}\n{key},2,wrap,,,\nnosuch,4,,,,\n")
        args = self.args(finalized, tmp_path, demo_metadata["series"])
        assert finalize_tables.main([*args, "--ratings", str(csv)]) == 0
        rows = pq.read_table(tmp_path / "series.pq").to_pylist()
        assert [
            (r["series_key"], r["qc_rating"], r["qc_tags"]) for r in rows if r["qc_rating"]
        ] == [(key, 2, ["wrap"])]
        assert "match no series of this run and are ignored: nosuch" in caplog.text

    def test_malformed_ratings_fail_with_one_line_naming_file_and_row(
        self, finalized, demo_metadata, tmp_path, caplog
    ):
        csv = tmp_path / "bad.csv"
        csv.write_text(f"{','.join(ratings.COLUMNS)}\nk1,7,,,,\n")
        args = self.args(finalized, tmp_path, demo_metadata["series"])
        assert finalize_tables.main([*args, "--ratings", str(csv)]) == 1
        assert f"ratings file {str(csv)!r}, row 2: rating must be" in caplog.text
        assert not (tmp_path / "series.pq").exists()

    def test_without_ratings_the_final_series_table_has_empty_qc_columns(
        self, finalized, demo_metadata, tmp_path
    ):
        args = self.args(finalized, tmp_path, demo_metadata["series"])
        assert finalize_tables.main([*args, "--ratings"]) == 0
        table = pq.read_table(tmp_path / "series.pq")
        assert table.column("qc_rating").null_count == table.num_rows


def touch(results, *paths) -> None:
    for path in paths:
        target = results / path
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(b"x")


def files_under(results) -> set[str]:
    return {p.relative_to(results).as_posix() for p in results.rglob("*") if p.is_file()}


class TestRemoveUnlisted:
    LISTED = {
        "slices/aaa/acquired_0.npy",
        "thumbnails/aaa/acquired_0.png",
        "contact_sheets/aaa.png",
    }
    UNLISTED = {
        "slices/aaa/acquired_1.npy",  # a slice no longer selected
        "slices/gone/acquired_0.npy",  # a series removed from the study
        "thumbnails/gone/acquired_0.png",
        "thumbnails/aaa/acquired_0.png.tmp",  # left by a killed job
        "contact_sheets/gone.png",
    }

    def test_only_listed_files_stay_and_emptied_series_folders_go(self, tmp_path):
        touch(tmp_path, *self.LISTED, *self.UNLISTED, "metadata/series.parquet", "index.html")
        removed = finalize_tables.remove_unlisted(tmp_path, set(self.LISTED))
        assert removed == sorted(self.UNLISTED)
        assert files_under(tmp_path) == self.LISTED | {"metadata/series.parquet", "index.html"}
        assert not (tmp_path / "slices" / "gone").exists()
        assert not (tmp_path / "thumbnails" / "gone").exists()
        assert (tmp_path / "contact_sheets").is_dir()

    def test_missing_output_folders_are_no_error(self, tmp_path):
        assert finalize_tables.remove_unlisted(tmp_path, set()) == []


class TestRemoveStaleWork:
    def test_caches_of_gone_series_and_work_of_gone_batches_are_removed(self, tmp_path):
        kept = {
            "_work/cache/save_slices/aaa.json",
            "_work/cache/make_contact_sheets/aaa.json",
            "_work/slices/batch_1.parquet",
            "_work/slices/batch_1.errors.parquet",
            "_work/thumbnails/batch_1.parquet",
            "_work/sheets/batch_1.parquet",
            "_work/sheets/batch_1/aaa.png",
            "_work/batches/batch_3.series.parquet",  # the merge's to remove, not this step's
        }
        stale = {
            "_work/cache/save_slices/gone.json",
            "_work/cache/render_thumbnails/gone.json",
            "_work/slices/batch_3.parquet",
            "_work/slices/batch_3.errors.parquet",
            "_work/thumbnails/batch_3.parquet",
            "_work/sheets/batch_3.parquet",
        }
        touch(tmp_path, *kept, *stale, "_work/sheets/batch_3/gone.png")
        removed = finalize_tables.remove_stale_work(tmp_path, {"aaa"}, [1])
        assert removed == len(stale) + 1  # the batch_3 report folder counts once
        assert files_under(tmp_path) == kept


class TestCleanup:
    """main with --results removes what the final tables and sheets do not list."""

    def test_unlisted_outputs_are_removed_and_listed_ones_kept(self, finalized, tmp_path):
        results = finalized["results"]
        slices = finalized["slices"].to_pylist()
        listed = {r["npy_path"] for r in slices} | {r["png_path"] for r in slices}
        sheets = tmp_path / "sheets.parquet"
        key = slices[0]["series_key"]
        table_schema.write_table(
            pa.table({"series_key": [key], "sheet_path": [f"contact_sheets/{key}.png"]}),
            str(sheets),
        )
        touch(results, f"contact_sheets/{key}.png", "contact_sheets/gone.png")
        touch(results, "slices/gone/acquired_0.npy", "thumbnails/gone/acquired_0.png")
        args = ["--manifests", *finalized["manifests"], "--thumbnails", *finalized["thumbnails"]]
        args += ["--error-parts", *finalized["error_parts"]]
        args += ["--slices", str(tmp_path / "s.parquet"), "--errors", str(tmp_path / "e.parquet")]
        assert (
            finalize_tables.main([*args, "--results", str(results), "--sheets", str(sheets)]) == 0
        )
        outputs = {
            p for p in files_under(results) if p.split("/")[0] in finalize_tables.OUTPUT_FOLDERS
        }
        assert outputs == listed | {f"contact_sheets/{key}.png"}
        assert not (results / "slices" / "gone").exists()
