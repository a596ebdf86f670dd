"""Bank files: ISO 20022 camt.054 notifications and camt.053 statements (versions .04 to .08, as
Swiss banks send them under the Swiss Payment Standards), read namespace-agnostic.

    Document/BkToCstmrDbtCdtNtfctn/Ntfctn (camt.054) | Document/BkToCstmrStmt/Stmt (camt.053)
        Acct/Id/IBAN
        Ntry: Amt Ccy, CdtDbtInd (CRDT | DBIT), RvslInd, Sts (text in .04, Sts/Cd in .08),
              BookgDt/Dt (or DtTm), NtryRef, AcctSvcrRef
            NtryDtls/TxDtls (one per payment; a batch entry has several):
                Refs/AcctSvcrRef, Amt (or AmtDtls/TxAmt/Amt), CdtDbtInd,
                RltdPties/Dbtr/Nm (.04) or Dbtr/Pty/Nm (.08),
                RmtInf/Strd/CdtrRefInf/Ref (the QR or RF reference of the QR-bill)

Each transaction is one payment with its identity: the transaction's ``AcctSvcrRef``; without
one, the entry's reference (``AcctSvcrRef`` or ``NtryRef``), the amount, the booking date and the
position in the entry. Importing a file twice therefore finds the same identities.
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import date, datetime
from decimal import Decimal, InvalidOperation
from xml.etree.ElementTree import Element, ParseError

from defusedxml import ElementTree as SafeET
from defusedxml.common import DefusedXmlException

MAX_FILE_BYTES = 64 * 1024 * 1024


class CamtError(ValueError):
    """A file that is not a camt.053/camt.054 document."""


@dataclass(frozen=True)
class BankTransaction:
    tx_id: str                  # identity (see the module's description)
    amount_chf: Decimal         # positive
    currency: str
    credit: bool                # CRDT: money in
    reversal: bool              # RvslInd: the bank takes a booking back
    reference: str | None       # creditor reference without spaces (QRR / RF), None if none
    booking_date: date | None
    debtor: str | None
    entry_ref: str | None
    booked: bool                # entry status BOOK (else pending / information)


@dataclass
class CamtFile:
    name: str
    message: str                # "camt.054.001.08", ...
    account_iban: str | None
    transactions: list[BankTransaction]


def _local(tag) -> str:
    return tag.rsplit("}", 1)[-1] if isinstance(tag, str) else ""


def _child(el: Element | None, *names: str) -> Element | None:
    for name in names:
        if el is None:
            return None
        el = next((c for c in el if _local(c.tag) == name), None)
    return el


def _children(el: Element | None, name: str) -> list[Element]:
    return [] if el is None else [c for c in el if _local(c.tag) == name]


def _text(el: Element | None, *names: str) -> str | None:
    node = _child(el, *names) if names else el
    if node is None or node.text is None:
        return None
    return node.text.strip() or None


def _amount(el: Element | None, where: str) -> tuple[Decimal, str] | None:
    if el is None:
        return None
    try:
        v = Decimal(_text(el) or "")
    except InvalidOperation:
        raise CamtError(f"{where}: amount {_text(el)!r} is not a number") from None
    if not v.is_finite() or v < 0:
        raise CamtError(f"{where}: amount {_text(el)!r} must be a positive number")
    return v, el.get("Ccy") or "CHF"


def _date(el: Element | None) -> date | None:
    t = _text(el, "Dt") or (_text(el, "DtTm") or "")[:10]
    try:
        return date.fromisoformat(t) if t else None
    except ValueError:
        return None


def parse_camt(data: bytes, name: str = "<file>") -> CamtFile:
    if len(data) > MAX_FILE_BYTES:
        raise CamtError(f"{name}: {len(data):,} bytes exceeds the limit of {MAX_FILE_BYTES:,}")
    try:
        root = SafeET.fromstring(data)
    except DefusedXmlException:
        raise CamtError(f"{name}: refused XML construct: entities are not allowed") from None
    except ParseError as exc:
        raise CamtError(f"{name}: not well-formed XML ({exc})") from None
    ns = root.tag[1:].split("}")[0] if root.tag.startswith("{") else ""
    m = re.search(r"(camt\.05[34]\.001\.\d\d)$", ns)
    body = _child(root, "BkToCstmrDbtCdtNtfctn") or _child(root, "BkToCstmrStmt")
    if _local(root.tag) != "Document" or body is None:
        raise CamtError(f"{name}: not a camt.054 notification or camt.053 statement "
                        f"(root {_local(root.tag)!r}, namespace {ns or 'none'!r})")
    message = m.group(1) if m else ("camt.054" if _local(body.tag) == "BkToCstmrDbtCdtNtfctn" else "camt.053")
    reports = _children(body, "Ntfctn") + _children(body, "Stmt")
    out = CamtFile(name, message, None, [])
    for rep in reports:
        out.account_iban = out.account_iban or _text(rep, "Acct", "Id", "IBAN")
        for e_no, ntry in enumerate(_children(rep, "Ntry"), 1):
            out.transactions += _entry(ntry, f"{name}: entry {e_no}")
    return out


def _entry(ntry: Element, where: str) -> list[BankTransaction]:
    amt = _amount(_child(ntry, "Amt"), where)
    if amt is None:
        raise CamtError(f"{where}: Amt is missing")
    credit = _text(ntry, "CdtDbtInd") == "CRDT"
    reversal = (_text(ntry, "RvslInd") or "false").lower() == "true"
    status = _text(ntry, "Sts") or _text(ntry, "Sts", "Cd") or "BOOK"
    booked = status.upper() == "BOOK"
    booking = _date(_child(ntry, "BookgDt")) or _date(_child(ntry, "ValDt"))
    entry_ref = _text(ntry, "AcctSvcrRef") or _text(ntry, "NtryRef")
    txs = [t for d in _children(ntry, "NtryDtls") for t in _children(d, "TxDtls")]
    out = []
    if not txs:                                  # an entry without details: one payment
        txs = [None]
    for k, tx in enumerate(txs, 1):
        t_amt = amt if tx is None or len(txs) == 1 and _child(tx, "Amt") is None else (
            _amount(_child(tx, "Amt"), f"{where}, transaction {k}")
            or _amount(_child(tx, "AmtDtls", "TxAmt", "Amt"), f"{where}, transaction {k}"))
        if t_amt is None:
            raise CamtError(f"{where}, transaction {k}: no amount (TxDtls/Amt)")
        t_credit = credit if tx is None or _text(tx, "CdtDbtInd") is None else _text(tx, "CdtDbtInd") == "CRDT"
        ref = None if tx is None else _text(tx, "RmtInf", "Strd", "CdtrRefInf", "Ref")
        ref = re.sub(r"\s", "", ref).upper() if ref else None
        debtor = None if tx is None else (_text(tx, "RltdPties", "Dbtr", "Nm")
                                          or _text(tx, "RltdPties", "Dbtr", "Pty", "Nm"))
        own = None if tx is None else _text(tx, "Refs", "AcctSvcrRef")
        tx_id = own or f"{entry_ref or '-'}|{t_amt[0]}|{booking or '-'}|{k}"
        out.append(BankTransaction(tx_id, t_amt[0], t_amt[1], t_credit, reversal, ref, booking, debtor,
                                   entry_ref, booked))
    return out
