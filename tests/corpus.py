"""A deterministic corpus of bad study files, built from real DICOM files, for end-to-end tests.

:func:`build_corpus` writes a study folder of damaged copies of real files (cut at named
and at random offsets, bit-flipped, zeroed, with a wrong or missing transfer syntax or an
absurd matrix size), random bytes, empty files, files that are not DICOM at all, odd but
legal DICOM (raw datasets without preamble, DICOMDIRs, objects without pixels, pydicom's
own odd test files), symlinks and a file without read permission, plus a few valid files
kept apart in :data:`VALID_FOLDER`. It returns what the workflow should make of each
regular file.

The same ``n_variants`` and ``seed`` always give the same names, bytes and modes: every
random choice comes from one ``random.Random(seed)``, and the sources are fixed files of
the bundled demo study, of the repository and of the pinned pydicom wheel (never
downloaded).
"""

from __future__ import annotations

import hashlib
import io
import os
import stat
import struct
import zipfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from random import Random

from pydicom.data import get_testdata_file
from pydicom.datadict import dictionary_VR
from pydicom.filereader import data_element_generator
from pydicom.uid import UID

import demo

INSTANCE = "instance"
"""Expected outcome: a row in ``instances`` and no ``truncated`` warning."""
INSTANCE_TRUNCATED = "instance+truncated"
"""Expected outcome: a row in ``instances`` plus a ``truncated`` warning (pixel data cut)."""
UNPREDICTABLE = "instance_or_error"
"""Expected outcome of random header damage: an instance, or an error with a documented reason."""
ERROR_REASONS = frozenset(
    {"not_dicom", "empty_file", "truncated", "unreadable_header", "unreadable_file"}
)
"""Reasons of ``error`` rows (the file is not an instance), as the README lists them."""
WARNING_REASONS = frozenset({"truncated", "undecodable_pixels", "malformed_value", "empty_uid"})
"""Reasons of ``warning`` rows (an instance with a problem), as the README lists them."""

DEFAULT_SEED = 20240407

VALID_FOLDER = "valid/mr_t1_sag"
"""Where the valid files go, in the corpus and in a study of the valid files alone."""
VALID_SOURCES = tuple(sorted(demo.MR_SERIES.iterdir())[:5])
"""The valid files: the first five slices of the demo MR series. They are never the source
of a damaged copy, so no damaged file shares their SeriesInstanceUID and joins their series."""

CT_J2K = sorted(demo.CT_SERIES.iterdir())[0]
"""First slice of the demo CT series: JPEG 2000 lossless fragments, empty UIDs."""

SOURCES = {
    "ct_small": demo.CT_SMALL,  # explicit VR little endian, native 16-bit 128x128, padding
    "ct_j2k": CT_J2K,  # encapsulated JPEG 2000, 512x512
    "rtdose": demo.RTDOSE,  # implicit VR little endian, native, 15 frames
    "sr": demo.SR,  # structured report: nested sequences, no pixels
    "rtplan": demo.RTPLAN,  # implicit VR little endian, nested sequences, no pixels
}
"""Real files the damaged copies are made from (short name -> path)."""

KINDS = (
    "valid",
    "truncated",
    "truncated_random",
    "bit_flipped",
    "zeroed",
    "empty",
    "random_bytes",
    "huge_matrix",
    "transfer_syntax",
    "raw_dataset",
    "not_dicom",
    "dicomdir",
    "no_pixels",
    "pydicom_odd",
    "links",
    "permissions",
)
"""Top-level folders of the corpus, one per kind of file."""
GOOD_KINDS = frozenset({"valid", "raw_dataset", "dicomdir", "no_pixels", "links"})
"""Kinds that hold legal DICOM files; everything else counts as a bad file."""

PIXEL_DATA = 0x7FE00010
ROWS, COLUMNS, BITS_ALLOCATED = 0x00280010, 0x00280011, 0x00280100
TRANSFER_SYNTAX = 0x00020010

PYDICOM_ODD_FILES = {
    "badVR.dcm": INSTANCE,  # NumberOfFrames does not parse for IS -> malformed_value warning
    "meta_missing_tsyntax.dcm": INSTANCE,  # file meta without TransferSyntaxUID
    "no_meta_group_length.dcm": INSTANCE,  # file meta without (0002,0000)
    "empty_charset_LEI.dcm": INSTANCE,  # empty SpecificCharacterSet
    "UN_sequence.dcm": INSTANCE,  # a sequence stored with VR UN
    "priv_SQ.dcm": INSTANCE,  # private sequence
    "nested_priv_SQ.dcm": INSTANCE,  # nested private sequences
    "ExplVR_BigEndNoMeta.dcm": INSTANCE,  # raw dataset, explicit VR big endian
    "ExplVR_LitEndNoMeta.dcm": INSTANCE,  # raw dataset, explicit VR little endian
    "ExplVR_BigEnd.dcm": INSTANCE,  # explicit VR big endian with file meta
    "MR_small_padded.dcm": INSTANCE,  # padding after the pixel data
    "reportsi_with_empty_number_tags.dcm": INSTANCE,  # empty IS/DS values
    "JPEG2000-embedded-sequence-delimiter.dcm": INSTANCE,  # delimiter bytes inside a fragment
    "J2K_pixelrep_mismatch.dcm": INSTANCE,  # PixelRepresentation disagrees with the codestream
    "image_dfl.dcm": INSTANCE,  # deflated transfer syntax
    "SC_rgb_small_odd.dcm": INSTANCE,  # odd number of pixel bytes
    "JPEG-lossy.dcm": INSTANCE,  # non-conforming SOS in its 12-bit JPEG; imagecodecs decodes it
    "MR_truncated.dcm": INSTANCE_TRUNCATED,  # pixel data shorter than its declared length
    "SC_rgb_jpeg.dcm": INSTANCE_TRUNCATED,  # pixel data length runs past the end of the file
    "rtplan_truncated.dcm": "truncated",  # ends inside the dataset
    "no_meta.dcm": "not_dicom",  # no preamble, and junk even when read with force
    "zipMR.gz": "not_dicom",  # gzip of a DICOM file
    "README.txt": "not_dicom",
    "rtplan.dump": "not_dicom",  # dcmdump text
    "test1.json": "not_dicom",  # DICOM JSON model
    "crayons.icc": "not_dicom",  # ICC colour profile
}
"""pydicom's own odd test files, copied unchanged, and what they should become."""

NO_PIXEL_OBJECTS = {
    "sr_reportsi.dcm": demo.SR,
    "sr_test.dcm": "test-SR.dcm",
    "rtplan.dcm": demo.RTPLAN,
    "rtstruct.dcm": "rtstruct.dcm",
    "ecg_waveform.dcm": demo.ECG,
}
"""Valid objects without pixel data (demo path or pydicom name): instances, ``has_pixels`` false."""

DICOMDIRS = ("DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-empty.dcm")
"""Media directory files from pydicom's ``dicomdirtests``: instances without pixels."""

NOT_DICOM_KINDS = {
    "notes.txt": "text file",
    "study.csv": "text file",
    "photo.jpg": "JPEG image",
    "sheet.png": "PNG image",
    "archive.zip": "zip archive",
    "archive.dcm.gz": "gzip archive",
    "codestream.j2k": "unrecognised binary data",
    "report.pdf": "PDF document",
    "dump.dcm": "text file",
    "model.json": "text file",
    "Thumbs.db": "unrecognised binary data",
    ".DS_Store": "unrecognised binary data",
}
"""Files in ``not_dicom/`` and the kind the ``not_dicom`` detail should name."""


def pydicom_file(name: str) -> Path:
    """Path of a file bundled with pydicom (never downloaded)."""
    path = get_testdata_file(name, download=False)
    if path is None:
        raise FileNotFoundError(f"pydicom test file {name} is not installed")
    return Path(path)


@dataclass(frozen=True)
class Span:
    """Where one top-level data element lies in a file (byte offsets)."""

    tag: int
    start: int
    """First byte of the element's tag."""
    value_start: int
    """First byte of its value."""
    end: int
    """One past its last byte (past the delimiter for undefined lengths)."""


@dataclass(frozen=True)
class Layout:
    """The top-level structure of a DICOM file with preamble, DICM marker and file meta."""

    meta: list[Span]
    dataset: list[Span]
    fragments: list[tuple[int, int]]
    """``(start, end)`` of each encapsulated fragment's bytes (item headers excluded)."""

    @property
    def dataset_start(self) -> int:
        return self.meta[-1].end

    @property
    def pixels(self) -> Span | None:
        return next((s for s in self.dataset if s.tag == PIXEL_DATA), None)

    def find(self, tag: int) -> Span:
        return next(s for s in self.meta + self.dataset if s.tag == tag)

    def header_end(self, size: int) -> int:
        """Where the header ends: the pixel data element, else the end of the file."""
        return self.pixels.start if self.pixels is not None else size

    def pixel_values(self) -> list[tuple[int, int]]:
        """Byte ranges whose change leaves the header intact: native values or fragment bytes."""
        if self.pixels is None:
            return []
        return self.fragments or [(self.pixels.value_start, self.pixels.end)]


def _spans(fp: io.BytesIO, implicit: bool, little: bool, meta: bool) -> list[Span]:
    spans = []
    start = fp.tell()
    stop = (lambda tag, vr, length: tag >> 16 != 2) if meta else None
    for element in data_element_generator(fp, implicit, little, stop_when=stop):
        end = fp.tell()
        # RawDataElement.value_tell; DataElement.file_tell for undefined-length sequences
        value_start = getattr(element, "value_tell", None) or element.file_tell
        spans.append(Span(int(element.tag), start, value_start, end))
        start = end
    return spans


def _fragments(data: bytes, pixels: Span, little: bool) -> list[tuple[int, int]]:
    endian = "<" if little else ">"
    fragments, position, first = [], pixels.value_start, True
    while position + 8 <= pixels.end:
        group, element, length = struct.unpack(endian + "HHL", data[position : position + 8])
        if (group, element) != (0xFFFE, 0xE000):
            break
        if not first and length > 0:  # the first item is the basic offset table
            fragments.append((position + 8, position + 8 + length))
        first = False
        position += 8 + length
    return fragments


def layout(data: bytes) -> Layout:
    """Top-level elements of the file meta and dataset, and encapsulated fragments, of a file.

    Raises
    ------
    ValueError
        When ``data`` has no DICM marker at byte 128.
    """
    if data[128:132] != b"DICM":
        raise ValueError(f"Argument 'data' must hold DICM at byte 128, got {data[128:132]!r}")
    fp = io.BytesIO(data)
    fp.seek(132)
    meta = _spans(fp, implicit=False, little=True, meta=True)
    syntax_span = next(s for s in meta if s.tag == TRANSFER_SYNTAX)
    syntax = UID(data[syntax_span.value_start : syntax_span.end].decode().rstrip("\0 "))
    dataset = _spans(fp, implicit=syntax.is_implicit_VR, little=syntax.is_little_endian, meta=False)
    pixels = next((s for s in dataset if s.tag == PIXEL_DATA), None)
    fragments = (
        _fragments(data, pixels, syntax.is_little_endian)
        if pixels is not None and syntax.is_compressed
        else []
    )
    return Layout(meta, dataset, fragments)


def classify_cut(lay: Layout, size: int) -> str:
    """Expected outcome of the first ``size`` bytes of a file with layout ``lay``.

    Cut in the preamble: no DICM marker, ``not_dicom``. Cut inside the meta group or a
    header element, or where the dataset would begin: ``truncated``. Cut in the pixel data,
    or between elements once BitsAllocated is read: an instance with a ``truncated`` warning.
    Cut exactly between two top-level elements before that: a shorter, well-formed
    dataset that no reader can tell from a complete one, an instance. Cut after the pixel
    data (trailing padding): nothing a header-only read uses is lost, an instance.
    """
    if size == 0:
        return "empty_file"
    if size < 132:
        return "not_dicom"
    if size <= lay.dataset_start:
        return "truncated"
    pixels = lay.pixels
    for span in lay.dataset:
        if pixels is not None and span.start >= pixels.end:
            return INSTANCE
        if span.start < size < span.end:
            if span.tag == PIXEL_DATA and size >= span.value_start:
                return INSTANCE_TRUNCATED
            return "truncated"
        if size == span.start:
            # Rows, Columns and BitsAllocated read: the image needs pixel data that is missing
            image_module = any(s.tag == BITS_ALLOCATED and s.end <= size for s in lay.dataset)
            return INSTANCE_TRUNCATED if span.tag == PIXEL_DATA or image_module else INSTANCE
    return INSTANCE


def _is_sequence(span: Span) -> bool:
    try:
        return dictionary_VR(span.tag) == "SQ"
    except KeyError:
        return False


def structural_cuts(lay: Layout, size: int) -> Iterator[tuple[str, int]]:
    """``(label, size)`` of cuts at named places: preamble, meta group, sequence, pixel data."""
    yield "inside_preamble", 64
    yield "inside_dicm_marker", 130
    yield "after_dicm_marker", 132
    yield "inside_meta_group_length", lay.meta[0].value_start + 2
    yield "inside_transfer_syntax_value", lay.find(TRANSFER_SYNTAX).value_start + 5
    yield "after_meta_group", lay.dataset_start
    yield "inside_first_dataset_element_header", lay.dataset[0].start + 3
    eight = next(s for s in lay.dataset if s.end - s.value_start == 8)
    yield "at_value_of_first_8_byte_element", eight.value_start
    sequences = [s for s in lay.dataset if _is_sequence(s)]
    if sequences:
        seq = max(sequences, key=lambda s: s.end - s.start)
        yield "inside_longest_sequence", seq.value_start + (seq.end - seq.value_start) // 2
        yield "inside_longest_sequence_first_item_header", seq.value_start + 4
    pixels = lay.pixels
    if pixels is not None:
        yield "at_pixel_data_element", pixels.start
        yield "inside_pixel_data_tag", pixels.start + 2
        yield "inside_pixel_data_length", pixels.value_start - 1
        yield "at_pixel_data_value", pixels.value_start
        yield "inside_pixel_data_value", pixels.value_start + (pixels.end - pixels.value_start) // 2
        if lay.fragments:
            start, end = lay.fragments[0]
            yield "inside_first_fragment", start + (end - start) // 2
        yield "pixel_data_last_byte_missing", pixels.end - 1
    else:
        last = lay.dataset[-1]
        yield "inside_last_element", last.start + (last.end - last.start) // 2
    yield "last_byte_missing", size - 1


def _flip_bits(data: bytes, rng: Random, ranges: list[tuple[int, int]], count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        start, end = rng.choice(ranges)
        out[rng.randrange(start, end)] ^= 1 << rng.randrange(8)
    return bytes(out)


def _zero_span(data: bytes, rng: Random, ranges: list[tuple[int, int]], longest: int) -> bytes:
    start, end = rng.choice(ranges)
    position = rng.randrange(start, end)
    length = min(rng.randint(1, longest), end - position)
    return data[:position] + bytes(length) + data[position + length :]


def _patch_us(data: bytes, span: Span, value: int) -> bytes:
    """Replace the value of a little-endian US element (Rows, Columns)."""
    return data[: span.value_start] + struct.pack("<H", value) + data[span.value_start + 2 :]


def _huge_matrix(data: bytes, lay: Layout) -> bytes:
    rows = _patch_us(data, lay.find(ROWS), 65535)
    return _patch_us(rows, lay.find(COLUMNS), 65535)


def _with_transfer_syntax(data: bytes, lay: Layout, uid: str | None) -> bytes:
    """Rewrite (or drop, with ``uid`` None) TransferSyntaxUID, keeping the group length right."""
    syntax = lay.find(TRANSFER_SYNTAX)
    element = b""
    if uid is not None:
        value = uid.encode() + (b"\0" if len(uid) % 2 else b"")
        element = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(value)) + value
    body = data[: syntax.start] + element + data[syntax.end :]
    length_at = lay.meta[0].value_start
    (group_length,) = struct.unpack("<L", data[length_at : length_at + 4])
    group_length += len(element) - (syntax.end - syntax.start)
    return body[:length_at] + struct.pack("<L", group_length) + body[length_at + 4 :]


def _fixed_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w") as archive:
        info = zipfile.ZipInfo("CT_small.dcm", date_time=(2004, 1, 19, 7, 27, 30))
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, demo.CT_SMALL.read_bytes())
    return buffer.getvalue()


def _first_fragment(path: Path) -> bytes:
    data = path.read_bytes()
    start, end = layout(data).fragments[0]
    return data[start:end]


def _not_dicom_files() -> dict[str, bytes]:
    files = {
        "notes.txt": b"Patient scans are in the other folder.\n" * 20,
        "study.csv": b"path,modality\nIM_0001,MR\n",
        # a real baseline JPEG: the single fragment of one of pydicom's JPEG files
        "photo.jpg": _first_fragment(pydicom_file("SC_rgb_jpeg_dcmtk.dcm")),
        "sheet.png": (demo.ROOT / "docs" / "demo-contact-sheet-ct.png").read_bytes(),
        "archive.zip": _fixed_zip(),
        "archive.dcm.gz": pydicom_file("zipMR.gz").read_bytes(),
        "codestream.j2k": _first_fragment(CT_J2K),  # a bare JPEG 2000 codestream
        "report.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
        "dump.dcm": pydicom_file("rtplan.dump").read_bytes(),
        "model.json": pydicom_file("test1.json").read_bytes(),
        "Thumbs.db": bytes(range(256)) * 4,
        ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(2042),
    }
    assert files.keys() == NOT_DICOM_KINDS.keys()
    return files


class _Writer:
    """Writes corpus files and records what each should become."""

    def __init__(self, out: Path):
        self.out = out
        self.expected: dict[str, str] = {}

    def __call__(self, rel: str, data: bytes, outcome: str) -> None:
        target = self.out / rel
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(data)
        self.expected[rel] = outcome


def _fixed_cases(write: _Writer, sources: dict[str, bytes], layouts: dict[str, Layout]) -> None:
    for path in VALID_SOURCES:
        write(f"{VALID_FOLDER}/{path.name}", path.read_bytes(), INSTANCE)

    for name, data in sources.items():
        for label, size in structural_cuts(layouts[name], len(data)):
            write(f"truncated/{name}/{label}.dcm", data[:size], classify_cut(layouts[name], size))

    for rel in ("empty.dcm", "IM_0000", "nested/deeper/empty"):
        write(f"empty/{rel}", b"", "empty_file")

    for rel, data in _not_dicom_files().items():
        write(f"not_dicom/{rel}", data, "not_dicom")

    ct, ct_lay = sources["ct_small"], layouts["ct_small"]
    write("zeroed/ct_small/dicm_marker.dcm", ct[:128] + bytes(4) + ct[132:], "not_dicom")

    # README: files without the 128-byte preamble and file meta are still read
    for name in ("ct_small", "rtdose", "sr", "rtplan"):
        raw = sources[name][layouts[name].dataset_start :]
        write(f"raw_dataset/{name}_no_preamble_no_meta.dcm", raw, INSTANCE)
    for name in ("ct_small", "sr"):  # file meta kept, preamble and DICM marker missing
        write(f"raw_dataset/{name}_meta_without_preamble", sources[name][132:], INSTANCE)

    huge = _huge_matrix(ct, ct_lay)
    write("huge_matrix/ct_small_65535x65535.dcm", huge, INSTANCE_TRUNCATED)
    pixel_length_at = ct_lay.pixels.value_start - 4
    few = huge[:pixel_length_at] + struct.pack("<L", 16) + bytes(16)
    write("huge_matrix/ct_small_65535x65535_16_bytes.dcm", few, INSTANCE_TRUNCATED)
    dose = _huge_matrix(sources["rtdose"], layouts["rtdose"])
    write("huge_matrix/rtdose_65535x65535x15_frames.dcm", dose, INSTANCE_TRUNCATED)
    # encapsulated pixel data has no expected length to check in a header-only read
    j2k = _huge_matrix(sources["ct_j2k"], layouts["ct_j2k"])
    write("huge_matrix/ct_j2k_65535x65535.dcm", j2k, INSTANCE)

    for name, label, uid, outcome in [
        ("ct_small", "missing", None, INSTANCE),
        ("ct_small", "implicit_le_for_explicit_data", "1.2.840.10008.1.2", INSTANCE),
        # byte-swapped lengths run far past the end: a header pydicom cannot parse
        ("ct_small", "explicit_be_for_le_data", "1.2.840.10008.1.2.2", "unreadable_header"),
        ("ct_small", "jpeg_baseline_for_native_pixels", "1.2.840.10008.1.2.4.50", INSTANCE),
        ("ct_small", "unknown_uid", "1.2.3.4.5.6.7.8", INSTANCE),
        ("ct_small", "not_a_uid", "ExplicitLittle", INSTANCE),
        ("rtplan", "missing", None, INSTANCE),
        ("rtplan", "explicit_le_for_implicit_data", "1.2.840.10008.1.2.1", INSTANCE),
        ("ct_j2k", "explicit_le_for_fragments", "1.2.840.10008.1.2.1", INSTANCE),
    ]:
        changed = _with_transfer_syntax(sources[name], layouts[name], uid)
        write(f"transfer_syntax/{name}_{label}.dcm", changed, outcome)

    for rel, src in NO_PIXEL_OBJECTS.items():
        path = src if isinstance(src, Path) else pydicom_file(src)
        write(f"no_pixels/{rel}", path.read_bytes(), INSTANCE)

    for name in DICOMDIRS:
        write(f"dicomdir/{name}", pydicom_file(f"dicomdirtests/{name}").read_bytes(), INSTANCE)

    for name, outcome in PYDICOM_ODD_FILES.items():
        write(f"pydicom_odd/{name}", pydicom_file(name).read_bytes(), outcome)

    # a symlink to a file is listed under its own path; symlinks to folders are not followed
    links = write.out / "links"
    links.mkdir()
    os.symlink("../no_pixels/sr_reportsi.dcm", links / "report_link.dcm")
    write.expected["links/report_link.dcm"] = INSTANCE
    os.symlink("..", links / "loop_to_parent")
    os.symlink(".", links / "loop_to_self")

    # root reads a mode-000 file like any other; everyone else gets "unreadable_file"
    write("permissions/no_read.dcm", sources["sr"], INSTANCE)
    os.chmod(write.out / "permissions" / "no_read.dcm", 0)
    if os.geteuid() != 0:
        write.expected["permissions/no_read.dcm"] = "unreadable_file"


RANDOM_KINDS = ("cut", "flip_header", "flip_pixels", "zero_header", "zero_pixels", "preamble")
"""Random damage, made in turn, from the sources in turn; every seventh file is noise."""


def _random_cases(
    write: _Writer,
    sources: dict[str, bytes],
    layouts: dict[str, Layout],
    n_variants: int,
    rng: Random,
) -> None:
    names = list(sources)
    with_pixels = [n for n in names if layouts[n].pixels is not None]

    def cut(name, data, lay, i):
        size = rng.randrange(1, len(data))
        return f"truncated_random/{name}/cut_{size:06d}.dcm", data[:size], classify_cut(lay, size)

    def flip_header(name, data, lay, i):
        flipped = _flip_bits(data, rng, [(132, lay.header_end(len(data)))], rng.randint(1, 8))
        return f"bit_flipped/{name}/header_{i:05d}.dcm", flipped, UNPREDICTABLE

    def flip_pixels(name, data, lay, i):
        flipped = _flip_bits(data, rng, lay.pixel_values(), rng.randint(1, 64))
        return f"bit_flipped/{name}/pixels_{i:05d}.dcm", flipped, INSTANCE

    def zero_header(name, data, lay, i):
        zeroed = _zero_span(data, rng, [(132, lay.header_end(len(data)))], 64)
        return f"zeroed/{name}/header_{i:05d}.dcm", zeroed, UNPREDICTABLE

    def zero_pixels(name, data, lay, i):
        zeroed = _zero_span(data, rng, lay.pixel_values(), 4096)
        return f"zeroed/{name}/pixels_{i:05d}.dcm", zeroed, INSTANCE

    def preamble(name, data, lay, i):  # the preamble is free for applications: still DICOM
        flipped = _flip_bits(data, rng, [(0, 128)], rng.randint(1, 32))
        return f"bit_flipped/{name}/preamble_{i:05d}.dcm", flipped, INSTANCE

    makers: dict[str, tuple[Callable, list[str]]] = {
        "cut": (cut, names),
        "flip_header": (flip_header, names),
        "flip_pixels": (flip_pixels, with_pixels),
        "zero_header": (zero_header, names),
        "zero_pixels": (zero_pixels, with_pixels),
        "preamble": (preamble, names),
    }
    turn = 0
    for i in range(n_variants):
        if i % 7 == 6:
            size = rng.randint(1, 8192)
            if i % 14 == 6:
                write(f"random_bytes/noise_{i:05d}.bin", rng.randbytes(size), "not_dicom")
            else:
                noise = rng.randbytes(128) + b"DICM" + rng.randbytes(size)
                write(f"random_bytes/noise_with_dicm_{i:05d}.dcm", noise, UNPREDICTABLE)
            continue
        make, pool = makers[RANDOM_KINDS[turn % len(RANDOM_KINDS)]]
        name = pool[(turn // len(RANDOM_KINDS)) % len(pool)]
        turn += 1
        rel, data, outcome = make(name, sources[name], layouts[name], i)
        if rel not in write.expected:  # the same random cut twice: one file
            write(rel, data, outcome)


def build_corpus(out: Path, n_variants: int, seed: int = DEFAULT_SEED) -> dict[str, str]:
    """Write the corpus into ``out`` and return the expected outcome of every regular file.

    Parameters
    ----------
    out : Path
        Folder to write into; created if missing, must be empty.
    n_variants : int
        Number of randomly damaged files made on top of the ~150 fixed cases.
    seed : int
        Seed of the one random generator behind every random choice.

    Returns
    -------
    dict of str to str
        Posix path relative to ``out`` -> :data:`INSTANCE`, :data:`INSTANCE_TRUNCATED`,
        :data:`UNPREDICTABLE` or an error reason from :data:`ERROR_REASONS`, sorted by
        path. Symlinks to files are included (a scan lists them like files); symlinks to
        folders are not.

    Raises
    ------
    ValueError
        When ``out`` is not empty or ``n_variants`` is negative.
    """
    if n_variants < 0:
        raise ValueError(f"Argument 'n_variants' must be >= 0, got {n_variants}")
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ValueError(f"Argument 'out' must be an empty folder, got {out} with files in it")
    sources = {name: path.read_bytes() for name, path in SOURCES.items()}
    layouts = {name: layout(data) for name, data in sources.items()}
    write = _Writer(out)
    _fixed_cases(write, sources, layouts)
    _random_cases(write, sources, layouts, n_variants, Random(seed))
    return dict(sorted(write.expected.items()))


def copy_valid(out: Path) -> list[str]:
    """Write only the valid files, at the same relative paths as in the corpus."""
    paths = []
    for path in VALID_SOURCES:
        rel = f"{VALID_FOLDER}/{path.name}"
        (out / rel).parent.mkdir(parents=True, exist_ok=True)
        (out / rel).write_bytes(path.read_bytes())
        paths.append(rel)
    return paths


def kind(rel: str) -> str:
    """The kind of a corpus file: its top-level folder."""
    return rel.split("/", 1)[0]


def regular_files(study: Path) -> list[str]:
    """Every path that is a file once a file symlink is followed; folder symlinks are not."""
    found = []
    for dirpath, dirnames, filenames in os.walk(study, followlinks=False):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full):
                found.append(Path(os.path.relpath(full, study)).as_posix())
    return sorted(found)


def tree_state(folder: Path) -> dict[str, str]:
    """Every entry under ``folder``: SHA-256 and mode of files, targets of symlinks, folders."""
    state = {}
    for dirpath, dirnames, filenames in os.walk(folder, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = Path(os.path.relpath(full, folder)).as_posix()
            info = os.lstat(full)
            mode = f"{stat.S_IMODE(info.st_mode):o}"
            if stat.S_ISLNK(info.st_mode):
                state[rel] = "link:" + os.readlink(full)
            elif stat.S_ISDIR(info.st_mode):
                state[rel] = "dir"
            elif os.access(full, os.R_OK):
                with open(full, "rb") as fh:
                    state[rel] = f"{mode}:{hashlib.sha256(fh.read()).hexdigest()}"
            else:
                state[rel] = f"{mode}:unreadable:{info.st_size}"
    return dict(sorted(state.items()))
