"""Invoice documents: one ``InvoiceDocument`` in, one PDF out (with the Swiss QR-bill when the
house owes money).

    from documents import InvoiceDocument, Party, Creditor, render_pdf, render_many
    pdf = render_pdf(doc)

The data model is in ``documents.model``, the texts and formats of the four languages in
``documents.i18n``, the daily chart in ``documents.chart``, the QR-bill in ``documents.qr`` (with
``creditor_errors`` to check a creditor account at start-up) and the PDF rendering in
``documents.render``. WeasyPrint is imported on the first render, not with this package.
"""
from documents.model import KINDS, LANGUAGES, Creditor, InvoiceDocument, Party
from documents.qr import creditor_errors, qr_bill, qr_payload, qr_svg
from documents.render import RenderError, render_many, render_pdf, start_fork_server

__all__ = [
    "KINDS", "LANGUAGES", "Creditor", "InvoiceDocument", "Party", "RenderError",
    "creditor_errors", "qr_bill", "qr_payload", "qr_svg", "render_many", "render_pdf", "start_fork_server",
]
