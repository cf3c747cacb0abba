"""A fast header reader: the same dataset and DICOM JSON as the reference path, at a fraction
of its cost on real vendor headers.

pydicom builds a Python object per element while reading and several more per element
while converting to JSON; on a Philips or GE header (hundreds of private elements) that
costs ten times the read. Here the header is parsed from one in-memory buffer with
``struct.unpack_from``, and each element's JSON text is memoised by its raw bytes and
everything its conversion depends on (tag, VR, character set, private creator, syntax).
Slices of one series repeat most elements byte for byte, so only the elements that
differ are converted: the plain forms of common VRs directly (pinned to pydicom by tests),
everything else by pydicom itself (``dicom_json``), so the result is the reference's.
Runs of top-level elements unchanged since the previous header ("segments") are skipped
by the parser and converted as one memoised piece.

Anything unusual (no preamble, big endian, deflate, undefined-length non-sequences,
implicit items in explicit data, out-of-order or duplicate tags, a value running past
the end of the file, context-dependent VRs inside items) makes :func:`read_header_fast`
return None, and the caller uses the reference path, which gives the error reasons.
"""

from __future__ import annotations

import base64
import json
import math
import os
import re
import struct
from functools import cache

from pydicom.charset import convert_encodings, default_encoding
from pydicom.datadict import dictionary_VR, private_dictionary_VR
from pydicom.dataelem import RawDataElement
from pydicom.dataset import Dataset, FileMetaDataset
from pydicom.tag import BaseTag
from pydicom.uid import UID
from pydicom.values import convert_string

import dicom_io
from dicom_json import _is_bulk, element_entry

INITIAL_READ = 64 * 1024
"""Bytes read at first; a header running past them is parsed again from a larger read."""

MEMO_LIMIT = 200_000
"""Memoised element conversions kept per process before the memo is cleared."""

MEMO_LIMIT_BYTES = 256 * 1024 * 1024
"""Bytes of memoised values and JSON kept per process before the memo is cleared."""

MEMO_MAX_BYTES = 64 * 1024
"""Longest value, sequence or segment memoised: enhanced multi-frame headers hold
sequences of megabytes that differ per file, which would only fill memory."""

_LONG_VRS = frozenset(
    (b"OB", b"OD", b"OF", b"OL", b"OW", b"OV", b"SQ", b"SV", b"UC", b"UN", b"UR", b"UT", b"UV")
)
_SHORT_VRS = frozenset(
    (b"AE", b"AS", b"AT", b"CS", b"DA", b"DS", b"DT", b"FL", b"FD", b"IS", b"LO", b"LT")
    + (b"PN", b"SH", b"SL", b"SS", b"ST", b"TM", b"UI", b"UL", b"US")
)
_ITEM, _ITEM_END, _SEQ_END = 0xFFFEE000, 0xFFFEE00D, 0xFFFEE0DD
_PIXEL_TAGS = frozenset(dicom_io.PIXEL_TAGS)
_CHARSET = 0x00080005
_CONTEXT_GROUPS = frozenset((0x0028, 0x5400))
"""Groups kept in a trimmed header dataset: image pixel module and waveform (the elements
pydicom consults to resolve US-or-SS style VRs)."""
_UNPACK_TAG_LEN = struct.Struct("<HHL").unpack_from
_UNPACK_LEN32 = struct.Struct("<L").unpack_from
_UNPACK_EXPLICIT = struct.Struct("<HH2sH").unpack_from

_new_raw = tuple.__new__  # a RawDataElement without its keyword-argument constructor
_RAW_DEFAULTS = (True, True, False)  # is_little_endian, is_raw, is_buffered
_memo: dict = {}
_last_sequence: dict = {}
_UNPARSED: list = []
"""Items of an undefined-length sequence skipped as equal to the last one seen."""
_SEGMENT = -1
"""Tag of a parsed entry standing for a run of elements equal to a known segment."""
_segments: dict = {}
_previous_values: dict = {}
_volatile: set = set()
_ENCAPSULATED: list = []
"""Marks encapsulated pixel data, read like pydicom: undefined length, fragments as bytes."""


class _Fallback(Exception):
    """The file needs the reference reader (the reason is for tests and debugging)."""


class _NeedMore(Exception):
    """The header runs past the bytes read so far."""


@cache
def _public_vr(tag: int) -> str | None:
    """Dictionary VR of a public tag, None when unknown."""
    try:
        return dictionary_VR(tag)
    except KeyError:
        return None


@cache
def _private_vr(tag: int, creator: str | None) -> str:
    """VR pydicom gives a private tag: LO for creators, the private dictionary's, else UN."""
    if tag & 0xFFFF < 0x100 and tag & 0xFFFF >= 0x10:
        return "LO"
    if creator and tag & 0xFF00:
        try:
            return private_dictionary_VR(tag, creator)
        except KeyError:
            pass
    return "UN"


@cache
def _key8(tag: int) -> str:
    return f"{tag:08X}"


_NUMBER = re.compile(r"\s*[+-]?(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?\s*")
_INTEGER = re.compile(r"\s*[+-]?\d+\s*")
_BINARY_NUMBERS = {"FL": "f", "FD": "d", "SL": "l", "SS": "h", "UL": "L", "US": "H"}
_BINARY_BYTES = frozenset(("OB", "OW", "OD", "OF", "OL", "OV", "UN"))
_SPLIT_WHOLE = frozenset(("AS", "CS", "DA", "DT", "TM"))  # pydicom strips the whole value
_SPLIT_EACH = frozenset(("SH", "LO", "UC"))  # pydicom strips each value
_SINGLE_TEXT = frozenset(("ST", "LT", "UT"))
_ASCII_SAFE_CHARSETS = frozenset(
    ("iso8859", ("iso8859",), ("latin_1",), ("UTF8",))
    + tuple((f"iso8859_{n}",) for n in range(2, 10))
)
_dumps = json.JSONEncoder(separators=(",", ":")).encode


def _direct_json(vr: str, value: bytes, charset) -> str | None:
    """JSON text pydicom gives an element of the common VRs, without building its objects.

    Returns None for anything but the plain forms (ASCII without escapes, well-formed
    numbers, whole binary numbers), which pydicom then converts: the tests pin this
    function to pydicom on every real file and on generated values.
    """
    if vr in _BINARY_BYTES:
        if len(value) > 1024:
            return None
        if not value:
            return f'{{"vr":"{vr}"}}'
        return f'{{"InlineBinary":"{base64.b64encode(value).decode()}","vr":"{vr}"}}'
    code = _BINARY_NUMBERS.get(vr)
    if code is not None:
        if not value:
            return f'{{"vr":"{vr}"}}'
        size = struct.calcsize("<" + code)
        if len(value) % size:
            return None
        numbers = struct.unpack(f"<{len(value) // size}{code}", value)
        if code in "fd" and not all(math.isfinite(n) for n in numbers):
            return None
        return f'{{"Value":{_dumps(list(numbers))},"vr":"{vr}"}}'
    if not value.isascii() or b"\x1b" in value:
        return None
    text = value.decode("ascii")
    if vr == "UI":
        items = text.rstrip("\0 ").split("\\")
    elif vr in _SPLIT_WHOLE:
        items = text.rstrip(" \0").split("\\")
    elif vr == "DS":
        items = text.strip().rstrip(" \0").split("\\")
        if items != [""]:
            if not all(_NUMBER.fullmatch(item) for item in items):
                return None
            items = [float(item) for item in items]
            if not all(math.isfinite(n) for n in items):
                return None
    elif vr == "IS":
        items = text.rstrip(" \0").split("\\")
        if items != [""]:
            if not all(_INTEGER.fullmatch(item) for item in items):
                return None
            items = [int(item) for item in items]
    elif charset not in _ASCII_SAFE_CHARSETS:
        return None
    elif vr in _SPLIT_EACH:
        items = [item.rstrip("\0 ") for item in text.split("\\")]
    elif vr in _SINGLE_TEXT:
        items = [text.rstrip("\0 ")]
    else:
        return None
    if items == [""]:
        return f'{{"vr":"{vr}"}}'
    return f'{{"Value":{_dumps(items)},"vr":"{vr}"}}'


class _Segment:
    """A run of top-level elements (whole headers and values) seen before, byte for byte.

    Slices of a series repeat long runs of their header; the parser jumps over a run that
    starts with the same bytes as a known segment (the same bytes parse the same way), and
    its JSON is memoised as one piece.
    """

    __slots__ = ("data", "elements", "first_tag", "last_tag", "private_unresolved", "_kept")

    def __init__(self, data: bytes, elements: list, implicit: bool):
        self.data = data
        self.elements = elements  # [tag, vr, start, stop, None], offsets within ``data``
        self.first_tag = elements[0][0]
        self.last_tag = elements[-1][0]
        self.private_unresolved = any(
            e[0] & 0x10000 and (e[1] is None or e[1] == b"UN") for e in elements
        )
        self._kept: dict = {}

    def kept(self, keep: frozenset | None, base: int) -> list:
        """The elements :meth:`_Converter.level_dataset` keeps (filtered once per ``keep``),
        at absolute offsets from ``base``.
        """
        kept = self._kept.get(keep)
        if kept is None:
            kept = self._kept[keep] = [e for e in self.elements if _in_dataset(e[0], keep)]
        return [[tag, vr, base + start, base + stop, None] for tag, vr, start, stop, _ in kept]


def _in_dataset(tag: int, keep: frozenset | None) -> bool:
    """Whether a level's dataset holds the element: public ones (at the top level only
    those in ``keep`` and the context groups, when ``keep`` is given) and the charset.
    """
    if tag & 0x10000:
        return False
    return keep is None or tag in keep or tag >> 16 in _CONTEXT_GROUPS or tag == _CHARSET


def _expanded(elements: list):
    """Parsed entries with segments replaced by their elements (at absolute offsets)."""
    for element in elements:
        if element[0] == _SEGMENT:
            base = element[2]
            for tag, vr, start, stop, _items in element[1].elements:
                yield [tag, vr, base + start, base + stop, None]
        else:
            yield element


MIN_SEGMENT = 3
"""Fewest elements worth a segment."""


def _learn_segments(buf: bytes, level: _Level) -> None:
    """Record the runs of this header that did not change since the previous header.

    An element whose value differed from the last header's is volatile (an instance UID,
    a position, a time) and ends a run; undefined-length sequences end runs too (their
    items carry offsets of their own).
    """
    if len(_segments) > MEMO_LIMIT // 100:
        _segments.clear()
    run: list = []
    implicit = level.implicit

    def flush() -> None:
        if len(run) >= MIN_SEGMENT:
            first = run[0]
            header = first[2] - (12 if first[1] in _LONG_VRS else 8)
            data = buf[header : run[-1][3]]
            known = _segments.setdefault((data[:4], implicit), [])
            if len(data) <= MEMO_MAX_BYTES and not any(seg.data == data for seg in known):
                elements = [[t, v, a - header, b - header, None] for t, v, a, b, _ in run]
                known.insert(0, _Segment(data, elements, implicit))
                del known[4:]
        run.clear()

    for element in level.elements:
        tag, _vr, start, stop, items = element
        if tag == _SEGMENT or items is not None:
            flush()
            continue
        value = buf[start:stop]
        before = _previous_values.get(tag)
        _previous_values[tag] = value
        if before is not None and before != value:
            _volatile.add(tag)
        if tag in _volatile:
            flush()
            continue
        run.append(element)
    flush()


class _Level:
    """One dataset (top level or sequence item): its parsed elements and conversion context."""

    __slots__ = (
        "elements",
        "encoding",
        "charset_key",
        "implicit",
        "in_item",
        "top",
        "_ds",
        "_creator_key",
    )

    def __init__(
        self, elements: list, encoding, implicit: bool, in_item: bool = False, top: bool = False
    ):
        self.elements = elements
        self.top = top
        self.encoding = encoding
        self.charset_key = encoding if isinstance(encoding, str) else tuple(encoding)
        self.implicit = implicit
        self.in_item = in_item  # pydicom resolves some VRs of items from their ancestors
        self._ds = None
        self._creator_key = None


class _Parser:
    """Parses a little-endian dataset from ``buf`` into nested element lists (no conversion)."""

    def __init__(self, buf: bytes, complete: bool):
        self.buf = buf
        self.complete = complete  # buf holds the whole file

    def short(self):
        """Data ran out: read more, or it is a cut-off file for the reference reader."""
        raise _Fallback("value past end of file") if self.complete else _NeedMore()

    def elements(self, pos: int, end: int | None, implicit: bool, top: bool, delimited: bool):
        """Parse elements from ``pos``; returns ``(elements, pos, pixel_offset)``.

        Each element is ``[tag, vr_bytes_or_None, start, stop, items_or_None]``; ``items``
        is a list of ``(start, stop, elements)`` for sequences. ``end`` bounds a defined
        length; ``delimited`` datasets end at an item delimiter; the top level ends at
        pixel data or the end of the buffer.
        """
        buf = self.buf
        size = len(buf)
        bound = size if end is None or end > size else end
        out = []
        append = out.append
        last = 0x0002FFFF if top else -1  # a dataset holds no file meta or command elements
        unpack_implicit, unpack_explicit = _UNPACK_TAG_LEN, _UNPACK_EXPLICIT
        unpack_len = _UNPACK_LEN32
        long_vrs, short_vrs = _LONG_VRS, _SHORT_VRS
        segments = _segments if top and _segments else None
        while pos + 8 <= bound:
            if segments is not None:
                known = segments.get((buf[pos : pos + 4], implicit))
                if known is not None:
                    for segment in known:
                        if buf.startswith(segment.data, pos):
                            if segment.first_tag <= last:
                                raise _Fallback("tags out of order or misplaced")
                            last = segment.last_tag
                            append([_SEGMENT, segment, pos, pos + len(segment.data), None])
                            pos += len(segment.data)
                            break
                    else:
                        known = None
                    if known is not None:
                        continue
            if implicit:
                group, element, length = unpack_implicit(buf, pos)
                vr = None
                start = pos + 8
            else:
                group, element, vr, length = unpack_explicit(buf, pos)
                if vr in short_vrs:
                    start = pos + 8
                elif vr in long_vrs:
                    if pos + 12 > size:
                        self.short()
                    (length,) = unpack_len(buf, pos + 8)
                    start = pos + 12
                elif group == 0xFFFE:
                    length = unpack_len(buf, pos + 4)[0]
                else:
                    raise _Fallback("unknown VR")
            tag = group << 16 | element
            if group >= 0x7FE0:
                if tag == _ITEM_END:
                    if not delimited or length:
                        raise _Fallback("stray item delimiter")
                    return out, pos + 8, None
                if top and tag in _PIXEL_TAGS:
                    return out, pos, pos
                if group == 0xFFFE:
                    raise _Fallback("item tag inside a dataset")
            if tag <= last:
                raise _Fallback("tags out of order or misplaced")
            last = tag
            if length == 0xFFFFFFFF:
                # the same bytes parse the same way: a sequence equal to the last one seen
                # under this tag (delimiter included) is skipped and parsed only if needed
                seen = _last_sequence.get((tag, implicit))
                if seen is not None and buf.startswith(seen, start):
                    pos = start + len(seen)
                    append([tag, vr, start, pos - 8, _UNPARSED])
                    continue
                if not self._is_sequence(tag, vr, start, implicit):
                    raise _Fallback("undefined length outside a sequence")
                items, pos = self.items(start, None, implicit)
                if pos - start <= MEMO_MAX_BYTES:
                    _last_sequence[(tag, implicit)] = buf[start:pos]
                append([tag, vr, start, pos - 8, items])
                continue
            pos = start + length
            append([tag, vr, start, pos, None])
        if end is not None and pos == end:
            return out, pos, None
        if end is None and top and pos == size and self.complete:
            return out, pos, None
        if end is not None and pos > end:
            raise _Fallback("element crosses its item's end")
        self.short()

    def _is_sequence(self, tag: int, vr: bytes | None, start: int, implicit: bool) -> bool:
        """Whether an undefined-length element is a sequence, as pydicom decides."""
        if vr == b"SQ":
            return True
        if not implicit:
            return False  # explicit UN of undefined length: implicit content, rare
        public = _public_vr(tag)
        if public is not None:
            return public == "SQ"
        if start + 4 > len(self.buf):
            self.short()
        group, element = struct.unpack_from("<HH", self.buf, start)
        return group << 16 | element == _ITEM

    def items(self, pos: int, end: int | None, implicit: bool):
        """Parse sequence items from ``pos`` to ``end`` (or to a sequence delimiter)."""
        buf = self.buf
        items = []
        while True:
            if end is not None and pos >= end:
                if pos != end:
                    raise _Fallback("item crosses its sequence's end")
                return items, pos
            if pos + 8 > len(buf):
                self.short()
            group, element, length = _UNPACK_TAG_LEN(buf, pos)
            tag = group << 16 | element
            if tag == _SEQ_END and end is None:
                if length:
                    raise _Fallback("sequence delimiter with a length")
                return items, pos + 8
            if tag != _ITEM:
                raise _Fallback("not an item inside a sequence")
            start = pos + 8
            if not implicit and not self._explicit_item(start, length):
                raise _Fallback("implicit VR item inside explicit data")
            if length == 0xFFFFFFFF:
                elements, pos, _ = self.elements(start, None, implicit, False, True)
                items.append((start, pos - 8, elements))
            else:
                stop = start + length
                if stop > len(buf):
                    self.short()
                elements, pos, _ = self.elements(start, stop, implicit, False, False)
                items.append((start, stop, elements))

    def _explicit_item(self, start: int, length: int) -> bool:
        """Pydicom reads an item as implicit VR when its first element's VR is not A-Z."""
        if length == 0 or start + 6 > len(self.buf):
            return True
        if _UNPACK_TAG_LEN(self.buf, start)[:2] == (0xFFFE, 0xE00D):
            return True
        a, b = self.buf[start + 4], self.buf[start + 5]
        return 0x40 < a < 0x5B and 0x40 < b < 0x5B


_memo_bytes = 0


def _remember(key: tuple, hit: tuple, size: int) -> None:
    """Memoise a conversion unless its bytes are too long; forget everything past the limits."""
    global _memo_bytes
    if size > MEMO_MAX_BYTES:
        return
    if len(_memo) >= MEMO_LIMIT or _memo_bytes > MEMO_LIMIT_BYTES:
        _memo.clear()
        _last_sequence.clear()
        _segments.clear()
        _memo_bytes = 0
    _memo[key] = hit
    _memo_bytes += size + len(hit[0] or "")


def _keyed(tag: int, hit: tuple) -> tuple:
    """A conversion result with its JSON text prefixed by the element's key."""
    text, failed = hit
    return (None if text is None else f'"{_key8(tag)}":{text}'), failed


class _Converter:
    """Turns parsed levels into DICOM JSON text, memoising each element's conversion."""

    def __init__(self, buf: bytes, keep: frozenset | None = None):
        self.buf = buf
        self.keep = keep
        self.problems: list[str] = []

    def level_dataset(self, level: _Level, meta: bool = False) -> Dataset:
        """The level's public elements (sequences included; at the top level only those in
        ``keep`` and the image pixel module when ``keep`` is given) as a pydicom dataset of
        raw elements: the context for VRs that depend on other elements, and the header's.
        """
        if level._ds is None:
            keep = self.keep if level.top else None
            elements = []
            for e in level.elements:
                if e[0] == _SEGMENT:
                    elements += e[1].kept(keep, e[2])
                elif _in_dataset(e[0], keep):
                    elements.append(e)
            level._ds = self._dataset(level, elements, meta)
        return level._ds

    def _dataset(self, level: _Level, elements: list, meta: bool = False) -> Dataset:
        """A pydicom dataset of raw elements with the level's encoding, as pydicom reads one."""
        raw = dict(self._raw(level, element) for element in elements)
        ds = FileMetaDataset(raw) if meta else Dataset(raw, parent_encoding=level.encoding)
        ds.set_original_encoding(level.implicit, True, level.encoding)
        return ds

    def _raw(self, level: _Level, element: list) -> tuple[BaseTag, RawDataElement]:
        """An element as pydicom's reader leaves it: a RawDataElement holding its bytes."""
        tag, vr, start, stop, items = element
        value = self.buf[start:stop]
        key = BaseTag(tag)
        length = 0xFFFFFFFF if items is _ENCAPSULATED else len(value)
        vr_text = None if vr is None else _vr_text(vr)
        return key, _new_raw(
            RawDataElement, (key, vr_text, length, value, start, level.implicit) + _RAW_DEFAULTS
        )

    def context(self, level: _Level, element: list, creator, meta: bool) -> Dataset:
        """The dataset pydicom converts ``element`` in: its level's, with the element (and
        its private creator) present in raw form, as after a read.
        """
        ds = self.level_dataset(level, meta)
        tag = element[0]
        wanted = [element]
        if creator is not None:
            block = tag >> 16 << 16 | (tag & 0xFF00) >> 8
            wanted += [e for e in _expanded(level.elements) if e[0] == block]
        for element in wanted:
            if element[0] not in ds._dict:
                key, raw = self._raw(level, element)
                ds._dict[key] = raw
        return ds

    def creator_key(self, level: _Level) -> frozenset:
        """The level's private creators as a memo key part (computed once per level)."""
        if level._creator_key is None:
            level._creator_key = frozenset(self.creators(level).items())
        return level._creator_key

    def creators(self, level: _Level) -> dict[int, str]:
        """Private creator of each block (``gggg00xx``) of a level, as pydicom reads it."""
        buf = self.buf
        out = {}
        for tag, _vr, start, stop, items in _expanded(level.elements):
            if tag & 0x10000 and 0x10 <= tag & 0xFFFF < 0x100 and items is None:
                value = buf[start:stop]
                if b"\\" in value or not value.isascii():
                    raise _Fallback("unusual private creator")
                out[tag] = value.decode("ascii").rstrip("\0 ")
        return out

    def json_text(self, level: _Level, meta: bool = False, prefix: str = "") -> str:
        """DICOM JSON of one level as compact, key-sorted text; problems go to ``problems``."""
        parts: list[str] = []
        self._parts(level, level.elements, meta, prefix, parts, self.problems)
        return "{" + ",".join(parts) + "}"

    def _parts(
        self, level: _Level, elements: list, meta: bool, prefix: str, parts: list, problems: list
    ) -> bool:
        """Append the JSON of ``elements`` (of ``level``) to ``parts``; False when one of
        them depends on other elements of the dataset (so the result must not be memoised).
        """
        buf = self.buf
        memo = _memo
        memoisable = True
        creators = None
        charset, implicit = level.charset_key, level.implicit
        for element in elements:
            tag, vr, start, stop, items = element
            if tag == _SEGMENT:
                segment = vr
                context = self.creator_key(level) if segment.private_unresolved else None
                key = (segment.data, charset, implicit, context)
                hit = memo.get(key)
                if hit is None:
                    inner_parts: list[str] = []
                    inner_problems: list[str] = []
                    inner = list(_expanded([element]))
                    if self._parts(level, inner, meta, "", inner_parts, inner_problems):
                        hit = (",".join(inner_parts), tuple(inner_problems))
                        _remember(key, hit, len(segment.data))
                    else:
                        memoisable = False
                        hit = (",".join(inner_parts), tuple(inner_problems))
                text, failed = hit
                if text:
                    parts.append(text)
                if failed:
                    problems.extend((prefix + p)[:300] for p in failed)
                continue
            creator = None
            if vr is None or vr == b"UN":
                if tag & 0x10000:
                    if creators is None:
                        creators = self.creators(level)
                    creator = creators.get(tag >> 16 << 16 | (tag & 0xFF00) >> 8)
                    resolved = _private_vr(tag, creator)
                else:
                    resolved = _public_vr(tag) or ("UL" if tag & 0xFFFF == 0 else "UN")
                    if vr == b"UN" and (_public_vr(tag) is None or stop - start >= 0xFFFF):
                        resolved = "UN"
                if " or " in resolved:
                    if level.in_item:
                        raise _Fallback("context-dependent VR inside a sequence item")
                    # depends on other elements of the dataset: converted every time
                    memoisable = False
                    text, failed = self.convert(self.level_dataset(level, meta), tag)
                    if text is not None:
                        parts.append(f'"{_key8(tag)}":{text}')
                    problems.extend((prefix + p)[:300] for p in failed)
                    continue
                sequence = resolved == "SQ"
            else:
                resolved = None
                sequence = vr == b"SQ"
            # an undefined-length sequence reads as a converted element: length 0 for the rule
            length = 0 if items is not None else stop - start
            if (length > 1024 or tag >= 0x60000000) and _is_bulk(
                tag, None if vr is None else _vr_text(vr), length
            ):
                continue
            value = buf[start:stop]
            if items is not None or sequence:
                key = (tag, vr, value, charset, implicit, "SQ")
                hit = memo.get(key)
                if hit is None:
                    if items is _UNPARSED:
                        items, _ = _Parser(buf, True).items(start, None, implicit)
                    elif items is None:
                        if not implicit and vr != b"SQ":
                            raise _Fallback("explicit UN holding a sequence")
                        items, _ = _Parser(buf, True).items(start, stop, implicit)
                    hit = _keyed(tag, self.sequence(tag, items, level))
                    _remember(key, hit, len(value))
            else:
                key = (tag, vr, value, charset, creator, implicit)
                hit = memo.get(key)
                if hit is None:
                    text = _direct_json(resolved or _vr_text(vr), value, charset)
                    if text is None:
                        hit = self.convert(self.context(level, element, creator, meta), tag)
                    else:
                        hit = (text, ())
                    hit = _keyed(tag, hit)
                    _remember(key, hit, len(value))
            text, failed = hit
            if text is not None:
                parts.append(text)
            if failed:
                problems.extend((prefix + p)[:300] for p in failed)
        return memoisable

    def sequence(self, tag: int, items: list, parent: _Level) -> tuple[str, tuple]:
        """JSON text of a sequence element and its problems relative to the parent level."""
        key8 = _key8(tag)
        outer = self.problems
        texts, problems = [], []
        for index, (_start, _stop, elements) in enumerate(items):
            level = _Level(
                elements, _encoding(self.buf, elements, parent.encoding), parent.implicit, True
            )
            self.problems = []
            texts.append(self.json_text(level))
            problems += [f"{key8}[{index}]." + p for p in self.problems]
        self.problems = outer
        text = '{"Value":[' + ",".join(texts) + '],"vr":"SQ"}' if texts else '{"vr":"SQ"}'
        return text, tuple(problems)

    @staticmethod
    def convert(ds: Dataset, tag: int) -> tuple[str | None, tuple]:
        """Convert one element of ``ds`` with pydicom, by the reference rules (dicom_json)."""
        problems: list[str] = []
        entry = element_entry(ds, BaseTag(tag), problems)
        if entry is None:
            return None, tuple(problems)
        try:
            text = json.dumps(entry, sort_keys=True, separators=(",", ":"), allow_nan=False)
        except ValueError:
            # the reference drops elements that standard JSON cannot hold, with this message
            problems = []
            element_entry(ds, BaseTag(tag), problems, check=True)
            return None, tuple(problems)
        except TypeError as exc:
            raise _Fallback("element the reference cannot serialise") from exc
        return text, ()


def _syntax(meta_level: _Level, buf: bytes) -> bool:
    """Whether the dataset is implicit VR; _Fallback for syntaxes left to the reference."""
    for tag, _vr, start, stop, _items in meta_level.elements:
        if tag == 0x00020010:
            uid = UID(buf[start:stop].decode("ascii", "replace").strip("\0 "))
            break
    else:
        raise _Fallback("no transfer syntax")
    if uid == "1.2.840.10008.1.2":
        return True
    if uid in ("1.2.840.10008.1.2.2", "1.2.840.10008.1.2.1.99") or uid.is_deflated:
        raise _Fallback("big endian or deflated")
    if uid.is_transfer_syntax and (uid.is_implicit_VR or not uid.is_little_endian):
        raise _Fallback("uncommon syntax")
    return False


def _parse(buf: bytes, complete: bool):
    """Parse file meta and dataset; returns ``(meta level, dataset level, stop offset)``."""
    if len(buf) < 132 or buf[128:132] != b"DICM":
        raise _Fallback("no preamble")
    parser = _Parser(buf, complete)
    meta_elements, pos = _meta_elements(parser)
    meta = _Level(meta_elements, default_encoding, False)
    implicit = _syntax(meta, buf)
    if pos + 6 <= len(buf):
        a, b = buf[pos + 4], buf[pos + 5]
        if (0x40 < a < 0x5B and 0x40 < b < 0x5B) == implicit:
            group = struct.unpack_from("<H", buf, pos)[0]
            if group != 0x7FE0:
                raise _Fallback("dataset encoding differs from the transfer syntax")
    elements, pos, pixel = parser.elements(pos, None, implicit, True, False)
    if not elements:
        raise _Fallback("empty dataset")
    top = _Level(elements, _encoding(buf, elements, default_encoding), implicit, top=True)
    return meta, top, pos if pixel is None else pixel


def _encoding(buf: bytes, elements: list, inherited):
    """Character set of a dataset: its own (0008,0005), else the one it inherits."""
    for tag, _vr, start, stop, _items in _expanded(elements):
        if tag == _CHARSET:
            return convert_encodings(convert_string(buf[start:stop] or b"", True))
        if tag > _CHARSET:
            break
    return inherited


@cache
def _vr_text(vr: bytes) -> str:
    return vr.decode("ascii")


def _meta_elements(parser: _Parser):
    """Group 0002 elements (explicit VR little endian) after the preamble."""
    buf = parser.buf
    pos = 132
    out = []
    last = -1
    while pos + 8 <= len(buf):
        group, element = struct.unpack_from("<HH", buf, pos)
        if group != 2:
            break
        tag = group << 16 | element
        vr = buf[pos + 4 : pos + 6]
        if vr in _LONG_VRS and vr not in (b"SQ", b"UN"):
            (length,) = _UNPACK_LEN32(buf, pos + 8)
            start = pos + 12
        elif vr in _SHORT_VRS:
            length = buf[pos + 6] | buf[pos + 7] << 8
            start = pos + 8
        else:
            raise _Fallback("unusual file meta")
        if tag <= last or length == 0xFFFFFFFF or start + length > len(buf):
            raise _Fallback("unusual file meta")
        last = tag
        out.append([tag, vr, start, start + length, None])
        pos = start + length
    if not out:
        raise _Fallback("no file meta")
    return out, pos


def read_dataset_fast(path: str | os.PathLike) -> Dataset | None:
    """A whole instance as :func:`dicom_io.read_for_pixels` reads it, or None to fall back.

    Every element is kept raw (pydicom converts what is asked for), pixel data included;
    files with anything after their pixel data, or no transfer syntax, fall back.
    """
    try:
        with dicom_io.open_binary(path) as fh:
            buf = fh.read()
        meta, top, stop = _parse(buf, True)
        converter = _Converter(buf)
        _learn_segments(buf, top)
        elements = list(_expanded(top.elements))
        if stop < len(buf):
            elements.append(_pixel_element(buf, stop, top.implicit))
        ds = converter._dataset(top, elements)
        ds.file_meta = converter.level_dataset(meta, meta=True)
        return ds
    except Exception:  # noqa: BLE001 - anything unusual is the reference reader's to judge
        return None


def _pixel_element(buf: bytes, pos: int, implicit: bool) -> list:
    """The pixel data element at ``pos``, which must end the file (as parsed elements are)."""
    group, element, length = _UNPACK_TAG_LEN(buf, pos)
    vr = None
    start = pos + 8
    if not implicit:
        vr = buf[pos + 4 : pos + 6]
        if vr not in _LONG_VRS:
            raise _Fallback("pixel data with a short VR")
        (length,) = _UNPACK_LEN32(buf, pos + 8)
        start = pos + 12
    if length != 0xFFFFFFFF:
        if start + length != len(buf):
            raise _Fallback("bytes after the pixel data, or pixel data cut off")
        return [group << 16 | element, vr, start, start + length, None]
    item = start
    while True:  # encapsulated: fragments up to the sequence delimiter, which ends the file
        if item + 8 > len(buf):
            raise _Fallback("encapsulated pixel data without a delimiter")
        g, e, size = _UNPACK_TAG_LEN(buf, item)
        if (g, e) == (0xFFFE, 0xE0DD):
            if item + 8 != len(buf):
                raise _Fallback("bytes after the pixel data")
            return [group << 16 | element, vr, start, item, _ENCAPSULATED]
        if (g, e) != (0xFFFE, 0xE000):
            raise _Fallback("not an item inside encapsulated pixel data")
        item += 8 + size


_PIXEL_MODULE = tuple(
    BaseTag(t) for t in (0x00280002, 0x00280004, 0x00280008, 0x00280010, 0x00280011, 0x00280100)
)
_expected_memo: dict = {}


def _expected_pixel_bytes(ds: Dataset):
    """:func:`dicom_io._expected_pixel_bytes`, memoised by the raw image pixel module."""
    raws = [ds.get_item(tag) for tag in _PIXEL_MODULE]
    if not all(raw is None or isinstance(raw, RawDataElement) for raw in raws):
        return dicom_io._expected_pixel_bytes(ds)
    key = tuple(None if raw is None else (raw.VR, raw.value, raw.is_implicit_VR) for raw in raws)
    if key not in _expected_memo:
        if len(_expected_memo) > 10_000:
            _expected_memo.clear()
        _expected_memo[key] = dicom_io._expected_pixel_bytes(ds)
    return _expected_memo[key]


def read_header_fast(path: str | os.PathLike, keep: frozenset | None = None):
    """Read a header the fast way; ``(HeaderRead, json_text, problems)`` or None to fall back.

    The ``HeaderRead`` equals :func:`dicom_io.read_header`'s except that its dataset holds
    only the public top-level elements (raw; pydicom converts them on access), or only
    the tags in ``keep`` (plus charset and image pixel module) when given, and
    ``json_text, problems`` equal :func:`dicom_json.header_json` of the whole header.
    """
    try:
        size = os.path.getsize(path)
        with dicom_io.open_binary(path) as fh:
            buf = fh.read(min(size, INITIAL_READ))
            while True:
                complete = len(buf) >= size
                try:
                    meta, top, stop = _parse(buf, complete)
                    break
                except _NeedMore:
                    more = fh.read(len(buf) * 3)
                    if not more:  # the file shrank since its size was read
                        raise _Fallback("file shorter than its size") from None
                    buf += more
            converter = _Converter(buf, keep)
            meta_text = converter.json_text(meta, meta=True)
            ds_text = converter.json_text(top)
            _learn_segments(buf, top)
            dataset = converter.level_dataset(top)
            dataset.file_meta = converter.level_dataset(meta, meta=True)
            fh.seek(stop)
            header = dicom_io._with_pixel_facts(dataset, fh, size, _expected_pixel_bytes)
    except Exception:  # noqa: BLE001 - anything unusual is the reference reader's to judge
        return None
    if meta_text == "{}":
        text = ds_text
    elif ds_text == "{}":
        text = meta_text
    else:
        text = meta_text[:-1] + "," + ds_text[1:]
    return header, text, converter.problems
