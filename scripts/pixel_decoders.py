"""Pixel decoders pydicom 3.0.2 lacks, added through its decoder plugin mechanism.

Four things no permissively licensed plugin of pydicom 3.0.2 decodes:

- **12-bit JPEG Extended** (1.2.840.10008.1.2.4.51) and **lossless JPEG** of any
  precision (1.2.840.10008.1.2.4.57 and .4.70): pydicom's gdcm and Pillow plugins refuse
  12-bit lossy JPEG, and only the GPL-3 ``pylibjpeg-libjpeg`` accepts it. ``imagecodecs``
  (BSD-3-Clause, PyPI wheels) decodes both; it is added as the *last* plugin of those
  syntaxes, so every file gdcm or pylibjpeg decodes today keeps its bytes.
- **Deflated Image Frame Compression** (1.2.840.10008.1.2.8.1, PS3.5 8.2.16 and A.4.13,
  DICOM Supplement 244): each frame is its own fragment, the frame's native little-endian
  pixel bytes (1-bit frames bit-packed, each starting on a byte boundary) compressed with
  raw Deflate (RFC 1951, no zlib header). pydicom 3.0.2 does not know the UID at all.
- **JPEG XL** (1.2.840.10008.1.2.4.110 lossless, .111 JPEG recompression, .112, DICOM
  Supplement 232): one JPEG XL codestream per frame; pydicom 3.0.2 knows none of the
  three UIDs. ``imagecodecs`` decodes them (libjxl).
- **RLE Lossless with Bits Allocated 1** (binary SEG): per CP-2301 each pixel is one byte
  (0 or 1) of a single RLE segment, Rows x Columns bytes long; pylibjpeg-rle reads that
  layout, and this plugin is its fallback. Files written by pydicom's first single-bit
  RLE encoder (and pydicom's test data from then) hold the bit-packed frame in that
  segment instead (``ceil(Rows x Columns / 8)`` bytes), which no plugin of pydicom 3.0.2
  reads; the segment's length tells the two apart.

Importing this module is cheap: ``imagecodecs`` is imported inside the decode function
only, because every step process pays for what it imports at start-up.
"""

from __future__ import annotations

import importlib.util
import zlib

from pydicom import uid
from pydicom._uid_dict import UID_dictionary

DEFLATED_IMAGE_FRAME_COMPRESSION = uid.UID("1.2.840.10008.1.2.8.1")
"""Deflated Image Frame Compression (DICOM 2025a, Supplement 244)."""

IMAGECODECS_SYNTAXES = (uid.JPEGExtended12Bit, uid.JPEGLossless, uid.JPEGLosslessSV1)
"""JPEG syntaxes that get ``imagecodecs`` as their last decoding plugin."""

JPEG_XL_SYNTAXES = {
    uid.UID("1.2.840.10008.1.2.4.110"): ("JPEG XL Lossless", "JPEGXLLossless"),
    uid.UID("1.2.840.10008.1.2.4.111"): (
        "JPEG XL JPEG Recompression",
        "JPEGXLJPEGRecompression",
    ),
    uid.UID("1.2.840.10008.1.2.4.112"): ("JPEG XL", "JPEGXL"),
}
"""JPEG XL transfer syntaxes (DICOM 2024c, Supplement 232): name and keyword."""

_PLUGIN = "pixel_decoders"
"""Label of this module's plugin for Deflated Image Frame Compression and 1-bit RLE."""

DECODER_DEPENDENCIES = {
    uid.JPEGExtended12Bit: ("numpy", "imagecodecs"),
    uid.JPEGLossless: ("numpy", "imagecodecs"),
    uid.JPEGLosslessSV1: ("numpy", "imagecodecs"),
    uid.RLELossless: ("numpy",),
    DEFLATED_IMAGE_FRAME_COMPRESSION: ("numpy",),
    **{syntax: ("numpy", "imagecodecs") for syntax in JPEG_XL_SYNTAXES},
}
"""What each syntax needs (pydicom's plugin interface lists it for unavailable plugins)."""


def is_available(syntax: str) -> bool:
    """Whether this module can decode ``syntax`` here (pydicom's plugin interface).

    Looks for ``imagecodecs`` without importing it.
    """
    if syntax in IMAGECODECS_SYNTAXES or syntax in JPEG_XL_SYNTAXES:
        return importlib.util.find_spec("imagecodecs") is not None
    return syntax in (uid.RLELossless, DEFLATED_IMAGE_FRAME_COMPRESSION)


def register_transfer_syntax() -> None:
    """Make pydicom know Deflated Image Frame Compression and JPEG XL as encapsulated
    syntaxes.

    pydicom 3.0.2 reads such a file, but its ``UID`` says the value is no transfer
    syntax, so nothing can ask whether the pixel data is encapsulated or decode it. The
    entry is what later pydicom releases ship; it is left alone when already there.
    """
    UID_dictionary.setdefault(
        DEFLATED_IMAGE_FRAME_COMPRESSION,
        (
            "Deflated Image Frame Compression",
            "Transfer Syntax",
            "",
            "",
            "DeflatedImageFrameCompression",
        ),
    )
    for syntax, (name, keyword) in JPEG_XL_SYNTAXES.items():
        UID_dictionary.setdefault(syntax, (name, "Transfer Syntax", "", "", keyword))


def register() -> None:
    """Add this module's plugins to pydicom's decoders (idempotent).

    Existing plugins keep their places in front: a plugin here is tried only when every
    plugin before it has failed on a frame.
    """
    global _registered
    if _registered:
        return
    from pydicom.pixels.decoders import base

    register_transfer_syntax()
    for syntax in IMAGECODECS_SYNTAXES:
        _add(base.get_decoder(syntax), "imagecodecs", "decode_jpeg_frame")
    _add(base.get_decoder(uid.RLELossless), _PLUGIN, "decode_rle_frame")
    _add(_decoder_for(base, DEFLATED_IMAGE_FRAME_COMPRESSION), _PLUGIN, "decode_deflated_frame")
    for syntax in JPEG_XL_SYNTAXES:
        _add(_decoder_for(base, syntax), "imagecodecs", "decode_jpeg_xl_frame")
    _registered = True


def _decoder_for(base, syntax: uid.UID):
    """The decoder pydicom uses for ``syntax``, made (and listed) when it has none."""
    decoder = base._PIXEL_DATA_DECODERS.get(syntax, (None,))[0]
    if decoder is None:
        decoder = base.Decoder(syntax)
        base._PIXEL_DATA_DECODERS[syntax] = (decoder, "3.1")
    return decoder


_registered = False


def _add(decoder, label: str, function: str) -> None:
    """Add one plugin of this module to ``decoder`` unless a plugin of that name exists."""
    if label not in decoder._available and label not in decoder._unavailable:
        decoder.add_plugin(label, (__name__, function))


def inflate_frame(src: bytes) -> bytes:
    """Inflate one frame of Deflated Image Frame Compression (raw Deflate, RFC 1951).

    Raises ``zlib.error`` or ``ValueError`` for a stream that is corrupt or cut short,
    so a damaged frame becomes an error instead of silently short pixels.
    """
    inflater = zlib.decompressobj(-zlib.MAX_WBITS)
    out = inflater.decompress(src) + inflater.flush()
    if not inflater.eof:
        raise ValueError("deflated frame ends before its final Deflate block")
    return out


def unpack_bits(packed: bytes, pixels: int) -> bytes:
    """One byte (0 or 1) per pixel from bit-packed bytes, least significant bit first.

    That is DICOM's bit order for Bits Allocated 1 (PS3.5 8.1.1); ``pixels`` cuts off the
    padding bits of the last byte.
    """
    import numpy as np

    if len(packed) * 8 < pixels:
        raise ValueError(f"frame needs {pixels} bits, got {len(packed) * 8}")
    bits = np.unpackbits(np.frombuffer(packed, dtype=np.uint8), bitorder="little")
    return bits[:pixels].tobytes()


def _pixels(runner) -> int:
    return runner.rows * runner.columns * runner.samples_per_pixel


def decode_deflated_frame(src: bytes, runner) -> bytes:
    """Pydicom plugin: one frame of Deflated Image Frame Compression as native bytes.

    The inflated frame is the native little-endian encoding of the frame; single-bit
    frames are unpacked to one byte per pixel, which is what pydicom 3.0.2 expects from
    an encapsulated syntax.
    """
    frame = inflate_frame(src)
    if runner.bits_allocated == 1:
        return unpack_bits(frame, _pixels(runner))
    expected = _pixels(runner) * (runner.bits_allocated // 8)
    if len(frame) < expected:
        raise ValueError(f"inflated frame holds {len(frame)} bytes, image needs {expected}")
    return frame[:expected]


def decode_rle_segment(segment: bytes) -> bytes:
    """Decode one RLE segment (PS3.5 G.3.2, a PackBits variant) into its bytes."""
    out = bytearray()
    pos, end = 0, len(segment)
    while pos < end:
        header = segment[pos]
        pos += 1
        if header < 128:  # copy the next header + 1 bytes literally
            out += segment[pos : pos + header + 1]
            pos += header + 1
        elif header > 128:  # repeat the next byte 257 - header times
            out += segment[pos : pos + 1] * (257 - header)
            pos += 1
    return bytes(out)


def decode_rle_frame(src: bytes, runner) -> bytes:
    """Pydicom plugin: one RLE Lossless frame with Bits Allocated 1, one byte per pixel.

    Other bit depths are left to pydicom's own RLE plugins (this one raises for them).
    The single segment holds one byte per pixel (CP-2301), or the bit-packed frame as
    pydicom's first single-bit encoder wrote it.
    """
    import struct

    if runner.bits_allocated != 1 or runner.samples_per_pixel != 1:
        raise NotImplementedError("only single-bit, single-sample RLE frames are decoded here")
    if len(src) < 64:
        raise ValueError(f"RLE frame of {len(src)} bytes is shorter than its 64-byte header")
    count, first = struct.unpack_from("<2L", src)
    if count != 1:
        raise ValueError(f"single-bit RLE frame needs 1 segment, header says {count}")
    if not 64 <= first < len(src):
        raise ValueError(f"RLE segment offset {first} lies outside the {len(src)}-byte frame")
    segment = decode_rle_segment(src[first:])
    pixels = _pixels(runner)
    if len(segment) >= pixels:
        values = segment[:pixels]
        if values.translate(None, b"\x00\x01"):
            raise ValueError("single-bit RLE segment holds values other than 0 and 1")
        return values
    if len(segment) == (pixels + 7) // 8:
        return unpack_bits(segment, pixels)
    raise ValueError(
        f"RLE segment decodes to {len(segment)} bytes; a {runner.rows} x {runner.columns} "
        f"single-bit frame needs {pixels} (one byte per pixel) or {(pixels + 7) // 8} (packed)"
    )


def _frame_bytes(arr, runner, codec: str) -> bytes:
    """A frame ``imagecodecs`` decoded, checked against the header's size, as the
    little-endian bytes pydicom expects (8- or 16-bit samples, pixel-interleaved).
    """
    import numpy as np

    expected = (runner.rows, runner.columns)
    if arr.shape[:2] != expected or arr.size != _pixels(runner):
        raise ValueError(f"decoded {codec} frame has shape {arr.shape}, expected {expected}")
    itemsize = 1 if runner.bits_allocated <= 8 else 2
    runner.set_option("bits_allocated", itemsize * 8)
    return np.ascontiguousarray(arr, dtype=f"<u{itemsize}").tobytes()


def decode_jpeg_frame(src: bytes, runner) -> bytes:
    """Pydicom plugin: one JPEG Extended or lossless JPEG frame, decoded by ``imagecodecs``.

    ``jpeg8_decode`` (libjpeg-turbo: 8- and 12-bit lossy, lossless of 2 to 16 bits) is
    tried first, then ``jpegsof3_decode`` for lossless streams libjpeg-turbo refuses.
    Colour lossy JPEG is left to the other plugins (their colour handling is pydicom's).
    """
    import imagecodecs

    lossless = runner.transfer_syntax != uid.JPEGExtended12Bit
    if runner.samples_per_pixel != 1 and not lossless:
        raise NotImplementedError("colour JPEG Extended is left to the other plugins")
    try:
        arr = imagecodecs.jpeg8_decode(src)
    except Exception:
        if not lossless:
            raise
        arr = imagecodecs.jpegsof3_decode(src)
    return _frame_bytes(arr, runner, "JPEG")


def decode_jpeg_xl_frame(src: bytes, runner) -> bytes:
    """Pydicom plugin: one JPEG XL frame (any of the three syntaxes), by ``imagecodecs``.

    Grey frames come back as (rows, columns), colour ones as (rows, columns, samples),
    pixel-interleaved, which is what pydicom expects of a decoded frame.
    """
    import imagecodecs

    arr = imagecodecs.jpegxl_decode(src)
    if runner.samples_per_pixel > 1:
        runner.set_option("planar_configuration", 0)
    return _frame_bytes(arr, runner, "JPEG XL")
