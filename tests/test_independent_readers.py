"""Our geometry against an independent reader: dcm2niix (Debian package), skipped when absent."""

from __future__ import annotations

import json
import shutil
import struct
import subprocess

import pyarrow.parquet as pq
import pytest

import demo
import geometry

DCM2NIIX = shutil.which("dcm2niix")
pytestmark = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not on PATH")


def nifti_header(path) -> dict:
    """dim and pixdim of a NIfTI-1 header, read with struct (little-endian, as dcm2niix writes)."""
    raw = path.read_bytes()[:348]
    assert struct.unpack("<i", raw[:4])[0] == 348
    return {
        "dim": struct.unpack("<8h", raw[40:56]),
        "pixdim": struct.unpack("<8f", raw[76:108]),
    }


def convert(folder, out) -> tuple[dict, dict]:
    """Run dcm2niix on one series folder; return its NIfTI header and JSON sidecar."""
    subprocess.run(
        [DCM2NIIX, "-b", "y", "-z", "n", "-f", "series", "-o", str(out), str(folder)],
        check=True,
        capture_output=True,
        timeout=120,
    )
    sidecar = json.loads((out / "series.json").read_text())
    return nifti_header(out / "series.nii"), sidecar


@pytest.mark.parametrize(
    ("folder", "modality"),
    [
        pytest.param(demo.MR_SERIES, "MR", id="siemens-head-mr-sagittal"),
        pytest.param(demo.CT_SERIES, "CT", id="siemens-abdomen-ct-j2k"),
    ],
)
class TestSeriesGeometryAgreesWithDcm2niix:
    def series_row(self, demo_metadata, modality):
        rows = pq.read_table(demo_metadata["series"]).to_pylist()
        return next(r for r in rows if r["Modality"] == modality and r["n_instances"] > 5)

    def test_slice_count_and_spacing_match(self, demo_metadata, tmp_path, folder, modality):
        header, _ = convert(folder, tmp_path)
        row = self.series_row(demo_metadata, modality)
        assert header["dim"][3] == row["n_instances"]
        assert row["slice_spacing"] == pytest.approx(header["pixdim"][3], abs=1e-3)
        assert row["PixelSpacing"] == pytest.approx(
            [header["pixdim"][2], header["pixdim"][1]], abs=1e-4
        )

    def test_orientation_label_matches(self, demo_metadata, tmp_path, folder, modality):
        _, sidecar = convert(folder, tmp_path)
        row = self.series_row(demo_metadata, modality)
        theirs = geometry.orientation_label(sidecar["ImageOrientationPatientDICOM"])
        assert row["orientation"] == theirs
        assert row["ImageOrientationPatient"] == pytest.approx(
            sidecar["ImageOrientationPatientDICOM"], abs=1e-4
        )
