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

Speed: a daily LEG delivery of 200 points carries about 288,000 observations. Where a file has
no comments, CDATA or processing instructions and all its elements are in one namespace (as every
delivery is), each series is read with a few compiled XPath queries that return the texts of all
its volumes, sequences and conditions at once; the sequences must be exactly 1, 2, ... and the
volumes plain decimal numbers, else (and for everything else) the series is read element by
element, which gives the exact refusal. Values are kept as arrays (``SdatSeries.offsets``,
``volumes``, ``texts``, ``conditions``); ``SdatSeries.values`` builds the per-quarter-hour map.
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


@dataclass
class SdatSeries:
    metering_point: str
    direction: str                    # "consumption" | "production"
    product: str                      # "total" | "leg" | "grid"
    start: datetime                   # UTC
    end: datetime
    offsets: np.ndarray = field(default_factory=lambda: np.zeros(0, np.int64))    # quarter hours from start
    volumes: np.ndarray = field(default_factory=lambda: np.zeros(0, np.float64))  # kWh, per offset
    texts: list[str] = field(default_factory=list)          # the volumes as written (exact decimals)
    conditions: dict[int, str] = field(default_factory=dict)  # offset -> condition code, where set

    def __len__(self) -> int:
        return len(self.offsets)

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
    for name in names:
        if el is None:
            return None
        el = next((c for c in el if _local(c.tag) == name), None)
    return el


def _children(el: Element, name: str) -> list[Element]:
    return [c for c in el if _local(c.tag) == name]


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
_VOLUME_RE = re.compile(r"(?:\d{1,8}(?:\.\d{1,12})?\n)*\d{1,8}(?:\.\d{1,12})?")
_SEQ_TEXTS: list[str] = [str(k) for k in range(1, 2 * 96 * 31 + 1)]        # "1" ... (two months of quarter hours)


_DOCTYPE = (b"<!DOCTYPE", "<!DOCTYPE".encode("utf-16-le"), "<!DOCTYPE".encode("utf-16-be"))


class _RefuseExternal(etree.Resolver):
    """Nothing outside the file is read: libxml2 would open a local DTD even without load_dtd."""

    def resolve(self, url, pubid, context):
        raise SdatError(f"refused external resource {str(url)[:80]!r}")


def _parser() -> etree.XMLParser:
    p = etree.XMLParser(**_PARSER_OPTIONS)
    p.resolvers.add(_RefuseExternal())
    return p


class _Fast:
    """Compiled queries for one namespace: every series of a block in a few calls (see module doc)."""
    _cache: dict[str | None, "_Fast"] = {}

    def __init__(self, ns: str | None):
        kw = {"namespaces": {"r": ns}} if ns else {}
        p = "r:" if ns else ""
        q = lambda expr: etree.XPath(expr.replace("r:", p), smart_strings=False, **kw)
        self.count = q("count(r:Observation)")
        self.volumes = q("r:Observation/r:Volume[1]/text()")
        self.sequences = q("r:Observation/r:Position[1]/r:Sequence[1]/text()")
        self.cond_texts = q("r:Observation/r:Condition[1]/text()")
        self.cond_sequences = q("r:Observation[r:Condition[1]/text()]/r:Position[1]/r:Sequence[1]/text()")

    @classmethod
    def get(cls, ns: str | None) -> "_Fast":
        if ns not in cls._cache:
            cls._cache[ns] = cls(ns)
        return cls._cache[ns]


def _fast_namespace(data: bytes, root: Element):
    """The namespace every element of the file is in, when the fast reading applies; else False."""
    head = data[:256].lstrip(b"\xef\xbb\xbf \t\r\n")
    if b"<!--" in data or b"<![CDATA[" in data or data.count(b"<?") > (1 if head.startswith(b"<?xml") else 0):
        return False
    end_of_root_tag = data.find(b">", data.find(b"ValidatedMeteredData_"))
    if end_of_root_tag < 0 or data.find(b"xmlns", end_of_root_tag) >= 0:
        return False                                    # namespaces declared below the root
    ns = etree.QName(root).namespace
    own = root.prefix
    if own is not None:                                 # every tag has the root's prefix (text holds no '<')
        pre = own.encode()
        tags = data.count(b"<" + pre + b":") + data.count(b"</" + pre + b":")
        return ns if data.count(b"<") == tags + (1 if head.startswith(b"<?xml") else 0) else False
    for prefix, uri in root.nsmap.items():
        if prefix == own:
            continue
        if prefix is None or b"<" + prefix.encode() + b":" in data:
            return False                                # elements of another namespace may occur
    return ns


def parse_sdat(data: bytes, name: str = "<file>") -> SdatDocument:
    """The document in ``data``; SdatError when the file as a whole cannot be used."""
    if len(data) > MAX_FILE_BYTES:
        raise SdatError(f"{name}: {len(data):,} bytes exceeds the limit of {MAX_FILE_BYTES:,}")
    if any(d in data for d in _DOCTYPE):
        raise SdatError(f"{name}: refused XML construct (DOCTYPE): DTDs and entities are not allowed")
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
    ns = _fast_namespace(data, root)
    fast = None if ns is False else _Fast.get(ns)
    for block in blocks:
        point = _text(block, "ConsumptionMeteringPoint", "VSENationalID")
        direction = "consumption"
        if point is None:
            point, direction = _text(block, "ProductionMeteringPoint", "VSENationalID"), "production"
        try:
            series = _series(block, point, direction, fast)
        except ValueError as exc:
            out.refused.append(SdatRefusal(point, str(exc)))
            continue
        community = _text(block, "Community", "CommunityID")
        if community:
            out.community_id = out.community_id or community
        out.series.append(series)
    _check_totals(out)
    return out


def _series(block: Element, point: str | None, direction: str, fast: _Fast | None = None) -> SdatSeries:
    if point is None:
        raise ValueError("neither ConsumptionMeteringPoint nor ProductionMeteringPoint has a VSENationalID")
    check_metering_point(point)
    product_el = _child(block, "Product")
    code = _code(_child(product_el, "ID"))
    product = PRODUCTS.get(code or "")
    if product is None:
        raise ValueError(f"product {code!r} is none of {', '.join(f'{k} ({v})' for k, v in PRODUCTS.items())}")
    unit = _text(product_el, "MeasureUnit")
    if (unit or "").upper() != "KWH":
        raise ValueError(f"{PRODUCT_LABELS[product]}: unit {unit!r}, only KWH is accepted")
    res, res_unit = _text(block, "Resolution", "Resolution"), _text(block, "Resolution", "Unit")
    if res != str(RESOLUTION_MIN) or (res_unit or "").upper() != "MIN":
        raise ValueError(f"{PRODUCT_LABELS[product]}: resolution {res} {res_unit}, only 15 MIN is accepted")
    start = _utc(_text(block, "Interval", "StartDateTime"), "Interval/StartDateTime")
    end = _utc(_text(block, "Interval", "EndDateTime"), "Interval/EndDateTime")
    step = timedelta(minutes=RESOLUTION_MIN)
    n, rest = divmod(end - start, step)
    if end <= start or rest:
        raise ValueError(f"interval {start:%Y-%m-%dT%H:%MZ} - {end:%Y-%m-%dT%H:%MZ} is not a whole number "
                         f"of quarter hours")
    if start.minute % RESOLUTION_MIN or start.second or start.microsecond:
        raise ValueError(f"interval start {start:%Y-%m-%dT%H:%M:%S.%fZ} is not on a quarter hour")
    s = SdatSeries(point, direction, product, start, end)
    if fast is not None and _read_fast(block, s, n, fast):
        return s
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
    s.texts, s.conditions = texts, conditions
    return s


def _read_fast(block: Element, s: SdatSeries, n: int, fast: _Fast) -> bool:
    """The observations of a series with the common shape (sequences 1, 2, ..., plain decimal
    volumes), read in a few XPath calls; False where anything differs (then read element by element)."""
    k = int(fast.count(block))                          # every element is in the namespace (_fast_namespace)
    if k == 0 or k > n or k > len(_SEQ_TEXTS):
        return False
    seqs = fast.sequences(block)
    if len(seqs) != k or seqs != _SEQ_TEXTS[:k]:
        return False
    texts = fast.volumes(block)
    if len(texts) != k or not _VOLUME_RE.fullmatch("\n".join(texts)):
        return False
    volumes = np.array(texts, dtype=np.float64)
    if volumes.max() > 10_000_000:
        return False
    cond_texts = fast.cond_texts(block)
    cond_seqs = fast.cond_sequences(block) if cond_texts else []
    if len(cond_texts) != len(cond_seqs):
        return False
    conditions = {}
    for seq, c in zip(cond_seqs, cond_texts):
        c = c.strip()
        if c:
            conditions[int(seq) - 1] = c
    s.offsets, s.volumes, s.texts, s.conditions = np.arange(k, dtype=np.int64), volumes, texts, conditions
    return True


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
            t, a, b = Decimal(total.texts[ti[j]]), Decimal(leg.texts[li[j]]), Decimal(grid.texts[gi[j]])
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
