"""Reading DICOM files robustly: sniffing, header-only reads, pixel presence and truncation.

Every failure is turned into a :class:`FileProblem` with a short, stable ``reason``
so callers can record it as data instead of crashing.
"""

from __future__ import annotations

import io
import logging
import os
import re
import struct
import warnings
from dataclasses import dataclass, field
from pathlib import Path

import pydicom
import pydicom.config
from pydicom.dataset import Dataset

import pixel_decoders

# Malformed vendor values must not flood logs (they may hold patient data) or raise
# while reading; each value is validated later, one element at a time.
pydicom.config.settings.reading_validation_mode = pydicom.config.IGNORE
pydicom.config.settings.writing_validation_mode = pydicom.config.IGNORE
# Decoder failures and odd values are recorded as error rows; pydicom's own messages
# (tracebacks, values that may identify a patient) stay out of logs.
logging.getLogger("pydicom").setLevel(logging.CRITICAL)
warnings.filterwarnings("ignore", module=r"pydicom(\..*)?")
# Syntaxes newer than pydicom 3.0.2 (Deflated Image Frame Compression) must be known
# before any header is read; their decoders are added when pixels are decoded.
pixel_decoders.register_transfer_syntax()

PIXEL_TAGS = (0x7FE00010, 0x7FE00008, 0x7FE00009)
"""PixelData, FloatPixelData and DoubleFloatPixelData."""

_LONG_LENGTH_VRS = {b"OB", b"OW", b"OF", b"OD", b"OL", b"OV", b"UN", b"SQ", b"UT", b"UC", b"UR"}

_MAGIC = (
    (b"\x1f\x8b", "gzip archive"),
    (b"PK\x03\x04", "zip archive"),
    (b"\x89PNG", "PNG image"),
    (b"\xff\xd8\xff", "JPEG image"),
    (b"%PDF", "PDF document"),
    (b"GIF8", "GIF image"),
    (b"II*\x00", "TIFF image"),
    (b"MM\x00*", "TIFF image"),
    (b"BZh", "bzip2 archive"),
    (b"\xfd7zXZ", "xz archive"),
)


def display_path(path: str) -> str:
    r"""A relative path as valid text for the tables.

    Bytes that are not UTF-8 (kept by Python as surrogates) are written as ``\xNN``;
    other names are unchanged.
    """
    return path.encode("utf-8", "surrogateescape").decode("utf-8", "backslashreplace")


def study_file(study: Path, path: str) -> Path:
    """The file a table's ``path`` names, undoing :func:`display_path` when needed."""
    direct = study / path
    if "\\x" not in path or direct.exists():
        return direct
    raw = re.sub(r"\\x([0-9a-f]{2})", lambda m: chr(0xDC00 + int(m.group(1), 16)), path)
    return study / raw


class FileProblem(Exception):
    """A file that cannot be indexed as a DICOM instance, with a stable reason category."""

    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason = reason
        self.detail = detail


@dataclass
class HeaderRead:
    """The header of one instance plus what we learnt about its pixel data without reading it."""

    dataset: Dataset
    has_pixels: bool
    warnings: list[tuple[str, str]] = field(default_factory=list)


def describe_magic(head: bytes) -> str:
    """Name the kind of a non-DICOM file from its first bytes, for the errors table."""
    for magic, name in _MAGIC:
        if head.startswith(magic):
            return name
    sample = head[:256]
    if sample and all(32 <= b < 127 or b in (9, 10, 13) for b in sample):
        return "text file"
    return "unrecognised binary data"


def looks_like_raw_dataset(head: bytes) -> bool:
    """Tell whether bytes could start a DICOM dataset stored without preamble and file meta.

    Such files (old ACR-NEMA style exports) begin directly with a group 0x0002 or
    0x0008 element, in little- or big-endian, explicit or implicit VR.
    """
    if len(head) < 8:
        return False
    for fmt in ("<HH", ">HH"):
        group, element = struct.unpack(fmt, head[:4])
        if group in (0x0002, 0x0008) and element < 0x0100:
            return True
    return False


class _ShortReadRecorder(io.RawIOBase):
    """File wrapper that remembers reads which returned fewer bytes than asked (truncation)."""

    def __init__(self, raw: io.BufferedReader):
        self._raw = raw
        self.short_reads: list[tuple[int, int]] = []
        self.name = raw.name

    def read(self, size: int = -1) -> bytes:
        data = self._raw.read(size)
        if size is not None and size > 0 and len(data) < size:
            self.short_reads.append((size, len(data)))
        return data

    def seek(self, offset: int, whence: int = 0) -> int:
        return self._raw.seek(offset, whence)

    def tell(self) -> int:
        return self._raw.tell()

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True


def _cut_short(short_reads: list[tuple[int, int]], size: int) -> str | None:
    """Classify reads that came back short: ``truncated`` (the file ended under a value),
    ``garbage`` (a length larger than the whole file: corrupt or misread data), or None
    (only the clean 0-byte read of the next tag at the end of the file).
    """
    if any(asked > size for asked, _ in short_reads):
        return "garbage"
    if any(got > 0 for _, got in short_reads) or any(a not in (4, 8) for a, _ in short_reads):
        return "truncated"
    return None


def _last_value_cut(ds: Dataset) -> bool:
    """True when the last top-level element got fewer bytes than its header declared.

    A file cut right after the header of a 4- or 8-byte value reads back like a clean
    end of file; the last element's declared length tells the two apart.
    """
    tags = list(ds.keys())
    if not tags:
        return False
    raw = ds.get_item(max(tags))
    length = getattr(raw, "length", None)
    value = getattr(raw, "value", None)
    if length is None or length == 0xFFFFFFFF or not isinstance(value, (bytes, bytearray)):
        return False
    return len(value) < length


def _expected_pixel_bytes(ds: Dataset) -> int | None:
    """Bytes that native (uncompressed) pixel data must hold, from the image pixel module."""
    try:
        rows, columns = int(ds.Rows), int(ds.Columns)
        bits = int(ds.BitsAllocated)
        samples = int(ds.get("SamplesPerPixel", 1) or 1)
        frames = int(ds.get("NumberOfFrames", 1) or 1)
    except (AttributeError, TypeError, ValueError):
        return None
    if bits == 1:
        return (rows * columns * frames * samples + 7) // 8
    if samples == 3 and str(ds.get("PhotometricInterpretation", "")).strip() == "YBR_FULL_422":
        samples = 2  # chroma subsampled horizontally: two values per pixel
    return rows * columns * frames * samples * (bits // 8)


def _encoding(ds: Dataset) -> tuple[bool, bool]:
    """``(implicit VR, little endian)`` the dataset was read with (little endian if unknown)."""
    implicit, little = getattr(ds, "original_encoding", (None, None))
    if implicit is None:
        implicit, little = ds.is_implicit_VR, ds.is_little_endian
    return bool(implicit), little in (True, None)


def _check_fragments(fp, size: int, little: bool) -> str | None:
    """Walk encapsulated pixel data item by item (headers only); describe a cut-off, if any."""
    endian = "<" if little else ">"
    position = fp.tell()
    while True:
        fp.seek(position)
        head = fp.read(8)
        if len(head) < 8:
            return f"encapsulated pixel data ends without a sequence delimiter at byte {position}"
        group, element, length = struct.unpack(endian + "HHL", head)
        if (group, element) == (0xFFFE, 0xE0DD):
            return None
        if (group, element) != (0xFFFE, 0xE000):
            return f"unexpected tag ({group:04X},{element:04X}) in encapsulated pixel data"
        position += 8 + length
        if position > size:
            return f"pixel data fragment needs {position - size} more bytes than the file holds"


def _pixel_element_header(fp, ds: Dataset) -> tuple[int, int | None] | None:
    """Read the tag and length of the element where a header-only read stopped.

    Returns ``(tag, length)`` with ``length`` None for undefined length (encapsulated),
    or None when the file ends there or holds no pixel element.
    """
    start = fp.tell()
    head = fp.read(12)
    fp.seek(start)
    if len(head) < 8:
        return None
    implicit, little = _encoding(ds)
    endian = "<" if little else ">"
    group, element = struct.unpack(endian + "HH", head[:4])
    tag = group << 16 | element
    if tag not in PIXEL_TAGS:
        return None
    if head[4:6] in _LONG_LENGTH_VRS:  # explicit VR, whatever the meta claims
        if len(head) < 12:
            return None
        (length,) = struct.unpack(endian + "L", head[8:12])
        header_size = 12
    elif implicit:
        (length,) = struct.unpack(endian + "L", head[4:8])
        header_size = 8
    else:
        (length,) = struct.unpack(endian + "H", head[6:8])
        header_size = 8
    fp.seek(start + header_size)
    return tag, (None if length == 0xFFFFFFFF else length)


def open_binary(path: str | os.PathLike):
    """Open a study file for reading bytes (every header reader opens files here)."""
    return open(path, "rb")  # noqa: SIM115 - callers close it


def read_header(path: str | os.PathLike) -> HeaderRead:
    """Read a DICOM header without its pixel data, and check the pixel data's presence and size.

    Parameters
    ----------
    path : str or PathLike
        The file to read.

    Returns
    -------
    HeaderRead
        The dataset (with ``file_meta``), whether pixel data is present, and warnings
        as ``(reason, detail)`` pairs for problems that leave the header usable.

    Raises
    ------
    FileProblem
        When the file is empty, not DICOM, cut off inside its header, or unparseable.
    """
    size = os.path.getsize(path)
    if size == 0:
        raise FileProblem("empty_file", "file has 0 bytes")
    try:
        raw = open_binary(path)
    except OSError as exc:
        raise FileProblem("unreadable_file", f"{type(exc).__name__}: {exc.strerror}") from exc
    try:
        head = raw.read(132)
        raw.seek(0)
        has_preamble = len(head) >= 132 and head[128:132] == b"DICM"
        if not has_preamble and not looks_like_raw_dataset(head):
            raise FileProblem("not_dicom", f"no DICM marker; looks like {describe_magic(head)}")
        fp = _ShortReadRecorder(raw)
        try:
            ds = pydicom.dcmread(fp, stop_before_pixels=True, force=not has_preamble)
        except FileProblem:
            raise
        except Exception as exc:  # pydicom raises many types on corrupt input
            # a short read before the failure means the file ended under the parser
            cut = "truncated" if fp.short_reads else None
            if _cut_short(fp.short_reads, size) == "garbage":
                cut = None
            reason = cut or "unreadable_header"
            raise FileProblem(reason, f"{type(exc).__name__}: {short_message(exc)}") from exc
        cut = _cut_short(fp.short_reads, size)
        if cut == "garbage":
            raise FileProblem(
                "unreadable_header",
                f"an element declares more bytes than the file holds ({size}); corrupt data "
                "or a wrong transfer syntax",
            )
        if cut == "truncated" or _last_value_cut(ds):
            raise FileProblem(
                "truncated", f"file ends inside the header ({size} bytes); dataset is incomplete"
            )
        if len(ds) == 0:
            raise FileProblem("unreadable_header", "no data elements could be parsed")
        if not has_preamble and not _plausible_raw_dataset(ds):
            raise FileProblem(
                "not_dicom", "no DICM marker and no DICOM identifiers in the parsed data"
            )
        if _is_deflated(ds):
            return _deflated_pixel_facts(path)
        return _with_pixel_facts(ds, fp, size)
    finally:
        raw.close()


def _is_deflated(ds: Dataset) -> bool:
    """Deflated files are inflated into pydicom's own buffer, so file offsets do not apply."""
    meta = getattr(ds, "file_meta", None)
    syntax = meta.get("TransferSyntaxUID") if meta is not None else None
    return syntax == pydicom.uid.DeflatedExplicitVRLittleEndian


def _deflated_pixel_facts(path) -> HeaderRead:
    """Header of a deflated file from a full read (rare syntax; the whole file is small)."""
    full = pydicom.dcmread(path)
    has_pixels = any(tag in full for tag in PIXEL_TAGS)
    for tag in PIXEL_TAGS:
        if tag in full:
            del full[tag]
    return HeaderRead(full, has_pixels=has_pixels)


def _plausible_raw_dataset(ds: Dataset) -> bool:
    """A preamble-less file counts as DICOM only if it names its class, instance or modality."""
    for keyword in ("SOPClassUID", "SOPInstanceUID", "Modality", "StudyInstanceUID"):
        try:
            if keyword in ds and str(ds[keyword].value).strip():
                return True
        except Exception:  # noqa: BLE001 - a value that cannot even be decoded proves nothing
            continue
    return False


def _with_pixel_facts(ds: Dataset, fp, size: int, expected_bytes=None) -> HeaderRead:
    """Find whether pixel data follows the header and whether all its bytes are there.

    ``expected_bytes`` replaces :func:`_expected_pixel_bytes` (a memoised equivalent).
    """
    expected_pixel_bytes = expected_bytes or _expected_pixel_bytes
    warnings: list[tuple[str, str]] = []
    element = _pixel_element_header(fp, ds)
    if element is None:
        if fp.tell() >= size and expected_pixel_bytes(ds):
            warnings.append(
                ("truncated", "image pixel module present but the file ends before pixel data")
            )
        return HeaderRead(ds, has_pixels=False, warnings=warnings)
    _, length = element
    available = size - fp.tell()
    if length is None:
        has_pixels = available > 0
        problem = _check_fragments(fp, size, little=_encoding(ds)[1])
        if problem:
            warnings.append(("truncated", problem))
        return HeaderRead(ds, has_pixels=has_pixels, warnings=warnings)
    if length == 0:
        return HeaderRead(ds, has_pixels=False, warnings=warnings)
    expected = expected_pixel_bytes(ds)
    if available < length:
        warnings.append(
            ("truncated", f"pixel data declares {length} bytes but file holds {available}")
        )
    elif expected is not None and length < expected:
        warnings.append(
            (
                "truncated",
                f"pixel data holds {length} bytes, image needs {expected}",
            )
        )
    return HeaderRead(ds, has_pixels=True, warnings=warnings)


def read_for_pixels(path: str | os.PathLike) -> Dataset:
    """Read a whole instance for decoding, naming a transfer syntax when the file omits it.

    Raw datasets without file meta (and files whose meta lacks TransferSyntaxUID) are
    given the syntax their encoding implies, so native pixel data still decodes.
    """
    ds = pydicom.dcmread(path, force=True)
    meta = ds.file_meta if getattr(ds, "file_meta", None) is not None else None
    if meta is None or "TransferSyntaxUID" not in meta:
        from pydicom.dataset import FileMetaDataset
        from pydicom.uid import ExplicitVRBigEndian, ExplicitVRLittleEndian, ImplicitVRLittleEndian

        implicit, little = _encoding(ds)
        syntax = (
            ImplicitVRLittleEndian
            if implicit
            else (ExplicitVRLittleEndian if little else ExplicitVRBigEndian)
        )
        if meta is None:
            ds.file_meta = meta = FileMetaDataset()
        meta.TransferSyntaxUID = syntax
    return ds


def short_message(exc: BaseException, limit: int = 200) -> str:
    """One line of an exception message, bounded, for the errors table."""
    text = " ".join(str(exc).split())
    return text if len(text) <= limit else text[: limit - 1] + "…"
