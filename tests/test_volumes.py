"""Tests for scripts/volumes.py and the volumes save_slices writes: geometry, value
storage, skip reasons, one decode per stack, and agreement with dcm2niix on real series.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import nibabel as nib
import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest

import demo
import finalize_tables
import query
import save_slices
import table_schema
import volumes
from steps import index_study

SHARED_VENDOR = demo.ROOT.parent / "shared" / "data" / "vendor-mr"
DCM2NIIX = shutil.which("dcm2niix")

DEMO_MR_KEY = "15a1c95aea5a"
"""The demo's Siemens T1 sagittal series: 35 slices of 256 x 256."""
DEMO_CT_KEY = "2269c1ad0a50"
"""The demo's JPEG 2000 lossless abdominal CT: 20 slices of 512 x 512."""
DEMO_DOSE_KEY = "ef492e5a1d5c"
"""The demo's RT dose: one file, 15 frames on a GridFrameOffsetVector of 5 mm."""

AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def axial_positions(n: int, spacing: float = 2.0, origin=(-100.0, -120.0, 50.0)) -> np.ndarray:
    return np.asarray(origin) + np.outer(np.arange(n) * spacing, [0.0, 0.0, 1.0])


class TestLpsAffine:
    def test_axial_stack_maps_columns_rows_and_slices_to_x_y_z(self):
        affine = volumes.lps_affine(AXIAL, [0.5, 0.7], [-100, -120, 50], [-100, -120, 68], 10)
        expected = np.array(
            [[0.7, 0, 0, -100], [0, 0.5, 0, -120], [0, 0, 2.0, 50], [0, 0, 0, 1]], dtype=float
        )
        np.testing.assert_allclose(affine, expected)

    def test_ras_affine_negates_x_and_y_of_the_lps_affine(self):
        lps = volumes.lps_affine(AXIAL, [0.5, 0.7], [-100, -120, 50], [-100, -120, 68], 10)
        ras = volumes.ras_affine(AXIAL, [0.5, 0.7], [-100, -120, 50], [-100, -120, 68], 10)
        np.testing.assert_allclose(ras[:2], -lps[:2])
        np.testing.assert_allclose(ras[2:], lps[2:])
        assert ras[0, 3] == 100 and ras[1, 3] == 120

    def test_oblique_voxel_lands_where_the_dicom_geometry_puts_it(self):
        angle = np.radians(30)
        row = [np.cos(angle), np.sin(angle), 0.0]
        column = [0.0, np.cos(angle), -np.sin(angle)]
        normal = np.cross(row, column)
        first = np.array([10.0, -20.0, 30.0])
        last = first + 4 * 3.0 * normal
        affine = volumes.lps_affine(row + column, [0.8, 0.9], first, last, 5)
        i, j, k = 7, 11, 3
        expected = first + i * 0.9 * np.array(row) + j * 0.8 * np.array(column) + k * 3.0 * normal
        np.testing.assert_allclose((affine @ [i, j, k, 1])[:3], expected, atol=1e-9)

    def test_a_single_slice_gets_the_unit_normal_as_its_slice_axis(self):
        affine = volumes.lps_affine(AXIAL, [1, 1], [0, 0, 0], [0, 0, 0], 1)
        np.testing.assert_allclose(affine[:3, 2], [0, 0, 1])

    @pytest.mark.parametrize(
        ("value", "message"),
        [
            pytest.param({"orientation": [1, 0, 0]}, "'orientation'", id="short-orientation"),
            pytest.param({"pixel_spacing": [0, 1]}, "'pixel_spacing'", id="zero-spacing"),
            pytest.param({"n_slices": 0}, "'n_slices'", id="no-slices"),
        ],
    )
    def test_bad_arguments_are_named(self, value, message):
        args = {
            "orientation": AXIAL,
            "pixel_spacing": [1, 1],
            "first": [0, 0, 0],
            "last": [0, 0, 2],
            "n_slices": 3,
        }
        with pytest.raises(ValueError, match=message):
            volumes.lps_affine(**{**args, **value})


class TestOrientationCode:
    @pytest.mark.parametrize(
        ("orientation", "code"),
        [
            pytest.param(AXIAL, "LPS", id="axial"),
            pytest.param(SAGITTAL, "PIR", id="sagittal-like-the-demo-mr"),
            pytest.param(CORONAL, "LIP", id="coronal"),
        ],
    )
    def test_code_names_where_each_voxel_axis_points(self, orientation, code):
        normal = np.cross(orientation[:3], orientation[3:])
        affine = volumes.ras_affine(orientation, [1, 1], [0, 0, 0], 2 * normal, 3)
        assert volumes.orientation_code(affine) == code
        assert "".join(nib.aff2axcodes(affine)) == code

    def test_an_oblique_stack_is_named_by_its_closest_axes(self):
        angle = np.radians(20)
        row = [np.cos(angle), np.sin(angle), 0.0]  # mostly +x (L), tilted towards +y (P)
        affine = volumes.ras_affine(row + [0, 0, -1], [1, 1], [0, 0, 0], [0, 0, 0], 1)
        assert volumes.orientation_code(affine) == "LIP"


class TestGridProblem:
    def test_an_evenly_spaced_axial_stack_is_a_grid(self):
        assert volumes.grid_problem(axial_positions(10), AXIAL, "MONOCHROME2") is None

    def test_gantry_tilt_is_skipped_not_resampled(self):
        positions = axial_positions(10)
        positions[:, 1] += np.arange(10) * 2.0 * np.tan(np.radians(15))  # y moves with z
        reason = volumes.grid_problem(positions, AXIAL, "MONOCHROME2")
        assert reason is not None and reason.startswith("gantry tilt")
        assert "15.00 degrees" in reason

    def test_non_uniform_spacing_says_which_gaps(self):
        positions = axial_positions(6)
        positions[3:, 2] += 0.5  # one gap of 2.5 mm among gaps of 2 mm
        reason = volumes.grid_problem(positions, AXIAL, "MONOCHROME2")
        assert reason == "non-uniform slice spacing (gaps 2 to 2.5 mm)"

    def test_a_missing_slice_is_named(self):
        positions = np.delete(axial_positions(8), 4, axis=0)
        assert volumes.grid_problem(positions, AXIAL, None) == "1 missing slice(s)"

    def test_duplicate_positions_are_named(self):
        positions = np.repeat(axial_positions(4), 2, axis=0)
        assert volumes.grid_problem(positions, AXIAL, None) == "4 duplicate slice position(s)"

    @pytest.mark.parametrize(
        ("positions", "orientation", "photometric", "reason"),
        [
            pytest.param(axial_positions(4), None, None, "no usable", id="no-orientation"),
            pytest.param(None, AXIAL, None, "not every frame", id="no-positions"),
            pytest.param(axial_positions(4), AXIAL, "RGB", "colour image (RGB)", id="colour"),
            pytest.param(axial_positions(1), AXIAL, None, "a single slice", id="one-slice"),
        ],
    )
    def test_other_reasons(self, positions, orientation, photometric, reason):
        assert reason in volumes.grid_problem(positions, orientation, photometric)


class TestStorage:
    STORED = [np.array([[0, 1000]], dtype=np.uint16)] * 3

    @pytest.mark.parametrize(
        ("rescale", "lut", "expected"),
        [
            pytest.param((1.0, -1024.0), False, ("stored", 1.0, -1024.0), id="ct-hu"),
            pytest.param((1.0, 0.0), False, ("stored", 1.0, 0.0), id="identity"),
            pytest.param((0.5, 0.25), False, ("stored", 0.5, 0.25), id="binary-fractions"),
            pytest.param((1.082051282, 0.0), False, ("float32", 1.0, 0.0), id="philips-slope"),
            pytest.param((1e-6, 0.0), False, ("float32", 1.0, 0.0), id="dose-scaling-1e-6"),
            pytest.param((1.0, 0.0), True, ("float32", 1.0, 0.0), id="modality-lut"),
        ],
    )
    def test_stored_integers_only_where_the_scaling_is_exact(self, rescale, lut, expected):
        assert volumes.storage(self.STORED, [rescale] * 3, lut) == expected

    def test_frames_with_different_slopes_are_float32(self):
        rescale = [(1.0, 0.0), (2.0, 0.0), (1.0, 0.0)]
        assert volumes.storage(self.STORED, rescale, False)[0] == "float32"

    def test_float_pixels_are_float32(self):
        stored = [np.zeros((2, 2), dtype=np.float32)]
        assert volumes.storage(stored, [(1.0, 0.0)], False)[0] == "float32"

    @pytest.mark.parametrize(
        ("values", "dtype"),
        [
            pytest.param([0, 4095], np.int16, id="12-bit-unsigned-fits-int16"),
            pytest.param([0, 40000], np.uint16, id="needs-uint16"),
            pytest.param([-5, 7], np.int16, id="signed"),
        ],
    )
    def test_stored_dtype(self, values, dtype):
        source = np.int16 if min(values) < 0 else np.uint16
        assert volumes.stored_dtype(np.array(values, dtype=source)) == dtype


class TestNiftiBytes:
    def test_header_holds_both_transforms_units_and_exact_scaling(self, tmp_path):
        affine = volumes.ras_affine(AXIAL, [0.5, 0.7], [-100, -120, 50], [-100, -120, 68], 10)
        data = np.arange(4 * 3 * 10, dtype=np.int16).reshape(4, 3, 10)
        path = tmp_path / "v.nii.gz"
        path.write_bytes(volumes.nifti_bytes(data, affine, 1.0, -1024.0))
        image = nib.load(path)
        assert int(image.header["sform_code"]) == 1 and int(image.header["qform_code"]) == 1
        np.testing.assert_allclose(image.get_sform(), affine, atol=1e-6)
        np.testing.assert_allclose(image.get_qform(), affine, atol=1e-5)
        assert image.header.get_xyzt_units() == ("mm", "sec")
        assert image.get_data_dtype() == np.int16
        np.testing.assert_array_equal(np.asarray(image.dataobj.get_unscaled()), data)
        np.testing.assert_array_equal(image.get_fdata(), data - 1024.0)

    def test_bytes_are_the_same_every_time(self):
        data = np.ones((2, 2, 2), dtype=np.float32)
        assert volumes.nifti_bytes(data, np.eye(4)) == volumes.nifti_bytes(data, np.eye(4))


class TestVolumeSettings:
    def test_off_by_default_and_filtered_by_modality(self):
        assert not volumes.VOLUMES_OFF.wants("CT")
        assert volumes.VolumeSettings(("nifti",)).wants("US")
        settings = volumes.VolumeSettings(("nifti",), ("CT", "MR"))
        assert settings.wants("MR") and not settings.wants("PT")


# --- save_slices with volumes on, on the demo study ----------------------------------


def run_batches(study: Path, metadata: dict, results: Path, *extra: str) -> dict:
    """save_slices.main on every batch; returns volume rows, manifest rows and errors."""
    series = pq.read_table(metadata["series"]).to_pylist()
    out = {"volumes": [], "manifest": [], "errors": []}
    for batch in sorted({s["batch"] for s in series if s["batch"] is not None}):
        parts = {name: results / "parts" / f"{name}_{batch}.parquet" for name in out}
        argv = ["--study", str(study), "--results", str(results), "--batch", str(batch)]
        argv += ["--instances", str(metadata["instances"]), "--series", str(metadata["series"])]
        argv += ["--count", "3", "--manifest", str(parts["manifest"])]
        argv += ["--errors", str(parts["errors"]), "--volumes", str(parts["volumes"]), *extra]
        assert save_slices.main(argv) == 0
        for name in out:
            out[name] += pq.read_table(parts[name]).to_pylist()
    return out


@pytest.fixture(scope="module")
def demo_volumes(demo_metadata, tmp_path_factory) -> dict:
    results = tmp_path_factory.mktemp("volumes")
    out = run_batches(demo.STUDY, demo_metadata, results, "--volumes-format", "nifti", "npy")
    return {**out, "results": results, "metadata": demo_metadata}


def row(rows: list[dict], key: str, fmt: str = "nifti") -> dict:
    (found,) = [r for r in rows if r["series_key"] == key and r["format"] == fmt]
    return found


class TestDemoVolumes:
    def test_every_demo_volume_is_written_in_both_formats(self, demo_volumes):
        written = sorted((r["series_key"], r["format"]) for r in demo_volumes["volumes"])
        keys = (DEMO_MR_KEY, DEMO_CT_KEY, DEMO_DOSE_KEY)
        assert written == sorted((k, f) for k in keys for f in ("nifti", "npy"))
        for r in demo_volumes["volumes"]:
            assert (demo_volumes["results"] / r["path"]).is_file()

    @pytest.mark.parametrize(
        ("key", "shape", "voxel", "code", "dtype", "units", "files"),
        [
            pytest.param(
                DEMO_MR_KEY, [256, 256, 35], [1.015625, 1.015625, 4.8], "PIR", "int16", "US", 35
            ),
            pytest.param(
                DEMO_CT_KEY, [512, 512, 20], [0.976562, 0.976562, 2.0], "LPS", "int16", "HU", 20
            ),
            pytest.param(
                DEMO_DOSE_KEY, [10, 10, 15], [10.0, 10.0, 5.0], "LPS", "float32", "RELATIVE", 1
            ),
        ],
    )
    def test_volume_rows(self, demo_volumes, key, shape, voxel, code, dtype, units, files):
        r = row(demo_volumes["volumes"], key)
        assert r["shape"] == shape
        np.testing.assert_allclose(r["voxel_size_mm"], voxel, atol=1e-4)
        assert (r["orientation"], r["dtype"], r["value_units"]) == (code, dtype, units)
        assert r["n_source_files"] == files and r["n_frames"] == shape[2]
        assert len(r["affine"]) == 16 and r["affine"][12:] == [0, 0, 0, 1]
        image = nib.load(demo_volumes["results"] / r["path"])
        assert image.shape == tuple(shape)
        np.testing.assert_allclose(image.affine.ravel(), r["affine"], atol=1e-4)

    def test_ct_affine_comes_from_the_first_and_last_slice(self, demo_volumes):
        files = [pydicom.dcmread(p, stop_before_pixels=True) for p in demo.CT_SERIES.iterdir()]
        files.sort(key=lambda ds: float(ds.ImagePositionPatient[2]))
        first, last = (
            np.array(ds.ImagePositionPatient, dtype=float) for ds in (files[0], files[-1])
        )
        affine = np.reshape(row(demo_volumes["volumes"], DEMO_CT_KEY)["affine"], (4, 4))
        np.testing.assert_allclose(affine[:3, 3], first * [-1, -1, 1])
        np.testing.assert_allclose(affine @ [0, 0, 19, 1], [*(last * [-1, -1, 1]), 1])
        assert affine[0, 0] == -float(files[0].PixelSpacing[1])

    @pytest.mark.parametrize("key", [DEMO_MR_KEY, DEMO_CT_KEY])
    def test_voxels_equal_the_saved_npy_slices(self, demo_volumes, key):
        results = demo_volumes["results"]
        nifti = nib.load(results / row(demo_volumes["volumes"], key)["path"]).get_fdata()
        npy = np.load(results / row(demo_volumes["volumes"], key, "npy")["path"])
        assert npy.dtype == np.float32
        np.testing.assert_array_equal(npy, nifti.astype(np.float32))
        slices = [m for m in demo_volumes["manifest"] if m["series_key"] == key]
        assert len(slices) == 3
        for m in slices:
            values = np.load(results / m["npy_path"])
            k = m["index"]
            np.testing.assert_array_equal(npy[:, :, k].T, values)
            j, i = values.shape[0] // 3, values.shape[1] // 2
            assert nifti[i, j, k] == values[j, i]

    def test_dose_values_are_scaled_by_dose_grid_scaling(self, demo_volumes):
        ds = pydicom.dcmread(demo.RTDOSE)
        volume = nib.load(
            demo_volumes["results"] / row(demo_volumes["volumes"], DEMO_DOSE_KEY)["path"]
        )
        expected = (ds.pixel_array.astype(np.float64) * float(ds.DoseGridScaling)).astype(
            np.float32
        )
        np.testing.assert_array_equal(np.asarray(volume.dataobj), expected.transpose(2, 1, 0))

    def test_no_stack_of_the_demo_is_skipped(self, demo_volumes):
        assert not [e for e in demo_volumes["errors"] if e["reason"] == "volume_skipped"]

    def test_each_frame_is_decoded_once(self, demo_metadata, tmp_path, monkeypatch):
        calls = []
        original = save_slices.decode_frame

        def counting(ds, frame):
            calls.append((frame.path, frame.frame))
            return original(ds, frame)

        monkeypatch.setattr(save_slices, "decode_frame", counting)
        ct = [
            s
            for s in pq.read_table(demo_metadata["series"]).to_pylist()
            if s["series_key"] == DEMO_CT_KEY
        ]
        argv = ["--study", str(demo.STUDY), "--results", str(tmp_path), "--batch"]
        argv += [str(ct[0]["batch"]), "--instances", str(demo_metadata["instances"])]
        argv += ["--series", str(demo_metadata["series"]), "--manifest", str(tmp_path / "m.pq")]
        argv += ["--errors", str(tmp_path / "e.pq"), "--volumes-format", "nifti", "npy"]
        assert save_slices.main(argv) == 0
        ct_calls = [c for c in calls if c[0].startswith("patient02")]
        assert len(ct_calls) == len(set(ct_calls)) == 20

    def test_switching_volumes_off_removes_them_and_on_writes_them_again(
        self, demo_metadata, tmp_path
    ):
        on = ("--volumes-format", "nifti")
        first = run_batches(demo.STUDY, demo_metadata, tmp_path, *on)
        ct = tmp_path / row(first["volumes"], DEMO_CT_KEY)["path"]
        stamp = ct.stat().st_mtime_ns
        assert run_batches(demo.STUDY, demo_metadata, tmp_path, *on)["volumes"] == first["volumes"]
        assert ct.stat().st_mtime_ns == stamp  # unchanged series taken from the cache
        assert run_batches(demo.STUDY, demo_metadata, tmp_path)["volumes"] == []
        assert not ct.exists() and not list((tmp_path / "volumes").iterdir())
        assert run_batches(demo.STUDY, demo_metadata, tmp_path, *on)["volumes"] == first["volumes"]
        assert ct.is_file()

    def test_modality_filter(self, demo_metadata, tmp_path):
        out = run_batches(
            demo.STUDY,
            demo_metadata,
            tmp_path,
            "--volumes-format",
            "npy",
            "--volumes-modality",
            "CT",
        )
        assert [(r["series_key"], r["format"]) for r in out["volumes"]] == [(DEMO_CT_KEY, "npy")]


# --- agreement with dcm2niix -------------------------------------------------------------

needs_dcm2niix = pytest.mark.skipif(DCM2NIIX is None, reason="dcm2niix is not installed")


def dcm2niix_volumes(source: Path, out: Path) -> list[tuple[np.ndarray, np.ndarray]]:
    """``(canonical affine, canonical 3-D data)`` of every volume dcm2niix writes for ``source``.

    ``-p n``: scale by RescaleSlope/Intercept (the modality values our volumes hold), not
    by Philips' private precise-float scaling. A 4-D output gives one entry per volume.
    """
    out.mkdir(parents=True)
    single = ["-s", "y"] if source.is_file() else []
    cmd = [DCM2NIIX, *single, "-p", "n", "-z", "n", "-b", "n", "-f", "v", "-o", str(out)]
    subprocess.run([*cmd, str(source)], check=True, capture_output=True)
    found = []
    for path in sorted(out.glob("*.nii")):
        image = nib.as_closest_canonical(nib.load(path))
        data = image.get_fdata()
        for v in range(data.shape[3] if data.ndim == 4 else 1):
            found.append((image.affine, data[..., v] if data.ndim == 4 else data))
    assert found, f"dcm2niix wrote nothing for {source}"
    return found


def ours(results: Path, r: dict) -> tuple[np.ndarray, np.ndarray]:
    image = nib.as_closest_canonical(nib.load(results / r["path"]))
    return image.affine, image.get_fdata()


def same_values(mine: np.ndarray, theirs: np.ndarray, exact: bool) -> bool:
    """Lossless: equal; float32 modality values: equal up to float32 rounding."""
    if mine.shape != theirs.shape:
        return False
    if exact:
        return bool(np.array_equal(mine, theirs))
    return bool(np.allclose(mine, theirs, rtol=1e-6, atol=0))


def assert_agrees(results: Path, r: dict, reference: list) -> int:
    """Our volume equals one of dcm2niix's, with the affine within 1e-3 mm; its index."""
    affine, data = ours(results, r)
    exact = r["dtype"].startswith(("int", "uint"))
    matches = [n for n, (_, theirs) in enumerate(reference) if same_values(data, theirs, exact)]
    assert len(matches) == 1, f"{r['series_key']}: {len(matches)} dcm2niix volumes equal ours"
    np.testing.assert_allclose(affine, reference[matches[0]][0], atol=1e-3, rtol=0)
    return matches[0]


@needs_dcm2niix
class TestDemoAgreesWithDcm2niix:
    @pytest.mark.parametrize(
        ("key", "folder"),
        [
            pytest.param(DEMO_MR_KEY, demo.MR_SERIES, id="siemens-t1-sagittal"),
            pytest.param(DEMO_CT_KEY, demo.CT_SERIES, id="ct-jpeg2000-lossless"),
        ],
    )
    def test_affine_and_voxels_agree(self, demo_volumes, tmp_path, key, folder):
        reference = dcm2niix_volumes(folder, tmp_path / "dcm2niix")
        assert_agrees(demo_volumes["results"], row(demo_volumes["volumes"], key), reference)

    def test_rt_dose_differs_where_dcm2niix_ignores_the_dose_grid(self, demo_volumes, tmp_path):
        """dcm2niix (v1.0.20220720) writes the dose grid with 1 mm between frames ("Unable
        to determine slice thickness") and unscaled stored values; GridFrameOffsetVector
        says 5 mm and DoseGridScaling 1e-6 Gy. Everything else agrees."""
        ((theirs_affine, theirs),) = dcm2niix_volumes(demo.RTDOSE, tmp_path / "dcm2niix")
        affine, data = ours(demo_volumes["results"], row(demo_volumes["volumes"], DEMO_DOSE_KEY))
        np.testing.assert_allclose(data, theirs * 1e-6, rtol=1e-6, atol=0)
        columns = [0, 1, 3]
        np.testing.assert_allclose(affine[:, columns], theirs_affine[:, columns], atol=1e-3)
        assert affine[2, 2] == pytest.approx(5.0) and theirs_affine[2, 2] == pytest.approx(1.0)


@pytest.fixture(scope="module")
def vendor_volumes(tmp_path_factory) -> dict:
    if not SHARED_VENDOR.is_dir():
        pytest.skip("../shared/data/vendor-mr is not beside the project")
    work = tmp_path_factory.mktemp("vendor")
    metadata = index_study(SHARED_VENDOR, work / "metadata")
    out = run_batches(SHARED_VENDOR, metadata, work / "results", "--volumes-format", "nifti")
    series = {s["series_key"]: s for s in pq.read_table(metadata["series"]).to_pylist()}
    return {**out, "results": work / "results", "series": series}


def vendor_rows(vendor_volumes: dict, description: str) -> list[dict]:
    keys = {k for k, s in vendor_volumes["series"].items() if s["SeriesDescription"] == description}
    return sorted(
        (r for r in vendor_volumes["volumes"] if r["series_key"] in keys),
        key=lambda r: vendor_volumes["series"][r["series_key"]]["stack"],
    )


@pytest.mark.slow
@needs_dcm2niix
class TestVendorAgreesWithDcm2niix:
    @pytest.mark.parametrize(
        ("folder", "description", "shape"),
        [
            pytest.param(
                "GE_SIGNA_Pioneer_3D_T1", "3D Ax T1 MP-RAGE_R22", [256, 256, 130], id="ge-3d-t1"
            ),
            pytest.param("Toshiba_Galan_DTI_b0", "DTI AX 30d", [64, 64, 40], id="toshiba-b0"),
        ],
    )
    def test_single_volume_series_agree(self, vendor_volumes, tmp_path, folder, description, shape):
        (r,) = vendor_rows(vendor_volumes, description)
        assert r["shape"] == shape and r["dtype"] == "int16" and r["orientation"] == "LPS"
        reference = dcm2niix_volumes(SHARED_VENDOR / folder, tmp_path / "dcm2niix")
        assert_agrees(vendor_volumes["results"], r, reference)

    def test_every_philips_diffusion_stack_is_one_of_dcm2niix_volumes(
        self, vendor_volumes, tmp_path
    ):
        """17 stacks of 40 slices: dcm2niix writes 16 as its 4-D file; the 17th, the
        isotropic trace image it removes from there ("1 volumes appear to be ADC or trace
        images"), is the last volume of its ``_ADC`` file. RescaleSlope 1.08205... is not
        exact in float32, so ours are float32 values."""
        rows = vendor_rows(vendor_volumes, "dti_ax")
        assert len(rows) == 17
        assert {r["dtype"] for r in rows} == {"float32"}
        reference = dcm2niix_volumes(SHARED_VENDOR / "Philips_Achieva_DTI", tmp_path / "dcm2niix")
        main = reference[:16]  # v.nii (16 volumes); v_ADC.nii follows
        for n, r in enumerate(rows[:16]):
            assert assert_agrees(vendor_volumes["results"], r, main) == n
        assert assert_agrees(vendor_volumes["results"], rows[16], reference[16:]) == 16


# --- finalize_tables and the README's Volumes recipes --------------------------------


@pytest.fixture(scope="module")
def finalized_volumes(demo_volumes, tmp_path_factory) -> Path:
    """``results/`` with metadata/series.parquet and the volumes.parquet finalize writes."""
    cwd = tmp_path_factory.mktemp("readme")
    results = demo_volumes["results"]
    (cwd / "results").symlink_to(results, target_is_directory=True)
    (results / "metadata").mkdir(exist_ok=True)
    shutil.copy(demo_volumes["metadata"]["series"], results / "metadata" / "series.parquet")
    parts = sorted(str(p) for p in (results / "parts").glob("volumes_*.parquet"))
    argv = ["--slices", str(cwd / "slices.parquet"), "--errors", str(cwd / "errors.parquet")]
    argv += ["--volume-parts", *parts, "--volumes", str(results / "metadata" / "volumes.parquet")]
    assert finalize_tables.main(argv) == 0
    return cwd


def volumes_section_blocks(language: str) -> list[str]:
    text = (demo.ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Volumes", 1)[1].split("\n## ", 1)[0]
    return re.findall(rf"```{language}\n(.*?)```", section, flags=re.S)


class TestFinalizeVolumes:
    def test_volumes_table_is_every_batch_sorted(self, demo_volumes, finalized_volumes):
        table = pq.read_table(finalized_volumes / "results" / "metadata" / "volumes.parquet")
        assert table.schema.equals(table_schema.VOLUMES_SCHEMA)
        keys = [(r["series_key"], r["format"]) for r in table.to_pylist()]
        assert keys == sorted(keys) and len(keys) == 6

    def test_no_parts_give_an_empty_table_with_the_schema(self, tmp_path):
        out = tmp_path / "volumes.parquet"
        finalize_tables.write_volumes([], str(out), None)
        table = pq.read_table(out)
        assert table.num_rows == 0 and table.schema.equals(table_schema.VOLUMES_SCHEMA)

    def test_unlisted_volume_files_are_removed(self, tmp_path):
        (tmp_path / "volumes").mkdir()
        for name in ("a.nii.gz", "a.npy", "b.nii.gz"):
            (tmp_path / "volumes" / name).write_bytes(b"x")
        listed = table_schema.table_from_rows(
            [{"series_key": "a", "format": "nifti", "path": "volumes/a.nii.gz"}],
            table_schema.VOLUMES_SCHEMA,
        )
        removed = finalize_tables.remove_unlisted_volumes(tmp_path, listed)
        assert removed == ["volumes/a.npy", "volumes/b.nii.gz"]
        assert [p.name for p in (tmp_path / "volumes").iterdir()] == ["a.nii.gz"]
        empty = table_schema.VOLUMES_SCHEMA.empty_table()
        finalize_tables.remove_unlisted_volumes(tmp_path, empty)
        assert not (tmp_path / "volumes").exists()


class TestReadmeVolumeRecipes:
    def test_loading_recipe_gives_the_volume_and_its_affine(self, finalized_volumes, monkeypatch):
        monkeypatch.chdir(finalized_volumes)
        (code,) = volumes_section_blocks("python")
        namespace: dict = {}
        exec(code, namespace)  # noqa: S102 - the README's own code
        nifti, npy = namespace["nifti"], namespace["npy"]
        assert namespace["data"].shape == tuple(nifti["shape"])
        assert "".join(namespace["codes"]) == nifti.orientation
        np.testing.assert_allclose(namespace["affine"], namespace["image"].affine, atol=1e-4)
        assert namespace["array"].shape == tuple(npy["shape"])

    def test_t1_query_finds_the_demo_t1(self, finalized_volumes):
        (sql,) = volumes_section_blocks("sql")
        found = query.run_query(query.connect(finalized_volumes / "results"), sql)
        assert found.series_key.tolist() == [DEMO_MR_KEY]
        assert found.path.tolist() == [f"volumes/{DEMO_MR_KEY}.nii.gz"]
        assert list(found["shape"][0]) == [256, 256, 35]


@pytest.fixture(scope="module")
def enhanced(tmp_path_factory) -> dict:
    from test_enhanced_multiframe import enhanced_mr

    root = tmp_path_factory.mktemp("enhanced_volume")
    (root / "study").mkdir()
    enhanced_mr(root / "study" / "enhanced_mr.dcm")
    metadata = index_study(root / "study", root / "metadata")
    out = run_batches(root / "study", metadata, root / "results", "--volumes-format", "nifti")
    (r,) = out["volumes"]
    return {"root": root, "row": r, "image": nib.load(root / "results" / r["path"])}


class TestEnhancedMultiframeVolume:
    """The demo head MR repackaged as one Enhanced MR object (frames shuffled, geometry and
    rescale in the functional groups) gives the demo MR's volume, shifted by its intercept."""

    def test_one_file_gives_the_stack_with_the_shared_rescale(self, enhanced, demo_volumes):
        from test_enhanced_multiframe import INTERCEPT

        r = enhanced["row"]
        assert (r["n_source_files"], r["n_frames"], r["shape"]) == (1, 35, [256, 256, 35])
        assert (r["dtype"], r["scl_slope"], r["scl_inter"]) == ("int16", 1.0, INTERCEPT)
        demo_mr = nib.load(
            demo_volumes["results"] / row(demo_volumes["volumes"], DEMO_MR_KEY)["path"]
        )
        np.testing.assert_allclose(enhanced["image"].affine, demo_mr.affine, atol=1e-6)
        np.testing.assert_array_equal(
            enhanced["image"].get_fdata(), demo_mr.get_fdata() + INTERCEPT
        )

    @needs_dcm2niix
    def test_dcm2niix_agrees_except_that_it_spaces_frames_by_slice_thickness(
        self, enhanced, tmp_path
    ):
        """dcm2niix (v1.0.20220720) spaces these frames by SliceThickness (4 mm); their
        positions step 4.8 mm, as dcm2niix itself finds for the same slices as classic
        files (the demo MR above). Voxels and every other affine entry agree."""
        source = enhanced["root"] / "study" / "enhanced_mr.dcm"
        ((theirs_affine, theirs),) = dcm2niix_volumes(source, tmp_path / "dcm2niix")
        affine, data = ours(enhanced["root"] / "results", enhanced["row"])
        np.testing.assert_array_equal(data, theirs)
        # canonical axis 0 is the slice axis of this sagittal stack
        assert affine[0, 0] == pytest.approx(4.8, abs=1e-3)
        assert theirs_affine[0, 0] == pytest.approx(4.0, abs=1e-3)
        np.testing.assert_allclose(affine[:, 1:], theirs_affine[:, 1:], atol=1e-3, rtol=0)


@pytest.fixture(scope="module")
def skipped(tmp_path_factory) -> dict:
    root = tmp_path_factory.mktemp("skipped")
    sources = sorted(demo.CT_SERIES.iterdir())[:6]
    for folder, shift in (("tilted", (0, 1, 0)), ("uneven", (0, 0, 1))):
        (root / "study" / folder).mkdir(parents=True)
        slices = sorted(
            (pydicom.dcmread(p) for p in sources),
            key=lambda ds: float(ds.ImagePositionPatient[2]),
        )
        for n, ds in enumerate(slices):
            step = np.tan(np.radians(10)) * 2.0 * n if folder == "tilted" else 0.7 * (n >= 3)
            ds.ImagePositionPatient = [
                float(v) + step * s for v, s in zip(ds.ImagePositionPatient, shift, strict=True)
            ]
            ds.save_as(root / "study" / folder / f"{n}.dcm")
    metadata = index_study(root / "study", root / "metadata")
    out = run_batches(root / "study", metadata, root / "results", "--volumes-format", "nifti")
    return {**out, "results": root / "results"}


class TestSkippedStacks:
    """Six real CT slices made tilted (y moves with z, as with gantry tilt) and made
    unevenly spaced: each stack is skipped with a warning saying why, never resampled."""

    def test_no_volume_is_written(self, skipped):
        assert skipped["volumes"] == []
        assert not (skipped["results"] / "volumes").exists()

    def test_each_stack_has_a_warning_saying_why(self, skipped):
        rows = sorted(
            (e["path"], e["detail"].split(": ", 2)[2])
            for e in skipped["errors"]
            if e["reason"] == "volume_skipped" and e["severity"] == "warning"
        )
        assert rows == [
            ("tilted/0.dcm", "gantry tilt or sheared grid (10.00 degrees off the slice normal)"),
            ("uneven/0.dcm", "non-uniform slice spacing (gaps 2 to 2.7 mm)"),
        ]

    def test_slices_are_still_saved(self, skipped):
        assert len(skipped["manifest"]) == 2 * 3
