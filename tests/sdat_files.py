"""SDAT-CH E66 files as grid operators send them, for tests.

The structure follows real deliveries (see tests/fixtures/sdat/SOURCES.md for where they were
studied): versions 12 - 14 carry one ``MeteringData`` per file with the product code as the text of
``Product/ID`` (``schemeAgencyID="9"``), the document type with a trailing space, minified
whitespace; LEG deliveries (version 16) carry one ``MeteringData`` per metering point and product
with a typed ``Product/ID`` child (``ebIXCode`` for the total, ``VSENationalCode`` for the LEG and
grid shares), a ``Community`` block and the business reason ``C40``.
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone

TOTAL, LEG, GRID = "8716867000030", "2404050010123", "2404050010124"
SENDER, RECEIVER = "12X-0000001216-O", "12X-LEGTESTCOM-T"


def z(t: datetime) -> str:
    return t.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _header(version: int, doc_id: str, creation: datetime, start: datetime, end: datetime, leg: bool) -> str:
    reason = ('<rsm:BusinessReasonType codeListAgency="260" codeListID="VSE"><rsm:VSENationalCode>C40'
              '</rsm:VSENationalCode></rsm:BusinessReasonType>' if leg else
              '<rsm:BusinessReasonType codeListAgency="260"><rsm:ebIXCode>E88</rsm:ebIXCode></rsm:BusinessReasonType>')
    return (
        f'<?xml version="1.0" encoding="UTF-8"?><rsm:ValidatedMeteredData_{version} '
        f'xsi:schemaLocation="http://www.strom.ch ValidatedMeteredData_1p{version % 10}.xsd" '
        'xmlns:rsm="http://www.strom.ch" xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">\n'
        '  <rsm:ValidatedMeteredData_HeaderInformation>\n\t<rsm:HeaderVersion>1.0</rsm:HeaderVersion>\n'
        f'\t<rsm:Sender><rsm:ID><rsm:EICID schemeAgencyID="305">{SENDER}</rsm:EICID></rsm:ID><rsm:Role>MDR</rsm:Role></rsm:Sender>\n'
        f'\t<rsm:Receiver><rsm:ID><rsm:EICID schemeAgencyID="305">{RECEIVER}</rsm:EICID></rsm:ID>'
        f'<rsm:Role>{"CEM" if leg else "DEC"}</rsm:Role></rsm:Receiver>\n'
        '\t<rsm:InstanceDocument><rsm:DictionaryAgencyID>260</rsm:DictionaryAgencyID>'
        '<rsm:VersionID listAgencyID="260">2007B</rsm:VersionID>'
        f'<rsm:DocumentID>{doc_id}</rsm:DocumentID>'
        '<rsm:DocumentType listAgencyID="260"><rsm:ebIXCode>E66</rsm:ebIXCode> \n</rsm:DocumentType>'
        f'<rsm:Creation>{z(creation)}</rsm:Creation><rsm:Status>9</rsm:Status></rsm:InstanceDocument>\n'
        f'\t<rsm:BusinessScopeProcess>{reason}<rsm:BusinessDomainType listAgencyID="260">E02</rsm:BusinessDomainType>'
        '<rsm:BusinessSectorType>23</rsm:BusinessSectorType>'
        f'<rsm:ReportPeriod><rsm:StartDateTime>{z(start)}</rsm:StartDateTime><rsm:EndDateTime>{z(end)}'
        '</rsm:EndDateTime></rsm:ReportPeriod><rsm:BusinessService><rsm:ServiceTransaction '
        'isIntelligibleCheckRequired="true"/></rsm:BusinessService></rsm:BusinessScopeProcess>\n'
        '  </rsm:ValidatedMeteredData_HeaderInformation>\n')


def _block(doc_id: str, point: str, direction: str, product: str, start: datetime, end: datetime,
           volumes: list[float], conditions: dict[int, str] | None, typed: bool, community: str | None,
           unit: str = "KWH", resolution: str = "15", sequences: list[int] | None = None) -> str:
    tag = "ConsumptionMeteringPoint" if direction == "consumption" else "ProductionMeteringPoint"
    if typed:
        code_tag = "ebIXCode" if product == TOTAL else "VSENationalCode"
        agency = "9" if product == TOTAL else "260"
        pid = f'<rsm:ID><rsm:{code_tag} schemeAgencyID="{agency}">{product}</rsm:{code_tag}></rsm:ID>'
    else:
        pid = f'<rsm:ID schemeAgencyID="9">{product}</rsm:ID>'
    comm = (f'<rsm:Community><rsm:CommunityID>{community}</rsm:CommunityID><rsm:CommunityType codeListAgency="260">'
            '<rsm:VSENationalCode>CT01</rsm:VSENationalCode></rsm:CommunityType></rsm:Community>' if community else "")
    seqs = sequences or list(range(1, len(volumes) + 1))
    obs = "".join(
        f'<rsm:Observation><rsm:Position><rsm:Sequence>{s}</rsm:Sequence></rsm:Position>'
        f'<rsm:Volume>{v:.3f}</rsm:Volume>'
        + (f'<rsm:Condition>{conditions[s]}</rsm:Condition>' if conditions and s in conditions else "")
        + '</rsm:Observation>' for s, v in zip(seqs, volumes))
    return (f'  <rsm:MeteringData><rsm:DocumentID>{doc_id}</rsm:DocumentID>'
            f'<rsm:Interval><rsm:StartDateTime>{z(start)}</rsm:StartDateTime><rsm:EndDateTime>{z(end)}'
            f'</rsm:EndDateTime></rsm:Interval><rsm:Resolution><rsm:Resolution>{resolution}</rsm:Resolution>'
            f'<rsm:Unit>MIN</rsm:Unit></rsm:Resolution><rsm:{tag}><rsm:VSENationalID schemeID="VSE" '
            f'schemeAgencyID="260">{point}</rsm:VSENationalID></rsm:{tag}><rsm:Product>{pid}'
            f'<rsm:MeasureUnit>{unit}</rsm:MeasureUnit></rsm:Product>{comm}\n\t{obs}\n  </rsm:MeteringData>\n')


def quarter_hours(start: datetime, end: datetime) -> int:
    return int((end - start) / timedelta(minutes=15))


def leg_document(doc_id: str, creation: datetime, start: datetime, end: datetime,
                 points: dict[str, tuple[str, list[float], list[float]]], community: str = "101110-002726",
                 conditions: dict[int, str] | None = None, version: int = 16,
                 overrides: dict | None = None) -> bytes:
    """A LEG delivery: for each metering point (direction, LEG shares, grid shares), the total and
    both shares over [start, end). ``overrides`` maps (point, product) to keyword arguments of the
    block (unit, resolution, sequences, volumes) for refusal tests."""
    parts = [_header(version, doc_id, creation, start, end, leg=True)]
    for k, (point, (direction, leg, grid)) in enumerate(points.items()):
        total = [a + b for a, b in zip(leg, grid)]
        for product, vols in ((TOTAL, total), (LEG, leg), (GRID, grid)):
            kw = dict((overrides or {}).get((point, product), {}))
            vols = kw.pop("volumes", vols)
            parts.append(_block(f"{doc_id}@{k}{product[-1]}", point, direction, product, start, end, vols,
                                conditions, typed=True, community=community, **kw))
    parts.append(f"</rsm:ValidatedMeteredData_{version}>\n")
    return "".join(parts).encode()


def classic_document(doc_id: str, creation: datetime, start: datetime, end: datetime, point: str,
                     direction: str, volumes: list[float], conditions: dict[int, str] | None = None,
                     version: int = 14) -> bytes:
    """A version 12 - 14 delivery: one metering point, the total only, product code as text."""
    return (_header(version, doc_id, creation, start, end, leg=False)
            + _block(f"{doc_id}_D", point, direction, TOTAL, start, end, volumes, conditions, typed=False,
                     community=None)
            + f"</rsm:ValidatedMeteredData_{version}>\n").encode()


def local_day(year: int, month: int, day: int, days: int = 1) -> tuple[datetime, datetime]:
    """[start, end) in UTC of local (Europe/Zurich) days, as SDAT windows are."""
    from zoneinfo import ZoneInfo
    tz = ZoneInfo("Europe/Zurich")
    a = datetime(year, month, day, tzinfo=tz)
    b = (a.replace(tzinfo=None) + timedelta(days=days)).replace(tzinfo=tz)
    return a.astimezone(timezone.utc), b.astimezone(timezone.utc)
