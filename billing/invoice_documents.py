"""From the ledger and the stores to invoice documents (``documents.model.InvoiceDocument``):
who sends and who receives, the meters and their counters at the period's edges, the daily
energy, the community's context, the tariffs, the footnotes. Rendering is ``documents.render``.

Figures on a document are the invoice's own (issued invoices: as stored in the ledger); the
rest is read from the stores when the document is made, which for an issued invoice is when its
period closes (its PDF is then stored and served as it was issued).
"""
from __future__ import annotations

from datetime import timedelta
from decimal import Decimal

import numpy as np
import pandas as pd

from billing.intervals import ESTIMATED, RESET
from billing.settlement import Period, Settlement
from documents.model import Creditor, InvoiceDocument, Party


def _party(addr, fallback_name: str, email: str | None = None) -> Party:
    if addr is None:
        return Party(fallback_name, email=email)
    return Party(addr.name, addr.street, addr.number, addr.postcode, addr.town, addr.country, email)


def sender(cfg) -> Party:
    return _party(cfg.community.address, cfg.community.name)


def creditor(cfg) -> Creditor | None:
    if cfg.community.iban is None or cfg.community.address is None:
        return None
    return Creditor(cfg.community.iban, sender(cfg))


def house_config(cfg, house_id: str):
    return next((h for h in cfg.houses.values() if str(h.id) == house_id), None)


def recipient(cfg, house_id: str, house_name: str) -> tuple[Party, str]:
    """(the recipient, the document's language) of a house."""
    h = house_config(cfg, house_id)
    if h is None:
        return Party(house_name), cfg.community.language
    return _party(h.owner, h.name, h.email), h.language or cfg.community.language


def _dec(x, places: str) -> Decimal | None:
    if x is None or (isinstance(x, float) and not np.isfinite(x)):
        return None
    return Decimal(str(x)).quantize(Decimal(places))


def counters_at(community, meter_ids: list[str], at: pd.Timestamp) -> tuple[Decimal | None, Decimal | None]:
    """Import and export counters summed over a house's meters at ``at``, interpolated between the
    readings around it (as the intervals are); None when a meter has no reading on both sides."""
    totals = []
    for col in ("import_kwh", "export_kwh"):
        total = 0.0
        for mid in meter_ids:
            w = community.store.reading_window(mid, at, at, context=1)
            w = w[w[col].notna()] if len(w) else w
            before, after = w[w["ts"] <= at], w[w["ts"] >= at]
            if not len(before) or not len(after):
                total = None
                break
            b, a = before.iloc[-1], after.iloc[0]
            if a["ts"] == b["ts"]:
                total += float(b[col])
            else:
                f = (at - b["ts"]) / (a["ts"] - b["ts"])
                total += float(b[col]) + f * (float(a[col]) - float(b[col]))
        totals.append(_dec(total, "0.001") if total is not None else None)
    return totals[0], totals[1]


def period_context(community, period: Period, house_ids: list[str]) -> dict:
    """Per house: daily energy, estimated/reset interval counts, share of local solar; and the
    community's self-sufficiency — with one read of the intervals."""
    iv = community.store.read_intervals(period.start, period.end, house_ids)
    totals = community.community_intervals(period.start, period.end)
    out = {"self_sufficiency": None, "houses": {}}
    if len(totals):
        cons = float(totals["total_consumption_kwh"].sum())
        out["self_sufficiency"] = (1 - float(totals["grid_import_kwh"].sum()) / cons) if cons > 0 else None
    local = pd.Series(dtype=float)
    if len(totals):
        i, e = totals["total_consumption_kwh"].to_numpy(), totals["total_production_kwh"].to_numpy()
        share = np.where(i > 0, np.minimum(1.0, e / np.where(i > 0, i, 1.0)), 0.0)
        local = pd.Series(share, index=totals["start"])
    days = pd.date_range(period.start_local, period.end_local_inclusive, freq="D")
    for hid, g in iv.groupby("house_id", sort=False):
        day = g["start"].dt.tz_convert(period.tz).dt.normalize()
        daily = g.groupby(day)[["delta_ei_kwh", "delta_eo_kwh"]].sum().reindex(days, fill_value=0.0)
        ei = g["delta_ei_kwh"].to_numpy()
        s = local.reindex(g["start"]).to_numpy() if len(local) else np.zeros(len(g))
        s = np.nan_to_num(s)
        flags = g["flags"].astype(int).to_numpy()
        out["houses"][hid] = {
            "daily": tuple((d.date(), float(r.delta_ei_kwh), float(r.delta_eo_kwh)) for d, r in daily.iterrows()),
            "estimated": int(((flags & ESTIMATED) > 0).sum()), "reset": int(((flags & RESET) > 0).sum()),
            "local_share": float((ei * s).sum() / ei.sum()) if ei.sum() > 0 else None,
        }
    return out


def _in_period(tariffs, period: Period) -> tuple[dict, ...]:
    """The tariff versions in force during the period, each from when it applied in the period
    (a version older than the period applies from the period's first day)."""
    local = lambda x: max(pd.Timestamp(x), period.start).tz_convert(period.tz).isoformat()
    return tuple({**t, "effective_from": local(t["effective_from"])} for t in tariffs)


def invoice_documents(community, s: Settlement, invoices: list[dict] | None = None) -> list[InvoiceDocument]:
    """One document per invoice of a settlement (drafts or issued)."""
    cfg = community.cfg
    invoices = s.invoices if invoices is None else invoices
    period = s.period
    ctx = period_context(community, period, [inv["house_id"] for inv in invoices])
    meters_by_house: dict[str, list[str]] = {}
    for m in community.ledger.meters(active_only=False):
        meters_by_house.setdefault(m.house_id, []).append(m.meter_id)
    today = pd.Timestamp(community.clock()).tz_convert(community.tz).date()
    docs = []
    for inv in invoices:
        hid, d = inv["house_id"], inv.get("details", {})
        issued = inv["status"] != "draft"
        issue_date = (pd.Timestamp(inv["issued_at"]).tz_convert(community.tz).date() if issued else today)
        who, language = recipient(cfg, hid, d.get("house_name", hid))
        meter_ids = sorted(meters_by_house.get(hid, []))
        start_i, start_e = counters_at(community, meter_ids, period.start)
        end_i, end_e = counters_at(community, meter_ids, period.end)
        h = ctx["houses"].get(hid, {})
        docs.append(InvoiceDocument(
            kind="invoice" if issued else "draft", invoice_id=inv["invoice_id"], issue_date=issue_date,
            period_id=period.period_id, period_start=period.start_local.date(),
            period_end=period.end_local_inclusive.date(), language=language, sender=sender(cfg), recipient=who,
            house_id=hid, meter_ids=tuple(meter_ids),
            counter_start_import_kwh=start_i, counter_end_import_kwh=end_i,
            counter_start_export_kwh=start_e, counter_end_export_kwh=end_e,
            energy_imported_kwh=Decimal(str(inv["energy_imported_kwh"])),
            import_cost_ct=Decimal(str(inv["import_cost_ct"])),
            avg_p_con_ct=_dec(d.get("avg_p_con"), "0.01"),
            energy_exported_kwh=Decimal(str(inv["energy_exported_kwh"])),
            export_revenue_ct=Decimal(str(inv["export_revenue_ct"])),
            avg_p_pv_ct=_dec(d.get("avg_p_pv"), "0.01"),
            net_amount_chf=Decimal(str(inv["net_amount_chf"])),
            daily=h.get("daily", ()), self_sufficiency=ctx["self_sufficiency"],
            local_solar_share=h.get("local_share"), tariffs=_in_period(d.get("tariffs", ()), period),
            estimated_intervals=h.get("estimated", 0), reset_intervals=h.get("reset", 0),
            missing_intervals=int(d.get("missing_intervals", 0) or 0),
            creditor=creditor(cfg), due_date=issue_date + timedelta(days=cfg.community.payment_days),
            leg=d.get("leg"), savings_ct=_dec(d.get("savings_ct"), "0.01"),
        ))
    return docs


def credit_note_document(invoice_doc: InvoiceDocument, note: dict, tz) -> InvoiceDocument:
    """The credit note cancelling an invoice: the invoice's figures with the opposite sign, its
    own number, a reference to the invoice, no QR-bill."""
    from dataclasses import replace
    neg = lambda x: None if x is None else -x
    return replace(invoice_doc, kind="credit_note", invoice_id=note["credit_note_id"],
                   issue_date=pd.Timestamp(note["issued_at"]).tz_convert(tz).date(), refers_to=note["invoice_id"],
                   import_cost_ct=neg(invoice_doc.import_cost_ct), export_revenue_ct=neg(invoice_doc.export_revenue_ct),
                   net_amount_chf=Decimal(note["net_amount_chf"]), creditor=None, due_date=None)
