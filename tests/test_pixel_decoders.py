"""Tests for scripts/pixel_decoders.py: the decoders pydicom 3.0.2's wheels lack.

Every case is a real file, and every decoded array is compared with an independent
reference: dcmtk's ``dcmdjpeg`` for JPEG, or the same image's native (uncompressed) pixel
data decoded by pydicom itself. Single-bit SEG files are pydicom's test data
(``tests/fixtures/single-bit-seg``); other images are test files shipped in pydicom's wheel.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import pixel_array
from pydicom.pixels.encoders import RLELosslessEncoder
from pydicom.uid import JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1, RLELossless
from test_decoding import plugin_spy

import demo
import dicom_io
import fast_header
import pixel_decoders
import save_slices

SEG = Path(__file__).parent / "fixtures" / "single-bit-seg"
LIVER = SEG / "liver.dcm"
"""Binary SEG, 3 frames of 512 x 512, native: the reference masks."""
LIVER_DEFLATE = SEG / "liver_deflate.dcm"
LIVER_RLE_PACKED = SEG / "liver_rle.dcm"
LIVER_ODD = SEG / "liver_nonbyte_aligned.dcm"
"""510 x 510: a frame's bits end inside a byte."""
LIVER_ODD_DEFLATE = SEG / "liver_nonbyte_aligned_deflate.dcm"

DCMDJPEG = shutil.which("dcmdjpeg")
needs_dcmtk = pytest.mark.skipif(DCMDJPEG is None, reason="dcmtk's dcmdjpeg is not installed")


def wheel_file(name: str) -> Path:
    """A test file shipped inside pydicom's wheel (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        pytest.skip(f"{name} is not shipped with this pydicom")
    return Path(path)


def pipeline_frames(path: Path) -> tuple[list[np.ndarray], list[str]]:
    """Every frame as ``save_slices`` decodes it, and the plugin that decoded each."""
    ds = dicom_io.read_for_pixels(path)
    n = int(ds.get("NumberOfFrames") or 1)
    with plugin_spy() as used:
        frames = [
            save_slices.decode_frame(ds, save_slices.Frame(str(path), i, n, None, None))
            for i in range(n)
        ]
    return frames, used


def native_frames(path: Path) -> np.ndarray:
    """All frames of a native file as pydicom decodes them, shape (frames, rows, columns...)."""
    ds = pydicom.dcmread(path)
    assert not ds.file_meta.TransferSyntaxUID.is_compressed
    arr = ds.pixel_array
    return arr if int(ds.get("NumberOfFrames") or 1) > 1 else arr[np.newaxis]


def dcmtk_frames(path: Path, tmp_path: Path) -> np.ndarray:
    """All frames of a JPEG file decompressed by dcmtk's dcmdjpeg, read back natively."""
    out = tmp_path / f"{path.stem}_dcmdjpeg.dcm"
    subprocess.run([DCMDJPEG, str(path), str(out)], check=True, capture_output=True)
    return native_frames(out)


def with_frames(source: Path, target: Path, frames: list[bytes], syntax: str, **changes) -> Path:
    """Write ``source`` again with its pixel data replaced by encapsulated ``frames``."""
    ds = pydicom.dcmread(source)
    ds.PixelData = encapsulate(frames)
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = syntax
    for keyword, value in changes.items():
        setattr(ds, keyword, value)
    ds.save_as(target, enforce_file_format=True)
    return target


def native_frame_bytes(path: Path) -> list[bytes]:
    """The native little-endian bytes of each frame of an uncompressed file."""
    ds = pydicom.dcmread(path)
    n = int(ds.get("NumberOfFrames") or 1)
    data = ds.PixelData
    size = len(data) // n
    assert ds.BitsAllocated > 1 and ds.file_meta.TransferSyntaxUID.is_little_endian
    return [data[i * size : (i + 1) * size] for i in range(n)]


def deflate(data: bytes) -> bytes:
    """Raw Deflate (RFC 1951), as Deflated Image Frame Compression stores each frame."""
    compressor = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    return compressor.compress(data) + compressor.flush()


class TestJpegExtended12Bit:
    def test_nm_frame_decodes_through_imagecodecs_where_no_other_plugin_does(self):
        frames, plugins = pipeline_frames(demo.NM_JPEG_EXTENDED)

        assert plugins == ["imagecodecs"]
        (frame,) = frames
        assert frame.shape == (1024, 256) and frame.dtype == np.uint16
        # NM counts: the brightest pixel of this whole-body scan counts 264
        assert int(frame.max()) == 264
        assert int(frame.sum()) == 3_767_007

    @needs_dcmtk
    @pytest.mark.parametrize(
        "path",
        [
            pytest.param(demo.NM_JPEG_EXTENDED, id="JPGExtended"),
            pytest.param(demo.JPEG_LOSSY, id="JPEG-lossy_nonconforming_sos"),
        ],
    )
    def test_frame_equals_what_dcmtk_decompresses(self, path, tmp_path):
        frames, _ = pipeline_frames(path)

        np.testing.assert_array_equal(np.stack(frames), dcmtk_frames(path, tmp_path))

    def test_stream_with_nonconforming_sos_decodes_like_its_fixed_copy(self):
        # pydicom's README: JPGExtended.dcm is the "fixed version of JPEG-lossy.dcm"
        lossy, _ = pipeline_frames(demo.JPEG_LOSSY)
        fixed, _ = pipeline_frames(demo.NM_JPEG_EXTENDED)

        np.testing.assert_array_equal(lossy[0], fixed[0])

    def test_imagecodecs_is_the_last_plugin_so_existing_ones_keep_their_bytes(self):
        pixel_decoders.register()
        for syntax in (JPEGExtended12Bit, JPEGLossless, JPEGLosslessSV1):
            plugins = list(pydicom.pixels.get_decoder(syntax)._available)  # in trying order
            assert plugins[-1] == "imagecodecs"
            assert {"gdcm", "pylibjpeg"} & set(plugins[:-1])

    def test_corrupt_stream_still_raises(self, tmp_path):
        ds = pydicom.dcmread(demo.NM_JPEG_EXTENDED)
        (stream,) = generate_frames(ds.PixelData, number_of_frames=1)
        broken = stream[:2] + bytes(200) + stream[202:]  # SOI, then no marker at all
        path = with_frames(demo.NM_JPEG_EXTENDED, tmp_path / "bad.dcm", [broken], JPEGExtended12Bit)

        with pytest.raises(RuntimeError, match="imagecodecs"):
            pipeline_frames(path)


class TestLosslessJpeg:
    @pytest.mark.parametrize(
        ("name", "syntax", "predictor"),
        [
            pytest.param("CT_small.dcm", JPEGLosslessSV1, 1, id="ct_16_bit_signed-sv1"),
            pytest.param("MR_small.dcm", JPEGLossless, 7, id="mr_16_bit_signed-p14_predictor_7"),
        ],
    )
    def test_imagecodecs_plugin_gives_the_original_pixels_and_dcmtk_agrees(
        self, name, syntax, predictor, tmp_path
    ):
        imagecodecs = pytest.importorskip("imagecodecs")
        source = wheel_file(name)
        original = native_frames(source)
        ds = pydicom.dcmread(source)
        stored = original[0].view(np.uint16) & ((1 << int(ds.BitsStored)) - 1)
        stream = imagecodecs.jpeg8_encode(
            stored, lossless=True, predictor=predictor, bitspersample=int(ds.BitsStored)
        )
        path = with_frames(source, tmp_path / f"{name}_lossless.dcm", [stream], syntax)
        pixel_decoders.register()

        decoded = pixel_array(pydicom.dcmread(path), decoding_plugin="imagecodecs")

        np.testing.assert_array_equal(decoded, original[0])
        if DCMDJPEG:
            np.testing.assert_array_equal(dcmtk_frames(path, tmp_path)[0], original[0])

    def test_12_bit_lossless_frame_gives_the_nm_counts(self, tmp_path):
        imagecodecs = pytest.importorskip("imagecodecs")
        (counts,), _ = pipeline_frames(demo.NM_JPEG_EXTENDED)
        stream = imagecodecs.jpeg8_encode(counts, lossless=True, predictor=1, bitspersample=12)
        path = with_frames(demo.NM_JPEG_EXTENDED, tmp_path / "nm_ll.dcm", [stream], JPEGLosslessSV1)
        pixel_decoders.register()

        decoded = pixel_array(pydicom.dcmread(path), decoding_plugin="imagecodecs")

        np.testing.assert_array_equal(decoded, counts)


class TestDeflatedImageFrameCompression:
    @pytest.mark.parametrize(
        ("path", "reference"),
        [
            pytest.param(LIVER_DEFLATE, LIVER, id="seg_512"),
            pytest.param(LIVER_ODD_DEFLATE, LIVER_ODD, id="seg_510_frames_end_mid_byte"),
        ],
    )
    def test_binary_seg_decodes_to_the_native_masks(self, path, reference):
        frames, plugins = pipeline_frames(path)

        assert set(plugins) == {"pixel_decoders"}
        expected = native_frames(reference)
        np.testing.assert_array_equal(np.stack(frames), expected)
        assert [int(f.sum()) for f in frames] == [36233, 35645, 35220]  # liver pixels per slice

    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("MR_small.dcm", id="mr_16_bit_signed"),
            pytest.param("rtdose.dcm", id="rtdose_32_bit_15_frames"),
            pytest.param("SC_rgb_small_odd.dcm", id="rgb_3x3_odd_length"),
            pytest.param("examples_rgb_color.dcm", id="ultrasound_8_bit_rgb"),
        ],
    )
    def test_frames_deflated_again_decode_to_the_original_pixels(self, name, tmp_path):
        source = wheel_file(name)
        frames = [deflate(f) for f in native_frame_bytes(source)]
        path = with_frames(
            source, tmp_path / name, frames, pixel_decoders.DEFLATED_IMAGE_FRAME_COMPRESSION
        )

        decoded, plugins = pipeline_frames(path)

        assert set(plugins) == {"pixel_decoders"}
        np.testing.assert_array_equal(np.stack(decoded), native_frames(source))

    def test_header_reads_find_the_encapsulated_pixels(self):
        header = dicom_io.read_header(LIVER_DEFLATE)
        fast = fast_header.read_header_fast(LIVER_DEFLATE)

        syntax = header.dataset.file_meta.TransferSyntaxUID
        assert syntax.name == "Deflated Image Frame Compression"
        assert syntax.is_encapsulated and not syntax.is_deflated
        assert header.has_pixels and header.warnings == []
        assert fast is not None and fast[0].has_pixels and fast[0].warnings == []

    def test_truncated_frame_raises_instead_of_giving_short_pixels(self, tmp_path):
        (frame, *rest) = [deflate(f) for f in native_frame_bytes(wheel_file("MR_small.dcm"))]
        cut = frame[: len(frame) // 2]
        path = with_frames(
            wheel_file("MR_small.dcm"),
            tmp_path / "cut.dcm",
            [cut, *rest],
            pixel_decoders.DEFLATED_IMAGE_FRAME_COMPRESSION,
        )

        with pytest.raises(RuntimeError, match="final Deflate block"):
            pipeline_frames(path)


JPEG_XL_LOSSLESS = "1.2.840.10008.1.2.4.110"


class TestJpegXl:
    @pytest.mark.parametrize(
        "name",
        [
            pytest.param("CT_small.dcm", id="ct_16_bit_signed"),
            pytest.param("MR_small.dcm", id="mr_16_bit_signed"),
            pytest.param("SC_rgb_small_odd.dcm", id="rgb_3x3_odd_length"),
            pytest.param("examples_rgb_color.dcm", id="ultrasound_8_bit_rgb"),
        ],
    )
    def test_lossless_frames_decode_to_the_original_pixels(self, name, tmp_path):
        import imagecodecs

        source = wheel_file(name)
        original = native_frames(source)
        unsigned = original.view(f"u{original.dtype.itemsize}")  # JPEG XL codes unsigned
        frames = [imagecodecs.jpegxl_encode(f, lossless=True) for f in unsigned]
        path = with_frames(source, tmp_path / name, frames, JPEG_XL_LOSSLESS)

        decoded, plugins = pipeline_frames(path)

        assert set(plugins) == {"imagecodecs"}
        np.testing.assert_array_equal(np.stack(decoded), original)

    def test_ct_values_are_hounsfield_units_after_the_rescale(self, tmp_path):
        import imagecodecs

        source = wheel_file("CT_small.dcm")
        (frame,) = native_frames(source).view(np.uint16)
        path = with_frames(
            source,
            tmp_path / "ct.dcm",
            [imagecodecs.jpegxl_encode(frame, lossless=True)],
            JPEG_XL_LOSSLESS,
        )
        ds = dicom_io.read_for_pixels(path)
        stored = save_slices.decode_frame(ds, save_slices.Frame(str(path), 0, 1, None, None))
        values, units, _ = save_slices.slice_values(stored, ds, 0)

        reference = pydicom.dcmread(source)
        assert units == "HU"
        expected = reference.pixel_array * float(reference.RescaleSlope) + float(
            reference.RescaleIntercept
        )
        np.testing.assert_array_equal(values, expected.astype(np.float32))

    def test_header_reads_see_an_encapsulated_syntax(self, tmp_path):
        import imagecodecs

        source = wheel_file("MR_small.dcm")
        frames = [
            imagecodecs.jpegxl_encode(f, lossless=True)
            for f in native_frames(source).view(np.uint16)
        ]
        path = with_frames(source, tmp_path / "mr.dcm", frames, JPEG_XL_LOSSLESS)

        header = dicom_io.read_header(path)
        syntax = header.dataset.file_meta.TransferSyntaxUID
        assert syntax.name == "JPEG XL Lossless" and syntax.is_encapsulated
        assert header.has_pixels and header.warnings == []
        fast = fast_header.read_header_fast(path)
        assert fast is not None and fast[0].has_pixels and fast[0].warnings == []

    def test_a_corrupt_codestream_raises(self, tmp_path):
        source = wheel_file("MR_small.dcm")
        path = with_frames(
            source, tmp_path / "bad.dcm", [b"\xff\x0a" + b"\0" * 64], JPEG_XL_LOSSLESS
        )

        with pytest.raises(RuntimeError):
            pipeline_frames(path)


def test_htj2k_lossless_decodes_through_pydicoms_own_plugins(tmp_path):
    """High-Throughput JPEG 2000 needs nothing of ours: pylibjpeg-openjpeg decodes it."""
    import imagecodecs

    source = wheel_file("CT_small.dcm")
    (frame,) = native_frames(source)
    encoded = imagecodecs.htj2k_encode(frame, level=0)  # level 0: reversible
    path = with_frames(source, tmp_path / "ct.dcm", [encoded], "1.2.840.10008.1.2.4.201")

    (decoded,), plugins = pipeline_frames(path)

    assert plugins == ["pylibjpeg"]
    np.testing.assert_array_equal(decoded, frame)


def rle_one_byte_per_pixel(mask: np.ndarray) -> bytes:
    """One frame of 0/1 values RLE-encoded one byte per pixel in one segment (CP-2301), by
    pydicom's RLE encoder."""
    return RLELosslessEncoder.encode(
        mask.astype(np.uint8),
        rows=int(mask.shape[0]),
        columns=int(mask.shape[1]),
        samples_per_pixel=1,
        bits_allocated=8,
        bits_stored=8,
        pixel_representation=0,
        photometric_interpretation="MONOCHROME2",
        number_of_frames=1,
    )


def cp2301_rle_frames(path: Path) -> list[bytes]:
    """RLE frames of a native binary SEG, one byte per pixel in one segment (CP-2301)."""
    return [rle_one_byte_per_pixel(frame) for frame in native_frames(path)]


class TestSingleBitRle:
    def test_bit_packed_segment_decodes_to_the_native_masks(self):
        frames, plugins = pipeline_frames(LIVER_RLE_PACKED)

        assert set(plugins) == {"pixel_decoders"}
        np.testing.assert_array_equal(np.stack(frames), native_frames(LIVER))

    @pytest.mark.parametrize(
        "reference",
        [pytest.param(LIVER, id="seg_512"), pytest.param(LIVER_ODD, id="seg_510")],
    )
    def test_one_byte_per_pixel_segment_decodes_to_the_native_masks(self, reference, tmp_path):
        path = with_frames(
            reference, tmp_path / "rle.dcm", cp2301_rle_frames(reference), RLELossless
        )
        assert pydicom.dcmread(path).BitsAllocated == 1

        frames, plugins = pipeline_frames(path)
        ours = pixel_array(pydicom.dcmread(path), decoding_plugin="pixel_decoders")

        # pylibjpeg-rle already reads this layout; ours is the fallback and must agree
        assert set(plugins) <= {"pylibjpeg", "pixel_decoders"}
        np.testing.assert_array_equal(np.stack(frames), native_frames(reference))
        np.testing.assert_array_equal(ours, native_frames(reference))

    def test_segment_of_the_wrong_length_raises(self, tmp_path):
        frames = cp2301_rle_frames(LIVER)
        short = rle_one_byte_per_pixel(np.zeros((256, 512), np.uint8))
        path = with_frames(LIVER, tmp_path / "short.dcm", [short, *frames[1:]], RLELossless)

        with pytest.raises(RuntimeError, match="single-bit frame needs"):
            pipeline_frames(path)

    def test_rle_of_other_bit_depths_stays_with_pydicoms_plugins(self):
        _, plugins = pipeline_frames(demo.MR_RLE)

        assert "pixel_decoders" not in plugins


class TestUnit:
    def test_unpack_bits_is_least_significant_bit_first(self):
        assert pixel_decoders.unpack_bits(b"\x05\x80", 16) == bytes([1, 0, 1] + [0] * 12 + [1])
        assert pixel_decoders.unpack_bits(b"\x05\x80", 3) == b"\x01\x00\x01"

    def test_rle_segment_runs_and_literals(self):
        # literal of 3 bytes, then a run of 4 copies (header 253 = -3), then a no-op (128)
        assert pixel_decoders.decode_rle_segment(b"\x02abc\xfdz\x80") == b"abczzzz"

    def test_inflate_frame_refuses_a_stream_without_its_end(self):
        whole = deflate(bytes(range(256)) * 64)
        assert pixel_decoders.inflate_frame(whole) == bytes(range(256)) * 64
        with pytest.raises(ValueError, match="final Deflate block"):
            pixel_decoders.inflate_frame(whole[:-4])


def test_registering_the_decoders_does_not_import_imagecodecs():
    code = (
        "import sys, json; import dicom_io, save_slices, pixel_decoders; "
        "pixel_decoders.register(); print(json.dumps('imagecodecs' in sys.modules))"
    )
    scripts = Path(__file__).resolve().parents[1] / "scripts"
    out = subprocess.run(
        [sys.executable, "-c", code],
        env={"PYTHONPATH": str(scripts), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    assert json.loads(out.stdout) is False
