"""The plain data of one invoice document: everything the renderer shows, nothing it looks up.

Amounts are ``Decimal``; energies in kWh, prices in ct/kWh (Rappen), money in CHF. Dates are local
calendar dates of the community's time zone.
"""
from __future__ import annotations

from dataclasses import dataclass
from datetime import date
from decimal import Decimal

KINDS = ("invoice", "draft", "credit_note")
LANGUAGES = ("de", "fr", "it", "en")


@dataclass(frozen=True)
class Party:
    """A structured Swiss address (the QR-bill's address type "S")."""

    name: str
    street: str = ""
    number: str = ""     # house number
    postcode: str = ""
    town: str = ""
    country: str = "CH"  # ISO 3166 alpha-2
    email: str | None = None


@dataclass(frozen=True)
class Creditor:
    """The community's bank account that receives QR-bill payments."""

    iban: str
    party: Party


@dataclass(frozen=True)
class InvoiceDocument:
    """One house's document for one period: an invoice, a draft of it, or a credit note.

    ``net_amount_chf`` is export revenue minus import cost in CHF: negative means the house owes
    that amount ("amount due"), positive means the community owes the house ("credit to you").
    """

    kind: str                 # "invoice" | "draft" | "credit_note"
    invoice_id: str           # "INV-2026-001", "DRAFT-2026-06-3"; a credit note has its own INV number
    issue_date: date          # local date
    period_id: str            # "2026-06"
    period_start: date        # first local day
    period_end: date          # last local day (inclusive)
    language: str             # "de" | "fr" | "it" | "en"
    sender: Party             # the community
    recipient: Party          # the house (owner)
    house_id: str
    meter_ids: tuple[str, ...]
    counter_start_import_kwh: Decimal | None   # meter counter readings at period start and end
    counter_end_import_kwh: Decimal | None
    counter_start_export_kwh: Decimal | None
    counter_end_export_kwh: Decimal | None
    energy_imported_kwh: Decimal   # bought from the community
    import_cost_ct: Decimal
    avg_p_con_ct: Decimal | None   # average price paid, ct/kWh
    energy_exported_kwh: Decimal   # delivered to the community
    export_revenue_ct: Decimal
    avg_p_pv_ct: Decimal | None    # average price received, ct/kWh
    net_amount_chf: Decimal
    daily: tuple[tuple[date, float, float], ...]   # (local day, imported kWh, exported kWh)
    self_sufficiency: float | None   # the community's, for the period, 0..1
    local_solar_share: float | None  # share of the house's consumption covered by local solar, 0..1
    tariffs: tuple[dict, ...]        # versions in force: effective_from (ISO), mode, p_pv, p_grid_del, p_grid_con
    estimated_intervals: int = 0
    reset_intervals: int = 0
    missing_intervals: int = 0
    creditor: Creditor | None = None  # QR-bill only with a creditor, an amount due and kind "invoice"
    refers_to: str | None = None      # credit note: the invoice it cancels
    reference: str | None = None      # unstructured message on the QR-bill (default: the invoice id)
    # Optional additions
    due_date: date | None = None      # "payable by", shown when set
    # pricing.mode leg: what the grid operator bills separately and the grid-fee saving (billing/leg.py):
    # grid_share_consumed_kwh, grid_share_fed_in_kwh, grid_fee_saving_ct (text decimals)
    leg: dict | None = None
    # what the house saves against the grid alone (billing.settlement: consumption at p_grid_con,
    # production at p_grid_del, minus the community's prices), ct; a note on the invoice when > 0
    savings_ct: Decimal | None = None
    payment_reference: str | None = None  # QR reference (27-digit QRR or RF creditor reference);
    #                                   None: derived from the invoice id (see documents.qr)
