"""One instance, many slices: a real Philips enhanced object holding two volumes is split
into two stacks by its dimensions, and a real Siemens mosaic into its 25 slices, each
agreeing with dcm2niix (slice count, spacing, first slice position, voxel values).

Fixtures: ``fixtures/enhanced/IM_0027_fMAP.dcm`` (dcm_qa_enh) and the mosaic in
``fixtures/vendor-mr/Siemens_mosaic_DWI`` (dcm_qa_decubitus); see their PROVENANCE.md.
"""

from __future__ import annotations

import base64
import json
import shutil
import warnings
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pydicom
import pytest
from test_enhanced_multiframe import item
from test_volumes import DCM2NIIX, dcm2niix_volumes

import demo
import merge_metadata
import multiframe
import save_slices
import table_schema
from steps import index_study

FIXTURES = demo.ROOT / "tests" / "fixtures"
ENHANCED = FIXTURES / "enhanced" / "IM_0027_fMAP.dcm"
MOSAIC = next((FIXTURES / "vendor-mr" / "Siemens_mosaic_DWI").glob("*.dcm"))
SHARED_MOSAICS = demo.ROOT.parent / "shared" / "data" / "vendor-mr" / "Siemens_mosaic_DWI"

needs_dcm2niix = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed")


def nibabel_mosaic(ds):
    """nibabel's own reading of a mosaic (an independent implementation)."""
    from nibabel.nicom import dicomwrappers

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return dicomwrappers.wrapper_from_data(ds)


class TestFrameKeys:
    def test_the_field_map_object_holds_two_volumes_of_32_frames(self):
        ds = pydicom.dcmread(ENHANCED, stop_before_pixels=True)
        groups = multiframe.group_frames(multiframe.frame_keys(ds))
        assert [len(frames) for _, frames in groups] == [32, 32]
        # the echo time of each volume is part of its key: 1.52 ms magnitude, then the map
        assert [key[-2] for key, _ in groups] == [1.52, 0.0]
        # every frame is in exactly one group
        assert sorted(f for _, frames in groups for f in frames) == list(range(64))

    def test_spatial_dimensions_do_not_split(self):
        ds = pydicom.dcmread(ENHANCED, stop_before_pixels=True)
        # Stack ID, In-Stack Position Number and two private dimensions: the position is out
        assert multiframe._volume_dimensions(ds) == [0, 2, 3]

    def test_a_header_without_functional_groups_has_no_keys(self):
        assert multiframe.frame_keys(pydicom.dcmread(MOSAIC, stop_before_pixels=True)) is None

    @pytest.mark.parametrize(
        ("values", "expected"),
        [([(2,), (10,), (1,)], [(1,), (2,), (10,)]), ([(None,), (3.5,)], [(None,), (3.5,)])],
    )
    def test_groups_come_in_numeric_order(self, values, expected):
        assert [key for key, _ in multiframe.group_frames(values)] == expected


class TestMosaicLayout:
    def test_tiles_and_first_position_agree_with_nibabel(self):
        ds = pydicom.dcmread(MOSAIC)
        layout = multiframe.mosaic_layout(ds)
        wrapper = nibabel_mosaic(ds)
        assert (layout.n_tiles, layout.tile_rows, layout.tile_columns) == (25, 128, 128)
        np.testing.assert_allclose(layout.positions[0], wrapper.image_position, atol=1e-6)
        steps = np.diff(layout.positions, axis=0)
        np.testing.assert_allclose(steps, np.tile(5.2 * wrapper.slice_normal, (24, 1)), atol=1e-5)

    def test_tiles_are_nibabels_slices(self):
        ds = pydicom.dcmread(MOSAIC)
        theirs = nibabel_mosaic(ds).get_data()
        image = ds.pixel_array
        for k in (0, 12, 24):
            assert np.array_equal(multiframe.cut_tile(image, 25, k), theirs[..., k])

    def test_a_mosaic_without_its_csa_header_is_one_image(self):
        ds = pydicom.dcmread(MOSAIC, stop_before_pixels=True)
        del ds[0x00291010]
        assert multiframe.mosaic_layout(ds) is None

    def test_the_few_elements_the_merge_keeps_give_the_whole_headers_layout(self, mosaic_run):
        rows = pq.read_table(mosaic_run["metadata"]["instances"]).to_pylist()
        (row,) = [r for r in rows if r["path"].startswith("mosaic/")]
        header = json.loads(row["header_json"])
        few, whole = multiframe.mosaic_dataset(header), pydicom.Dataset.from_json(header)
        assert len(few) < len(whole) / 4
        ours, reference = multiframe.mosaic_layout(few), multiframe.mosaic_layout(whole)
        assert (ours.n_tiles, ours.tile_rows, ours.tile_columns) == (25, 128, 128)
        assert (ours.n_tiles, ours.tile_rows, ours.tile_columns) == (
            reference.n_tiles,
            reference.tile_rows,
            reference.tile_columns,
        )
        np.testing.assert_array_equal(ours.positions, reference.positions)

    def test_the_extract_shard_holds_the_layout_the_header_gives(self, mosaic_run):
        (part,) = sorted(mosaic_run["metadata"]["root"].glob("shard_*.instances.parquet"))
        rows = {r["path"].split("/")[0]: r for r in pq.read_table(part).to_pylist()}
        reference = multiframe.mosaic_layout(pydicom.dcmread(MOSAIC, stop_before_pixels=True))
        mosaic = rows["mosaic"]
        assert (mosaic["mosaic_tiles"], mosaic["mosaic_tile_rows"]) == (25, 128)
        assert mosaic["mosaic_tile_columns"] == 128 and mosaic["Rows"] == 640
        np.testing.assert_array_equal(mosaic["mosaic_positions"], reference.positions)
        assert [rows["enhanced"][f.name] for f in table_schema.MOSAIC_FIELDS] == [None] * 4

    def test_the_merge_gives_the_same_bytes_when_it_lays_mosaics_out_itself(
        self, mosaic_run, tmp_path
    ):
        """The shards' layouts (worked out in parallel) against the merge's own path from
        each mosaic's header: instances, series, errors and the batches' series lists are the
        same bytes; the instance work lists differ only in the mosaics' header_json, which
        the fast path leaves out (the batch steps read headers of multi-frame objects only).
        """
        root = mosaic_run["metadata"]["root"]
        blanked = []
        for part in sorted(root.glob("shard_*.instances.parquet")):
            table = pq.read_table(part)
            for field in table_schema.MOSAIC_FIELDS:
                index = table.schema.get_field_index(field.name)
                table = table.set_column(index, field, pa.nulls(table.num_rows, field.type))
            blanked.append(tmp_path / part.name)
            pq.write_table(table, blanked[-1])
        errors = sorted(root.glob("shard_*.errors.parquet"))
        out = {}
        for name, parts in (
            ("shards", sorted(root.glob("shard_*.instances.parquet"))),
            ("header", blanked),
        ):
            folder = tmp_path / name
            args = ["--instance-parts", *map(str, parts), "--error-parts", *map(str, errors)]
            args += [
                "--instances",
                str(folder / "i.parquet"),
                "--series",
                str(folder / "s.parquet"),
            ]
            args += ["--errors", str(folder / "e.parquet"), "--batch-dir", str(folder / "b")]
            assert merge_metadata.main(args) == 0
            out[name] = {p.relative_to(folder): p for p in folder.rglob("*.parquet")}
        assert sorted(out["shards"]) == sorted(out["header"]) and len(out["shards"]) >= 5
        n_mosaics = 0
        for path, ours in out["shards"].items():
            theirs = out["header"][path]
            if not path.name.endswith(".instances.parquet") or path.parent.name != "b":
                assert ours.read_bytes() == theirs.read_bytes(), path
                continue
            ours, theirs = pq.read_table(ours).to_pylist(), pq.read_table(theirs).to_pylist()
            mosaics = [i for i, row in enumerate(theirs) if row["mosaic_tiles"]]
            assert [i for i, row in enumerate(ours) if row["mosaic_tiles"]] == mosaics
            for i in mosaics:
                assert ours[i]["header_json"] is None and theirs[i]["header_json"]
                theirs[i]["header_json"] = None
            assert ours == theirs, path
            n_mosaics += len(mosaics)
        assert n_mosaics == 1  # the shipped mosaic, in its batch's work list
        instances = pq.read_table(tmp_path / "shards" / "i.parquet")
        assert not {f.name for f in table_schema.MOSAIC_FIELDS} & set(instances.schema.names)

    def test_the_csa_image_header_is_kept_in_header_json(self, mosaic_run):
        rows = pq.read_table(mosaic_run["metadata"]["instances"]).to_pylist()
        (row,) = [r for r in rows if r["path"].startswith("mosaic/")]
        csa = json.loads(row["header_json"])["00291010"]
        assert csa["vr"] == "OB" and base64.b64decode(csa["InlineBinary"])[:4] == b"SV10"


def run_batches(study: Path, metadata: dict, results: Path) -> dict:
    """save_slices.main on every batch's work lists, with NIfTI volumes and 3 slices."""
    out = {"volumes": [], "manifest": [], "errors": []}
    for series in sorted(metadata["batches"].glob("batch_*.series.parquet")):
        batch = series.name.split(".")[0].removeprefix("batch_")
        parts = {name: results / "parts" / f"{name}_{batch}.parquet" for name in out}
        argv = ["--study", str(study), "--results", str(results), "--batch", batch]
        argv += ["--instances", str(series.with_name(f"batch_{batch}.instances.parquet"))]
        argv += ["--series", str(series), "--count", "3", "--manifest", str(parts["manifest"])]
        argv += ["--errors", str(parts["errors"]), "--volumes", str(parts["volumes"])]
        assert save_slices.main([*argv, "--volumes-format", "nifti"]) == 0
        for name in out:
            out[name] += pq.read_table(parts[name]).to_pylist()
    return out


@pytest.fixture(scope="module")
def mosaic_run(tmp_path_factory) -> dict:
    """The shipped mosaic and the enhanced field map, indexed and saved with volumes."""
    root = tmp_path_factory.mktemp("multiframe")
    study = root / "study"
    (study / "mosaic").mkdir(parents=True)
    (study / "enhanced").mkdir()
    shutil.copy(MOSAIC, study / "mosaic")
    shutil.copy(ENHANCED, study / "enhanced")
    metadata = index_study(study, root / "metadata")
    out = run_batches(study, metadata, root / "results")
    series = pq.read_table(metadata["series"]).to_pylist()
    return {
        **out,
        "study": study,
        "metadata": metadata,
        "results": root / "results",
        "series": {s["SeriesDescription"]: s for s in series},
        "all_series": series,
    }


class TestSplitStacks:
    def test_the_enhanced_object_is_two_volumes(self, mosaic_run):
        stacks = [s for s in mosaic_run["all_series"] if s["SeriesDescription"] == "B0 NS"]
        assert [(s["stack"], s["n_stacks"], s["n_frames"]) for s in stacks] == [
            (1, 2, 32),
            (2, 2, 32),
        ]
        assert all(s["is_volume"] and s["slice_spacing"] == 4.0 for s in stacks)
        assert {s["n_instances"] for s in stacks} == {1}

    def test_the_instance_row_names_its_first_stack(self, mosaic_run):
        rows = pq.read_table(mosaic_run["metadata"]["instances"]).to_pylist()
        (enhanced,) = [r for r in rows if r["path"].startswith("enhanced/")]
        assert enhanced["series_key"].endswith("-1")

    def test_each_stack_saves_only_its_own_frames(self, mosaic_run):
        by_key: dict[str, set] = {}
        for r in mosaic_run["manifest"]:
            if r["source_path"].startswith("enhanced/"):
                by_key.setdefault(r["series_key"], set()).add(r["frame"])
        ds = pydicom.dcmread(ENHANCED, stop_before_pixels=True)
        groups = multiframe.group_frames(multiframe.frame_keys(ds))
        assert len(by_key) == 2
        for key, (_, frames) in zip(sorted(by_key), groups, strict=True):
            assert len(by_key[key]) == 3 and by_key[key] <= set(frames)

    def test_the_mosaic_is_a_volume_of_25_slices(self, mosaic_run):
        s = mosaic_run["series"]["ep2d_diff_mddw_20_p2"]
        assert (s["n_instances"], s["n_frames"], s["Rows"], s["Columns"]) == (1, 25, 128, 128)
        assert s["is_volume"] and s["slice_spacing"] == pytest.approx(5.2)
        saved = [r for r in mosaic_run["manifest"] if r["series_key"] == s["series_key"]]
        assert [(r["rows"], r["columns"], r["n_in_plane"]) for r in saved] == [(128, 128, 25)] * 3
        positions = [r["position_mm"] for r in saved]
        assert positions == sorted(positions) and len(set(positions)) == 3

    def test_a_saved_tile_is_the_mosaic_tile_at_that_position(self, mosaic_run):
        s = mosaic_run["series"]["ep2d_diff_mddw_20_p2"]
        (middle,) = [
            r
            for r in mosaic_run["manifest"]
            if r["series_key"] == s["series_key"] and r["index"] == 12
        ]
        image = pydicom.dcmread(MOSAIC).pixel_array
        saved = np.load(mosaic_run["results"] / middle["npy_path"])
        assert np.array_equal(saved, multiframe.cut_tile(image, 25, 12).astype(np.float32))


def canonical(path: Path) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.load(path))
    return image.affine, image.get_fdata()


@needs_dcm2niix
class TestAgreesWithDcm2niix:
    def test_the_mosaic_volume(self, mosaic_run, tmp_path):
        ((theirs_affine, theirs),) = dcm2niix_volumes(MOSAIC, tmp_path / "dcm2niix")
        key = mosaic_run["series"]["ep2d_diff_mddw_20_p2"]["series_key"]
        (row,) = [r for r in mosaic_run["volumes"] if r["series_key"] == key]
        affine, data = canonical(mosaic_run["results"] / row["path"])
        assert data.shape == theirs.shape == (128, 128, 25)
        np.testing.assert_allclose(affine, theirs_affine, atol=1e-3)  # spacing, first slice
        assert np.array_equal(data, theirs)

    def test_both_field_map_volumes(self, mosaic_run, tmp_path):
        reference = dcm2niix_volumes(ENHANCED, tmp_path / "dcm2niix")
        assert len(reference) == 2
        keys = sorted(
            s["series_key"] for s in mosaic_run["all_series"] if s["SeriesDescription"] == "B0 NS"
        )
        for key, (theirs_affine, theirs) in zip(keys, reference, strict=True):
            (row,) = [r for r in mosaic_run["volumes"] if r["series_key"] == key]
            affine, data = canonical(mosaic_run["results"] / row["path"])
            np.testing.assert_allclose(affine, theirs_affine, atol=1e-3)
            np.testing.assert_allclose(data, theirs, rtol=1e-5, atol=1e-3)


@pytest.mark.slow
@needs_dcm2niix
def test_every_mosaic_of_the_diffusion_series_is_one_of_dcm2niix_volumes(tmp_path):
    """13 mosaics (b0 and 12 directions): 13 stacks, in acquisition order, each equal to
    the matching volume of dcm2niix's 4-D file."""
    if not SHARED_MOSAICS.is_dir():
        pytest.skip("../shared/data/vendor-mr is not beside the project")
    metadata = index_study(SHARED_MOSAICS, tmp_path / "metadata")
    out = run_batches(SHARED_MOSAICS, metadata, tmp_path / "results")
    series = sorted(pq.read_table(metadata["series"]).to_pylist(), key=lambda s: s["stack"])
    assert [s["n_frames"] for s in series] == [25] * 13
    reference = dcm2niix_volumes(SHARED_MOSAICS, tmp_path / "dcm2niix")
    assert len(reference) == 13
    for s, (theirs_affine, theirs) in zip(series, reference, strict=True):
        (row,) = [r for r in out["volumes"] if r["series_key"] == s["series_key"]]
        affine, data = canonical(tmp_path / "results" / row["path"])
        np.testing.assert_allclose(affine, theirs_affine, atol=1e-3)
        assert np.array_equal(data, theirs)


def test_grouping_rows_of_a_plain_object_stay_one_row():
    ds = pydicom.dcmread(ENHANCED, stop_before_pixels=True)
    del ds.PerFrameFunctionalGroupsSequence[32:]
    ds.NumberOfFrames = 32
    rows = merge_metadata.frame_group_rows({"path": "x", "NumberOfFrames": 32}, ds)
    assert len(rows) == 1 and rows[0].get("frames") is None
    assert rows[0]["frame_positions"].shape == (32, 3)


SHARED_PHILIPS_DTI = SHARED_MOSAICS.parent / "Philips_Achieva_DTI"


def enhanced_diffusion(target: Path) -> int:
    """Repackage the 680 classic Philips DTI slices (40 positions × 17 volumes) as one
    Enhanced MR object, as a scanner exporting enhanced DWI would: b-value and gradient
    direction in each frame's MRDiffusionSequence, no DimensionIndexSequence, frames in
    InstanceNumber order (volumes interleaved by acquisition). Returns the frame count.
    """
    from pydicom.dataset import Dataset, FileMetaDataset
    from pydicom.uid import ExplicitVRLittleEndian, generate_uid

    slices = sorted(
        (pydicom.dcmread(p) for p in SHARED_PHILIPS_DTI.iterdir()), key=lambda s: s.InstanceNumber
    )
    first = slices[0]
    ds = Dataset()
    for keyword in ("StudyInstanceUID", "StudyDate", "Modality", "Manufacturer"):
        setattr(ds, keyword, first.get(keyword))
    ds.SOPClassUID, ds.SOPInstanceUID = "1.2.840.10008.5.1.4.1.1.4.1", generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber, ds.SeriesDescription = generate_uid(), 7, "dti enh"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "DIFFUSION", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = first.Rows, first.Columns, len(slices)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 12, 11, 0
    ds.SharedFunctionalGroupsSequence = [
        item(
            PixelMeasuresSequence=[
                item(PixelSpacing=first.PixelSpacing, SliceThickness=first.SliceThickness)
            ],
            PlaneOrientationSequence=[item(ImageOrientationPatient=first.ImageOrientationPatient)],
            PixelValueTransformationSequence=[
                item(
                    RescaleIntercept=first.RescaleIntercept,
                    RescaleSlope=first.RescaleSlope,
                    RescaleType="US",
                )
            ],
        )
    ]
    ds.PerFrameFunctionalGroupsSequence = [
        item(
            PlanePositionSequence=[item(ImagePositionPatient=s.ImagePositionPatient)],
            MRDiffusionSequence=[
                item(
                    DiffusionBValue=float(s.DiffusionBValue),
                    DiffusionGradientDirectionSequence=[
                        item(DiffusionGradientOrientation=s.DiffusionGradientOrientation)
                    ],
                )
            ],
            FrameVOILUTSequence=[item(WindowCenter=s.WindowCenter, WindowWidth=s.WindowWidth)],
        )
        for s in slices
    ]
    ds.PixelData = np.stack([s.pixel_array for s in slices]).astype("<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ds.SOPClassUID
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return len(slices)


@pytest.mark.slow
def test_an_enhanced_diffusion_object_gives_the_volumes_of_its_classic_series(tmp_path):
    """One 680-frame enhanced DWI object → 17 stacks of 40 slices, each volume identical
    (voxels and affine) to one volume of the same slices as 680 classic files, whose
    volumes test_volumes checks against dcm2niix."""
    if not SHARED_PHILIPS_DTI.is_dir():
        pytest.skip("../shared/data/vendor-mr is not beside the project")
    study = tmp_path / "study"
    study.mkdir()
    assert enhanced_diffusion(study / "dti_enhanced.dcm") == 680
    shutil.copytree(SHARED_PHILIPS_DTI, study / "classic")
    metadata = index_study(study, tmp_path / "metadata")
    out = run_batches(study, metadata, tmp_path / "results")
    series = pq.read_table(metadata["series"]).to_pylist()
    enhanced = [s for s in series if s["SeriesDescription"] == "dti enh"]
    classic = [s for s in series if s["SeriesDescription"] == "dti_ax"]
    assert len(enhanced) == len(classic) == 17
    assert {(s["n_instances"], s["n_frames"], s["is_volume"]) for s in enhanced} == {(1, 40, True)}

    def volume(key: str) -> tuple[np.ndarray, np.ndarray]:
        (row,) = [r for r in out["volumes"] if r["series_key"] == key]
        return canonical(tmp_path / "results" / row["path"])

    theirs = [volume(s["series_key"]) for s in classic]
    matched = set()
    for s in enhanced:
        affine, data = volume(s["series_key"])
        same = [i for i, (_, d) in enumerate(theirs) if np.array_equal(d, data)]
        assert len(same) == 1, f"{s['series_key']}: {len(same)} classic volumes equal it"
        np.testing.assert_allclose(affine, theirs[same[0]][0], atol=1e-6)
        matched.add(same[0])
    assert len(matched) == 17
