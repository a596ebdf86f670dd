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
alike. The parser never trusts the file: it is read with defusedxml (no entity expansion, no
external entities), and every refusal names the file, the metering point and the reason. A
series with a wrong unit or resolution, a sequence outside its interval, or (where the file has
the total and both shares of a point and window) a total that differs from LEG + grid share by
more than ``TOTAL_TOLERANCE_KWH`` in any quarter hour is refused; the rest of the file counts.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from decimal import Decimal, InvalidOperation

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException
from xml.etree.ElementTree import Element, ParseError

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
    # quarter-hour start (UTC) -> (kWh, condition code or None)
    values: dict[datetime, tuple[Decimal, str | None]] = field(default_factory=dict)


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
def parse_sdat(data: bytes, name: str = "<file>") -> SdatDocument:
    """The document in ``data``; SdatError when the file as a whole cannot be used."""
    if len(data) > MAX_FILE_BYTES:
        raise SdatError(f"{name}: {len(data):,} bytes exceeds the limit of {MAX_FILE_BYTES:,}")
    try:
        root = SafeET.fromstring(data)
    except DefusedXmlException as exc:
        raise SdatError(f"{name}: refused XML construct ({type(exc).__name__}): entities are not allowed") from None
    except ParseError as exc:
        raise SdatError(f"{name}: not well-formed XML ({exc})") from None
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
    for block in blocks:
        point = _text(block, "ConsumptionMeteringPoint", "VSENationalID")
        direction = "consumption"
        if point is None:
            point, direction = _text(block, "ProductionMeteringPoint", "VSENationalID"), "production"
        try:
            series = _series(block, point, direction)
        except ValueError as exc:
            out.refused.append(SdatRefusal(point, str(exc)))
            continue
        community = _text(block, "Community", "CommunityID")
        if community:
            out.community_id = out.community_id or community
        out.series.append(series)
    _check_totals(out)
    return out


def _series(block: Element, point: str | None, direction: str) -> SdatSeries:
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
    if start.minute % RESOLUTION_MIN or start.second:
        raise ValueError(f"interval start {start:%Y-%m-%dT%H:%M:%SZ} is not on a quarter hour")
    s = SdatSeries(point, direction, product, start, end)
    for obs in _children(block, "Observation"):
        seq_text = _text(obs, "Position", "Sequence")
        try:
            seq = int(seq_text or "")
        except ValueError:
            raise ValueError(f"{PRODUCT_LABELS[product]}: sequence {seq_text!r} is not a number") from None
        if not 1 <= seq <= n:
            raise ValueError(f"{PRODUCT_LABELS[product]}: sequence {seq} is outside the interval "
                             f"({n} quarter hours from {start:%Y-%m-%dT%H:%MZ})")
        vol_text = _text(obs, "Volume")
        try:
            vol = Decimal(vol_text or "")
        except InvalidOperation:
            raise ValueError(f"{PRODUCT_LABELS[product]}: sequence {seq}: volume {vol_text!r} is not a number") from None
        if not vol.is_finite() or vol < 0 or vol > 10_000_000:
            raise ValueError(f"{PRODUCT_LABELS[product]}: sequence {seq}: volume {vol_text!r} must be 0 ... 10,000,000 kWh")
        at = start + (seq - 1) * step
        if at in s.values:
            raise ValueError(f"{PRODUCT_LABELS[product]}: sequence {seq} appears twice")
        s.values[at] = (vol, _text(obs, "Condition"))
    if not s.values:
        raise ValueError(f"{PRODUCT_LABELS[product]}: no Observation")
    return s


def _check_totals(doc: SdatDocument) -> None:
    """Where a point's window has the total and both shares, each quarter hour's total must be
    LEG + grid share (within TOTAL_TOLERANCE_KWH); else the point's data for that window is refused."""
    groups: dict[tuple, dict[str, SdatSeries]] = {}
    for s in doc.series:
        groups.setdefault((s.metering_point, s.direction, s.start, s.end), {})[s.product] = s
    bad = set()
    tol = Decimal(str(TOTAL_TOLERANCE_KWH))
    for key, by in groups.items():
        if not {"total", "leg", "grid"} <= by.keys():
            continue
        for at, (total, _) in sorted(by["total"].values.items()):
            leg, grid = by["leg"].values.get(at), by["grid"].values.get(at)
            if leg is None or grid is None:
                continue
            if abs(total - (leg[0] + grid[0])) > tol:
                bad.add(key)
                doc.refused.append(SdatRefusal(key[0], (
                    f"{key[1]} {key[2]:%Y-%m-%dT%H:%MZ} - {key[3]:%Y-%m-%dT%H:%MZ}: at {at:%Y-%m-%dT%H:%MZ} the total "
                    f"{total} kWh differs from LEG share {leg[0]} + grid share {grid[0]} by more than {tol} kWh; "
                    f"this window of the point is refused")))
                break
    if bad:
        doc.series = [s for s in doc.series if (s.metering_point, s.direction, s.start, s.end) not in bad]

