"""An invoice's life: draft while its period is open → issued when the period closes (number
INV-YYYY-NNN, PDF stored and served exactly as issued) → paid or cancelled (a credit note
CN-YYYY-NNN with its own PDF; the invoice is never edited). Every change is recorded with who
and when (``Ledger.events``)."""
from __future__ import annotations

import logging

import pandas as pd

from billing.invoice_documents import credit_note_document, invoice_documents
from billing.settlement import Settlement, SettlementError, draft_candidates
from storage.ledger import LedgerError

log = logging.getLogger(__name__)


def _render_many(docs, progress=None, workers=None) -> list[bytes]:
    from documents.render import render_many
    return render_many(docs, workers=workers, progress=progress)


def close_period(c, period_id: str, closed_by: str, progress=None, workers: int | None = None,
                 allow_incomplete: bool = False) -> Settlement:
    """Issue a period's invoices and store their PDFs. ``progress(done, total, message)``."""
    step = progress or (lambda *a: None)
    step(0, 1, "issuing invoices")
    s = c.settle(period_id, close=True, closed_by=closed_by, allow_incomplete=allow_incomplete)
    store_period_documents(c, s, progress, workers)
    return s


def store_period_documents(c, s: Settlement, progress=None, workers: int | None = None) -> int:
    """Render and store the PDFs of a closed period's invoices that have none yet (after a close,
    or when rendering was interrupted). Returns how many were rendered."""
    todo = [inv for inv in s.invoices if inv["invoice_id"] not in c.ledger.stored_documents(
        [i["invoice_id"] for i in s.invoices])]
    if not todo:
        return 0
    docs = invoice_documents(c, s, todo)
    total = len(docs)
    step = progress or (lambda *a: None)
    step(0, total, f"rendering {total} invoices")
    pdfs = _render_many(docs, lambda done, n: step(done, n, f"rendered {done} of {n} invoices"), workers)
    for doc, pdf in zip(docs, pdfs):
        c.ledger.store_document(doc.invoice_id, pdf)
    log.info("period %s: %d invoice PDFs stored", s.period.period_id, total)
    return total


def document_pdf(c, document_id: str) -> bytes | None:
    """The PDF of an invoice, a credit note or a draft; None when there is no such document.
    Issued documents come from the ledger byte for byte (rendered and stored on first use if
    their rendering at close was interrupted); drafts are rendered from the figures of now."""
    stored = c.ledger.document(document_id)
    if stored is not None:
        return stored
    from documents.render import render_pdf
    if document_id.startswith("DRAFT-"):
        for period_id, _house in draft_candidates(document_id):
            try:
                s = c.settle(period_id, allow_incomplete=True)
            except SettlementError:
                continue
            inv = [i for i in s.invoices if i["invoice_id"] == document_id]
            if inv and s.status != "closed":
                return render_pdf(invoice_documents(c, s, inv)[0])
        return None
    note = c.ledger.credit_note(document_id)
    inv = c.ledger.invoice(note["invoice_id"] if note else document_id)
    if inv is None:
        return None
    s = c.settle(inv["period_id"])
    doc = invoice_documents(c, s, [inv])[0]
    if note:
        doc = credit_note_document(doc, note, c.tz)
    return c.ledger.store_document(document_id, render_pdf(doc))


def period_pdfs(c, s: Settlement, progress=None) -> dict[str, bytes]:
    """File name → PDF of every invoice of a period (and its credit notes), for the ZIP."""
    out: dict[str, bytes] = {}
    if s.status == "closed":
        store_period_documents(c, s, progress)
        for inv in s.invoices:
            out[f"{inv['invoice_id']}.pdf"] = c.ledger.document(inv["invoice_id"])
        for note in c.ledger.credit_notes(s.period.period_id):
            out[f"{note['credit_note_id']}.pdf"] = document_pdf(c, note["credit_note_id"])
        return out
    docs = invoice_documents(c, s)
    for doc, pdf in zip(docs, _render_many(docs, progress and (lambda d, n: progress(d, n, "rendering")))):
        out[f"{doc.invoice_id}.pdf"] = pdf
    return out


def mark_paid(c, invoice_id: str, by: str, note: str | None = None) -> None:
    try:
        c.ledger.set_status(invoice_id, "paid", by, note)
    except LedgerError as exc:
        raise SettlementError(str(exc)) from None


def cancel(c, invoice_id: str, by: str, reason: str) -> dict:
    """Cancel an issued invoice with a credit note; its PDF is stored at once."""
    try:
        year = pd.Timestamp(c.clock()).tz_convert(c.tz).year
        note = c.ledger.cancel_invoice(invoice_id, by, reason, year)
    except LedgerError as exc:
        raise SettlementError(str(exc)) from None
    document_pdf(c, note["credit_note_id"])
    log.info("invoice %s cancelled by %s with credit note %s", invoice_id, by, note["credit_note_id"])
    return note
