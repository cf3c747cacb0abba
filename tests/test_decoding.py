"""Every transfer syntax decodes from wheels alone: the pipeline's slice decoding
(``dicom_io.read_for_pixels`` → ``save_slices.decode_frame`` → ``save_slices.slice_values``)
compared across copies of the same image stored in different transfer syntaxes.

The images are the test files shipped inside pydicom's wheel (never downloaded). Lossless
copies must give identical arrays; lossy copies must stay within ``LOSSY_TOLERANCE`` of
their reference. Each test records the transfer syntax and the pydicom decoding plugin
that produced the frames (``record_property``, visible with ``--junitxml``).
"""

from __future__ import annotations

import functools
import shutil
import struct
import zlib
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
import pydicom
import pytest
from pydicom.data import get_testdata_file
from pydicom.encaps import encapsulate, generate_frames
from pydicom.pixels import apply_modality_lut, convert_color_space, get_decoder, pixel_array
from pydicom.pixels.decoders.base import DecodeRunner
from pydicom.uid import (
    JPEG2000,
    UID,
    DeflatedExplicitVRLittleEndian,
    ExplicitVRBigEndian,
    ExplicitVRLittleEndian,
    ImplicitVRLittleEndian,
    JPEG2000Lossless,
    JPEGBaseline8Bit,
    JPEGLosslessSV1,
    JPEGLSLossless,
    JPEGLSNearLossless,
    RLELossless,
)

import demo
import dicom_io
import extract_metadata
import merge_metadata
import pixel_decoders
import save_slices
import scan_study

LOSSY_TOLERANCE = 0.02
"""Lossy copies: mean |decoded - reference| must stay below 2 % of the reference's value range."""

WHEEL_PLUGINS = {
    "gdcm",
    "pylibjpeg",
    "pyjpegls",
    "pillow",
    "pydicom",
    "imagecodecs",
    "pixel_decoders",
}
"""pydicom decoding plugins backed by PyPI wheels (python-gdcm, pylibjpeg-openjpeg,
pylibjpeg-rle, pyjpegls, Pillow, imagecodecs), by pydicom itself (its own RLE decoder) or
by ``scripts/pixel_decoders.py`` (deflated frames, single-bit RLE)."""


def shipped(name: str) -> Path | None:
    """Path of a test file inside pydicom's wheel, or None when this pydicom lacks it."""
    path = get_testdata_file(name, download=False)
    return Path(path) if path else None


def shipped_or_skip(name: str) -> Path:
    """Path of a test file inside pydicom's wheel; skips the test when it is absent."""
    path = shipped(name)
    if path is None:
        pytest.skip(f"{name} is not shipped with this pydicom")
    return path


@dataclass(frozen=True)
class Decoded:
    """What the pipeline makes of every frame of one file."""

    syntax: UID
    plugins: tuple[str, ...]
    """Decoding plugins that produced the frames; empty for native (uncompressed) syntaxes."""
    raw: tuple[np.ndarray, ...]
    """``decode_frame`` output per frame."""
    values: tuple[np.ndarray, ...]
    """``slice_values`` output per frame: what ``save_slices`` writes to .npy."""
    units: str
    photometric: str


@contextmanager
def plugin_spy() -> Iterator[list[str]]:
    """Collect the name of the pydicom plugin that decodes each encapsulated frame.

    pydicom tries its plugins in turn inside ``DecodeRunner._decode_frame`` and keeps
    the one that succeeded in ``runner._previous``.
    """
    used: list[str] = []
    original = DecodeRunner._decode_frame

    def spy(runner, src):
        frame = original(runner, src)
        used.append(runner._previous[0])
        return frame

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(DecodeRunner, "_decode_frame", spy)
        yield used


@functools.cache
def decode_with_pipeline(path: str) -> Decoded:
    """Decode every frame of a file exactly as ``save_slices.save_series`` does."""
    ds = dicom_io.read_for_pixels(path)
    n_frames = int(ds.get("NumberOfFrames") or 1)
    raw, values, units, photometric = [], [], set(), set()
    with plugin_spy() as used:
        for index in range(n_frames):
            frame = save_slices.Frame(path, index, n_frames, None, None)
            arr = save_slices.decode_frame(ds, frame)
            value, unit, photo = save_slices.slice_values(arr, ds, index)
            raw.append(arr)
            values.append(value)
            units.add(unit)
            photometric.add(photo)
    assert len(units) == 1 and len(photometric) == 1
    return Decoded(
        syntax=ds.file_meta.TransferSyntaxUID,
        plugins=tuple(sorted(set(used))),
        raw=tuple(raw),
        values=tuple(values),
        units=units.pop(),
        photometric=photometric.pop(),
    )


def decode(path: Path, record_property) -> Decoded:
    """Decode with the pipeline and record syntax and plugin on the test report."""
    decoded = decode_with_pipeline(str(path))
    record_property("transfer_syntax", decoded.syntax.name)
    record_property("plugin", "+".join(decoded.plugins) or "native")
    return decoded


def assert_decoded_from_wheels(decoded: Decoded) -> None:
    """Compressed syntaxes need exactly one wheel-backed plugin; native ones need none."""
    if decoded.syntax.is_compressed:
        assert len(decoded.plugins) == 1, decoded.plugins
        assert set(decoded.plugins) <= WHEEL_PLUGINS
    else:
        assert decoded.plugins == ()


def relative_mean_abs_difference(values: np.ndarray, reference: np.ndarray) -> float:
    """Mean absolute difference as a fraction of the reference's value range."""
    ref = reference.astype(np.float64)
    span = float(ref.max() - ref.min()) or 1.0
    return float(np.abs(values.astype(np.float64) - ref).mean() / span)


def case(reference: str, candidate: str, syntax: UID, case_id: str, marks=()):
    return pytest.param(reference, candidate, syntax, id=case_id, marks=marks)


LOSSLESS_CASES = [
    case("MR_small.dcm", "MR_small_implicit.dcm", ImplicitVRLittleEndian, "implicit_vr_le-mr"),
    case("MR_small.dcm", "MR_small_bigendian.dcm", ExplicitVRBigEndian, "explicit_vr_be-mr"),
    case("MR_small.dcm", "MR_small_expb.dcm", ExplicitVRBigEndian, "explicit_vr_be-mr_expb"),
    case("MR_small.dcm", "MR_small_padded.dcm", ExplicitVRLittleEndian, "explicit_vr_le-mr_padded"),
    case("MR_small.dcm", "MR_small_RLE.dcm", RLELossless, "rle_lossless-mr"),
    case("MR_small.dcm", "MR_small_jpeg_ls_lossless.dcm", JPEGLSLossless, "jpeg_ls_lossless-mr"),
    case("MR_small.dcm", "MR_small_jp2klossless.dcm", JPEG2000Lossless, "jpeg_2000_lossless-mr"),
    case("rtdose.dcm", "rtdose_expb.dcm", ExplicitVRBigEndian, "explicit_vr_be-rtdose_15_frames"),
    case("rtdose.dcm", "rtdose_rle.dcm", RLELossless, "rle_lossless-rtdose_15_frames"),
    case(
        "rtdose_1frame.dcm", "rtdose_expb_1frame.dcm", ExplicitVRBigEndian, "explicit_vr_be-rtdose"
    ),
    case("rtdose_1frame.dcm", "rtdose_rle_1frame.dcm", RLELossless, "rle_lossless-rtdose"),
    case("liver_1frame.dcm", "liver_expb_1frame.dcm", ExplicitVRBigEndian, "explicit_vr_be-1_bit"),
    case(
        "SC_rgb_small_odd.dcm",
        "SC_rgb_small_odd_big_endian.dcm",
        ExplicitVRBigEndian,
        "explicit_vr_be-rgb_3x3",
    ),
    # No uncompressed 100x100 SC_rgb is shipped: its RLE copy is the reference (and
    # TestEveryInstalledPlugin shows both RLE decoders agree on it).
    case("SC_rgb_rle.dcm", "SC_rgb_jpeg_gdcm.dcm", JPEGLosslessSV1, "jpeg_lossless_sv1-rgb"),
    case("SC_rgb_rle.dcm", "SC_rgb_rle_16bit.dcm", RLELossless, "rle_lossless-rgb_16_bit"),
    case(
        "SC_rgb_rle.dcm",
        "SC_rgb_rle_32bit.dcm",
        RLELossless,
        "rle_lossless-rgb_32_bit",
    ),
]

LOSSY_CASES = [
    case("SC_rgb_rle.dcm", "SC_rgb_dcmtk_+eb+cr.dcm", JPEGBaseline8Bit, "jpeg_baseline-rgb"),
    case("SC_rgb_rle.dcm", "SC_rgb_dcmtk_+eb+cy+n1.dcm", JPEGBaseline8Bit, "jpeg_baseline-ybr_n1"),
    case("SC_rgb_rle.dcm", "SC_rgb_dcmtk_+eb+cy+n2.dcm", JPEGBaseline8Bit, "jpeg_baseline-ybr_n2"),
    case("SC_rgb_rle.dcm", "SC_rgb_dcmtk_+eb+cy+np.dcm", JPEGBaseline8Bit, "jpeg_baseline-ybr_422"),
    case("SC_rgb_rle.dcm", "SC_rgb_dcmtk_+eb+cy+s2.dcm", JPEGBaseline8Bit, "jpeg_baseline-ybr_s2"),
    case("SC_rgb_rle.dcm", "SC_rgb_dcmtk_+eb+cy+s4.dcm", JPEGBaseline8Bit, "jpeg_baseline-ybr_s4"),
    case("SC_rgb_rle.dcm", "SC_rgb_jpeg_dcmtk.dcm", JPEGBaseline8Bit, "jpeg_baseline-ybr_dcmtk"),
    case(
        "SC_rgb_rle.dcm", "SC_rgb_jpeg_lossy_gdcm.dcm", JPEGBaseline8Bit, "jpeg_baseline-ybr_gdcm"
    ),
    case("SC_rgb_rle.dcm", "SC_rgb_gdcm_KY.dcm", JPEG2000, "jpeg_2000-rgb"),
    case("SC_rgb_rle.dcm", "SC_rgb_jls_lossy_line.dcm", JPEGLSNearLossless, "jpeg_ls_near-line"),
    case(
        "SC_rgb_rle.dcm", "SC_rgb_jls_lossy_sample.dcm", JPEGLSNearLossless, "jpeg_ls_near-sample"
    ),
    case(
        "SC_rgb_rle.dcm",
        "SC_ybr_full_422_uncompressed.dcm",
        ExplicitVRLittleEndian,
        "explicit_vr_le-ybr_full_422_subsampled",
    ),
    case(
        "SC_rgb_small_odd.dcm",
        "SC_rgb_small_odd_jpeg.dcm",
        JPEGBaseline8Bit,
        "jpeg_baseline-rgb_3x3",
    ),
    # SC_rgb_jpeg_dcmd.dcm is the uncompressed export of SC_rgb_jpeg.dcm (256x256 tile).
    case("SC_rgb_jpeg_dcmd.dcm", "SC_rgb_jpeg.dcm", JPEGBaseline8Bit, "jpeg_baseline-tile"),
    case(
        "SC_rgb_jpeg_dcmd.dcm",
        "SC_jpeg_no_color_transform.dcm",
        JPEGBaseline8Bit,
        "jpeg_baseline-tile_rgb_no_transform",
    ),
    case(
        "SC_rgb_jpeg_dcmd.dcm",
        "SC_jpeg_no_color_transform_2.dcm",
        JPEGBaseline8Bit,
        "jpeg_baseline-tile_rgb_no_transform_app14",
    ),
    case(
        "SC_rgb_jpeg_dcmd.dcm",
        "SC_rgb_jpeg_app14_dcmd.dcm",
        JPEGBaseline8Bit,
        "jpeg_baseline-tile_app14",
    ),
]

NO_REFERENCE_CASES = [
    pytest.param("JPEG2000.dcm", JPEG2000, id="jpeg_2000-nm_16_bit"),
    pytest.param("693_J2KI.dcm", JPEG2000, id="jpeg_2000-ct_14_bit_signed"),
    pytest.param("J2K_pixelrep_mismatch.dcm", JPEG2000Lossless, id="jpeg_2000_lossless-ct_13_bit"),
    pytest.param("GDCMJ2K_TextGBR.dcm", JPEG2000Lossless, id="jpeg_2000_lossless-ybr_rct_text"),
    pytest.param("examples_jpeg2k.dcm", JPEG2000Lossless, id="jpeg_2000_lossless-ybr_rct_us"),
    pytest.param("JPEGLSNearLossless_08.dcm", JPEGLSNearLossless, id="jpeg_ls_near-8_bit"),
    pytest.param("JPEGLSNearLossless_16.dcm", JPEGLSNearLossless, id="jpeg_ls_near-16_bit"),
]

SEG_FIXTURES = Path(__file__).parent / "fixtures" / "single-bit-seg"
SEG_NATIVE = SEG_FIXTURES / "liver.dcm"
BROKEN_JPEG = "nm/broken_jpeg.dcm"
"""JPEG-lossy.dcm with its stream's markers overwritten: no decoder can read it."""
CUT_DEFLATE = "mr/cut_deflate.dcm"
"""MR_small.dcm as Deflated Image Frame Compression, its frame's Deflate stream cut in half."""
NM_FRAME = save_slices.Frame("nm", 0, 1, None, None)

UNDECODABLE_CASES = [
    # 12-bit JPEG Extended (JPGExtended.dcm, JPEG-lossy.dcm) decodes through imagecodecs:
    # tests/test_pixel_decoders.py compares it with dcmtk.
    # README of pydicom's test data: 4 codestream bytes overwritten, "not a valid JPEG".
    pytest.param(
        "JPEG2000-embedded-sequence-delimiter.dcm", JPEG2000, id="jpeg_2000-corrupt_codestream"
    ),
]


def param_values(params) -> list[tuple]:
    return [p.values for p in params]


class TestSameImageInLosslessSyntaxes:
    @pytest.mark.parametrize(("reference", "candidate", "syntax"), LOSSLESS_CASES)
    def test_lossless_copy_saves_the_identical_array(
        self, reference, candidate, syntax, record_property
    ):
        expected = decode_with_pipeline(str(shipped_or_skip(reference)))
        decoded = decode(shipped_or_skip(candidate), record_property)

        assert decoded.syntax == syntax
        assert_decoded_from_wheels(decoded)
        assert (decoded.units, decoded.photometric) == (expected.units, expected.photometric)
        assert len(decoded.values) == len(expected.values)
        for values, reference_values in zip(decoded.values, expected.values, strict=True):
            assert values.dtype == reference_values.dtype
            np.testing.assert_array_equal(values, reference_values)

    def test_eight_lossless_syntaxes_are_compared(self):
        covered = set()
        for reference, candidate, syntax in param_values(LOSSLESS_CASES):
            if shipped(reference) and shipped(candidate):
                header = pydicom.dcmread(shipped(reference), stop_before_pixels=True)
                covered |= {syntax, header.file_meta.TransferSyntaxUID}
        if shipped("image_dfl.dcm"):
            covered.add(DeflatedExplicitVRLittleEndian)
        assert sorted(s.name for s in covered) == [
            "Deflated Explicit VR Little Endian",
            "Explicit VR Big Endian",
            "Explicit VR Little Endian",
            "Implicit VR Little Endian",
            "JPEG 2000 Image Compression (Lossless Only)",
            "JPEG Lossless, Non-Hierarchical, First-Order Prediction (Process 14 "
            "[Selection Value 1])",
            "JPEG-LS Lossless Image Compression",
            "RLE Lossless",
        ]

    def test_deflated_image_equals_its_pixel_bytes_inflated_with_zlib(self, record_property):
        path = shipped_or_skip("image_dfl.dcm")
        decoded = decode(path, record_property)
        header = pydicom.dcmread(path, stop_before_pixels=True)

        assert decoded.syntax == DeflatedExplicitVRLittleEndian
        assert_decoded_from_wheels(decoded)
        assert "RescaleSlope" not in header and "RescaleIntercept" not in header
        expected = inflated_pixels(path, int(header.Rows), int(header.Columns))
        assert decoded.values[0].dtype == np.float32
        np.testing.assert_array_equal(decoded.values[0], expected.astype(np.float32))

    @pytest.mark.parametrize(
        ("name", "bits"),
        [
            pytest.param("SC_rgb_rle_2frame.dcm", 8, id="rle_lossless-rgb_2_frames"),
            pytest.param("SC_rgb_rle_16bit_2frame.dcm", 16, id="rle_lossless-rgb_16_bit_2_frames"),
            pytest.param(
                "SC_rgb_rle_32bit_2frame.dcm",
                32,
                id="rle_lossless-rgb_32_bit_2_frames",
            ),
        ],
    )
    def test_two_frame_copy_saves_the_image_then_its_inverse(self, name, bits, record_property):
        single = decode_with_pipeline(str(shipped_or_skip("SC_rgb_rle.dcm"))).values[0]
        decoded = decode(shipped_or_skip(name), record_property)

        assert decoded.syntax == RLELossless
        assert decoded.raw[0].itemsize * 8 == bits
        assert len(decoded.values) == 2
        np.testing.assert_array_equal(decoded.values[0], single)
        np.testing.assert_array_equal(decoded.values[1], 255 - single)


def inflated_pixels(path: Path, rows: int, columns: int) -> np.ndarray:
    """8-bit pixel data of a deflated file, inflated with zlib and cut out by hand."""
    raw = path.read_bytes()
    assert raw[128:132] == b"DICM" and raw[132:136] == b"\x02\x00\x00\x00"
    (meta_length,) = struct.unpack("<L", raw[140:144])  # (0002,0000) UL value
    body = zlib.decompress(raw[144 + meta_length :], -zlib.MAX_WBITS)
    start = body.rfind(b"\xe0\x7f\x10\x00")  # (7FE0,0010) explicit VR little endian
    assert body[start + 4 : start + 6] in (b"OB", b"OW")
    (length,) = struct.unpack("<L", body[start + 8 : start + 12])
    assert length == rows * columns
    data = body[start + 12 : start + 12 + length]
    return np.frombuffer(data, dtype=np.uint8).reshape(rows, columns)


class TestSameImageInLossySyntaxes:
    @pytest.mark.parametrize(("reference", "candidate", "syntax"), LOSSY_CASES)
    def test_lossy_copy_saves_an_array_within_tolerance(
        self, reference, candidate, syntax, record_property
    ):
        expected = decode_with_pipeline(str(shipped_or_skip(reference))).values[0]
        decoded = decode(shipped_or_skip(candidate), record_property)

        assert decoded.syntax == syntax
        assert_decoded_from_wheels(decoded)
        assert decoded.photometric == "RGB"  # YBR_FULL / YBR_FULL_422 converted, not kept
        values = decoded.values[0]
        assert values.dtype == expected.dtype == np.uint8
        assert values.shape == expected.shape
        difference = relative_mean_abs_difference(values, expected)
        record_property("relative_mean_abs_difference", round(difference, 5))
        assert difference < LOSSY_TOLERANCE

    def test_mr_recompressed_as_lossy_jpeg_2000_saves_an_array_within_tolerance(
        self, tmp_path, record_property
    ):
        ds = pydicom.dcmread(shipped_or_skip("MR_small.dcm"))
        ds.compress(JPEG2000, j2k_cr=[10])  # pylibjpeg-openjpeg's encoder, 10:1
        ds.save_as(tmp_path / "MR_small_j2k_lossy.dcm", enforce_file_format=True)
        expected = decode_with_pipeline(str(shipped_or_skip("MR_small.dcm"))).values[0]
        decoded = decode(tmp_path / "MR_small_j2k_lossy.dcm", record_property)

        assert decoded.syntax == JPEG2000
        assert_decoded_from_wheels(decoded)
        values = decoded.values[0]
        assert values.dtype == np.float32 and values.shape == (64, 64)
        assert not np.array_equal(values, expected)  # really lossy, else the case proves little
        assert relative_mean_abs_difference(values, expected) < LOSSY_TOLERANCE


class TestFilesWithoutAnUncompressedCopy:
    @pytest.mark.parametrize(("name", "syntax"), NO_REFERENCE_CASES)
    def test_file_saves_what_pydicom_decodes_by_default(self, name, syntax, record_property):
        path = shipped_or_skip(name)
        decoded = decode(path, record_property)
        ds = pydicom.dcmread(path)

        assert decoded.syntax == syntax
        assert_decoded_from_wheels(decoded)
        reference = ds.pixel_array
        if reference.ndim == 3:
            assert decoded.photometric == "RGB"
            np.testing.assert_array_equal(decoded.values[0], reference)
        else:
            expected = np.asarray(apply_modality_lut(reference, ds), dtype=np.float32)
            np.testing.assert_array_equal(decoded.values[0], expected)
        assert decoded.values[0].shape[:2] == (ds.Rows, ds.Columns)


class TestEveryInstalledPlugin:
    @pytest.mark.parametrize(
        "name",
        sorted(
            {
                candidate
                for _, candidate, syntax in param_values(LOSSLESS_CASES)
                if syntax.is_compressed
            }
            | {"SC_rgb_rle.dcm"}
        ),
    )
    def test_every_plugin_that_decodes_a_lossless_file_gives_the_same_array(
        self, name, record_property
    ):
        path = shipped_or_skip(name)
        pipeline = decode_with_pipeline(str(path)).raw
        ds = pydicom.dcmread(path)
        succeeded = []
        for plugin in get_decoder(ds.file_meta.TransferSyntaxUID).available_plugins:
            try:
                arr = pixel_array(ds, decoding_plugin=plugin)
            except Exception:  # noqa: BLE001 - a plugin that cannot decode is just recorded
                continue
            frames = arr if len(pipeline) > 1 else arr[np.newaxis]
            np.testing.assert_array_equal(frames, np.stack(pipeline), err_msg=plugin)
            succeeded.append(plugin)
        record_property("plugins_that_decode", "+".join(succeeded))
        assert succeeded


class TestUndecodablePixels:
    @pytest.mark.parametrize(("name", "syntax"), UNDECODABLE_CASES)
    def test_decode_frame_raises_when_no_installed_plugin_decodes(self, name, syntax):
        ds = dicom_io.read_for_pixels(shipped_or_skip(name))
        assert ds.file_meta.TransferSyntaxUID == syntax
        frame = save_slices.Frame(name, 0, int(ds.get("NumberOfFrames") or 1), None, None)
        with pytest.raises(RuntimeError, match="Unable to decode"):
            save_slices.decode_frame(ds, frame)

    @pytest.mark.parametrize(
        ("path", "detail"),
        [
            pytest.param(BROKEN_JPEG, "imagecodecs:", id="jpeg_stream_without_markers"),
            pytest.param(CUT_DEFLATE, "final Deflate block", id="deflated_frame_cut_short"),
        ],
    )
    def test_main_writes_a_warning_row_and_keeps_the_header_row(self, tiny_study, path, detail):
        rows = [e for e in tiny_study["errors"] if e["path"] == path]
        assert len(rows) == 1
        assert rows[0]["reason"] == "undecodable_pixels"
        assert rows[0]["severity"] == "warning"
        assert rows[0]["stage"] == "save_slices"
        assert detail in rows[0]["detail"]
        instance = [r for r in tiny_study["instances"] if r["path"] == path]
        assert len(instance) == 1 and instance[0]["has_pixels"]
        assert not [e for e in tiny_study["extract_errors"] if e["path"] == path]
        assert not [m for m in tiny_study["manifest"] if m["source_path"] == path]

    def test_main_still_saves_the_decodable_files_next_to_it(self, tiny_study):
        by_source = {m["source_path"]: m for m in tiny_study["manifest"]}
        assert sorted(by_source) == [
            "ct/image_dfl.dcm",
            "mr/MR_small_jp2klossless.dcm",
            "nm/JPEG-lossy.dcm",
            "seg/liver_deflate.dcm",
        ]
        mr = np.load(tiny_study["results"] / by_source["mr/MR_small_jp2klossless.dcm"]["npy_path"])
        reference = pydicom.dcmread(shipped_or_skip("MR_small.dcm")).pixel_array
        np.testing.assert_array_equal(mr, reference.astype(np.float32))
        dfl = np.load(tiny_study["results"] / by_source["ct/image_dfl.dcm"]["npy_path"])
        np.testing.assert_array_equal(
            dfl, inflated_pixels(shipped_or_skip("image_dfl.dcm"), 512, 512)
        )
        nm = np.load(tiny_study["results"] / by_source["nm/JPEG-lossy.dcm"]["npy_path"])
        counts = pydicom.dcmread(shipped_or_skip("JPGExtended.dcm"))  # its fixed copy
        np.testing.assert_array_equal(nm, save_slices.decode_frame(counts, NM_FRAME))
        seg = [m for m in tiny_study["manifest"] if m["source_path"] == "seg/liver_deflate.dcm"]
        masks = pydicom.dcmread(SEG_NATIVE).pixel_array
        assert [m["frame"] for m in seg] == [0, 1, 2]
        for row in seg:
            saved = np.load(tiny_study["results"] / row["npy_path"])
            np.testing.assert_array_equal(saved, masks[row["frame"]].astype(np.float32))
        assert sorted(e["path"] for e in tiny_study["errors"]) == [CUT_DEFLATE, BROKEN_JPEG]


def write_broken_copies(study: Path) -> None:
    """Two real images with damaged pixel data, each in a series of its own."""
    ds = pydicom.dcmread(shipped_or_skip("JPEG-lossy.dcm"))
    (stream,) = generate_frames(ds.PixelData, number_of_frames=1)
    ds.PixelData = encapsulate([stream[:2] + bytes(200) + stream[202:]])
    _save_as_new_series(ds, study / BROKEN_JPEG)
    ds = pydicom.dcmread(shipped_or_skip("MR_small.dcm"))
    deflater = zlib.compressobj(9, zlib.DEFLATED, -zlib.MAX_WBITS)
    frame = deflater.compress(ds.PixelData) + deflater.flush()
    ds.PixelData = encapsulate([frame[: len(frame) // 2]])
    ds["PixelData"].VR = "OB"
    ds.file_meta.TransferSyntaxUID = pixel_decoders.DEFLATED_IMAGE_FRAME_COMPRESSION
    _save_as_new_series(ds, study / CUT_DEFLATE)


def _save_as_new_series(ds: pydicom.Dataset, target: Path) -> None:
    for keyword in ("SeriesInstanceUID", "SOPInstanceUID"):
        uid = pydicom.uid.generate_uid(entropy_srcs=[target.name, keyword])
        setattr(ds, keyword, uid)
    ds.file_meta.MediaStorageSOPInstanceUID = ds.SOPInstanceUID
    target.parent.mkdir(parents=True, exist_ok=True)
    ds.save_as(target, enforce_file_format=True)


@pytest.fixture(scope="module")
def tiny_study(tmp_path_factory) -> dict:
    """Scan, extract, merge and save slices of a 6-file study: two files are undecodable."""
    files = {
        "nm/JPEG-lossy.dcm": shipped("JPEG-lossy.dcm"),
        "mr/MR_small_jp2klossless.dcm": shipped("MR_small_jp2klossless.dcm"),
        "ct/image_dfl.dcm": shipped("image_dfl.dcm"),
        "seg/liver_deflate.dcm": SEG_FIXTURES / "liver_deflate.dcm",
    }
    for target, path in files.items():
        if path is None:
            pytest.skip(f"{target} is not shipped with this pydicom")
    root = tmp_path_factory.mktemp("tiny_study")
    study, results, work = root / "study", root / "results", root / "work"
    for target, path in files.items():
        (study / target).parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(path, study / target)
    write_broken_copies(study)

    assert scan_study.main(["--study", str(study), "--out-dir", str(work / "scan")]) == 0
    parts_i, parts_e = [], []
    for shard in sorted((work / "scan").glob("shard_*.jsonl")):
        i, e = work / f"{shard.stem}.instances.parquet", work / f"{shard.stem}.errors.parquet"
        argv = ["--study", str(study), "--shard", str(shard), "--instances", str(i)]
        assert extract_metadata.main(argv + ["--errors", str(e)]) == 0
        parts_i.append(str(i))
        parts_e.append(str(e))
    instances, series = work / "instances.parquet", work / "series.parquet"
    extract_errors = work / "errors_extract.parquet"
    argv = ["--instance-parts", *parts_i, "--error-parts", *parts_e]
    argv += ["--instances", str(instances), "--series", str(series)]
    assert merge_metadata.main(argv + ["--errors", str(extract_errors)]) == 0

    manifest, errors = [], []
    batches = {s["batch"] for s in pq.read_table(series).to_pylist() if s["batch"] is not None}
    for batch in sorted(batches):
        m, e = work / f"slices_{batch}.parquet", work / f"errors_{batch}.parquet"
        argv = ["--study", str(study), "--results", str(results), "--instances", str(instances)]
        argv += ["--series", str(series), "--batch", str(batch), "--count", "3"]
        assert save_slices.main(argv + ["--manifest", str(m), "--errors", str(e)]) == 0
        manifest += pq.read_table(m).to_pylist()
        errors += pq.read_table(e).to_pylist()
    return {
        "results": results,
        "instances": pq.read_table(instances).to_pylist(),
        "extract_errors": pq.read_table(extract_errors).to_pylist(),
        "manifest": manifest,
        "errors": errors,
    }


class TestMultiframeYbrUltrasound:
    @pytest.mark.parametrize("frame", [0, 15, 29])
    def test_frame_is_saved_as_uint8_rgb_not_ybr(self, frame, record_property):
        decoded = decode(demo.US_YBR_MULTIFRAME, record_property)
        ds = pydicom.dcmread(demo.US_YBR_MULTIFRAME)
        assert ds.PhotometricInterpretation == "YBR_FULL_422"
        assert decoded.syntax == JPEGBaseline8Bit
        assert_decoded_from_wheels(decoded)
        ds.pixel_array_options(as_rgb=False)
        ybr = ds.pixel_array[frame]
        expected = convert_color_space(ybr, "YBR_FULL", "RGB")

        values = decoded.values[frame]
        assert len(decoded.values) == 30
        assert decoded.photometric == "RGB"
        assert values.dtype == np.uint8 and values.shape == (240, 320, 3)
        np.testing.assert_array_equal(values, expected)
        # Ultrasound is mostly grey: R = G = B in RGB, while YBR has Cb = Cr = 128 != Y.
        assert greyish_fraction(values) > 0.9
        assert greyish_fraction(ybr) < 0.1


def greyish_fraction(rgb: np.ndarray, tolerance: int = 8) -> float:
    """Fraction of pixels whose three channels lie within ``tolerance`` of each other."""
    channels = rgb.astype(np.int64)
    spread = channels.max(axis=-1) - channels.min(axis=-1)
    return float((spread <= tolerance).mean())
