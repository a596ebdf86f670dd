"""The settlement's files: the period CSV (the seed's columns first, UTF-8), one invoice's CSV and
the ZIP of a period. One place for their format; the command line, the API and the pages use it."""
from __future__ import annotations

import csv
import io
import zipfile

from billing.settlement import CSV_EXTRA_FIELDS, CSV_FIELDS, LEG_CSV_FIELDS, Settlement, invoice_rows

# fixed member time in ZIPs: the same invoices give the same archive bytes
_ZIP_TIME = (2000, 1, 1, 0, 0, 0)


def invoices_csv(invoices: list[dict]) -> bytes:
    buf = io.StringIO()
    leg = LEG_CSV_FIELDS if any("leg" in inv.get("details", {}) for inv in invoices) else []
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS + CSV_EXTRA_FIELDS + leg, lineterminator="\n")
    w.writeheader()
    w.writerows(invoice_rows(invoices))
    return buf.getvalue().encode("utf-8")


def csv_name(period_id: str) -> str:
    return f"invoices-{period_id}.csv"


def period_zip(s: Settlement, documents: dict[str, bytes] | None = None) -> bytes:
    """The period's CSV and, per invoice, its document (``documents``: file name -> bytes);
    without documents, each invoice's own CSV."""
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        def add(name: str, data: bytes) -> None:
            info = zipfile.ZipInfo(f"{s.period.period_id}/{name}", date_time=_ZIP_TIME)
            info.compress_type = zipfile.ZIP_DEFLATED
            z.writestr(info, data)
        add(csv_name(s.period.period_id), invoices_csv(s.invoices))
        if documents is None:
            documents = {f"{inv['invoice_id']}.csv": invoices_csv([inv]) for inv in s.invoices}
        for name, data in documents.items():
            add(name, data)
    return buf.getvalue()
