"""Tests for scripts/ratings.py: the ratings CSV the review page downloads, read back."""

from __future__ import annotations

import pytest

import ratings

HEADER = ",".join(ratings.COLUMNS)


def write(tmp_path, text: str, name: str = "ratings.csv"):
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


class TestReadRatings:
    def test_a_page_download_reads_back_with_typed_values(self, tmp_path):
        path = write(
            tmp_path,
            f"{HEADER}\n"
            'abc123def456,3,motion;noise,"a note, with a comma",ann,2026-11-29T10:00:00.000Z\n'
            "0123456789ab-2,1,,,,\n",
        )
        assert ratings.read_ratings(path) == {
            "abc123def456": {
                "series_key": "abc123def456",
                "rating": 3,
                "tags": ["motion", "noise"],
                "note": "a note, with a comma",
                "rater": "ann",
                "rated_at": "2026-11-29T10:00:00.000Z",
            },
            "0123456789ab-2": {
                "series_key": "0123456789ab-2",
                "rating": 1,
                "tags": [],
                "note": None,
                "rater": None,
                "rated_at": None,
            },
        }

    def test_only_series_key_and_rating_columns_are_required(self, tmp_path):
        path = write(tmp_path, "rating,series_key\n4,k1\n")
        assert ratings.read_ratings(path)["k1"]["rating"] == 4

    def test_a_spreadsheet_byte_order_mark_and_crlf_are_accepted(self, tmp_path):
        path = tmp_path / "excel.csv"
        path.write_bytes(f"\ufeff{HEADER}\r\nk1,2,wrap,,,\r\n".encode())
        assert ratings.read_ratings(path)["k1"]["tags"] == ["wrap"]

    def test_a_later_row_of_the_same_series_wins(self, tmp_path):
        path = write(tmp_path, f"{HEADER}\nk1,1,,,,\nk1,4,,,,\n")
        assert ratings.read_ratings(path)["k1"]["rating"] == 4

    def test_empty_rating_with_a_note_keeps_the_note(self, tmp_path):
        path = write(tmp_path, f"{HEADER}\nk1,,,look again,,\n")
        assert ratings.read_ratings(path)["k1"] == {
            "series_key": "k1",
            "rating": None,
            "tags": [],
            "note": "look again",
            "rater": None,
            "rated_at": None,
        }

    def test_rows_without_rating_tags_or_note_and_blank_lines_are_skipped(self, tmp_path):
        path = write(tmp_path, f"{HEADER}\nk1,,,,ann,\n\n,,,,,\n")
        assert ratings.read_ratings(path) == {}

    @pytest.mark.parametrize(
        ("text", "row", "problem"),
        [
            pytest.param("", 1, "no header", id="empty-file"),
            pytest.param("key,score\nk1,3\n", 1, "header lacks series_key, rating", id="header"),
            pytest.param(f"{HEADER}\nk1,3,,,,\nk2,5,,,,\n", 3, "got '5'", id="rating-5"),
            pytest.param(f"{HEADER}\nk1,good,,,,\n", 2, "got 'good'", id="rating-word"),
            pytest.param(f"{HEADER}\nk1,0,,,,\n", 2, "got '0'", id="rating-0"),
            pytest.param(f"{HEADER}\nk1,2.5,,,,\n", 2, "got '2.5'", id="rating-float"),
            pytest.param(f"{HEADER}\n,3,,,,\n", 2, "series_key is empty", id="no-key"),
            pytest.param(f"{HEADER}\nk1,3,,,,,extra\n", 2, "more cells", id="extra-cell"),
            pytest.param(f"{HEADER}\nk1,3,bad<tag>,,,\n", 2, "bad<tag>", id="bad-tag"),
        ],
    )
    def test_a_malformed_file_raises_one_line_naming_file_and_row(
        self, tmp_path, text, row, problem
    ):
        path = write(tmp_path, text)
        with pytest.raises(ratings.RatingsError) as info:
            ratings.read_ratings(path)
        message = str(info.value)
        assert "\n" not in message
        assert message.startswith(f"ratings file {str(path)!r}, row {row}: "), message
        assert problem in message

    def test_a_missing_file_names_the_file(self, tmp_path):
        with pytest.raises(ratings.RatingsError, match="gone.csv"):
            ratings.read_ratings(tmp_path / "gone.csv")

    def test_a_file_that_is_not_utf8_names_the_file(self, tmp_path):
        path = tmp_path / "latin1.csv"
        path.write_bytes(f"{HEADER}\nk1,3,,caf\xe9,,\n".encode("latin-1"))
        with pytest.raises(ratings.RatingsError, match="latin1.csv.*not UTF-8"):
            ratings.read_ratings(path)


class TestParseTags:
    def test_tags_are_split_stripped_and_deduplicated_in_order(self):
        assert ratings.parse_tags(" motion ; ghosting;;motion ") == ["motion", "ghosting"]

    def test_every_tag_the_page_offers_is_valid(self):
        cell = ratings.TAG_SEPARATOR.join(ratings.ARTIFACT_TAGS)
        assert ratings.parse_tags(cell) == list(ratings.ARTIFACT_TAGS)


class TestReadAll:
    def test_a_later_file_wins_over_an_earlier_one(self, tmp_path):
        first = write(tmp_path, f"{HEADER}\nk1,1,,,,\nk2,2,,,,\n", "a.csv")
        second = write(tmp_path, f"{HEADER}\nk1,4,,,,\n", "b.csv")
        merged = ratings.read_all([first, second])
        assert {k: v["rating"] for k, v in merged.items()} == {"k1": 4, "k2": 2}
