"""SDAT-CH metering data from the grid operator: ebIX document E66 ``ValidatedMeteredData_NN``.

A Swiss DSO measures every participant of a LEG in 15-minute load profiles and sends them as
``ValidatedMeteredData_NN`` (NN = 12 ... 16, namespace ``http://www.strom.ch``), one
``MeteringData`` per metering point and product::

    ValidatedMeteredData_HeaderInformation
        Sender/ID/EICID, Receiver/ID/EICID
        InstanceDocument/DocumentID, DocumentType/ebIXCode (E66), Creation (UTC)
        BusinessScopeProcess/BusinessReasonType/(ebIXCode | VSENationalCode: C40 = LEG),
        BusinessScopeProcess/ReportPeriod/StartDateTime, EndDateTime
    MeteringData
        Interval/StartDateTime, EndDateTime (UTC, windows start at local midnight)
        Resolution/Resolution (15), Resolution/Unit (MIN)
        ConsumptionMeteringPoint/VSENationalID | ProductionMeteringPoint/VSENationalID
        Product/ID: the code as text (versions 12 - 14) or as a child ebIXCode / VSENationalCode
            8716867000030 total, 2404050010123 LEG share, 2404050010124 grid share
        Product/MeasureUnit (KWH), Community/CommunityID (LEG deliveries)
        Observation*: Position/Sequence (1-based), Volume (kWh), Condition (optional, e.g. 21)

Elements are matched by local name, whatever the namespace or prefix, so every version reads
alike. The parser never trusts the file: it is read with lxml without entity expansion, network
access or huge-tree mode, a file with a DOCTYPE (where entities are declared) is refused whole,
and every refusal names the file, the metering point and the reason. A
series with a wrong unit or resolution, a sequence outside its interval, or (where the file has
the total and both shares of a point and window) a total that differs from LEG + grid share by
more than ``TOTAL_TOLERANCE_KWH`` in any quarter hour is refused; the rest of the file counts.

Speed: a daily LEG delivery of 200 points carries about 288,000 observations. Where the file has
the plain shape (no comment, CDATA, DOCTYPE or processing instruction, each observation exactly
``<Observation><Position><Sequence>n</Sequence></Position><Volume>d.ddd</Volume>[<Condition>c
</Condition>]</Observation>`` with the root's prefix, only whitespace between the tags, the
observations last in their MeteringData), ``_scan`` reads every observation straight from the
bytes with numpy (positions of '<' and '>', tag kinds, digits to numbers: a volume of up to 15
digits is its integer digits / 10^decimals, one correctly rounded division, so exactly
``float(text)``) and hands lxml the file without them; anything else is read element by element,
which gives the same values and the same refusals. ``read_sdat_file`` does it in a worker process
for ``Community.import_sdat_paths``. Values are kept as arrays (``SdatSeries.offsets``,
``volumes``, ``conditions``; the texts on demand); ``SdatSeries.values`` builds the per-quarter-hour map.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

import numpy as np
from lxml import etree
from lxml.etree import _Element as Element

RESOLUTION_MIN = 15
TOTAL_TOLERANCE_KWH = 0.002
MAX_FILE_BYTES = 64 * 1024 * 1024
PRODUCTS = {"8716867000030": "total", "2404050010123": "leg", "2404050010124": "grid"}
PRODUCT_LABELS = {"total": "total", "leg": "LEG share", "grid": "grid share"}
METERING_POINT_RE = re.compile(r"^CH[0-9A-Z]{31}$")


class SdatError(ValueError):
    """A file that cannot be read as an SDAT-CH E66 document at all."""


def check_metering_point(value: str) -> str:
    """A Swiss metering point ID: 33 characters, ``CH`` then 31 digits or capital letters (the
    last 20 are not only digits in real deliveries). Returns it, else ValueError saying why."""
    v = str(value).strip()
    if len(v) != 33:
        raise ValueError(f"metering point {v[:40]!r} has {len(v)} characters, a Swiss metering point ID has 33")
    if not METERING_POINT_RE.match(v):
        raise ValueError(f"metering point {v!r} must be 'CH' followed by 31 digits or capital letters")
    return v


_DROPPED = "dropped"


@dataclass
class SdatSeries:
    metering_point: str
    direction: str                    # "consumption" | "production"
    product: str                      # "total" | "leg" | "grid"
    start: datetime                   # UTC
    end: datetime
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))    # quarter hours from start
    volumes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # kWh, per offset
    conditions: dict[int, str] = field(default_factory=dict)  # offset -> condition code, where set
    # the volumes as written (exact decimals): a list, or (file bytes, starts, ends) read when asked
    _texts: list[str] | tuple | None = field(default=None, repr=False)

    def __len__(self) -> int:
        return len(self.offsets)

    @property
    def texts(self) -> list[str]:
        if self._texts == _DROPPED:
            raise RuntimeError("the volumes' texts were not kept (the file was read in a worker process)")
        if isinstance(self._texts, tuple):
            data, a, b = self._texts
            self._texts = [data[i:j].decode("ascii") for i, j in zip(a.tolist(), b.tolist())]
        return self._texts or []

    def text(self, k: int) -> str:
        """The k-th volume as written."""
        if isinstance(self._texts, tuple) and self._texts[0] is not None:
            data, a, b = self._texts
            return data[int(a[k]):int(b[k])].decode("ascii")
        return self.texts[k]

    @property
    def values(self) -> dict[datetime, tuple[Decimal, str | None]]:
        """Quarter-hour start (UTC) -> (kWh, condition code or None)."""
        step = timedelta(minutes=RESOLUTION_MIN)
        return {self.start + int(o) * step: (Decimal(t), self.conditions.get(int(o)))
                for o, t in zip(self.offsets, self.texts)}


@dataclass
class SdatRefusal:
    metering_point: str | None
    reason: str

    def __str__(self) -> str:
        return f"metering point {self.metering_point}: {self.reason}" if self.metering_point else self.reason


@dataclass
class SdatDocument:
    name: str                         # the file's name, for messages (not an identity)
    document_id: str
    creation: datetime                # UTC: the newest creation wins per point, product and quarter hour
    document_type: str
    sender: str | None
    receiver: str | None
    business_reason: str | None
    community_id: str | None
    series: list[SdatSeries]
    refused: list[SdatRefusal]


# -- element helpers (local names: namespace- and version-agnostic) ------------------------------------
def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child(el: Element | None, *names: str) -> Element | None:
    """The first child (of the child ...) with these local names, in any namespace or none."""
    for name in names:
        if el is None:
            return None
        suffix = "}" + name
        for c in el:
            tag = c.tag
            if tag == name or (type(tag) is str and tag.endswith(suffix)):
                el = c
                break
        else:
            return None
    return el


def _first_children(el: Element) -> dict[str, Element]:
    """The first child of each local name (a MeteringData's metadata, looked up by name once)."""
    out: dict[str, Element] = {}
    for c in el:
        if type(c.tag) is str:
            out.setdefault(c.tag.rsplit("}", 1)[-1], c)
    return out


def _children(el: Element, name: str) -> list[Element]:
    return el.findall("{*}" + name)


def _text(el: Element | None, *names: str) -> str | None:
    node = _child(el, *names) if names else el
    if node is None or node.text is None:
        return None
    return node.text.strip() or None


def _code(el: Element | None) -> str | None:
    """A code element: its text, or the text of its child code (ebIXCode, VSENationalCode, ...)."""
    if el is None:
        return None
    t = _text(el)
    if t:
        return t
    for c in el:
        t = _text(c)
        if t:
            return t
    return None


def _utc(text: str | None, what: str) -> datetime:
    if not text:
        raise ValueError(f"{what} is missing")
    try:
        t = datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        raise ValueError(f"{what} {text[:40]!r} is not a date-time") from None
    if t.tzinfo is None:
        raise ValueError(f"{what} {text!r} has no time zone (SDAT-CH times are UTC, e.g. 2026-01-01T23:00:00Z)")
    return t.astimezone(timezone.utc)


# -- parsing -----------------------------------------------------------------------------------------
_PARSER_OPTIONS = dict(resolve_entities=False, no_network=True, huge_tree=False, load_dtd=False,
                       dtd_validation=False, collect_ids=False)


_DOCTYPE = (b"<!DOCTYPE", "<!DOCTYPE".encode("utf-16-le"), "<!DOCTYPE".encode("utf-16-be"))


class _RefuseExternal(etree.Resolver):
    """Nothing outside the file is read: libxml2 would open a local DTD even without load_dtd."""

    def resolve(self, url, pubid, context):
        raise SdatError(f"refused external resource {str(url)[:80]!r}")


def _parser() -> etree.XMLParser:
    p = etree.XMLParser(**_PARSER_OPTIONS)
    p.resolvers.add(_RefuseExternal())
    return p


@dataclass
class _Run:
    """A MeteringData's observations as the scan read them (all checked): 1-based sequences,
    volumes, the volumes' text positions in the file, conditions (offset -> code)."""
    sequences: np.ndarray
    volumes: np.ndarray
    text_starts: np.ndarray
    text_ends: np.ndarray
    conditions: dict[int, str]
    source: bytes                                   # the file: the volumes' texts are read from it when asked


_OBS_TAGS = ("Observation", "Position", "Sequence", "Volume", "Condition", "MeteringData")
_O, _P, _S, _V, _C, _M = range(1, 7)            # tag kinds; a closing tag is the negative
_NOT_SPACE = np.ones(256, dtype=np.uint8)
_NOT_SPACE[[9, 10, 13, 32]] = 0
_CODE_CHARS = np.zeros(256, dtype=bool)
_CODE_CHARS[np.frombuffer(b"0123456789ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz._-", np.uint8)] = True
_POW10 = 10.0 ** np.arange(13)
_POW10_INT = 10 ** np.arange(16, dtype=np.int64)


def _digits(arr: np.ndarray, a: np.ndarray, b: np.ndarray, most: int):
    """The texts arr[a:b] as a (n, width) matrix of bytes (0 beyond each text's end, width the
    longest text), or None if one is empty or longer than ``most``."""
    lens = b - a
    if not len(lens) or lens.min() < 1 or lens.max() > most:
        return None
    width = int(lens.max())
    cols = np.arange(width)
    inside = cols < lens[:, None]
    chars = arr[np.minimum(a[:, None] + cols, len(arr) - 1)]
    return np.where(inside, chars, 0), inside, lens


_HIGH = np.uint64(0x8080808080808080)
_LOW7 = np.uint64(0x7F7F7F7F7F7F7F7F)
_ZEROS = np.uint64(0x3030303030303030)                  # eight '0'
_MASK = np.array([(1 << (8 * r)) - 1 for r in range(9)], dtype=np.uint64)    # the low r bytes of a word
_HASH = np.array([0x9E3779B97F4A7C15, 0xC2B2AE3D27D4EB4F, 0x165667B19E3779F9, 0xD6E8FEB86659FD93], dtype=np.uint64)


def _words(data: bytes) -> np.ndarray:
    """The bytes as overlapping little-endian 8-byte words: ``_words(data)[i]`` is ``data[i:i + 8]``."""
    return np.ndarray((len(data) - 7,), "<u8", data, 0, (1,))


def _zero_bytes(x: np.ndarray) -> np.ndarray:
    """0x80 in each byte of the words ``x`` that is zero, 0 in the others (exact, no carries)."""
    return ~(((x & _LOW7) + _LOW7) | x | _LOW7)


def _eight_digits(w: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Words of 8 ASCII digits (the first in the low byte) as their numbers, and which are all digits."""
    ok = (((w + np.uint64(0x4646464646464646)) | (w - _ZEROS)) & _HIGH) == 0
    v = (w & np.uint64(0x0F0F0F0F0F0F0F0F)) * np.uint64(2561) >> np.uint64(8)
    v = (v & np.uint64(0x00FF00FF00FF00FF)) * np.uint64(6553601) >> np.uint64(16)
    v = (v & np.uint64(0x0000FFFF0000FFFF)) * np.uint64(42949672960001) >> np.uint64(32)
    return v.astype(np.int64), ok


def _right_aligned(words: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """The texts data[a:b] (1 to 8 bytes each) as words ending with the text, '0' before it."""
    w = words[b - 8]
    pad = _MASK[8 - (b - a)]
    return (w & ~pad) | (_ZEROS & pad)


def _integers(words: np.ndarray, a: np.ndarray, b: np.ndarray) -> np.ndarray | None:
    """The texts data[a:b] (1 to 8 digits each) as integers; None if one is anything else."""
    v, ok = _eight_digits(_right_aligned(words, a, b))
    return v if ok.all() else None


def _decimals(words: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """The texts data[a:b] (1 to 8 bytes each) of digits with at most one point (and a digit) as
    (all their digits as one integer, digits after the point); None if one is anything else."""
    w = _right_aligned(words, a, b)
    dots = _zero_bytes(w ^ np.uint64(0x2E2E2E2E2E2E2E2E))          # 0x80 where a '.'
    has = dots != 0
    at = np.bitwise_count((dots & (~dots + np.uint64(1))) - np.uint64(1)).astype(np.int64) >> 3   # the first '.'
    # that point taken out: the bytes before it move up one, a '0' in front (a second point stays: refused)
    at = np.minimum(at, 7)
    w = np.where(has, ((w & _MASK[at]) << np.uint64(8)) | (w & ~_MASK[at + 1]) | np.uint64(0x30), w)
    v, ok = _eight_digits(w)
    if not ok.all() or (has & (b - a == 1)).any():
        return None                                     # not digits, or a point alone
    return v, np.where(has, 7 - at, 0)


def _wide_decimals(arr: np.ndarray, a: np.ndarray, b: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """As ``_decimals`` for texts of any length, digit by digit: \\d{1,8}(\\.\\d{1,12})? with at
    most 15 digits."""
    got = _digits(arr, a, b, 21)
    if got is None:
        return None
    chars, inside, lens = got
    dot = (chars == 46) & inside
    dots = dot.sum(axis=1)
    d = chars.astype(np.int64) - 48
    if (((d < 0) | (d > 9)) & inside & ~dot).any() or (dots > 1).any():
        return None
    dot_at = np.where(dots == 1, dot.argmax(axis=1), lens)
    frac = lens - dot_at - (dots == 1)
    if (dot_at < 1).any() or (dot_at > 8).any() or ((dots == 1) & (frac < 1)).any() or (frac > 12).any() \
            or (dot_at + frac > 15).any():
        return None
    digit = inside & ~dot
    col = np.arange(chars.shape[1])
    place = np.where(col < dot_at[:, None], (frac + dot_at - 1)[:, None] - col, (dot_at + frac)[:, None] - col)
    return np.where(digit, d * _POW10_INT[np.clip(place, 0, 15)], 0).sum(axis=1), frac    # digits after each digit


def _tag_kinds(data: bytes, words: np.ndarray | None, lt: np.ndarray, gt: np.ndarray,
               tags: dict[bytes, int]) -> np.ndarray | None:
    """Each tag's kind: ``tags[its bytes]``, 0 for any other tag. The tags are read 8 bytes at a
    time: the first word(s) give a candidate kind, kept only where every byte and the length equal
    that tag's, so the kinds are exact. None where ``tags`` are shorter than 8 bytes."""
    names = list(tags)
    if min(map(len, names)) < 8:
        return None
    width = -(-max(map(len, names)) // 8)               # words of the longest
    lens = gt - lt + 1
    kind = np.zeros(len(lt), np.int8)
    head = int(np.searchsorted(lt, len(data) - 8 * width, side="right")) if words is not None else 0
    for i in range(head, len(lt)):                      # the last tags, too near the end for whole words
        kind[i] = tags.get(data[int(lt[i]):int(gt[i]) + 1], 0)
    if not head:
        return kind

    def word(t: bytes, k: int) -> int:
        return int.from_bytes(t[8 * k:8 * k + 8].ljust(8, b"\0"), "little")
    first = next(m for m in range(1, width + 1) if len({t[:8 * m] for t in names}) == len(names))
    if first > len(_HASH):
        return None                                     # a prefix of over 30 characters: element by element
    at, ln = lt[:head], lens[:head]
    w = []
    for k in range(first):
        x = words[at + 8 * k]
        w.append(x if k == 0 else x & _MASK[np.clip(ln - 8 * k, 0, 8)])
    expect = [[word(t, k) for t in names] for k in range(width)]
    for bits in range(6, 17):                           # a table in which the tags fall apart
        h = [sum(e[j] * int(_HASH[k]) for k, e in enumerate(expect[:first])) % 2 ** 64 >> (64 - bits)
             for j in range(len(names))]
        if len(set(h)) == len(h):
            break
    else:
        return None
    table = np.zeros(2 ** bits, np.int64)
    table[h] = np.arange(1, len(names) + 1)
    hv = w[0] * _HASH[0]
    for k in range(1, first):
        hv += w[k] * _HASH[k]
    got = table[(hv >> np.uint64(64 - bits)).view(np.int64)]     # 1 + the candidate's index in names, 0 for none
    elen = np.array([-1] + [len(t) for t in names], np.int64)
    ok = ln == elen[got]
    for k in range(width):
        e = np.array([0] + expect[k], np.uint64)
        em = _MASK[np.clip(elen - 8 * k, 0, 8)]          # 0 beyond a tag's end: the word is then 0
        x = w[k] if k < first else words[at + 8 * k]
        ok &= (x & em[got]) == e[got]
    kinds = np.array([0] + [tags[t] for t in names], np.int8)
    kind[:head] = np.where(ok, kinds[got], 0)
    return kind


def _scan(data: bytes, prefix: str | None):
    """The observations of every MeteringData read straight from the bytes, and the file without
    them (the skeleton, for lxml): ``(skeleton, runs)`` with ``runs[k]`` the k-th MeteringData's
    _Run (None: it has no Observation). None when anything differs from the plain shape
    ``<Observation><Position><Sequence>n</Sequence></Position><Volume>d.ddd</Volume>
    [<Condition>c</Condition>]</Observation>`` (tags exactly so, with the root's prefix, only
    whitespace between them, observations last in their MeteringData, sequences 1 ... n and volumes
    plain decimals): the file is then read element by element. Every tag of those names must
    belong to such an observation, so what the scan takes out is well-formed and the skeleton is
    well-formed exactly when the file is."""
    p = (prefix + ":").encode() if prefix else b""
    arr = np.frombuffer(data, np.uint8)
    lt, gt = np.flatnonzero(arr == 60), np.flatnonzero(arr == 62)
    if not len(lt) or len(lt) != len(gt) or not (lt < gt).all() or not (gt[:-1] < lt[1:]).all():
        return None                                     # a '>' in a text or an attribute: not the plain shape
    # no comment, CDATA, DOCTYPE or processing instruction but the XML declaration
    first_char = arr[lt + 1]
    if (first_char == 33).any() or (first_char[1:] == 63).any() or (first_char[0] == 63 and not data.startswith(b"<?xml")):
        return None
    tags = {b"<" + b"/" * close + p + name.encode() + b">": -code if close else code
            for code, name in enumerate(_OBS_TAGS, 1) for close in (0, 1)}
    words = _words(data) if len(data) >= 8 else None
    kind = _tag_kinds(data, words, lt, gt, tags)
    if kind is None:
        return None
    counts = np.bincount(kind.astype(np.intp) + 6, minlength=13)
    o = np.flatnonzero(kind == _O)
    blocks_open, blocks_close = np.flatnonzero(kind == _M), np.flatnonzero(kind == -_M)
    if not len(o) or not len(blocks_open) or len(blocks_open) != len(blocks_close) \
            or not (blocks_open < blocks_close).all() or not (blocks_close[:-1] < blocks_open[1:]).all() \
            or o[-1] + 7 >= len(kind):
        return None
    for step, want in enumerate((_P, _S, -_S, -_P, _V, -_V), 1):
        if not (kind[o + step] == want).all():
            return None
    cond = kind[o + 7] == _C
    end = o + 7 + 2 * cond                              # the closing Observation tag
    if (end >= len(kind)).any() or not (kind[end] == -_O).all() or not (kind[o[cond] + 8] == -_C).all():
        return None
    if {int(counts[k + 6]) for k in (_P, -_P, _S, -_S, _V, -_V, -_O)} != {len(o)} \
            or counts[_C + 6] != cond.sum() or counts[-_C + 6] != cond.sum():
        return None                                     # a tag of those names outside an observation
    block = np.searchsorted(blocks_open, o) - 1
    if (block < 0).any() or (o > blocks_close[block]).any():
        return None
    first = np.ones(len(o), bool)
    first[1:] = block[1:] != block[:-1]
    last = np.ones(len(o), bool)
    last[:-1] = block[:-1] != block[1:]
    if not (o[~first] == end[:-1][~first[1:]] + 1).all() or not (end[last] + 1 == blocks_close[block[last]]).all():
        return None                                     # something between observations, or after them
    # between the tags of the observations only whitespace ('&', control characters: lxml decides)
    inside_run = np.zeros(len(lt), bool)                          # tag t to t + 1 inside a run of observations
    for i, j in zip(o[first].tolist(), end[last].tolist()):
        inside_run[i:j] = True
    inside_run[np.concatenate([o + 2, o + 5, o[cond] + 7])] = False    # after <Sequence>, <Volume>, <Condition>
    wide = np.flatnonzero(inside_run[:-1] & (lt[1:] - gt[:-1] > 1))     # bytes between tag t and t + 1
    if len(wide):
        bounds = np.column_stack([gt[wide] + 1, lt[wide + 1]]).ravel()
        if np.add.reduceat(_NOT_SPACE[arr], bounds, dtype=np.int64)[::2].any():
            return None
    # sequences: 1 to 6 digits
    a, b = gt[o + 2] + 1, lt[o + 3]
    lens = b - a
    if lens.min() < 1 or lens.max() > 6:
        return None
    sequences = _integers(words, a, b)
    if sequences is None:
        return None
    # volumes: \d{1,8}(\.\d{1,12})?, at most 15 digits (exact in a double's mantissa), <= 10,000,000
    a, b = gt[o + 5] + 1, lt[o + 6]
    lens = b - a
    if lens.min() < 1 or lens.max() > 21:
        return None
    short = lens <= 8                                   # read 8 bytes at a time, the longer digit by digit
    mantissa, frac = np.zeros(len(a), np.int64), np.zeros(len(a), np.int64)
    got = _decimals(words, a[short], b[short])
    if got is None:
        return None
    mantissa[short], frac[short] = got
    if not short.all():
        got = _wide_decimals(arr, a[~short], b[~short])
        if got is None:
            return None
        mantissa[~short], frac[~short] = got
    volumes = mantissa / _POW10[frac]                                  # exact integers, one rounding
    if len(volumes) and volumes.max() > 10_000_000:
        return None
    # conditions: 1 to 16 letters, digits, '.', '_', '-'
    with_code = np.flatnonzero(cond)
    code_texts: list[str] = []
    if len(with_code):
        a, b = gt[o[with_code] + 7] + 1, lt[o[with_code] + 8]
        got = _digits(arr, a, b, 16)
        if got is None:
            return None
        chars, inside, _ = got
        if not _CODE_CHARS[chars][inside].all():
            return None
        if chars.shape[1] <= 8:                         # usually one code or two: decoded once each
            packed = (chars.astype(np.uint64) << (np.arange(chars.shape[1], dtype=np.uint64) * np.uint64(8))).sum(axis=1)
            _, one_of, which = np.unique(packed, return_index=True, return_inverse=True)
            names = np.array([data[i:j].decode("ascii") for i, j in zip(a[one_of].tolist(), b[one_of].tolist())],
                             dtype=object)
            code_texts = names[which.reshape(-1)].tolist()
        else:
            code_texts = [data[i:j].decode("ascii") for i, j in zip(a.tolist(), b.tolist())]
    # the runs by block, and the skeleton without them
    runs: list[_Run | None] = [None] * len(blocks_open)
    pieces, at = [], 0
    vol_a, vol_b = gt[o + 5] + 1, lt[o + 6]
    for i, j in zip(np.flatnonzero(first).tolist(), (np.flatnonzero(last) + 1).tolist()):
        c0, c1 = np.searchsorted(with_code, [i, j])
        conditions = dict(zip((sequences[with_code[c0:c1]] - 1).tolist(), code_texts[c0:c1]))
        runs[int(block[i])] = _Run(sequences[i:j], volumes[i:j], vol_a[i:j], vol_b[i:j], conditions, data)
        pieces.append(data[at:int(lt[o[i]])])
        at = int(gt[end[j - 1]]) + 1
    pieces.append(data[at:])
    return b"".join(pieces), runs


_ROOT_TAG = re.compile(rb"<(?:([A-Za-z_][\w.-]*):)?ValidatedMeteredData_\d+[\s/>]")
_DECLARATION = re.compile(rb"^(?:\xef\xbb\xbf)?<\?xml[^>]*?encoding\s*=\s*[\"']([A-Za-z0-9._-]+)[\"']")


def _root_prefix(data: bytes) -> str | None:
    m = _ROOT_TAG.search(data, 0, 8192)
    return m.group(1).decode("ascii") if m and m.group(1) else None


def _ascii_compatible(data: bytes) -> bool:
    """Where '<' and '>' are those bytes whatever the text (UTF-8 and the single-byte Latin encodings)."""
    if b"\x00" in data[:4] or data[:2] in (b"\xff\xfe", b"\xfe\xff"):
        return False                                    # UTF-16 or UTF-32
    m = _DECLARATION.match(data)
    return m is None or m.group(1).decode("ascii").lower() in ("utf-8", "utf8", "us-ascii", "ascii", "iso-8859-1",
                                                             "latin-1", "latin1", "windows-1252", "iso-8859-15")


_LEFT_IN_SKELETON = etree.XPath("boolean(//*[local-name() = 'Observation' or local-name() = 'Position' or "
                                "local-name() = 'Sequence' or local-name() = 'Volume' or local-name() = 'Condition'])")


def parse_sdat(data: bytes, name: str = "<file>", *, scan: bool = True) -> SdatDocument:
    """The document in ``data``; SdatError when the file as a whole cannot be used. The
    observations are read by ``_scan`` where the file has the plain shape, else (and with
    ``scan=False``) element by element; both read the same file alike."""
    if len(data) > MAX_FILE_BYTES:
        raise SdatError(f"{name}: {len(data):,} bytes exceeds the limit of {MAX_FILE_BYTES:,}")
    # a file the scan reads has no '<!' at all; any other is searched for a DOCTYPE before lxml sees it
    scanned = _scan(data, _root_prefix(data)) if scan and _ascii_compatible(data) else None
    if scanned is None and any(d in data for d in _DOCTYPE):
        raise SdatError(f"{name}: refused XML construct (DOCTYPE): DTDs and entities are not allowed")
    tree = None
    if scanned is not None:
        try:
            tree = etree.fromstring(scanned[0], _parser()).getroottree()
        except (SdatError, etree.XMLSyntaxError):
            scanned = None                              # the error as the whole file gives it (below)
    if tree is None:
        try:
            tree = etree.fromstring(data, _parser()).getroottree()
        except SdatError as exc:
            raise SdatError(f"{name}: refused XML construct ({exc}): DTDs and entities are not allowed") from None
        except etree.XMLSyntaxError as exc:
            raise SdatError(f"{name}: not well-formed XML ({exc})") from None
    if tree.docinfo.doctype or tree.docinfo.internalDTD is not None:
        raise SdatError(f"{name}: refused XML construct (DOCTYPE): DTDs and entities are not allowed")
    root = tree.getroot()
    root_name = _local(root.tag)
    if not re.fullmatch(r"ValidatedMeteredData_\d+", root_name):
        raise SdatError(f"{name}: root element {root_name!r} is not ValidatedMeteredData_NN (SDAT-CH E66)")
    header = _child(root, "ValidatedMeteredData_HeaderInformation")
    if header is None:
        raise SdatError(f"{name}: ValidatedMeteredData_HeaderInformation is missing")
    doc = _child(header, "InstanceDocument")
    document_id = _text(doc, "DocumentID")
    if not document_id:
        raise SdatError(f"{name}: InstanceDocument/DocumentID is missing")
    try:
        creation = _utc(_text(doc, "Creation"), "InstanceDocument/Creation")
    except ValueError as exc:
        raise SdatError(f"{name}: {exc}") from None
    doc_type = _code(_child(doc, "DocumentType"))
    if doc_type != "E66":
        raise SdatError(f"{name}: document type {doc_type!r} is not E66 (validated metered data)")
    scope = _child(header, "BusinessScopeProcess")
    out = SdatDocument(name=name, document_id=document_id, creation=creation, document_type=doc_type,
                       sender=_text(header, "Sender", "ID", "EICID"),
                       receiver=_text(header, "Receiver", "ID", "EICID"),
                       business_reason=_code(_child(scope, "BusinessReasonType")),
                       community_id=None, series=[], refused=[])
    blocks = _children(root, "MeteringData")
    if not blocks:
        raise SdatError(f"{name}: no MeteringData")
    runs = scanned[1] if scanned is not None else None
    if runs is not None and (len(runs) != len(blocks) or root.prefix != _root_prefix(data)
                             or _LEFT_IN_SKELETON(root)):      # e.g. an Observation in another prefix
        return parse_sdat(data, name, scan=False)       # not the plain shape after all
    for k, block in enumerate(blocks):
        kids = _first_children(block)
        point = _text(kids.get("ConsumptionMeteringPoint"), "VSENationalID")
        direction = "consumption"
        if point is None:
            point, direction = _text(kids.get("ProductionMeteringPoint"), "VSENationalID"), "production"
        try:
            series = _series(block, kids, point, direction, runs[k] if runs is not None else None)
        except ValueError as exc:
            out.refused.append(SdatRefusal(point, str(exc)))
            continue
        community = _text(kids.get("Community"), "CommunityID")
        if community:
            out.community_id = out.community_id or community
        out.series.append(series)
    _check_totals(out)
    return out


def start_worker() -> None:
    """For a process that only reads files (``Community.import_sdat_paths``' workers): it yields
    the CPU to the process that stores what it reads (which would otherwise wait for a core behind
    two workers), and glibc's malloc keeps the scan's large temporary arrays on its heap instead of
    mapping and zeroing fresh pages for each (about a fifth of a 38 MB file's parse time; nothing
    where the C library has no ``mallopt``)."""
    import ctypes
    import os
    try:
        os.nice(5)
    except (AttributeError, OSError):
        pass
    try:
        mallopt = ctypes.CDLL(None).mallopt
    except (OSError, AttributeError):
        return
    m_trim_threshold, m_top_pad, m_mmap_threshold = -1, -2, -3          # glibc's malloc.h
    mallopt(m_mmap_threshold, 32 << 20)                 # arrays up to 32 MiB from the heap (glibc's maximum)
    mallopt(m_trim_threshold, 256 << 20)                # freed memory kept for the next file
    mallopt(m_top_pad, 64 << 20)


@dataclass
class ReadFile:
    """A file as ``read_sdat_file`` returns it (from a worker process): the document or the error
    that refused it whole, the content's SHA-256 and the seconds parsing took."""
    name: str
    digest: str
    document: SdatDocument | None = None
    error: str | None = None
    parse_s: float = 0.0


def read_sdat_file(path: str, name: str | None = None, keep_texts: bool = False) -> ReadFile:
    """Read and parse one file (see ``parse_sdat``). Without ``keep_texts`` the volumes' texts are
    not kept (they would carry the whole file to another process); the values are."""
    import hashlib
    import time
    name = name or path
    try:
        data = open(path, "rb").read()
    except OSError as exc:
        return ReadFile(name, "", error=f"cannot be read: {exc.strerror or exc}")
    digest = hashlib.sha256(data).hexdigest()
    t = time.perf_counter()
    try:
        doc = parse_sdat(data, name)
    except SdatError as exc:
        return ReadFile(name, digest, error=str(exc).removeprefix(f"{name}: "), parse_s=time.perf_counter() - t)
    if not keep_texts:
        for series in doc.series:
            series._texts = _DROPPED
    return ReadFile(name, digest, doc, parse_s=time.perf_counter() - t)


def _series(block: Element, kids: dict[str, Element], point: str | None, direction: str,
            run: _Run | None = None) -> SdatSeries:
    if point is None:
        raise ValueError("neither ConsumptionMeteringPoint nor ProductionMeteringPoint has a VSENationalID")
    check_metering_point(point)
    product_el = kids.get("Product")
    code = _code(_child(product_el, "ID"))
    product = PRODUCTS.get(code or "")
    if product is None:
        raise ValueError(f"product {code!r} is none of {', '.join(f'{k} ({v})' for k, v in PRODUCTS.items())}")
    unit = _text(product_el, "MeasureUnit")
    if (unit or "").upper() != "KWH":
        raise ValueError(f"{PRODUCT_LABELS[product]}: unit {unit!r}, only KWH is accepted")
    resolution, interval = kids.get("Resolution"), kids.get("Interval")
    res, res_unit = _text(resolution, "Resolution"), _text(resolution, "Unit")
    if res != str(RESOLUTION_MIN) or (res_unit or "").upper() != "MIN":
        raise ValueError(f"{PRODUCT_LABELS[product]}: resolution {res} {res_unit}, only 15 MIN is accepted")
    start = _utc(_text(interval, "StartDateTime"), "Interval/StartDateTime")
    end = _utc(_text(interval, "EndDateTime"), "Interval/EndDateTime")
    step = timedelta(minutes=RESOLUTION_MIN)
    n, rest = divmod(end - start, step)
    if end <= start or rest:
        raise ValueError(f"interval {start:%Y-%m-%dT%H:%MZ} - {end:%Y-%m-%dT%H:%MZ} is not a whole number "
                         f"of quarter hours")
    if start.minute % RESOLUTION_MIN or start.second or start.microsecond:
        raise ValueError(f"interval start {start:%Y-%m-%dT%H:%M:%S.%fZ} is not on a quarter hour")
    s = SdatSeries(point, direction, product, start, end)
    if run is not None:
        return _from_run(s, run, n)
    label = PRODUCT_LABELS[product]
    offsets, texts, conditions = [], [], {}
    seen = set()
    for obs in _children(block, "Observation"):
        seq_text = _text(obs, "Position", "Sequence")
        try:
            seq = int(seq_text or "")
        except ValueError:
            raise ValueError(f"{label}: sequence {seq_text!r} is not a number") from None
        if not 1 <= seq <= n:
            raise ValueError(f"{label}: sequence {seq} is outside the interval "
                             f"({n} quarter hours from {start:%Y-%m-%dT%H:%MZ})")
        vol_text = _text(obs, "Volume")
        try:
            vol = Decimal(vol_text or "")
        except InvalidOperation:
            raise ValueError(f"{label}: sequence {seq}: volume {vol_text!r} is not a number") from None
        if not vol.is_finite() or vol < 0 or vol > 10_000_000:
            raise ValueError(f"{label}: sequence {seq}: volume {vol_text!r} must be 0 ... 10,000,000 kWh")
        if seq in seen:
            raise ValueError(f"{label}: sequence {seq} appears twice")
        seen.add(seq)
        offsets.append(seq - 1)
        texts.append(vol_text)
        cond = _text(obs, "Condition")
        if cond is not None:
            conditions[seq - 1] = cond
    if not offsets:
        raise ValueError(f"{label}: no Observation")
    s.offsets = np.array(offsets, dtype=np.int64)
    s.volumes = np.array([float(Decimal(t)) for t in texts], dtype=np.float64)
    s._texts, s.conditions = texts, conditions
    return s


def _from_run(s: SdatSeries, run: _Run, n: int) -> SdatSeries:
    """The series' observations as ``_scan`` read them, with the element reading's refusals."""
    label = PRODUCT_LABELS[s.product]
    seq = run.sequences
    if not (len(seq) <= n and np.array_equal(seq, np.arange(1, len(seq) + 1))):
        outside = (seq < 1) | (seq > n)
        _, first_at = np.unique(seq, return_index=True)
        repeated = np.ones(len(seq), bool)
        repeated[first_at] = False
        bad = np.flatnonzero(outside | repeated)
        if len(bad):
            k = int(bad[0])
            if outside[k]:
                raise ValueError(f"{label}: sequence {int(seq[k])} is outside the interval "
                                 f"({n} quarter hours from {s.start:%Y-%m-%dT%H:%MZ})")
            raise ValueError(f"{label}: sequence {int(seq[k])} appears twice")
    s.offsets, s.volumes = seq.astype(np.int64) - 1, run.volumes
    s._texts = (run.source, run.text_starts, run.text_ends)
    s.conditions = run.conditions
    return s


def _check_totals(doc: SdatDocument) -> None:
    """Where a point's window has the total and both shares, each quarter hour's total must be
    LEG + grid share (within TOTAL_TOLERANCE_KWH); else the point's data for that window is refused.
    Compared in floating point, and where a quarter hour comes near the tolerance, again exactly."""
    groups: dict[tuple, dict[str, SdatSeries]] = {}
    for s in doc.series:
        groups.setdefault((s.metering_point, s.direction, s.start, s.end), {})[s.product] = s
    bad = set()
    tol = Decimal(str(TOTAL_TOLERANCE_KWH))
    for key, by in groups.items():
        if not {"total", "leg", "grid"} <= by.keys():
            continue
        total, leg, grid = by["total"], by["leg"], by["grid"]
        if np.array_equal(total.offsets, leg.offsets) and np.array_equal(total.offsets, grid.offsets):
            ti = li = gi = np.arange(len(total))
        else:
            common, ti, li = np.intersect1d(total.offsets, leg.offsets, assume_unique=True, return_indices=True)
            common, ci, gi = np.intersect1d(common, grid.offsets, assume_unique=True, return_indices=True)
            ti, li = ti[ci], li[ci]
            order = np.argsort(total.offsets[ti], kind="stable")
            ti, li, gi = ti[order], li[order], gi[order]
        diff = np.abs(total.volumes[ti] - (leg.volumes[li] + grid.volumes[gi]))
        for j in np.flatnonzero(diff > TOTAL_TOLERANCE_KWH - 1e-6):
            t, a, b = Decimal(total.text(ti[j])), Decimal(leg.text(li[j])), Decimal(grid.text(gi[j]))
            if abs(t - (a + b)) > tol:
                at = total.start + int(total.offsets[ti[j]]) * timedelta(minutes=RESOLUTION_MIN)
                bad.add(key)
                doc.refused.append(SdatRefusal(key[0], (
                    f"{key[1]} {key[2]:%Y-%m-%dT%H:%MZ} - {key[3]:%Y-%m-%dT%H:%MZ}: at {at:%Y-%m-%dT%H:%MZ} the total "
                    f"{t} kWh differs from LEG share {a} + grid share {b} by more than {tol} kWh; "
                    f"this window of the point is refused")))
                break
    if bad:
        doc.series = [s for s in doc.series if (s.metering_point, s.direction, s.start, s.end) not in bad]
