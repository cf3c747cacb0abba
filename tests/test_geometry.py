"""Tests for scripts/geometry.py on real DICOM headers (demo study and pydicom's test files)."""

from __future__ import annotations

import copy
import random
import re

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file

import demo
import geometry

MR_FILES = sorted(demo.MR_SERIES.iterdir())
CT_FILES = sorted(demo.CT_SERIES.iterdir())
CT_FIRST = CT_FILES[0]
MR_FIRST = MR_FILES[0]
ENHANCED_SEG = "liver_1frame.dcm"
"""pydicom's bundled enhanced object (SEG): shared and 3 per-frame functional group items."""

SAGITTAL = [0.0, 1.0, 0.0, 0.0, 0.0, -1.0]
AXIAL = [1.0, 0.0, 0.0, 0.0, 1.0, 0.0]
CORONAL = [1.0, 0.0, 0.0, 0.0, 0.0, -1.0]


def _tilted_axial(degrees: float) -> list[float]:
    """Axial orientation with its column direction rotated about patient x."""
    a = np.radians(degrees)
    return [1.0, 0.0, 0.0, 0.0, float(np.cos(a)), float(np.sin(a))]


def read_header(path) -> pydicom.Dataset:
    return pydicom.dcmread(path, stop_before_pixels=True)


def enhanced_header() -> pydicom.Dataset:
    path = get_testdata_file(ENHANCED_SEG, download=False)
    assert path is not None, f"pydicom test file {ENHANCED_SEG} is not bundled"
    return read_header(path)


@pytest.fixture(scope="module")
def mr_headers():
    return [read_header(p) for p in MR_FILES]


@pytest.fixture(scope="module")
def ct_headers():
    return [read_header(p) for p in CT_FILES]


@pytest.fixture(scope="module")
def ct_projections(ct_headers):
    positions = [h.ImagePositionPatient for h in ct_headers]
    return geometry.project_positions(positions, ct_headers[0].ImageOrientationPatient)


class TestSliceNormal:
    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            pytest.param(MR_FIRST, [-1.0, 0.0, 0.0], id="demo_mr_sagittal"),
            pytest.param(CT_FIRST, [0.0, 0.0, 1.0], id="demo_ct_axial"),
        ],
    )
    def test_normal_of_a_real_header_is_the_row_cross_column_unit_vector(self, path, expected):
        normal = geometry.slice_normal(read_header(path).ImageOrientationPatient)
        np.testing.assert_allclose(normal, expected, atol=1e-12)

    def test_normal_of_an_oblique_orientation_has_unit_length(self):
        normal = geometry.slice_normal(_tilted_axial(30))
        assert np.linalg.norm(normal) == pytest.approx(1.0)
        np.testing.assert_allclose(normal, [0.0, -0.5, np.sqrt(3) / 2], atol=1e-12)

    def test_parallel_row_and_column_vectors_are_rejected(self):
        with pytest.raises(ValueError, match="Argument 'orientation' has parallel"):
            geometry.slice_normal([1, 0, 0, 1, 0, 0])

    def test_orientation_of_the_wrong_length_names_the_argument_and_shape(self):
        with pytest.raises(ValueError, match=re.escape("must have shape (6,), got (5,)")):
            geometry.slice_normal([1, 0, 0, 0, 1])


class TestOrientationLabel:
    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            pytest.param(MR_FIRST, "sagittal", id="demo_head_mr"),
            pytest.param(CT_FIRST, "axial", id="demo_abdomen_ct"),
            pytest.param(demo.CT_SMALL, "axial", id="ct_small"),
            pytest.param(demo.RTDOSE, "axial", id="rtdose"),
        ],
    )
    def test_real_headers_are_labelled_with_their_plane(self, path, expected):
        assert geometry.orientation_label(read_header(path).ImageOrientationPatient) == expected

    @pytest.mark.parametrize(
        ("orientation", "expected"),
        [
            pytest.param(CORONAL, "coronal", id="coronal"),
            pytest.param(_tilted_axial(10), "axial", id="axial_tilted_10_degrees"),
            pytest.param(_tilted_axial(45), "oblique", id="oblique_45_degrees"),
            pytest.param(
                [0.7071068, 0.7071068, 0.0, 0.0, 0.0, -1.0], "oblique", id="oblique_sag_cor"
            ),
        ],
    )
    def test_synthetic_orientations_are_labelled_by_the_dominant_normal_axis(
        self, orientation, expected
    ):
        assert geometry.orientation_label(orientation) == expected


class TestProjectPositions:
    def test_projection_of_axial_ct_positions_is_their_z_coordinate(self, ct_headers):
        positions = [h.ImagePositionPatient for h in ct_headers]
        projected = geometry.project_positions(positions, AXIAL)
        assert projected.shape == (20,)
        np.testing.assert_allclose(projected, [float(p[2]) for p in positions])

    def test_projection_of_sagittal_mr_positions_is_minus_x(self, mr_headers):
        positions = [h.ImagePositionPatient for h in mr_headers]
        projected = geometry.project_positions(positions, SAGITTAL)
        np.testing.assert_allclose(projected, [-float(p[0]) for p in positions])

    @pytest.mark.parametrize(
        ("positions", "shape"),
        [
            pytest.param(np.zeros((4, 2)), "(4, 2)", id="two_columns"),
            pytest.param([-81.6, -130.0, 130.0], "(3,)", id="one_position_flat"),
            pytest.param(np.zeros((2, 3, 1)), "(2, 3, 1)", id="three_dimensional"),
        ],
    )
    def test_positions_of_the_wrong_shape_name_the_argument_and_the_shape(self, positions, shape):
        expected = f"Argument 'positions' must have shape (N, 3), got {shape}"
        with pytest.raises(ValueError, match=re.escape(expected)):
            geometry.project_positions(positions, AXIAL)

    def test_orientation_of_the_wrong_shape_names_the_argument(self):
        with pytest.raises(ValueError, match=re.escape("Argument 'orientation' must have shape")):
            geometry.project_positions(np.zeros((2, 3)), [1, 0, 0, 0, 1, 0, 0])


class TestGetPlaneSortIndex:
    def test_sort_puts_shuffled_demo_mr_files_in_patient_order(self, mr_headers):
        shuffled = list(zip(MR_FILES, mr_headers, strict=True))
        random.Random(20220407).shuffle(shuffled)
        assert [p.name for p, _ in shuffled] != [p.name for p in MR_FILES]
        positions = [h.ImagePositionPatient for _, h in shuffled]
        orientation = shuffled[0][1].ImageOrientationPatient

        order = geometry.get_plane_sort_index(positions, orientation)

        names = [shuffled[i][0].name for i in order]
        # The normal is -x, so patient order runs from the highest x (IM_0035) down.
        assert names == [p.name for p in reversed(MR_FILES)]
        projected = geometry.project_positions([positions[i] for i in order], orientation)
        assert np.all(np.diff(projected) > 0)

    def test_sort_puts_demo_ct_slices_from_inferior_to_superior(self, ct_headers):
        positions = [h.ImagePositionPatient for h in ct_headers]
        order = geometry.get_plane_sort_index(positions, AXIAL)
        assert [CT_FILES[i].name for i in order] == [p.name for p in reversed(CT_FILES)]

    def test_slices_at_the_same_position_keep_their_input_order(self, ct_headers):
        positions = [ct_headers[3].ImagePositionPatient] * 2 + [ct_headers[0].ImagePositionPatient]
        assert geometry.get_plane_sort_index(positions, AXIAL) == [0, 1, 2]

    def test_indices_are_python_ints(self, ct_headers):
        positions = [h.ImagePositionPatient for h in ct_headers[:3]]
        assert all(type(i) is int for i in geometry.get_plane_sort_index(positions, AXIAL))


class TestCheckSpacing:
    def test_real_ct_positions_are_uniform_at_2_mm(self, ct_projections):
        report = geometry.check_spacing(ct_projections)
        assert report == geometry.SpacingReport(2.0, True, 0, 0)

    def test_real_mr_positions_are_uniform_at_4_8_mm(self, mr_headers):
        positions = [h.ImagePositionPatient for h in mr_headers]
        report = geometry.check_spacing(geometry.project_positions(positions, SAGITTAL))
        assert report.slice_spacing == pytest.approx(4.8, abs=1e-4)
        assert (report.uniform_spacing, report.missing_slices, report.duplicate_positions) == (
            True,
            0,
            0,
        )

    @pytest.mark.parametrize(
        ("edit", "missing", "duplicates"),
        [
            pytest.param(lambda z: np.delete(z, 10), 1, 0, id="one_removed"),
            pytest.param(lambda z: np.delete(z, [9, 10]), 2, 0, id="two_adjacent_removed"),
            pytest.param(lambda z: np.delete(z, [4, 14]), 2, 0, id="two_apart_removed"),
            pytest.param(lambda z: np.insert(z, 7, z[7]), 0, 1, id="one_duplicated"),
            pytest.param(lambda z: np.insert(z, 7, [z[7], z[12]]), 0, 2, id="two_duplicated"),
        ],
    )
    def test_removed_and_duplicated_ct_slices_are_counted_and_break_uniformity(
        self, ct_projections, edit, missing, duplicates
    ):
        report = geometry.check_spacing(edit(ct_projections))
        assert report.slice_spacing == pytest.approx(2.0)
        assert report.missing_slices == missing
        assert report.duplicate_positions == duplicates
        assert report.uniform_spacing is False

    def test_shuffled_projections_give_the_same_report(self, ct_projections):
        shuffled = np.random.default_rng(5).permutation(ct_projections)
        assert geometry.check_spacing(shuffled) == geometry.check_spacing(ct_projections)

    def test_a_single_slice_has_no_spacing_and_nothing_missing(self, ct_projections):
        assert geometry.check_spacing(ct_projections[:1]) == geometry.SpacingReport(
            None, True, 0, 0
        )

    def test_slices_all_at_one_position_are_duplicates_without_spacing(self, ct_projections):
        report = geometry.check_spacing([ct_projections[0]] * 3)
        assert report == geometry.SpacingReport(None, False, 0, 2)

    def test_two_dimensional_projections_are_rejected_naming_the_argument(self, ct_projections):
        with pytest.raises(ValueError, match="Argument 'projections' must be 1-D"):
            geometry.check_spacing(ct_projections.reshape(4, 5))


class TestFramePositions:
    def test_rtdose_frames_step_along_the_normal_by_the_grid_frame_offsets(self):
        ds = read_header(demo.RTDOSE)
        positions = geometry.frame_positions(ds)
        assert positions.shape == (15, 3)
        origin = np.asarray(ds.ImagePositionPatient, dtype=float)
        offsets = np.asarray(ds.GridFrameOffsetVector, dtype=float)
        np.testing.assert_allclose(positions[:, :2], np.tile(origin[:2], (15, 1)))
        np.testing.assert_allclose(positions[:, 2], origin[2] + offsets)
        assert positions[0, 2] == pytest.approx(-761.87)
        assert positions[-1, 2] == pytest.approx(-691.87)

    def test_rtdose_with_absolute_grid_frame_offsets_gives_the_same_positions(self):
        relative = read_header(demo.RTDOSE)
        absolute = copy.deepcopy(relative)
        z0 = float(relative.ImagePositionPatient[2])
        absolute.GridFrameOffsetVector = [z0 + float(v) for v in relative.GridFrameOffsetVector]
        np.testing.assert_allclose(
            geometry.frame_positions(absolute), geometry.frame_positions(relative)
        )

    def test_enhanced_object_positions_come_from_its_per_frame_plane_positions(self):
        ds = enhanced_header()
        assert len(ds.PerFrameFunctionalGroupsSequence) == 3
        ds.NumberOfFrames = 3  # the bundled file keeps 3 per-frame items but 1 frame of pixels
        positions = geometry.frame_positions(ds)
        np.testing.assert_allclose(
            positions, [[-235.2, -226.8, z] for z in (-128.69, -127.69, -126.69)]
        )

    def test_enhanced_positions_follow_frame_order_not_spatial_order(self):
        ds = enhanced_header()
        ds.NumberOfFrames = 3
        ds.PerFrameFunctionalGroupsSequence.reverse()
        np.testing.assert_allclose(geometry.frame_positions(ds)[:, 2], [-126.69, -127.69, -128.69])

    def test_enhanced_frame_without_a_plane_position_makes_positions_unknown(self):
        ds = enhanced_header()
        del ds.PerFrameFunctionalGroupsSequence[0].PlanePositionSequence
        assert geometry.frame_positions(ds) is None

    def test_single_frame_ct_gives_its_image_position(self):
        ds = read_header(CT_FIRST)
        np.testing.assert_allclose(
            geometry.frame_positions(ds), [[-249.51171875, -437.51171875, -766.5]]
        )

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(demo.US_YBR_MULTIFRAME, id="multiframe_us_without_geometry"),
            pytest.param(demo.US_RGB, id="single_frame_us_without_geometry"),
        ],
    )
    def test_headers_without_patient_geometry_give_none(self, path):
        assert geometry.frame_positions(read_header(path)) is None


class TestFrameOrientation:
    def test_enhanced_object_orientation_comes_from_the_shared_functional_groups(self):
        ds = enhanced_header()
        assert "ImageOrientationPatient" not in ds
        assert geometry.frame_orientation(ds) == AXIAL

    def test_top_level_orientation_is_returned_as_floats(self):
        assert geometry.frame_orientation(read_header(MR_FIRST)) == SAGITTAL

    def test_header_without_orientation_gives_none(self):
        assert geometry.frame_orientation(read_header(demo.US_RGB)) is None


class TestPixelSpacing:
    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            pytest.param(CT_FIRST, [0.9765625, 0.9765625], id="demo_ct_pixel_spacing"),
            pytest.param(MR_FIRST, [1.015625, 1.015625], id="demo_mr_pixel_spacing"),
            pytest.param(demo.RTDOSE, [10.0, 10.0], id="rtdose_pixel_spacing"),
            pytest.param(
                demo.US_PALETTE, [0.2622878766196998] * 2, id="us_palette_region_cm_to_mm"
            ),
            pytest.param(demo.US_YBR_MULTIFRAME, [0.5104970559477806] * 2, id="us_ybr_region"),
            pytest.param(demo.US_RGB, None, id="us_without_spacing"),
        ],
    )
    def test_spacing_of_real_headers_in_mm(self, path, expected):
        spacing = geometry.pixel_spacing(read_header(path))
        if expected is None:
            assert spacing is None
        else:
            assert spacing == pytest.approx(expected)

    def test_imager_pixel_spacing_is_used_when_pixel_spacing_is_absent(self):
        ds = read_header(demo.CT_SMALL)
        del ds.PixelSpacing
        ds.ImagerPixelSpacing = ["0.143", "0.15"]  # projection radiography, at the detector
        assert geometry.pixel_spacing(ds) == [0.143, 0.15]

    def test_pixel_spacing_wins_over_imager_pixel_spacing(self):
        ds = read_header(demo.CT_SMALL)
        ds.ImagerPixelSpacing = ["0.143", "0.15"]
        assert geometry.pixel_spacing(ds) == pytest.approx([0.661468, 0.661468])

    def test_enhanced_object_spacing_comes_from_shared_pixel_measures(self):
        assert geometry.pixel_spacing(enhanced_header()) == pytest.approx([0.810547, 0.810547])

    def test_ultrasound_row_spacing_is_delta_y_and_column_spacing_delta_x(self):
        ds = read_header(demo.US_PALETTE)
        ds.SequenceOfUltrasoundRegions[0].PhysicalDeltaY = 0.05
        assert geometry.pixel_spacing(ds) == pytest.approx([0.5, 0.2622878766196998])

    def test_ultrasound_spacing_uses_the_region_measured_in_cm_whatever_its_position(self):
        ds = read_header(demo.US_PALETTE)
        regions = ds.SequenceOfUltrasoundRegions
        assert [int(r.PhysicalUnitsXDirection) for r in regions] == [3, 4]
        regions.insert(0, regions.pop(1))
        assert geometry.pixel_spacing(ds) == pytest.approx([0.2622878766196998] * 2)


class TestReformatVolume:
    SAGITTAL = [0, 1, 0, 0, 0, -1]

    def test_reslices_without_touching_the_callers_volume(self):
        volume = np.arange(4 * 5 * 6, dtype=np.float32).reshape(4, 5, 6)
        before = volume.copy()
        out, spacing, positions = geometry.reformat_volume(
            volume, self.SAGITTAL, [1.0, 2.0], 3.0, [0.0, 0.0, 0.0], "axial"
        )
        np.testing.assert_array_equal(volume, before)
        assert out.shape == (5, 6, 4)  # slices along z (rows), rows A→P, columns R→L
        assert spacing == (2.0, 3.0)
        assert list(positions) == sorted(positions)

    def test_oblique_orientation_is_refused_naming_the_argument(self):
        oblique = [0.7071, 0.7071, 0, -0.7071, 0.7071, 0]
        with pytest.raises(ValueError, match="'orientation'"):
            geometry.reformat_volume(np.zeros((3, 4, 4)), oblique, [1, 1], 1, [0, 0, 0], "axial")

    def test_wrong_dimensions_are_refused_naming_the_argument(self):
        with pytest.raises(ValueError, match="Argument 'volume' must be 3-D"):
            geometry.reformat_volume(np.zeros((4, 4)), self.SAGITTAL, [1, 1], 1, [0, 0, 0], "axial")


def voxel_coordinates(headers) -> tuple[np.ndarray, list, np.ndarray]:
    """Patient (LPS) coordinates of every voxel of a stack, the independent way.

    Each header's ImagePositionPatient, ImageOrientationPatient and PixelSpacing place
    pixel (i, j) at ``IPP + j * column spacing * row direction + i * row spacing * column
    direction`` (PS3.3 C.7.6.2.1.1). Slices are ordered by ascending IPP along the normal.

    Returns ``(coords of shape (slices, rows, columns, 3), orientation, pixel spacing)``.
    """
    orientation = [float(v) for v in headers[0].ImageOrientationPatient]
    normal = np.cross(orientation[:3], orientation[3:])
    ordered = sorted(headers, key=lambda ds: float(np.dot(ds.ImagePositionPatient, normal)))
    row_mm, col_mm = (float(v) for v in ordered[0].PixelSpacing)
    rows, columns = int(ordered[0].Rows), int(ordered[0].Columns)
    i = np.arange(rows)[:, None, None]
    j = np.arange(columns)[None, :, None]
    row_dir, col_dir = np.array(orientation[:3]), np.array(orientation[3:])
    coords = np.stack(
        [
            np.asarray(ds.ImagePositionPatient, dtype=float)
            + j * col_mm * row_dir
            + i * row_mm * col_dir
            for ds in ordered
        ]
    )
    return coords, orientation, [row_mm, col_mm]


@pytest.fixture(scope="module")
def mr_coordinates(mr_headers):
    return voxel_coordinates(mr_headers)


@pytest.fixture(scope="module")
def ct_coordinates(ct_headers):
    return voxel_coordinates(ct_headers)


RADIOLOGICAL = {
    # plane: (patient axis constant in a slice, axis down the rows and its sign,
    #         axis across the columns and its sign); LPS: +x left, +y posterior, +z superior
    "axial": (2, (1, +1), (0, +1)),  # anterior at the top, patient right on the left
    "coronal": (1, (2, -1), (0, +1)),  # superior at the top, patient right on the left
    "sagittal": (0, (2, -1), (1, +1)),  # superior at the top, anterior on the left
}


class TestReformatOrientation:
    """Reformats of the real demo MR (sagittal) and CT (axial) volumes, checked against the
    patient coordinates of their voxels computed from each header."""

    @pytest.mark.parametrize("plane", ["axial", "coronal", "sagittal"])
    @pytest.mark.parametrize("stack", ["mr", "ct"])
    def test_reformat_shows_the_plane_in_radiological_display_order(self, request, stack, plane):
        coords, orientation, spacing = request.getfixturevalue(f"{stack}_coordinates")
        slice_spacing = float(np.linalg.norm(coords[1, 0, 0] - coords[0, 0, 0]))
        normal_axis, (row_axis, row_sign), (col_axis, col_sign) = RADIOLOGICAL[plane]
        out = {}
        for axis in range(3):
            out[axis], out_spacing, positions = geometry.reformat_volume(
                coords[..., axis], orientation, spacing, slice_spacing, coords[0, 0, 0], plane
            )
        normal, down, across = out[normal_axis], out[row_axis], out[col_axis]
        # every slice lies at one coordinate along the plane's normal, the one reported
        np.testing.assert_allclose(
            normal, positions[:, None, None] * np.ones_like(normal), rtol=0, atol=1e-3
        )
        assert np.all(np.diff(positions) > 0)
        # rows and columns run the radiological way, with the reported spacing
        row_steps, col_steps = np.diff(down, axis=1), np.diff(across, axis=2)
        np.testing.assert_allclose(row_steps, row_sign * out_spacing[0], rtol=0, atol=1e-3)
        np.testing.assert_allclose(col_steps, col_sign * out_spacing[1], rtol=0, atol=1e-3)
        # the slice count is the extent along the normal in the source volume
        assert positions[0] == pytest.approx(coords[..., normal_axis].min(), abs=1e-3)
        assert positions[-1] == pytest.approx(coords[..., normal_axis].max(), abs=1e-3)
