"""Sample invoice documents, and the command that renders them.

    python -m documents.sample OUTDIR            # invoice-sample.pdf and invoice-sample.png (German)
    python -m documents.sample OUTDIR --all      # also a French credit note and an Italian draft

The PNG is the first page at 80 dpi (``pdftoppm`` from poppler-utils).
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
from dataclasses import replace
from datetime import date, timedelta
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

from documents.model import Creditor, InvoiceDocument, Party

# A QR-IBAN (institution id 31999, the QR-bill's test account): its bills carry a QR reference.
SAMPLE_QR_IBAN = "CH44 3199 9123 0008 8901 2"
# An ordinary IBAN: its bills carry an RF creditor reference.
SAMPLE_IBAN = "CH93 0076 2011 6238 5295 7"

COMMUNITY = Party(
    name="LEG Sonnenhalde", street="Sonnenhaldenstrasse", number="12", postcode="8610",
    town="Uster", country="CH", email="abrechnung@leg-sonnenhalde.ch",
)
OWNER = Party(name="Anna Muster", street="Rebweg", number="7a", postcode="8610", town="Uster")

TARIFFS = (
    {"effective_from": "2026-01-01T00:00:00+01:00", "mode": "break_even",
     "p_pv": 14.0, "p_grid_del": 6.5, "p_grid_con": 29.8},
    {"effective_from": "2026-06-16T00:00:00+02:00", "mode": "break_even",
     "p_pv": 13.5, "p_grid_del": 6.0, "p_grid_con": 29.8},
)


def _q(x: float, places: str = "0.001") -> Decimal:
    return Decimal(str(x)).quantize(Decimal(places), ROUND_HALF_UP)


def sample_document(
    *,
    language: str = "de",
    kind: str = "invoice",
    house: int = 1,
    owes: bool = True,
    creditor: Creditor | None = Creditor(SAMPLE_QR_IBAN, COMMUNITY),
    year: int = 2026,
    month: int = 6,
    recipient: Party = OWNER,
) -> InvoiceDocument:
    """A realistic document for one house and one month: a day's consumption of 8-14 kWh, with PV
    (``owes=False``) a larger delivery, 2 tariff versions, a few footnotes. Deterministic."""
    start = date(year, month, 1)
    end = date(year + (month == 12), month % 12 + 1, 1) - timedelta(days=1)
    days = (end - start).days + 1
    daily = []
    for k in range(days):
        wave = math.sin((k + house) * 0.9) * 0.5 + math.cos(k * 0.37 + house) * 0.5
        imp = round(11.0 + 3.0 * wave + (house % 5) * 0.4, 3)
        exp = round((20.0 + 9.0 * wave) if not owes else (2.5 + 1.8 * wave), 3)
        daily.append((start + timedelta(days=k), max(imp, 0.0), max(exp, 0.0)))
    e_imp = _q(sum(d[1] for d in daily))
    e_exp = _q(sum(d[2] for d in daily))
    avg_con = Decimal("21.4375")
    avg_pv = Decimal("13.7512")
    cost_ct = _q(float(e_imp) * float(avg_con), "0.0001")
    revenue_ct = _q(float(e_exp) * float(avg_pv), "0.0001")
    net = ((revenue_ct - cost_ct) / 100).quantize(Decimal("0.01"), ROUND_HALF_UP)
    counter_imp = _q(18234.5 + 37.1 * house)
    counter_exp = _q(4321.25 + 11.3 * house)
    prefix = {"invoice": "INV", "credit_note": "INV", "draft": "DRAFT"}[kind]
    number = f"{prefix}-{year}-{house:03d}" if kind != "draft" else f"DRAFT-{year}-{month:02d}-{house}"
    if kind == "credit_note":
        number = f"INV-{year}-{house + 500:03d}"
    return InvoiceDocument(
        kind=kind,
        invoice_id=number,
        issue_date=end + timedelta(days=3),
        period_id=f"{year}-{month:02d}",
        period_start=start,
        period_end=end,
        language=language,
        sender=COMMUNITY,
        recipient=recipient,
        house_id=f"H{house:03d}",
        meter_ids=(f"AA-11-BB-22-CC-{house:02X}",),
        counter_start_import_kwh=counter_imp,
        counter_end_import_kwh=counter_imp + e_imp,
        counter_start_export_kwh=counter_exp,
        counter_end_export_kwh=counter_exp + e_exp,
        energy_imported_kwh=e_imp,
        import_cost_ct=cost_ct,
        avg_p_con_ct=avg_con,
        energy_exported_kwh=e_exp,
        export_revenue_ct=revenue_ct,
        avg_p_pv_ct=avg_pv,
        net_amount_chf=net,
        daily=tuple(daily),
        self_sufficiency=0.624,
        local_solar_share=0.538,
        tariffs=TARIFFS,
        estimated_intervals=3 if house % 3 == 1 else 0,
        reset_intervals=1 if house % 7 == 1 else 0,
        missing_intervals=0,
        creditor=creditor,
        refers_to=f"INV-{year}-{house:03d}" if kind == "credit_note" else None,
        due_date=end + timedelta(days=33) if kind == "invoice" else None,
    )


def write_png(pdf_path: Path, png_path: Path, dpi: int = 80) -> None:
    """The PDF's first page as PNG (``pdftoppm -png -r DPI -singlefile``)."""
    if not shutil.which("pdftoppm"):
        raise SystemExit("pdftoppm is missing (Debian package poppler-utils)")
    stem = png_path.with_suffix("")
    subprocess.run(["pdftoppm", "-png", "-r", str(dpi), "-singlefile", "-f", "1", "-l", "1",
                    str(pdf_path), str(stem)], check=True)


def main(argv: list[str] | None = None) -> int:
    from documents.render import render_pdf

    parser = argparse.ArgumentParser(prog="python -m documents.sample", description=__doc__.split("\n")[0])
    parser.add_argument("outdir", type=Path)
    parser.add_argument("--all", action="store_true",
                        help="also a French credit note and an Italian draft")
    args = parser.parse_args(argv)
    args.outdir.mkdir(parents=True, exist_ok=True)

    samples = [("invoice-sample", sample_document(language="de"))]
    if args.all:
        credit = sample_document(language="fr", kind="credit_note")
        # a credit note reverses the invoice: what the house paid is credited back
        credit = replace(credit, net_amount_chf=-credit.net_amount_chf)
        samples += [("credit-note-sample-fr", credit),
                    ("draft-sample-it", sample_document(language="it", kind="draft", house=4))]
    for stem, doc in samples:
        pdf = args.outdir / f"{stem}.pdf"
        pdf.write_bytes(render_pdf(doc))
        write_png(pdf, args.outdir / f"{stem}.png")
        print(f"wrote {pdf} and {pdf.with_suffix('.png')}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
