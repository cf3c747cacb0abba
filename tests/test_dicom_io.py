"""Tests for scripts/dicom_io.py on the bundled demo study and pydicom's own test files."""

from __future__ import annotations

import random
import shutil
import struct
from pathlib import Path

import pydicom
import pytest
from pydicom.data import get_testdata_file

import demo
import dicom_io
from dicom_io import FileProblem, describe_magic, looks_like_raw_dataset, read_header

CT_J2K = sorted(demo.CT_SERIES.iterdir())[0]
"""First slice of the de-identified Siemens CT series, JPEG 2000 lossless (encapsulated)."""
MR_NATIVE = sorted(demo.MR_SERIES.iterdir())[0]
"""First slice of the Siemens MR series, Explicit VR Little Endian (native pixels)."""

PIXEL_TAG_LE = b"\xe0\x7f\x10\x00"
"""(7FE0,0010) Pixel Data as it appears in a little-endian file."""


def pydicom_file(name: str) -> str:
    """Path of a file bundled with pydicom (never downloaded)."""
    path = get_testdata_file(name, download=False)
    assert path is not None, f"pydicom test file {name} is not installed"
    return path


def truncated_copy(src, tmp_path, size: int):
    """Write the first ``size`` bytes of ``src`` to a new file and return its path."""
    target = tmp_path / f"cut_{size}.dcm"
    target.write_bytes(Path(src).read_bytes()[:size])
    return target


def raw_dataset_copy(src, tmp_path, implicit_vr: bool, little_endian: bool):
    """Rewrite ``src`` without preamble and file meta, as old ACR-NEMA style exports are."""
    ds = pydicom.dcmread(src)
    del ds.file_meta
    ds.preamble = None
    target = tmp_path / f"raw_{src.stem}_{int(implicit_vr)}{int(little_endian)}"
    pydicom.dcmwrite(
        target, ds, implicit_vr=implicit_vr, little_endian=little_endian, enforce_file_format=False
    )
    return target


def offset_inside(path, needle: bytes, into: int) -> int:
    """Byte offset ``into`` bytes past the start of ``needle`` (an element header) in ``path``."""
    data = Path(path).read_bytes()
    start = data.find(needle)
    assert start >= 0, f"{needle!r} not found in {path}"
    return start + into


def problem_or_truncated_warning(path) -> str:
    """Read ``path``; return ``problem:<reason>`` or ``warning:truncated`` or ``clean``."""
    try:
        header = read_header(path)
    except FileProblem as problem:
        return f"problem:{problem.reason}"
    if any(reason == "truncated" for reason, _ in header.warnings):
        return "warning:truncated"
    return "clean"


class TestReadHeader:
    def test_reads_ct_image_header_with_pixels_and_no_warnings(self):
        header = read_header(demo.CT_SMALL)

        assert header.has_pixels is True
        assert header.warnings == []
        assert header.dataset.Modality == "CT"
        assert header.dataset.file_meta.TransferSyntaxUID == pydicom.uid.ExplicitVRLittleEndian

    def test_does_not_load_pixel_data_into_the_header(self):
        header = read_header(demo.CT_SMALL)

        assert "PixelData" not in header.dataset

    def test_header_elements_equal_a_plain_pydicom_header_read(self):
        header = read_header(demo.CT_SMALL)
        expected = pydicom.dcmread(demo.CT_SMALL, stop_before_pixels=True)

        assert list(header.dataset.keys()) == list(expected.keys())
        assert header.dataset.SOPInstanceUID == expected.SOPInstanceUID

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(demo.SR, id="structured-report"),
            pytest.param(demo.ECG, id="ecg-waveform"),
            pytest.param(demo.RTPLAN, id="rt-plan"),
        ],
    )
    def test_reports_no_pixels_for_objects_without_pixel_data(self, path):
        header = read_header(path)

        assert header.has_pixels is False
        assert header.warnings == []

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(CT_J2K, id="ct-jpeg2000-lossless"),
            pytest.param(demo.US_JPEG2K, id="us-jpeg2000"),
            pytest.param(demo.MR_RLE, id="mr-rle"),
            pytest.param(demo.NM_JPEG_EXTENDED, id="nm-jpeg-extended"),
            pytest.param(demo.US_YBR_MULTIFRAME, id="us-jpeg-baseline-30-frames"),
            pytest.param(demo.JPEG_LOSSY, id="nonconforming-jpeg-has-pixels"),
        ],
    )
    def test_finds_encapsulated_pixel_data_without_warnings(self, path):
        header = read_header(path)

        assert header.has_pixels is True
        assert header.warnings == []

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(MR_NATIVE, id="mr-explicit-little"),
            pytest.param(demo.RTDOSE, id="rtdose-15-frames-implicit"),
            pytest.param(demo.US_RGB, id="us-rgb"),
            pytest.param(demo.US_PALETTE, id="us-palette"),
            pytest.param(demo.MR_OVERLAY, id="mr-with-overlay"),
            pytest.param(pydicom_file("MR_small_bigendian.dcm"), id="mr-explicit-big"),
            pytest.param(pydicom_file("MR_small_implicit.dcm"), id="mr-implicit-little"),
        ],
    )
    def test_finds_native_pixel_data_without_warnings(self, path):
        header = read_header(path)

        assert header.has_pixels is True
        assert header.warnings == []

    def test_warns_truncated_when_native_pixel_data_is_shorter_than_declared(self):
        header = read_header(demo.MR_TRUNCATED)

        assert header.has_pixels is True
        assert [reason for reason, _ in header.warnings] == ["truncated"]
        assert "8192" in header.warnings[0][1]

    def test_raises_truncated_when_file_ends_inside_the_dataset(self):
        with pytest.raises(FileProblem) as info:
            read_header(demo.RTPLAN_TRUNCATED)

        assert info.value.reason == "truncated"

    def test_raises_not_dicom_for_dataset_without_meta_that_parses_to_junk(self):
        with pytest.raises(FileProblem) as info:
            read_header(demo.NO_META)

        assert info.value.reason == "not_dicom"

    def test_raises_not_dicom_naming_gzip_for_a_gzipped_dicom_file(self):
        with pytest.raises(FileProblem) as info:
            read_header(demo.ZIP_MR)

        assert info.value.reason == "not_dicom"
        assert "gzip" in info.value.detail

    def test_raises_empty_file_for_a_file_of_zero_bytes(self, tmp_path):
        empty = tmp_path / "empty.dcm"
        empty.write_bytes(b"")

        with pytest.raises(FileProblem) as info:
            read_header(empty)

        assert info.value.reason == "empty_file"

    def test_raises_unreadable_file_when_the_file_cannot_be_opened(self, monkeypatch):
        # tests run as root, for whom chmod 000 changes nothing: refuse the open instead
        def refuse(path, *args, **kwargs):
            raise PermissionError(13, "Permission denied", str(path))

        monkeypatch.setattr(dicom_io, "open", refuse, raising=False)

        with pytest.raises(FileProblem) as info:
            read_header(demo.CT_SMALL)

        assert info.value.reason == "unreadable_file"
        assert info.value.detail == "PermissionError: Permission denied"

    @pytest.mark.parametrize(
        ("src", "implicit_vr", "little_endian"),
        [
            pytest.param(demo.CT_SMALL, True, True, id="ct-implicit-little"),
            pytest.param(demo.CT_SMALL, False, True, id="ct-explicit-little"),
            pytest.param(demo.CT_SMALL, False, False, id="ct-explicit-big"),
            pytest.param(MR_NATIVE, True, True, id="mr-implicit-little"),
            pytest.param(demo.US_JPEG2K, False, True, id="us-j2k-explicit-little"),
            pytest.param(demo.RTPLAN, True, True, id="rtplan-implicit-little"),
            pytest.param(demo.SR, False, False, id="sr-explicit-big"),
        ],
    )
    def test_reads_raw_dataset_without_preamble_as_instance(
        self, tmp_path, src, implicit_vr, little_endian
    ):
        original = pydicom.dcmread(src, stop_before_pixels=True)
        raw = raw_dataset_copy(src, tmp_path, implicit_vr, little_endian)
        assert raw.read_bytes()[128:132] != b"DICM"

        header = read_header(raw)

        assert header.dataset.SOPInstanceUID == original.SOPInstanceUID
        assert header.dataset.Modality == original.Modality
        assert header.has_pixels is (src not in (demo.RTPLAN, demo.SR))
        assert header.warnings == []

    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("ExplVR_LitEndNoMeta.dcm", id="explicit-little"),
            pytest.param("ExplVR_BigEndNoMeta.dcm", id="explicit-big"),
        ],
    )
    def test_reads_pydicom_files_without_file_meta_as_instances(self, name):
        header = read_header(pydicom_file(name))

        assert header.dataset.Modality == "RTPLAN"
        assert header.has_pixels is False

    def test_raises_not_dicom_for_random_bytes(self, tmp_path):
        noise = tmp_path / "noise.bin"
        noise.write_bytes(random.Random(20240407).randbytes(4096))

        with pytest.raises(FileProblem) as info:
            read_header(noise)

        assert info.value.reason == "not_dicom"

    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("rtplan.dump", id="dcmdump-text"),
            pytest.param("test1.json", id="dicom-json-text"),
        ],
    )
    def test_raises_not_dicom_naming_text_for_a_text_file(self, tmp_path, name):
        text = tmp_path / "looks_like.dcm"
        shutil.copyfile(pydicom_file(name), text)

        with pytest.raises(FileProblem) as info:
            read_header(text)

        assert info.value.reason == "not_dicom"
        assert "text" in info.value.detail

    @pytest.mark.parametrize(
        ("src", "where", "expected"),
        [
            # CT_small's preamble starts like a TIFF file: without the DICM marker it is not
            # recognisable as DICOM at all
            pytest.param(demo.CT_SMALL, lambda p: 64, "problem:not_dicom", id="ct-inside-preamble"),
            pytest.param(
                demo.CT_SMALL, lambda p: 130, "problem:not_dicom", id="ct-inside-dicm-marker"
            ),
            pytest.param(
                demo.CT_SMALL, lambda p: 136, "problem:truncated", id="ct-inside-meta-group-length"
            ),
            pytest.param(
                demo.CT_SMALL,
                lambda p: offset_inside(p, b"\x02\x00\x10\x00UI", 12),
                "problem:truncated",
                id="ct-inside-transfer-syntax-value",
            ),
            pytest.param(
                demo.CT_SMALL,
                lambda p: offset_inside(p, b"\x08\x00\x20\x00DA", 12),
                "problem:truncated",
                id="ct-inside-study-date-value",
            ),
            pytest.param(
                demo.CT_SMALL,
                lambda p: offset_inside(p, b"\x28\x00\x30\x00DS", 5),
                "problem:truncated",
                id="ct-inside-pixel-spacing-header",
            ),
            pytest.param(
                demo.CT_SMALL,
                lambda p: offset_inside(p, PIXEL_TAG_LE, 6),
                "problem:truncated",
                id="ct-inside-pixel-tag",
            ),
            pytest.param(
                demo.CT_SMALL,
                lambda p: offset_inside(p, PIXEL_TAG_LE, 12 + 1000),
                "warning:truncated",
                id="ct-inside-pixel-values",
            ),
            pytest.param(
                MR_NATIVE,
                lambda p: offset_inside(p, b"\x20\x00\x32\x00DS", 20),
                "problem:truncated",
                id="mr-inside-image-position-value",
            ),
            pytest.param(
                MR_NATIVE,
                lambda p: offset_inside(p, PIXEL_TAG_LE, 12 + 65536),
                "warning:truncated",
                id="mr-inside-pixel-values",
            ),
            pytest.param(
                demo.SR,
                lambda p: offset_inside(p, b"\x40\x00\x30\xa7SQ", 40),
                "problem:truncated",
                id="sr-inside-content-sequence",
            ),
            pytest.param(
                demo.RTPLAN,
                lambda p: offset_inside(p, b"\x0a\x30\xb0\x00", 30),
                "problem:truncated",
                id="rtplan-implicit-inside-beam-sequence",
            ),
        ],
    )
    def test_truncated_copy_is_reported_with_the_expected_reason(
        self, tmp_path, src, where, expected
    ):
        cut = truncated_copy(src, tmp_path, where(src))

        assert problem_or_truncated_warning(cut) == expected

    def test_truncated_pixel_values_warning_names_declared_and_available_bytes(self, tmp_path):
        cut = truncated_copy(
            MR_NATIVE, tmp_path, offset_inside(MR_NATIVE, PIXEL_TAG_LE, 12 + 65536)
        )

        header = read_header(cut)

        assert header.has_pixels is True
        assert header.warnings == [
            ("truncated", "pixel data declares 131072 bytes but file holds 65536")
        ]

    @pytest.mark.parametrize(
        ("src", "image"),
        [
            pytest.param(demo.CT_SMALL, True, id="ct-native"),
            pytest.param(CT_J2K, True, id="ct-jpeg2000"),
            pytest.param(demo.SR, False, id="structured-report"),
            pytest.param(demo.RTPLAN, False, id="rtplan-implicit"),
        ],
    )
    @pytest.mark.filterwarnings("ignore:Unknown encoding:UserWarning")
    def test_truncation_at_any_offset_is_reported_unless_it_falls_between_elements(
        self, tmp_path, src, image
    ):
        data = Path(src).read_bytes()
        full_tags = list(pydicom.dcmread(src, stop_before_pixels=True).keys())
        pixel_start = data.rfind(PIXEL_TAG_LE) if image else len(data)
        offsets = list(range(1, 400)) + list(range(400, len(data), len(data) // 100))
        target = tmp_path / "cut.dcm"
        outcomes = set()
        for size in offsets:
            target.write_bytes(data[:size])
            outcome = problem_or_truncated_warning(target)  # any other exception fails
            outcomes.add(outcome)
            if size < 132:  # no complete DICM marker: nothing says this was DICOM
                assert outcome == "problem:not_dicom", size
            elif size > pixel_start + 12:  # inside the pixel values: the header is whole
                assert outcome == "warning:truncated", size
            elif outcome == "clean":
                # only a cut exactly between two top-level elements leaves a shorter valid
                # dataset; then the next element of the original starts where the file ends
                tags = list(pydicom.dcmread(target, stop_before_pixels=True).keys())
                following = full_tags[full_tags.index(tags[-1]) + 1]
                assert data[size : size + 4] == struct.pack("<HH", following.group, following.elem)
                assert "Rows" not in pydicom.dcmread(target, stop_before_pixels=True)
            else:
                assert outcome in ("problem:truncated", "warning:truncated"), size
        assert {"problem:not_dicom", "problem:truncated"} <= outcomes

    @pytest.mark.filterwarnings("ignore:Unknown encoding:UserWarning")
    def test_raw_dataset_cut_inside_first_element_raises_file_problem(self, tmp_path):
        raw = raw_dataset_copy(demo.CT_SMALL, tmp_path, False, True)
        cut = truncated_copy(raw, tmp_path, 9)

        with pytest.raises(FileProblem):
            read_header(cut)

    def test_warns_truncated_when_encapsulated_pixel_data_is_cut_short(self, tmp_path):
        cut = truncated_copy(CT_J2K, tmp_path, offset_inside(CT_J2K, PIXEL_TAG_LE, 12 + 2000))

        header = read_header(cut)

        assert header.has_pixels is True
        assert [reason for reason, _ in header.warnings] == ["truncated"]
        assert "fragment needs" in header.warnings[0][1]

    def test_flags_image_cut_at_the_element_boundary_before_pixel_data(self, tmp_path):
        cut = truncated_copy(demo.CT_SMALL, tmp_path, offset_inside(demo.CT_SMALL, PIXEL_TAG_LE, 0))

        header = read_header(cut)

        assert header.has_pixels is False
        assert header.warnings == [
            ("truncated", "image pixel module present but the file ends before pixel data")
        ]

    def test_finds_pixel_data_in_deflated_file(self):
        path = pydicom_file("image_dfl.dcm")
        assert "PixelData" in pydicom.dcmread(path)

        assert read_header(path).has_pixels is True

    @pytest.mark.parametrize(
        ("src", "size"),
        [
            # 144 = preamble + DICM + (0002,0000) UL element; +8 = tag and 'OB\0\0' of (0002,0001)
            pytest.param(demo.CT_SMALL, 152, id="ct-before-meta-ob-length"),
            # reportsi.dcm: the file ends exactly where the next item of a nested sequence starts
            pytest.param(demo.SR, 660, id="sr-between-sequence-items"),
        ],
    )
    def test_reports_a_cut_at_an_inner_boundary_as_truncated(self, tmp_path, src, size):
        cut = truncated_copy(src, tmp_path, size)

        assert problem_or_truncated_warning(cut) == "problem:truncated"


class TestDescribeMagic:
    @pytest.mark.parametrize(
        ("path", "expected"),
        [
            pytest.param(demo.ZIP_MR, "gzip archive", id="gzip"),
            pytest.param(pydicom_file("rtplan.dump"), "text file", id="text"),
            pytest.param(demo.NO_META, "unrecognised binary data", id="binary"),
        ],
    )
    def test_names_the_kind_of_file_from_its_first_bytes(self, path, expected):
        head = Path(path).read_bytes()[:132]

        assert describe_magic(head) == expected


class TestLooksLikeRawDataset:
    @pytest.mark.parametrize(
        ("implicit_vr", "little_endian"),
        [
            pytest.param(True, True, id="implicit-little"),
            pytest.param(False, True, id="explicit-little"),
            pytest.param(False, False, id="explicit-big"),
        ],
    )
    def test_accepts_a_dataset_written_without_preamble(self, tmp_path, implicit_vr, little_endian):
        raw = raw_dataset_copy(demo.CT_SMALL, tmp_path, implicit_vr, little_endian)

        assert looks_like_raw_dataset(raw.read_bytes()[:132]) is True

    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(demo.ZIP_MR, id="gzip"),
            pytest.param(pydicom_file("rtplan.dump"), id="text"),
        ],
    )
    def test_rejects_files_that_do_not_start_with_a_dicom_element(self, path):
        assert looks_like_raw_dataset(Path(path).read_bytes()[:132]) is False

    def test_rejects_fewer_than_eight_bytes(self):
        assert looks_like_raw_dataset(struct.pack("<HH", 0x0008, 0x0005)) is False
