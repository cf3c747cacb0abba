"""Tests of segmentation.py on real SEG objects (highdicom's test files) and their CT."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import imageio.v3 as iio
import numpy as np
import pyarrow as pa
import pyarrow.compute as pc
import pyarrow.parquet as pq
import pydicom
import pytest

import merge_metadata
import render_thumbnails
import save_slices
import segmentation
import steps
import table_schema

FIXTURE = Path(__file__).parent / "fixtures" / "seg_sm" / "study"
SEG_BINARY = FIXTURE / "seg" / "seg_image_ct_binary.dcm"
"""BINARY, one segment ("first segment"), 3 frames over CT2's last 3 slices."""
SEG_OVERLAP = FIXTURE / "seg" / "seg_image_ct_binary_overlap.dcm"
"""BINARY, 2 segments over 4 CT slices, segment 1 in frames 0–3 and segment 2 in 4–7."""
SEG_FRACTIONAL = FIXTURE / "seg" / "seg_image_ct_true_fractional.dcm"
"""FRACTIONAL with MaximumFractionalValue 255; stored values up to 128."""
SEG_TILED = FIXTURE / "seg" / "seg_image_sm_dots_tiled_full.dcm"
"""BINARY TILED_FULL, no per-frame groups: 50 segments × 25 tiles."""
CT_SLICE_17136 = FIXTURE / "ct" / "17136"


class TestCielabToSrgb:
    @staticmethod
    def encode(lightness: float, a: float, b: float) -> list[int]:
        """DICOM's 0..65535 encoding of a CIELab colour (PS3.3 C.10.7.1.1)."""
        return [
            round(lightness * 65535 / 100),
            round((a + 128) * 65535 / 255),
            round((b + 128) * 65535 / 255),
        ]

    @pytest.mark.parametrize(
        ("lab", "rgb"),
        [
            pytest.param((100, 0, 0), (255, 255, 255), id="white"),
            pytest.param((0, 0, 0), (0, 0, 0), id="black"),
            pytest.param((53.2408, 80.0925, 67.2032), (255, 0, 0), id="red"),
            pytest.param((87.7347, -86.1827, 83.1793), (0, 255, 0), id="green"),
            pytest.param((32.2970, 79.1875, -107.8602), (0, 0, 255), id="blue"),
        ],
    )
    def test_known_colours_convert_to_their_srgb_values(self, lab, rgb):
        got = segmentation.cielab_to_srgb(self.encode(*lab))
        assert max(abs(g - w) for g, w in zip(got, rgb, strict=True)) <= 1

    def test_wrong_number_of_values_names_the_argument(self):
        with pytest.raises(ValueError, match="'encoded' must hold 3 values, got 2"):
            segmentation.cielab_to_srgb([1, 2])


class TestSegments:
    def test_labels_come_from_segment_sequence_and_colours_from_the_palette(self):
        found = segmentation.segments(pydicom.dcmread(SEG_OVERLAP))
        assert [(s.number, s.label) for s in found.values()] == [
            (1, "first segment"),
            (2, "second segment"),
        ]
        assert found[1].rgb == segmentation.PALETTE[0]
        assert found[2].rgb == segmentation.PALETTE[1]
        assert found[1].rgb != found[2].rgb

    def test_recommended_cielab_colour_wins_over_the_palette(self):
        ds = pydicom.dcmread(SEG_BINARY)
        ds.SegmentSequence[0].RecommendedDisplayCIELabValue = TestCielabToSrgb.encode(
            53.2408, 80.0925, 67.2032
        )
        rgb = segmentation.segments(ds)[1].rgb
        assert rgb[0] >= 254 and rgb[1] <= 1 and rgb[2] <= 1


def test_a_hundred_segments_without_colours_get_a_hundred_distinct_colours():
    colours = [segmentation.palette_colour(n) for n in range(1, 101)]
    assert colours[:12] == list(segmentation.PALETTE)
    assert len(set(colours)) == 100
    assert segmentation.palette_colour(40) == segmentation.palette_colour(40)  # fixed


class TestFrameSegment:
    def test_per_frame_referenced_segment_number_is_read_frame_by_frame(self):
        ds = pydicom.dcmread(SEG_OVERLAP)
        assert [segmentation.frame_segment(ds, f) for f in range(8)] == [1] * 4 + [2] * 4

    def test_tiled_full_seg_without_per_frame_groups_counts_planes_of_tiles(self):
        ds = pydicom.dcmread(SEG_TILED, stop_before_pixels=True)
        assert "PerFrameFunctionalGroupsSequence" not in ds
        assert segmentation.frame_segment(ds, 0) == 1
        assert segmentation.frame_segment(ds, 24) == 1
        assert segmentation.frame_segment(ds, 25) == 2
        assert segmentation.frame_segment(ds, 1249) == 50


class TestFrameSource:
    def test_source_is_the_ct_slice_the_frame_was_drawn_on(self):
        ds = pydicom.dcmread(SEG_BINARY)
        ct = pydicom.dcmread(CT_SLICE_17136)
        assert segmentation.frame_source(ds, 0) == (ct.SOPInstanceUID, 0)

    def test_frame_without_derivation_has_no_source(self):
        ds = pydicom.dcmread(SEG_TILED, stop_before_pixels=True)
        assert segmentation.frame_source(ds, 0) == (None, None)


class TestMaskValues:
    def test_binary_frames_become_uint8_zero_and_one(self):
        ds = pydicom.dcmread(SEG_BINARY)
        mask = segmentation.mask_values(ds.pixel_array[0], ds)
        assert mask.dtype == np.uint8
        assert set(np.unique(mask)) == {0, 1}

    def test_fractional_frames_are_divided_by_maximum_fractional_value(self):
        ds = pydicom.dcmread(SEG_FRACTIONAL)
        stored = ds.pixel_array[0]
        mask = segmentation.mask_values(stored, ds)
        assert mask.dtype == np.float32
        assert float(mask.max()) == pytest.approx(float(stored.max()) / 255)
        assert float(mask.min()) >= 0.0 and float(mask.max()) <= 1.0


class TestDrawMask:
    def test_on_black_mask_pixels_take_the_colour_and_the_rest_stays_black(self):
        mask = np.zeros((4, 4), np.float32)
        mask[1:3, 1:3] = 1.0
        image = segmentation.draw_mask(mask, (230, 25, 75))
        assert image[1, 1].tolist() == [230, 25, 75]
        assert image[0, 0].tolist() == [0, 0, 0]

    def test_fractional_value_scales_the_colour(self):
        image = segmentation.draw_mask(np.full((2, 2), 0.5, np.float32), (200, 100, 0))
        assert image[0, 0].tolist() == [100, 50, 0]

    def test_over_a_background_pixels_outside_the_mask_keep_the_background(self):
        background = np.arange(64, dtype=np.uint8).reshape(8, 8) * 3
        mask = np.zeros((8, 8), np.float32)
        mask[2:6, 2:6] = 1.0
        image = segmentation.draw_mask(mask, (0, 255, 0), background)
        outside = mask == 0
        assert np.array_equal(image[outside], np.repeat(background[outside][:, None], 3, axis=1))
        assert image[2, 2].tolist() == [0, 255, 0]  # the outline is opaque
        inside = image[3, 3].astype(int)  # blended: greener than the background
        assert inside[1] > background[3, 3] and inside[0] < background[3, 3]

    def test_caller_arrays_are_not_modified(self):
        background = np.full((4, 4), 100, np.uint8)
        mask = np.ones((4, 4), np.float32)
        segmentation.draw_mask(mask, (255, 0, 0), background)
        assert (background == 100).all() and (mask == 1).all()

    def test_background_of_another_shape_is_refused(self):
        with pytest.raises(ValueError, match="'background' must have the mask's shape"):
            segmentation.draw_mask(np.zeros((4, 4)), (1, 2, 3), np.zeros((5, 4), np.uint8))


class TestReferencedUids:
    def test_a_seg_names_its_source_series_and_instances(self):
        ds = pydicom.dcmread(SEG_BINARY, stop_before_pixels=True)
        ct = pydicom.dcmread(CT_SLICE_17136, stop_before_pixels=True)
        series, instances = segmentation.referenced_uids(json.dumps(ds.to_json_dict()))
        assert series == {ct.SeriesInstanceUID}
        assert ct.SOPInstanceUID in instances

    def test_no_header_names_nothing(self):
        assert segmentation.referenced_uids(None) == (set(), set())


@pytest.fixture(scope="module")
def drawn(tmp_path_factory):
    """The slice and thumbnail steps run on a study holding only SEG_OVERLAP."""
    base = tmp_path_factory.mktemp("seg_alone")
    study = base / "study"
    study.mkdir()
    shutil.copy(SEG_OVERLAP, study / SEG_OVERLAP.name)
    paths = steps.index_study(study, base / "work")
    results = base / "results"
    manifest = base / "manifest.parquet"
    args = ["--study", str(study), "--results", str(results), "--batch", "0"]
    args += ["--instances", str(paths["batches"] / "batch_0.instances.parquet")]
    args += ["--series", str(paths["batches"] / "batch_0.series.parquet")]
    args += ["--manifest", str(manifest), "--errors", str(base / "errors.parquet")]
    assert save_slices.main(args) == 0
    thumbs = ["--results", str(results), "--manifest", str(manifest)]
    assert render_thumbnails.main(thumbs + ["--out", str(base / "thumbs.parquet")]) == 0
    return results, pq.read_table(manifest).to_pylist()


class TestSegmentationSteps:
    """The slice and thumbnail steps on a study holding a SEG without its source images."""

    def test_without_its_source_a_mask_is_drawn_in_its_colour_on_black(self, drawn):
        results, rows = drawn
        ds = pydicom.dcmread(SEG_OVERLAP)
        for row in rows:
            assert row["source_npy_path"] is None
            mask = np.load(results / row["npy_path"])
            assert np.array_equal(mask, ds.pixel_array[row["frame"]])
            png = iio.imread(results / row["png_path"])
            scale = png.shape[0] // mask.shape[0]
            ys, xs = np.nonzero(mask)
            inside = png[ys[0] * scale + scale // 2, xs[0] * scale + scale // 2]
            assert tuple(inside) == segmentation.PALETTE[row["segment_number"] - 1]
            assert tuple(png[0, 0]) == (0, 0, 0)  # the corner lies outside every mask

    def test_manifest_names_segment_and_source_even_when_the_source_is_absent(self, drawn):
        _, rows = drawn
        assert {r["segment_label"] for r in rows} == {"first segment", "second segment"}
        assert all(r["source_sop_instance_uid"] for r in rows)
        assert all(r["value_units"] == "mask" for r in rows)


def test_a_segment_label_repeating_the_patient_id_is_left_out(tmp_path):
    study = tmp_path / "study"
    study.mkdir()
    ds = pydicom.dcmread(SEG_BINARY)
    ds.SegmentSequence[0].SegmentLabel = str(ds.PatientID)  # "77654033"
    ds.save_as(study / "seg.dcm")
    paths = steps.index_study(study, tmp_path / "work")
    manifest = tmp_path / "manifest.parquet"
    args = ["--study", str(study), "--results", str(tmp_path / "results"), "--batch", "0"]
    args += ["--instances", str(paths["batches"] / "batch_0.instances.parquet")]
    args += ["--series", str(paths["batches"] / "batch_0.series.parquet")]
    args += ["--manifest", str(manifest), "--errors", str(tmp_path / "errors.parquet")]
    assert save_slices.main(args) == 0
    rows = pq.read_table(manifest).to_pylist()
    assert len(rows) == 3 and {r["segment_number"] for r in rows} == {1}
    assert {r["segment_label"] for r in rows} == {None}


@pytest.fixture(scope="module")
def merged(tmp_path_factory):
    """The CT and its binary SEG indexed: (light instances, series, header_json by path)."""
    base = tmp_path_factory.mktemp("merge_sources")
    study = base / "study"
    shutil.copytree(FIXTURE / "ct", study / "ct")
    shutil.copy(SEG_BINARY, study / SEG_BINARY.name)
    paths = steps.index_study(study, base / "work")
    instances = pq.read_table(paths["instances"])
    headers = dict(
        zip(*(instances.column(c).to_pylist() for c in ("path", "header_json")), strict=True)
    )
    return instances.drop_columns(["header_json"]), pq.read_table(paths["series"]), headers


class TestMergeSources:
    """merge_metadata.add_segmentation_sources on the CT and its binary SEG."""

    @staticmethod
    def tables(series, light, keys_by_batch):
        """Work lists as batch_tables makes them, for the given split of series keys."""
        out = {}
        columns = light.select(table_schema.BATCH_INSTANCE_COLUMNS[:6])
        columns = columns.append_column("header_json", pa.nulls(light.num_rows, pa.string()))
        for field in merge_metadata.FRAME_GROUP_FIELDS:
            columns = columns.append_column(field, pa.nulls(light.num_rows, field.type))
        for batch, keys in keys_by_batch.items():
            value_set = pa.array(keys)
            batch_series = series.filter(pc.is_in(series.column("series_key"), value_set))
            batch_rows = columns.filter(pc.is_in(columns.column("series_key"), value_set))
            out[batch] = (batch_series, batch_rows)
        return out

    def test_seg_batch_gets_its_ct_sources_and_other_batches_are_untouched(self, merged):
        light, series, headers = merged
        keys, modalities = (series.column(c).to_pylist() for c in ("series_key", "Modality"))
        modality = dict(zip(keys, modalities, strict=True))
        seg_key = next(k for k, m in modality.items() if m == "SEG")
        ct_key = next(k for k, m in modality.items() if m == "CT")
        tables = self.tables(series, light, {0: [ct_key], 1: [seg_key]})
        seg_headers = {p: h for p, h in headers.items() if p == SEG_BINARY.name}
        out = merge_metadata.add_segmentation_sources(tables, light, {}, seg_headers)
        assert out[0] is tables[0]  # no SEG: the same work lists, the same bytes
        rows = out[1][1].to_pylist()
        sources = sorted(r["path"] for r in rows if r["seg_source"])
        assert sources == ["ct/17106", "ct/17136", "ct/17166", "ct/17196"]
        assert all(r["series_key"] == seg_key for r in rows)
        assert {r["SOPInstanceUID"] for r in rows if r["seg_source"]} >= {
            pydicom.dcmread(CT_SLICE_17136).SOPInstanceUID
        }

    def test_every_stack_of_a_seg_series_gets_the_sources(self, merged):
        """A SEG split into stacks (one per segment) keeps its sources in every stack."""
        light, series, headers = merged
        rows = series.to_pylist()
        seg = next(r for r in rows if r["Modality"] == "SEG")
        split = [dict(seg, series_key=seg["series_key"] + f"-{n}") for n in (1, 2)]
        series2 = pa.Table.from_pylist(rows + split, schema=series.schema)
        tables = self.tables(
            series2, light, {1: [split[0]["series_key"]], 2: [split[1]["series_key"]]}
        )
        seg_headers = {p: h for p, h in headers.items() if p == SEG_BINARY.name}
        out = merge_metadata.add_segmentation_sources(tables, light, {}, seg_headers)
        for batch in (1, 2):
            assert sum(bool(r["seg_source"]) for r in out[batch][1].to_pylist()) == 4
