"""Enhanced multi-frame objects: geometry and rescale from the functional groups.

pydicom's wheel ships no enhanced CT/MR image, so the test repackages the real demo head
MR (35 single-frame slices) as one Enhanced MR Image object, as a scanner exporting
enhanced objects would: shared PixelMeasures, PlaneOrientation and PixelValueTransformation,
per-frame PlanePosition and FrameVOILUT, frames stored in a shuffled order.
"""

from __future__ import annotations

import random

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.uid import ExplicitVRLittleEndian, generate_uid

import demo
import save_slices
from steps import index_study

ENHANCED_MR = "1.2.840.10008.5.1.4.1.1.4.1"
INTERCEPT = -100.0


def item(**elements) -> Dataset:
    ds = Dataset()
    for keyword, value in elements.items():
        setattr(ds, keyword, value)
    return ds


def enhanced_mr(target, seed: int = 7) -> list[pydicom.Dataset]:
    """Write the demo MR series as one enhanced object; return the slices in frame order."""
    slices = [pydicom.dcmread(p) for p in sorted(demo.MR_SERIES.iterdir())]
    random.Random(seed).shuffle(slices)
    first = slices[0]
    ds = Dataset()
    for keyword in ("PatientName", "PatientID", "StudyInstanceUID", "StudyDate", "Modality"):
        setattr(ds, keyword, first.get(keyword))
    ds.SOPClassUID, ds.SOPInstanceUID = ENHANCED_MR, generate_uid()
    ds.SeriesInstanceUID, ds.SeriesNumber = generate_uid(), 99
    ds.SeriesDescription = "enhanced t1 sag"
    ds.ImageType = ["ORIGINAL", "PRIMARY", "M", "NONE"]
    ds.Rows, ds.Columns, ds.NumberOfFrames = first.Rows, first.Columns, len(slices)
    ds.SamplesPerPixel, ds.PhotometricInterpretation = 1, "MONOCHROME2"
    ds.BitsAllocated, ds.BitsStored, ds.HighBit, ds.PixelRepresentation = 16, 16, 15, 0
    ds.SharedFunctionalGroupsSequence = [
        item(
            PixelMeasuresSequence=[item(PixelSpacing=first.PixelSpacing, SliceThickness=4)],
            PlaneOrientationSequence=[item(ImageOrientationPatient=first.ImageOrientationPatient)],
            PixelValueTransformationSequence=[
                item(RescaleIntercept=INTERCEPT, RescaleSlope=1, RescaleType="US")
            ],
        )
    ]
    ds.PerFrameFunctionalGroupsSequence = [
        item(
            PlanePositionSequence=[item(ImagePositionPatient=s.ImagePositionPatient)],
            FrameVOILUTSequence=[item(WindowCenter=s.WindowCenter, WindowWidth=s.WindowWidth)],
        )
        for s in slices
    ]
    ds.PixelData = np.stack([s.pixel_array for s in slices]).astype("<u2").tobytes()
    ds.file_meta = FileMetaDataset()
    ds.file_meta.TransferSyntaxUID = ExplicitVRLittleEndian
    ds.file_meta.MediaStorageSOPClassUID = ENHANCED_MR
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    ds.save_as(target, enforce_file_format=True)
    return slices


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """Scan, extract, merge and save 5 slices of a study holding only the enhanced MR."""
    root = tmp_path_factory.mktemp("enhanced")
    study = root / "study"
    study.mkdir()
    frames = enhanced_mr(study / "enhanced_mr.dcm")
    out = root / "results"
    tables = index_study(study, out)
    args = ["--study", str(study), "--results", str(out), "--batch", "0", "--count", "5"]
    args += ["--instances", str(tables["batches"] / "batch_0.instances.parquet")]
    args += ["--series", str(tables["batches"] / "batch_0.series.parquet")]
    args += ["--manifest", str(out / "m.parquet"), "--errors", str(out / "se.parquet")]
    assert save_slices.main(args) == 0
    (series,) = pq.read_table(tables["series"]).to_pylist()
    manifest = pq.read_table(out / "m.parquet").to_pylist()
    return {"out": out, "frames": frames, "series": series, "manifest": manifest}


class TestEnhancedMultiframe:
    def test_series_geometry_comes_from_the_functional_groups(self, run):
        series = run["series"]
        assert series["n_instances"] == 1 and series["n_frames"] == 35
        assert series["orientation"] == "sagittal"
        assert series["slice_spacing"] == pytest.approx(4.8, abs=1e-3)
        assert series["PixelSpacing"] == pytest.approx([1.015625, 1.015625])
        assert series["single_orientation"] and series["uniform_spacing"]
        assert series["is_volume"]

    def test_saved_frames_are_in_patient_order_whatever_the_stored_order(self, run):
        rows = sorted(run["manifest"], key=lambda r: r["index"])
        assert [r["index"] for r in rows] == [6, 11, 17, 23, 28]
        positions = [r["position_mm"] for r in rows]
        assert positions == sorted(positions)
        by_x = sorted(run["frames"], key=lambda s: -float(s.ImagePositionPatient[0]))
        for row in rows:
            expected = by_x[row["index"]]
            stored_at = next(i for i, s in enumerate(run["frames"]) if s is expected)
            assert row["frame"] == stored_at

    def test_values_are_rescaled_with_the_shared_transformation(self, run):
        row = next(r for r in run["manifest"] if r["index"] == 17)
        saved = np.load(run["out"] / row["npy_path"])
        original = run["frames"][row["frame"]].pixel_array.astype(np.float32)
        np.testing.assert_array_equal(saved, original + np.float32(INTERCEPT))
        assert row["pixel_spacing_mm"] == pytest.approx([1.015625, 1.015625])

    def test_each_frame_keeps_its_own_window(self, run):
        for row in run["manifest"]:
            frame = run["frames"][row["frame"]]
            assert row["window_center"] == pytest.approx(float(frame.WindowCenter))
            assert row["window_width"] == pytest.approx(float(frame.WindowWidth))
