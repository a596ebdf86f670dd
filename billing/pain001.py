"""Producer payouts as a credit transfer file: ISO 20022 pain.001.001.09 as Swiss banks take it
(Swiss Payment Standards 2022, ``pain.001.001.09.ch.03``), one ``PmtInf`` from the community's
account with one ``CdtTrfTxInf`` per house that is owed money.

    Document/CstmrCdtTrfInitn
        GrpHdr: MsgId, CreDtTm, NbOfTxs, CtrlSum, InitgPty/Nm
        PmtInf: PmtInfId, PmtMtd TRF, BtchBookg, NbOfTxs, CtrlSum, ReqdExctnDt/Dt,
                Dbtr/Nm (+PstlAdr), DbtrAcct/Id/IBAN, DbtrAgt/FinInstnId/Othr/Id NOTPROVIDED
            CdtTrfTxInf: PmtId/InstrId, PmtId/EndToEndId, Amt/InstdAmt Ccy="CHF",
                Cdtr/Nm (+PstlAdr), CdtrAcct/Id/IBAN, RmtInf/Ustrd (at most 140 characters)
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal
from xml.etree.ElementTree import Element, SubElement, tostring

NS = "urn:iso:std:iso:20022:tech:xsd:pain.001.001.09"
# characters the Swiss Payment Standards allow in text (Latin, with the usual accents)
_ALLOWED = re.compile(r"[^A-Za-z0-9 .,:'+\-/()?àáâäçèéêëìíîïñòóôöùúûüýßÀÁÂÄÇÈÉÊËÌÍÎÏÒÓÔÖÙÚÛÜÑ&*$%@=!\"#;<>_]")


def sps_text(value: str, limit: int) -> str:
    """Text as the bank takes it: characters outside the SPS set replaced by '.', cut to ``limit``."""
    return _ALLOWED.sub(".", (value or "").strip())[:limit] or "-"


@dataclass(frozen=True)
class Payout:
    house_id: str
    name: str
    iban: str               # electronic form, no spaces
    amount_chf: Decimal     # > 0, two decimals
    reference: str          # the credit's invoice id (Ustrd: unstructured remittance)
    street: str = ""
    number: str = ""
    postcode: str = ""
    town: str = ""
    country: str = "CH"


def _address(parent: Element, tag: str, name: str, street: str, number: str, postcode: str, town: str, country: str):
    party = SubElement(parent, tag)
    SubElement(party, "Nm").text = sps_text(name, 70)
    if town:
        adr = SubElement(party, "PstlAdr")
        if street:
            SubElement(adr, "StrtNm").text = sps_text(street, 70)
        if number:
            SubElement(adr, "BldgNb").text = sps_text(number, 16)
        if postcode:
            SubElement(adr, "PstCd").text = sps_text(postcode, 16)
        SubElement(adr, "TwnNm").text = sps_text(town, 35)
        SubElement(adr, "Ctry").text = country or "CH"
    return party


def credit_transfer(message_id: str, created: datetime, execution: date, debtor_name: str, debtor_iban: str,
                    payouts: list[Payout], debtor_address: dict | None = None) -> bytes:
    """The pain.001.001.09 document (UTF-8 XML) paying ``payouts`` from ``debtor_iban``."""
    if not payouts:
        raise ValueError("no payouts: a credit transfer file needs at least one transaction")
    total = sum((p.amount_chf for p in payouts), Decimal("0"))
    doc = Element("Document", {"xmlns": NS})
    init = SubElement(doc, "CstmrCdtTrfInitn")
    hdr = SubElement(init, "GrpHdr")
    SubElement(hdr, "MsgId").text = sps_text(message_id, 35)
    SubElement(hdr, "CreDtTm").text = created.replace(microsecond=0).isoformat()
    SubElement(hdr, "NbOfTxs").text = str(len(payouts))
    SubElement(hdr, "CtrlSum").text = f"{total:.2f}"
    SubElement(SubElement(hdr, "InitgPty"), "Nm").text = sps_text(debtor_name, 70)
    pmt = SubElement(init, "PmtInf")
    SubElement(pmt, "PmtInfId").text = sps_text(message_id, 35)
    SubElement(pmt, "PmtMtd").text = "TRF"
    SubElement(pmt, "BtchBookg").text = "true"
    SubElement(pmt, "NbOfTxs").text = str(len(payouts))
    SubElement(pmt, "CtrlSum").text = f"{total:.2f}"
    SubElement(SubElement(pmt, "ReqdExctnDt"), "Dt").text = execution.isoformat()
    a = debtor_address or {}
    _address(pmt, "Dbtr", debtor_name, a.get("street", ""), a.get("number", ""), a.get("postcode", ""),
             a.get("town", ""), a.get("country", "CH"))
    SubElement(SubElement(SubElement(pmt, "DbtrAcct"), "Id"), "IBAN").text = debtor_iban
    SubElement(SubElement(SubElement(SubElement(pmt, "DbtrAgt"), "FinInstnId"), "Othr"), "Id").text = "NOTPROVIDED"
    for k, p in enumerate(payouts, 1):
        tx = SubElement(pmt, "CdtTrfTxInf")
        pid = SubElement(tx, "PmtId")
        SubElement(pid, "InstrId").text = f"{sps_text(message_id, 30)}-{k}"[:35]
        SubElement(pid, "EndToEndId").text = sps_text(p.reference, 35)
        SubElement(SubElement(tx, "Amt"), "InstdAmt", {"Ccy": "CHF"}).text = f"{p.amount_chf:.2f}"
        _address(tx, "Cdtr", p.name, p.street, p.number, p.postcode, p.town, p.country)
        SubElement(SubElement(SubElement(tx, "CdtrAcct"), "Id"), "IBAN").text = p.iban
        SubElement(SubElement(tx, "RmtInf"), "Ustrd").text = sps_text(f"Credit {p.reference}", 140)
    return b'<?xml version="1.0" encoding="UTF-8"?>\n' + tostring(doc, encoding="utf-8", xml_declaration=False)
