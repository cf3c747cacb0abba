"""Our geometry against an independent reader, dcm2niix: its outputs on the demo series are kept
in tests/fixtures/dcm2niix (so these checks run everywhere), and are compared live where the
Debian package is installed.
"""

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
needs_dcm2niix = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not on PATH")
FIXTURES = demo.ROOT / "tests" / "fixtures" / "dcm2niix"
"""dcm2niix's NIfTI dim/pixdim and sidecar values (tests/fixtures/make_reference_outputs.py)."""

SERIES = [
    pytest.param(demo.MR_SERIES, "MR", id="siemens-head-mr-sagittal"),
    pytest.param(demo.CT_SERIES, "CT", id="siemens-abdomen-ct-j2k"),
]


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


def series_row(demo_metadata, modality) -> dict:
    rows = pq.read_table(demo_metadata["series"]).to_pylist()
    (row,) = [r for r in rows if r["Modality"] == modality and r["n_instances"] > 5]
    return row


def assert_geometry_agrees(row: dict, header: dict, sidecar: dict) -> None:
    """Slice count, spacing, pixel spacing and orientation of our series row vs dcm2niix."""
    assert header["dim"][0] == 3
    assert header["dim"][3] == row["n_instances"]
    assert (header["dim"][1], header["dim"][2]) == (row["Columns"], row["Rows"])
    assert row["slice_spacing"] == pytest.approx(header["pixdim"][3], abs=1e-3)
    assert row["PixelSpacing"] == pytest.approx(
        [header["pixdim"][2], header["pixdim"][1]], abs=1e-4
    )
    theirs = sidecar["ImageOrientationPatientDICOM"]
    assert row["orientation"] == geometry.orientation_label(theirs)
    assert row["ImageOrientationPatient"] == pytest.approx(theirs, abs=1e-4)


@pytest.mark.parametrize(("folder", "modality"), SERIES)
class TestSeriesGeometryAgreesWithDcm2niixFixtures:
    def test_slice_count_spacing_and_orientation_match(self, demo_metadata, folder, modality):
        facts = json.loads((FIXTURES / f"{modality.lower()}.json").read_text())
        row = series_row(demo_metadata, modality)
        assert_geometry_agrees(row, facts, facts["sidecar"])

    def test_fixture_holds_the_expected_demo_geometry(self, folder, modality):
        # what the demo's headers say, so a regenerated fixture cannot drift unnoticed
        facts = json.loads((FIXTURES / f"{modality.lower()}.json").read_text())
        expected = {"MR": (35, 4.8, "sagittal"), "CT": (20, 2.0, "axial")}[modality]
        label = geometry.orientation_label(facts["sidecar"]["ImageOrientationPatientDICOM"])
        assert (facts["dim"][3], round(facts["pixdim"][3], 3), label) == expected
        assert len(list(folder.iterdir())) == expected[0]


@needs_dcm2niix
@pytest.mark.parametrize(("folder", "modality"), SERIES)
class TestSeriesGeometryAgreesWithDcm2niix:
    def test_slice_count_spacing_and_orientation_match(
        self, demo_metadata, tmp_path, folder, modality
    ):
        header, sidecar = convert(folder, tmp_path)
        assert_geometry_agrees(series_row(demo_metadata, modality), header, sidecar)
