"""A deterministic corpus of bad study files, built from real DICOM files, for end-to-end tests.

:func:`build_corpus` writes a study folder full of damaged copies of real files (cut at
chosen and random offsets, bit-flipped, zeroed, with a wrong transfer syntax or an absurd
matrix size), files that are not DICOM at all, odd but legal DICOM (raw datasets without
preamble, a DICOMDIR, objects without pixels, pydicom's own odd test files), symlinks and
a file without read permission, plus a few valid files kept apart in ``valid/``. It returns
what the workflow should make of each regular file.

The same ``n_variants`` and ``seed`` always give the same bytes, names and modes: random
choices come from one ``random.Random(seed)`` and the sources are fixed files of the demo
study and of the pinned pydicom wheel.
"""

from __future__ import annotations

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
from pydicom.filereader import data_element_generator
from pydicom.uid import UID

import demo

INSTANCE = "instance"
"""Expected outcome: a row in ``instances`` and no warning that says ``truncated``."""
INSTANCE_TRUNCATED = "instance+truncated"
"""Expected outcome: a row in ``instances`` plus a ``truncated`` warning (pixel data cut)."""
UNPREDICTABLE = "instance_or_error"
"""Expected outcome of random header damage: an instance or an error with a documented reason."""
ERROR_REASONS = frozenset(
    {"not_dicom", "empty_file", "truncated", "unreadable_header", "unreadable_file"}
)
"""Reasons of ``error`` rows (a file that is not an instance), from the README."""
WARNING_REASONS = frozenset({"truncated", "undecodable_pixels", "malformed_value", "empty_uid"})
"""Reasons of ``warning`` rows (an instance with a problem), from the README."""

DEFAULT_SEED = 20240407

VALID_FOLDER = "valid/mr_t1_sag"
"""Where the valid files go, in the corpus and in a study of the valid files alone."""
VALID_SOURCES = tuple(sorted(demo.MR_SERIES.iterdir())[:5])
"""The valid files: the first five slices of the demo MR series (never used as a source
of damaged copies, so no damaged file can join their series)."""

CT_J2K = sorted(demo.CT_SERIES.iterdir())[0]
"""First slice of the demo CT series: JPEG 2000 lossless, encapsulated, empty UIDs."""

SOURCES = {
    "ct_small": demo.CT_SMALL,  # explicit VR little endian, native 16-bit 128x128
    "ct_j2k": CT_J2K,  # encapsulated JPEG 2000 fragments, 512x512
    "rtdose": demo.RTDOSE,  # implicit VR little endian, native, 15 frames
    "sr": demo.SR,  # structured report: nested sequences, no pixels
    "rtplan": demo.RTPLAN,  # implicit VR little endian, nested sequences, no pixels
}
"""Real files the damaged copies are made from."""

PIXEL_DATA = 0x7FE00010
ROWS, COLUMNS = 0x00280010, 0x00280011
TRANSFER_SYNTAX = 0x00020010

PYDICOM_ODD_FILES = {
    # name in pydicom's test_files: expected outcome
    "badVR.dcm": INSTANCE,  # a value that does not parse for its VR -> malformed_value warning
    "meta_missing_tsyntax.dcm": INSTANCE,  # file meta without TransferSyntaxUID
    "no_meta_group_length.dcm": INSTANCE,  # file meta without (0002,0000)
    "empty_charset_LEI.dcm": INSTANCE,  # empty SpecificCharacterSet
    "UN_sequence.dcm": INSTANCE,  # a sequence stored with VR UN
    "priv_SQ.dcm": INSTANCE,  # private sequence
    "nested_priv_SQ.dcm": INSTANCE,  # nested private sequences
    "ExplVR_BigEndNoMeta.dcm": INSTANCE,  # raw dataset, explicit VR big endian
    "ExplVR_LitEndNoMeta.dcm": INSTANCE,  # raw dataset, explicit VR little endian
    "MR_small_padded.dcm": INSTANCE,  # trailing padding after the pixel data
    "reportsi_with_empty_number_tags.dcm": INSTANCE,  # empty IS/DS values
    "JPEG2000-embedded-sequence-delimiter.dcm": INSTANCE,  # delimiter bytes inside a fragment
    "J2K_pixelrep_mismatch.dcm": INSTANCE,  # PixelRepresentation disagrees with the codestream
    "image_dfl.dcm": INSTANCE,  # deflated transfer syntax
    "ExplVR_BigEnd.dcm": INSTANCE,  # explicit VR big endian with file meta
    "SC_rgb_small_odd.dcm": INSTANCE,  # odd number of pixel bytes
    "JPEG-lossy.dcm": INSTANCE,  # no decoder accepts its stream -> undecodable_pixels warning
    "MR_truncated.dcm": INSTANCE_TRUNCATED,  # pixel data shorter than its length
    "SC_rgb_jpeg.dcm": INSTANCE_TRUNCATED,  # pixel data element longer than the file
    "rtplan_truncated.dcm": "truncated",  # ends inside the dataset
    "no_meta.dcm": "not_dicom",  # no preamble, and junk even when forced
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
"""Valid objects without pixel data: instances with ``has_pixels`` false."""

DICOMDIRS = ("DICOMDIR", "DICOMDIR-bigEnd", "DICOMDIR-implicit", "DICOMDIR-empty.dcm")
"""Media directory files from pydicom's ``dicomdirtests``: instances without pixels."""


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
    """One past its last byte (after the delimiter for undefined lengths)."""


@dataclass(frozen=True)
class Layout:
    """The top-level structure of a DICOM file with preamble and file meta."""

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

    def has_image_module_before(self, offset: int) -> bool:
        """Whether Rows, Columns and the rest of the pixel module lie wholly before ``offset``."""
        return any(s.tag == COLUMNS and s.end <= offset for s in self.dataset)

    def pixel_values(self) -> list[tuple[int, int]]:
        """Byte ranges whose change leaves the header intact: native values or fragment bytes."""
        pixels = self.pixels
        if pixels is None:
            return []
        return self.fragments or [(pixels.value_start, pixels.end)]


def _spans(fp: io.BytesIO, implicit: bool, little: bool, meta: bool) -> list[Span]:
    spans = []
    start = fp.tell()
    stop = (lambda tag, vr, length: tag >> 16 != 2) if meta else None
    for element in data_element_generator(fp, implicit, little, stop_when=stop):
        end = fp.tell()
        spans.append(Span(int(element.tag), start, element.value_tell, end))
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
    """Top-level elements of file meta and dataset, and encapsulated fragments, of a file."""
    if data[128:132] != b"DICM":
        raise ValueError("layout needs a file with preamble and DICM marker")
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


def classify_cut(data: bytes, lay: Layout, size: int) -> str:
    """Expected outcome of the first ``size`` bytes of a file with layout ``lay``.

    A cut exactly between two top-level elements before the pixel module leaves a shorter
    but well-formed dataset, which no reader can tell from a complete one: an instance.
    """
    if size == 0:
        return "empty_file"
    if size < 132:
        return "not_dicom"  # no DICM marker, and the preamble is no dataset either
    if size == 132:
        return "truncated"
    for span in lay.meta:
        if span.start < size < span.end:
            return "truncated"
        if size == span.end:
            # the meta group is complete or cut at an element boundary: the dataset is missing
            return "truncated"
    for span in lay.dataset:
        if span.start < size < span.end:
            if span.tag == PIXEL_DATA and size >= span.value_start:
                return INSTANCE_TRUNCATED
            if span.tag == PIXEL_DATA:
                return "truncated"
            return "truncated"
        if size == span.start:
            if span.tag == PIXEL_DATA or lay.has_image_module_before(size):
                return INSTANCE_TRUNCATED
            return INSTANCE
    return INSTANCE


def structural_cuts(lay: Layout, size: int) -> Iterator[tuple[str, int]]:
    """``(label, size)`` of cuts at named places: preamble, meta group, sequence, pixel data."""
    yield "inside_preamble", 64
    yield "inside_dicm_marker", 130
    yield "after_dicm_marker", 132
    yield "inside_meta_group_length", lay.meta[0].value_start + 2
    syntax = lay.find(TRANSFER_SYNTAX)
    yield "inside_transfer_syntax_value", syntax.value_start + 5
    yield "after_meta_group", lay.dataset_start
    first = lay.dataset[0]
    yield "inside_first_dataset_element_header", first.start + 3
    sequences = [s for s in lay.dataset if _is_sequence(s, lay)]
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
    else:
        last = lay.dataset[-1]
        yield "inside_last_element", last.start + (last.end - last.start) // 2
    yield "last_byte_missing", size - 1


def _is_sequence(span: Span, lay: Layout) -> bool:
    from pydicom.datadict import dictionary_VR

    try:
        return dictionary_VR(span.tag) == "SQ"
    except KeyError:
        return False


def _write(out: Path, rel: str, data: bytes, expected: dict[str, str], outcome: str) -> None:
    target = out / rel
    target.parent.mkdir(parents=True, exist_ok=True)
    target.write_bytes(data)
    expected[rel] = outcome


def _flip_bits(data: bytes, rng: Random, ranges: list[tuple[int, int]], count: int) -> bytes:
    out = bytearray(data)
    for _ in range(count):
        start, end = rng.choice(ranges)
        position = rng.randrange(start, end)
        out[position] ^= 1 << rng.randrange(8)
    return bytes(out)


def _zero_span(data: bytes, rng: Random, ranges: list[tuple[int, int]], longest: int) -> bytes:
    start, end = rng.choice(ranges)
    position = rng.randrange(start, end)
    length = min(rng.randint(1, longest), end - position)
    return data[:position] + bytes(length) + data[position + length :]


def _header_range(lay: Layout, size: int) -> tuple[int, int]:
    pixels = lay.pixels
    return 132, pixels.start if pixels is not None else size


def _patch_us(data: bytes, span: Span, value: int, little: bool = True) -> bytes:
    packed = struct.pack("<H" if little else ">H", value)
    return data[: span.value_start] + packed + data[span.value_start + 2 :]


def _replace_transfer_syntax(data: bytes, lay: Layout, uid: str | None) -> bytes:
    """Rewrite (or drop, with ``uid`` None) the meta TransferSyntaxUID, fixing the group length."""
    syntax = lay.find(TRANSFER_SYNTAX)
    if uid is None:
        element = b""
    else:
        value = uid.encode() + (b"\0" if len(uid) % 2 else b"")
        element = struct.pack("<HH2sH", 0x0002, 0x0010, b"UI", len(value)) + value
    body = data[: syntax.start] + element + data[syntax.end :]
    delta = len(element) - (syntax.end - syntax.start)
    group_length = lay.meta[0]
    (old,) = struct.unpack("<L", data[group_length.value_start : group_length.value_start + 4])
    return (
        body[: group_length.value_start]
        + struct.pack("<L", old + delta)
        + body[group_length.value_start + 4 :]
    )


def _raw_dataset(data: bytes, lay: Layout) -> bytes:
    """The dataset bytes alone: no preamble, no DICM marker, no file meta."""
    return data[lay.dataset_start :]


def _fixed_zip() -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        info = zipfile.ZipInfo("CT_small.dcm", date_time=(2004, 1, 19, 7, 27, 30))
        info.compress_type = zipfile.ZIP_DEFLATED
        archive.writestr(info, demo.CT_SMALL.read_bytes())
    return buffer.getvalue()


def _jpeg_stream() -> bytes:
    """A real baseline JPEG file: the single fragment of pydicom's SC_rgb_jpeg_dcmtk.dcm."""
    data = pydicom_file("SC_rgb_jpeg_dcmtk.dcm").read_bytes()
    lay = layout(data)
    start, end = lay.fragments[0]
    return data[start:end]


def _j2k_stream() -> bytes:
    """A real JPEG 2000 codestream: the first fragment of the demo CT slice."""
    data = CT_J2K.read_bytes()
    start, end = layout(data).fragments[0]
    return data[start:end]


def _not_dicom_files() -> dict[str, bytes]:
    png = demo.ROOT / "docs" / "demo-contact-sheet-ct.png"
    return {
        "notes.txt": b"Patient scans are in the other folder.\n" * 20,
        "study.csv": b"path,modality\nIM_0001,MR\n",
        "photo.jpg": _jpeg_stream(),
        "sheet.png": png.read_bytes(),
        "archive.zip": _fixed_zip(),
        "archive.dcm.gz": pydicom_file("zipMR.gz").read_bytes(),
        "codestream.j2k": _j2k_stream(),
        "report.pdf": b"%PDF-1.4\n1 0 obj << /Type /Catalog >> endobj\ntrailer << >>\n%%EOF\n",
        "dump.dcm": pydicom_file("rtplan.dump").read_bytes(),
        "model.json": pydicom_file("test1.json").read_bytes(),
        "Thumbs.db": bytes(range(256)) * 4,
        ".DS_Store": b"\x00\x00\x00\x01Bud1" + bytes(2042),
    }


def _fixed_cases(out: Path, expected: dict[str, str], sources: dict[str, bytes]) -> None:
    layouts = {name: layout(data) for name, data in sources.items()}

    for path in VALID_SOURCES:
        _write(out, f"{VALID_FOLDER}/{path.name}", path.read_bytes(), expected, INSTANCE)

    for name, data in sources.items():
        lay = layouts[name]
        for label, size in structural_cuts(lay, len(data)):
            outcome = classify_cut(data, lay, size)
            _write(out, f"truncated/{name}/{label}.dcm", data[:size], expected, outcome)

    for i, rel in enumerate(["empty.dcm", "IM_0000", "nested/deeper/empty"]):
        _write(out, f"empty/{rel}", b"", expected, "empty_file")
        del i

    for rel, data in _not_dicom_files().items():
        _write(out, f"not_dicom/{rel}", data, expected, "not_dicom")

    for name in ("ct_small", "rtdose", "sr", "rtplan"):
        raw = _raw_dataset(sources[name], layouts[name])
        _write(out, f"raw_dataset/{name}_no_preamble_no_meta.dcm", raw, expected, INSTANCE)
    for name in ("ct_small", "sr"):
        data, lay = sources[name], layouts[name]
        # file meta kept but preamble and DICM marker stripped (a common writer bug)
        _write(out, f"raw_dataset/{name}_meta_without_preamble", data[132:], expected, INSTANCE)
        del lay

    ct, ct_lay = sources["ct_small"], layouts["ct_small"]
    huge = _patch_us(_patch_us(ct, ct_lay.find(ROWS), 65535), ct_lay.find(COLUMNS), 65535)
    _write(out, "huge_matrix/ct_small_65535x65535.dcm", huge, expected, INSTANCE_TRUNCATED)
    tiny_pixels = ct_lay.pixels
    little = huge[: tiny_pixels.value_start - 4] + struct.pack("<L", 16) + bytes(16)
    _write(out, "huge_matrix/ct_small_65535x65535_16_bytes.dcm", little, expected, INSTANCE_TRUNCATED)
    j2k, j2k_lay = sources["ct_j2k"], layouts["ct_j2k"]
    huge_j2k = _patch_us(_patch_us(j2k, j2k_lay.find(ROWS), 65535), j2k_lay.find(COLUMNS), 65535)
    _write(out, "huge_matrix/ct_j2k_65535x65535.dcm", huge_j2k, expected, INSTANCE)
    dose, dose_lay = sources["rtdose"], layouts["rtdose"]
    huge_dose = _patch_us(_patch_us(dose, dose_lay.find(ROWS), 65535), dose_lay.find(COLUMNS), 65535)
    _write(out, "huge_matrix/rtdose_65535x65535x15.dcm", huge_dose, expected, INSTANCE_TRUNCATED)

    syntaxes = [
        ("missing", None, INSTANCE),
        ("implicit_le_for_explicit_data", "1.2.840.10008.1.2", INSTANCE),
        ("explicit_be_for_little_endian_data", "1.2.840.10008.1.2.2", UNPREDICTABLE),
        ("jpeg_baseline_for_native_pixels", "1.2.840.10008.1.2.4.50", INSTANCE),
        ("unknown_uid", "1.2.3.4.5.6.7.8", INSTANCE),
        ("not_a_uid", "ExplicitLittle", INSTANCE),
    ]
    for label, uid, outcome in syntaxes:
        changed = _replace_transfer_syntax(ct, ct_lay, uid)
        _write(out, f"transfer_syntax/ct_small_{label}.dcm", changed, expected, outcome)
    rtplan, rtplan_lay = sources["rtplan"], layouts["rtplan"]
    for label, uid, outcome in [
        ("missing", None, INSTANCE),
        ("explicit_le_for_implicit_data", "1.2.840.10008.1.2.1", INSTANCE),
    ]:
        changed = _replace_transfer_syntax(rtplan, rtplan_lay, uid)
        _write(out, f"transfer_syntax/rtplan_{label}.dcm", changed, expected, outcome)
    changed = _replace_transfer_syntax(j2k, j2k_lay, "1.2.840.10008.1.2.1")
    _write(out, "transfer_syntax/ct_j2k_explicit_le_for_fragments.dcm", changed, expected, INSTANCE)

    marker = ct[:128] + b"\0\0\0\0" + ct[132:]
    _write(out, "zeroed/ct_small/dicm_marker.dcm", marker, expected, "not_dicom")

    for name, src in NO_PIXEL_OBJECTS.items():
        path = src if isinstance(src, Path) else pydicom_file(src)
        _write(out, f"no_pixels/{name}", path.read_bytes(), expected, INSTANCE)

    for name in DICOMDIRS:
        data = pydicom_file(f"dicomdirtests/{name}").read_bytes()
        _write(out, f"dicomdir/{name}", data, expected, INSTANCE)

    for name, outcome in PYDICOM_ODD_FILES.items():
        _write(out, f"pydicom_odd/{name}", pydicom_file(name).read_bytes(), expected, outcome)

    # a symlink to a file is listed under its own path; a symlink loop to a folder is not walked
    links = out / "links"
    links.mkdir()
    os.symlink("../no_pixels/sr_reportsi.dcm", links / "report_link.dcm")
    expected["links/report_link.dcm"] = INSTANCE
    os.symlink("..", links / "loop")
    os.symlink(".", links / "self")

    # root reads anything; everyone else gets "unreadable_file"
    _write(out, "permissions/no_read.dcm", sources["sr"], expected, INSTANCE)
    os.chmod(out / "permissions" / "no_read.dcm", 0)
    if os.geteuid() != 0:
        expected["permissions/no_read.dcm"] = "unreadable_file"


RANDOM_KINDS: tuple[str, ...] = (
    "cut",
    "flip_header",
    "flip_pixels",
    "zero_header",
    "zero_pixels",
    "flip_preamble",
    "noise",
)


def _random_cases(
    out: Path, expected: dict[str, str], sources: dict[str, bytes], n_variants: int, rng: Random
) -> None:
    layouts = {name: layout(data) for name, data in sources.items()}
    names = list(sources)
    with_pixels = [n for n in names if layouts[n].pixels is not None]
    makers: dict[str, Callable[[int], tuple[str, bytes, str]]] = {}

    def pick(pool: list[str], i: int) -> tuple[str, bytes, Layout]:
        name = pool[(i // len(RANDOM_KINDS)) % len(pool)]
        return name, sources[name], layouts[name]

    def cut(i):
        name, data, lay = pick(names, i)
        size = rng.randrange(1, len(data))
        return f"truncated_random/{name}/cut_{size:06d}.dcm", data[:size], classify_cut(
            data, lay, size
        )

    def flip_header(i):
        name, data, lay = pick(names, i)
        flipped = _flip_bits(data, rng, [_header_range(lay, len(data))], rng.randint(1, 8))
        return f"bit_flipped/{name}/header_{i:05d}.dcm", flipped, UNPREDICTABLE

    def flip_pixels(i):
        name, data, lay = pick(with_pixels, i)
        flipped = _flip_bits(data, rng, lay.pixel_values(), rng.randint(1, 64))
        return f"bit_flipped/{name}/pixels_{i:05d}.dcm", flipped, INSTANCE

    def zero_header(i):
        name, data, lay = pick(names, i)
        zeroed = _zero_span(data, rng, [_header_range(lay, len(data))], 64)
        return f"zeroed/{name}/header_{i:05d}.dcm", zeroed, UNPREDICTABLE

    def zero_pixels(i):
        name, data, lay = pick(with_pixels, i)
        zeroed = _zero_span(data, rng, lay.pixel_values(), 4096)
        return f"zeroed/{name}/pixels_{i:05d}.dcm", zeroed, INSTANCE

    def flip_preamble(i):
        name, data, _ = pick(names, i)
        flipped = _flip_bits(data, rng, [(0, 128)], rng.randint(1, 32))
        return f"bit_flipped/{name}/preamble_{i:05d}.dcm", flipped, INSTANCE

    def noise(i):
        size = rng.randint(1, 8192)
        if i % 2:
            data = rng.randbytes(size)
            return f"random_bytes/noise_{i:05d}.bin", data, "not_dicom"
        data = rng.randbytes(128) + b"DICM" + rng.randbytes(size)
        return f"random_bytes/noise_with_dicm_{i:05d}.dcm", data, UNPREDICTABLE

    makers = {
        "cut": cut,
        "flip_header": flip_header,
        "flip_pixels": flip_pixels,
        "zero_header": zero_header,
        "zero_pixels": zero_pixels,
        "flip_preamble": flip_preamble,
        "noise": noise,
    }
    for i in range(n_variants):
        rel, data, outcome = makers[RANDOM_KINDS[i % len(RANDOM_KINDS)]](i)
        if rel in expected:  # the same random cut twice: keep one file
            continue
        _write(out, rel, data, expected, outcome)


def build_corpus(out: Path, n_variants: int, seed: int = DEFAULT_SEED) -> dict[str, str]:
    """Write the corpus into ``out`` and return the expected outcome of every regular file.

    Parameters
    ----------
    out : Path
        Folder to create the corpus in (created; must not exist or be empty).
    n_variants : int
        Number of randomly damaged files on top of the fixed cases.
    seed : int
        Seed of the one random generator behind every random choice.

    Returns
    -------
    dict of str to str
        Path relative to ``out`` (posix) -> :data:`INSTANCE`, :data:`INSTANCE_TRUNCATED`,
        :data:`UNPREDICTABLE` or an error reason from :data:`ERROR_REASONS`. Symlinks to
        files are included (they are listed as files); symlinks to folders are not.
    """
    out.mkdir(parents=True, exist_ok=True)
    if any(out.iterdir()):
        raise ValueError(f"Argument 'out' must be an empty folder, got {out} with files in it")
    rng = Random(seed)
    sources = {name: path.read_bytes() for name, path in SOURCES.items()}
    expected: dict[str, str] = {}
    _fixed_cases(out, expected, sources)
    _random_cases(out, expected, sources, n_variants, rng)
    return dict(sorted(expected.items()))


def copy_valid(out: Path) -> list[str]:
    """Write only the valid files, at the same relative paths as in the corpus."""
    paths = []
    for path in VALID_SOURCES:
        target = out / VALID_FOLDER / path.name
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(path.read_bytes())
        paths.append(f"{VALID_FOLDER}/{path.name}")
    return paths


def regular_files(study: Path) -> list[str]:
    """What a scan should list: every path that is a file after following a file symlink.

    Folder symlinks are not followed (as in ``scan_study``), so loops end.
    """
    found = []
    for dirpath, dirnames, filenames in os.walk(study, followlinks=False):
        dirnames.sort()
        for name in filenames:
            full = os.path.join(dirpath, name)
            if os.path.isfile(full):
                found.append(Path(os.path.relpath(full, study)).as_posix())
    return sorted(found)


def tree_state(study: Path) -> dict[str, str]:
    """Content of every entry under ``study`` (symlinks by target, unreadable files by mode)."""
    import hashlib

    state = {}
    for dirpath, dirnames, filenames in os.walk(study, followlinks=False):
        for name in dirnames + filenames:
            full = os.path.join(dirpath, name)
            rel = Path(os.path.relpath(full, study)).as_posix()
            info = os.lstat(full)
            if stat.S_ISLNK(info.st_mode):
                state[rel] = "link:" + os.readlink(full)
            elif stat.S_ISDIR(info.st_mode):
                state[rel] = "dir"
            elif os.access(full, os.R_OK):
                with open(full, "rb") as fh:
                    state[rel] = hashlib.sha256(fh.read()).hexdigest()
            else:
                state[rel] = f"mode:{stat.S_IMODE(info.st_mode):o} size:{info.st_size}"
    return state
