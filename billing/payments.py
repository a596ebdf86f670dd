"""Payments both ways: bank files mark invoices paid, producers' credits are paid out.

* **References**: every invoice that asks for money carries the reference printed on its QR-bill
  (``documents.qr``): a 27-digit QR reference with a QR-IBAN, an RF creditor reference otherwise;
  credits and drafts carry none. ``payment_reference`` is the one place that says which.
* **Import** (camt.053/054, ``billing.camt``): each credit transaction whose reference names an
  issued invoice is applied to it (``Ledger.record_bank_transactions``); everything else is kept and
  listed (unmatched, reversals, debits, payments to cancelled invoices), never dropped.
* **Payouts**: for a closed period, every house with a credit and an IBAN gets a line in a CSV and
  a ``pain.001.001.09`` credit transfer (``billing.pain001``); houses without an IBAN are listed.
"""
from __future__ import annotations

import csv
import io
from dataclasses import dataclass, field
from datetime import date, datetime, timedelta, timezone
from decimal import Decimal

from billing.camt import CamtError, parse_camt
from billing.pain001 import Payout, credit_transfer


def payment_reference(invoice: dict, iban: str | None) -> str | None:
    """The reference the invoice's QR-bill carries; None for a draft, a credit or without an IBAN."""
    from documents.qr import is_qr_iban, qr_reference_from_id, rf_reference_from_id
    if not iban or invoice.get("status") == "draft" or str(invoice.get("invoice_id", "")).startswith("DRAFT-"):
        return None
    if Decimal(str(invoice["net_amount_chf"])) >= 0:
        return None
    if is_qr_iban(iban.replace(" ", "")):
        return qr_reference_from_id(invoice["invoice_id"])
    return rf_reference_from_id(invoice["invoice_id"])


def invoice_references(ledger, iban: str | None) -> dict[str, str]:
    """Reference -> invoice id of every issued invoice that asks for money."""
    out = {}
    for inv in ledger.all_invoices():
        ref = payment_reference(inv, iban)
        if ref:
            out[ref] = inv["invoice_id"]
    return out


@dataclass
class PaymentImport:
    file_name: str
    message: str = ""
    transactions: int = 0
    counts: dict = field(default_factory=dict)
    changed: dict = field(default_factory=dict)
    error: str | None = None

    def line(self) -> str:
        if self.error:
            return f"{self.file_name}: refused: {self.error}"
        c = self.counts
        parts = [f"{c.get('applied', 0)} applied", f"{c.get('known', 0)} imported before",
                 f"{c.get('unmatched', 0)} unmatched", f"{c.get('reversal', 0)} reversals",
                 f"{c.get('debit', 0)} debits", f"{c.get('cancelled_invoice', 0)} to cancelled invoices"]
        paid = sorted(k for k, v in self.changed.items() if v == "paid")
        part = sorted(k for k, v in self.changed.items() if v == "partially_paid")
        return (f"{self.file_name}: {self.message}, {self.transactions} transactions: " + ", ".join(parts)
                + (f"; paid: {', '.join(paid)}" if paid else "") + (f"; partially paid: {', '.join(part)}" if part else ""))


def import_payments(community, name: str, raw: bytes, by: str) -> PaymentImport:
    try:
        f = parse_camt(raw, name)
    except CamtError as exc:
        return PaymentImport(name, error=str(exc).removeprefix(f"{name}: "))
    refs = invoice_references(community.ledger, community.cfg.community.iban)
    result = community.ledger.record_bank_transactions(name, f.message, f.transactions, refs, by)
    return PaymentImport(name, f.message, len(f.transactions), result["counts"], result["changed"])


def open_items(community) -> list[dict]:
    """Bank transactions a manager has to look at: unmatched, reversals, debits, cancelled invoices."""
    return community.ledger.bank_transactions(("unmatched", "reversal", "debit", "cancelled_invoice"))


def overdue(community, today: date | None = None) -> list[dict]:
    """Issued invoices unpaid (or partly) more than ``community.payment_days`` after issue."""
    today = today or datetime.now(timezone.utc).astimezone(community.tz).date()
    days = community.cfg.community.payment_days
    paid = community.ledger.paid_amounts()
    out = []
    for inv in community.ledger.all_invoices():
        if inv["status"] not in ("issued", "partially_paid") or Decimal(str(inv["net_amount_chf"])) >= 0:
            continue
        due_on = datetime.fromisoformat(inv["issued_at"]).astimezone(community.tz).date() + timedelta(days=days)
        if due_on < today:
            due = -Decimal(str(inv["net_amount_chf"]))
            out.append({"invoice_id": inv["invoice_id"], "house_id": inv["house_id"], "due_on": due_on.isoformat(),
                        "amount_due_chf": str(due), "paid_chf": str(paid.get(inv["invoice_id"], Decimal("0.00"))),
                        "status": inv["status"]})
    return out


@dataclass
class PayoutFiles:
    csv: bytes
    xml: bytes | None
    without_iban: list[dict]
    total_chf: Decimal


def payouts(community, period_id: str, execution: date | None = None) -> PayoutFiles:
    """The payout files of a closed period (ValueError when it is not closed or the community has
    no IBAN to pay from)."""
    stored = community.ledger.period(period_id)
    if not stored or stored["status"] != "closed":
        raise ValueError(f"period {period_id} is not closed: credits are paid out once its invoices are issued")
    cfg = community.cfg
    if not cfg.community.iban:
        raise ValueError("community.iban: required to pay out credits (the account they are paid from)")
    by_id = {str(h.id): (key, h) for key, h in cfg.houses.items()}
    lines, missing = [], []
    for inv in community.ledger.issued_invoices(period_id):
        amount = Decimal(str(inv["net_amount_chf"]))
        if amount <= 0 or inv["status"] == "cancelled":
            continue
        key, h = by_id.get(inv["house_id"], (None, None))
        name = (h.owner.name if h and h.owner else None) or (h.name if h else inv["house_id"])
        if h is None or not h.iban:
            missing.append({"house_id": inv["house_id"], "name": name, "amount_chf": str(amount),
                            "invoice_id": inv["invoice_id"]})
            continue
        o = h.owner
        lines.append(Payout(inv["house_id"], name, h.iban, amount, inv["invoice_id"],
                            o.street if o else "", o.number if o else "", o.postcode if o else "",
                            o.town if o else "", o.country if o else "CH"))
    buf = io.StringIO()
    w = csv.writer(buf, lineterminator="\n")
    w.writerow(["house_id", "name", "iban", "amount_chf", "reference"])
    for p in lines:
        w.writerow([p.house_id, p.name, p.iban, f"{p.amount_chf:.2f}", p.reference])
    for m in missing:
        w.writerow([m["house_id"], m["name"], "", m["amount_chf"], f"{m['invoice_id']} (no IBAN: not in the transfer file)"])
    now = datetime.now(timezone.utc)
    a = cfg.community.address
    xml = credit_transfer(f"PAYOUT-{period_id}-{now:%Y%m%d%H%M%S}", now, execution or now.date(),
                          a.name if a else cfg.community.name, cfg.community.iban.replace(" ", ""), lines,
                          {"street": a.street, "number": a.number, "postcode": a.postcode, "town": a.town,
                           "country": a.country} if a else None) if lines else None
    return PayoutFiles(buf.getvalue().encode("utf-8"), xml, missing, sum((p.amount_chf for p in lines), Decimal("0")))
