"""What the pages show, as plain functions of the community (no Dash app needed): the pages'
callbacks call these, tests and benchmarks call them directly."""
from __future__ import annotations

from datetime import date, datetime

import dash_bootstrap_components as dbc
import pandas as pd
from dash import html, no_update
from dash.exceptions import PreventUpdate

import analytics
from billing.settlement import SettlementError, invoice_rows, period_of
from components.charts import energy_figure, grid_figures, price_figure, value_figure
from components.controls import kpi_cards
from ingest.csv_files import parse_timestamp
from ingest.readings import ReadingError
from pricing.tariffs import Tariff, TariffError, tariff_errors


def page_range(community, range_name: str, bucket: str | None, first_day, last_day,
               now: pd.Timestamp) -> analytics.Range:
    """The range of a page's controls; an incomplete or wrong custom range leaves the page as it is
    (the controls say what is wrong)."""
    try:
        return analytics.chosen_range(range_name, bucket, now, community.tz, first_day, last_day)
    except ValueError:
        raise PreventUpdate from None


def community_view(community, rng: analytics.Range):
    flows = analytics.community_flows(community, rng)
    return kpi_cards(analytics.kpis(flows)), energy_figure(flows), value_figure(flows), price_figure(flows)


def grid_view(community, rng: analytics.Range):
    return grid_figures(analytics.community_flows(community, rng))


def house_view(community, house_id: str, rng: analytics.Range, now: pd.Timestamp):
    """(energy figure, value figure, draft invoice card, live power card) of one house."""
    flows = analytics.house_flows(community, house_id, rng)
    s = community.settle(period_of(now, community.tz, community.cfg.community.billing_period), allow_incomplete=True)
    inv = next((i for i in s.invoices if i["house_id"] == house_id), None)
    return (energy_figure(flows, house=True), value_figure(flows), draft_invoice_card(inv),
            live_power_card(community, house_id, now))


def draft_invoice_card(invoice: dict | None):
    if invoice is None:
        return dbc.Alert("No invoice for this house in the current period.", color="secondary")
    net = float(invoice["net_amount_chf"])
    words = "credit to you" if net >= 0 else "amount due"
    return dbc.Alert([html.Strong(f"Current period {invoice['period_start'][:7]} (draft): "),
                      f"bought {invoice['energy_imported_kwh']} kWh, delivered {invoice['energy_exported_kwh']} kWh; "
                      f"{words} {abs(net):,.2f} CHF"], color="info")


def live_power_card(community, house_id: str, now: pd.Timestamp):
    """The house's latest power draw (Pi) and feed-in (Po) per meter, with their age; meters that
    do not report power say so."""
    meters = community.meters_of(house_id)
    last = community.last_readings([m.meter_id for m in meters])
    items = []
    for m in meters:
        r = last.get(m.meter_id)
        if r is None:
            items.append(f"{m.meter_id}: no reading yet")
            continue
        age = now - pd.Timestamp(r.ts_utc)
        when = pd.Timestamp(r.ts_utc).tz_convert(community.tz).strftime("%Y-%m-%d %H:%M:%S")
        if r.power_in_kw is None and r.power_out_kw is None:
            items.append(f"{m.meter_id}: this meter reports no power (last counters {when})")
            continue
        fmt = lambda x: "–" if x is None else f"{x:.2f} kW"
        stale = " (stale)" if age > pd.Timedelta(minutes=15) else ""
        items.append(f"{m.meter_id}: drawing {fmt(r.power_in_kw)}, feeding in {fmt(r.power_out_kw)} "
                     f"at {when}{stale}")
    if not items:
        items = ["No meter registered for this house."]
    return dbc.Card(dbc.CardBody([html.Div("Live power", className="text-muted small")]
                                 + [html.Div(t) for t in items]), className="mb-2")


def period_options(c, now: pd.Timestamp, months: int = 12) -> list[dict]:
    """Calendar months (the data quality page looks at months whatever the billing period)."""
    local = now.tz_convert(c.tz)
    first = local.normalize().replace(day=1)
    return [{"label": (first - pd.DateOffset(months=k)).strftime("%B %Y"),
             "value": (first - pd.DateOffset(months=k)).strftime("%Y-%m")} for k in range(months)]


def period_rows(c) -> list[dict]:
    """The settlement page's periods table."""
    return [{**p, "houses_missing": ", ".join(p["houses_missing"]), "closed_at": (p["closed_at"] or "")[:16]}
            for p in c.periods()]


def settlement_view(c, period: str, base: str = "/"):
    """(status alert, grid rows with download links, whether the period can be closed now).
    Credit notes of a closed period are rows of their own."""
    try:
        s = c.settle(period, allow_incomplete=True)
    except SettlementError as exc:
        return dbc.Alert(str(exc), color="danger"), [], False
    mails = c.ledger.mails() if s.status == "closed" else {}
    link = lambda doc_id: f"[PDF]({base}api/invoices/{doc_id}.pdf)"
    rows = []
    for r in invoice_rows(s.invoices):
        row = {k: (str(v) if v is not None else "") for k, v in r.items()}
        row["download"] = f"{link(r['invoice_id'])} · [CSV]({base}api/invoices/{r['invoice_id']}.csv)"
        row["mail"] = _mail_text(mails.get(r["invoice_id"]))
        rows.append(row)
    if s.status == "closed":
        for n in c.ledger.credit_notes(period):
            rows.append({"invoice_id": n["credit_note_id"], "status": f"credit note for {n['invoice_id']}",
                         "net_amount_chf": n["net_amount_chf"], "flags": n["reason"],
                         "download": link(n["credit_note_id"]), "mail": _mail_text(mails.get(n["credit_note_id"]))})
    over = s.period.end <= pd.Timestamp(c.clock())
    closable = s.status != "closed" and over and not s.missing
    notes = invoice_setup_notes(c.cfg)
    if s.status == "closed":
        alert = dbc.Alert(f"Closed: {len(s.invoices)} invoices issued. Their PDFs are stored and served as issued.",
                          color="success")
    elif s.missing:
        alert = dbc.Alert("Provisional: intervals missing for house(s) "
                          + ", ".join(f"{h} ({n})" for h, n in s.missing.items())
                          + ". The period can be closed once the readings are complete.", color="warning")
    elif not over:
        alert = dbc.Alert("Running: drafts so far; the period can be closed after its last day.", color="info")
    else:
        alert = dbc.Alert("Open: drafts, recomputed on every view; complete data, ready to close.", color="info")
    margin = leg_margin_text(c, s.invoices)
    if margin:
        notes = [margin] + notes
    if notes:
        alert = html.Div([alert] + [dbc.Alert(n, color="secondary", className="small py-2") for n in notes])
    return alert, rows, closable


def leg_margin_text(c, invoices: list[dict]) -> str | None:
    """For a LEG (pricing.mode leg): what the community keeps of the period, consumers' payments for
    their LEG shares minus the producers' credits (p_con - p_pv per kWh exchanged); None otherwise."""
    if c.cfg.pricing.mode != "leg" or not invoices:
        return None
    from decimal import Decimal
    paid = sum((Decimal(str(i["import_cost_ct"])) for i in invoices), Decimal("0"))
    credited = sum((Decimal(str(i["export_revenue_ct"])) for i in invoices), Decimal("0"))
    margin_chf = ((paid - credited) / 100).quantize(Decimal("0.01"))
    return (f"Community margin: CHF {margin_chf} (members pay CHF {(paid / 100).quantize(Decimal('0.01'))} for "
            f"their LEG shares, producers are credited CHF {(credited / 100).quantize(Decimal('0.01'))}).")


def invoice_setup_notes(cfg) -> list[str]:
    """What the invoices will lack because of the configuration (shown before a period is closed)."""
    notes = []
    if cfg.community.iban is None:
        notes.append("No QR-bill on the invoices: community.iban and community.address are not set in config.yaml.")
    if cfg.community.address is None:
        notes.append("The invoices name the community without an address: set community.address in config.yaml.")
    missing = [h.name for h in cfg.houses.values() if h.owner is None]
    if missing:
        notes.append(f"{len(missing)} house(s) without an owner address (the invoice shows the house's name only): "
                     + ", ".join(missing[:5]) + ("…" if len(missing) > 5 else ""))
    return notes


def _mail_text(m: dict | None) -> str:
    if m is None:
        return ""
    if m["status"] == "sent":
        return f"sent to {m['recipient']} {m['at'][:16]}"
    if m["status"] == "sending":
        return f"interrupted while sending to {m['recipient']} ({m['at'][:16]}): check, then release"
    return f"failed: {m['error']}"


def close_job(services, period: str, by: str = "web") -> tuple[dict | None, str]:
    """Start closing ``period`` in the background (issue, then render and store every PDF):
    (job for the page's store, or None, and a message)."""
    from billing import lifecycle
    c = services.community

    def run(progress):
        s = lifecycle.close_period(c, period, by, progress)
        return f"{period} closed: {len(s.invoices)} invoices issued, their PDFs stored"
    return _start(services, f"close:{period}", f"Closing {period}", run)


def mail_job(services, period: str, by: str = "web") -> tuple[dict | None, str]:
    """Start mailing a closed period's documents in the background."""
    from billing import mail
    c = services.community
    return _start(services, f"mail:{period}", f"Mailing {period}",
                  lambda progress: f"Mailing {period}: " + mail.send_period(c, period, by, progress).summary())


def _start(services, key: str, label: str, run):
    from jobs import JobBusy
    try:
        job = services.jobs.start(key, label, run, errors=(SettlementError, ValueError))
    except JobBusy as exc:
        return None, dbc.Alert(str(exc), color="warning")
    return {"id": job.job_id, "status": job.status}, ""


def invoice_action(c, action: str, selected: list[dict] | None, reason: str | None, by: str = "web"):
    """Mark the selected issued invoice paid, or cancel it with a credit note: an alert."""
    from billing import lifecycle, mail
    doc_id = ((selected or [{}])[0] or {}).get("invoice_id")
    if not doc_id:
        return dbc.Alert("Select an invoice in the table first.", color="warning")
    if doc_id.startswith("DRAFT-"):
        return dbc.Alert(f"{doc_id} is a draft: invoices can be paid or cancelled once the period is closed.",
                         color="warning")
    try:
        if action == "paid":
            lifecycle.mark_paid(c, doc_id, by, reason or None)
            return dbc.Alert(f"{doc_id} marked paid.", color="success")
        if action == "cancel":
            if not (reason or "").strip():
                return dbc.Alert("Give the reason for the cancellation (it is recorded with the credit note).",
                                 color="warning")
            note = lifecycle.cancel(c, doc_id, by, reason)
            return dbc.Alert(f"{doc_id} cancelled: credit note {note['credit_note_id']} issued.", color="success")
        if action == "release":
            mail.release(c, doc_id, by)
            return dbc.Alert(f"{doc_id} may be mailed again.", color="success")
    except (SettlementError, ValueError) as exc:
        return dbc.Alert(str(exc), color="danger")
    raise ValueError(f"unknown action {action!r}")


MAX_BANK_FILE_BYTES = 10 * 1024 * 1024


def upload_bank_files(c, contents: list[str] | None, names: list[str] | None, by: str = "web"):
    """Bank files dropped on the settlement page (Dash upload data URLs): an alert with a line per
    file (``billing.payments.PaymentImport.line``)."""
    import base64
    import binascii

    from billing.payments import import_payments
    lines, failed = [], 0
    for data, name in zip(contents or [], names or []):
        name = (name or "upload.xml")[:200]
        try:
            raw = base64.b64decode(data.partition(",")[2], validate=True)
        except (binascii.Error, ValueError):
            raw = None
        if raw is None or not raw:
            lines.append(f"{name}: refused: the upload could not be read (an empty or damaged file)")
            failed += 1
            continue
        if len(raw) > MAX_BANK_FILE_BYTES:
            lines.append(f"{name}: refused: {len(raw):,} bytes, more than a bank file of "
                         f"{MAX_BANK_FILE_BYTES // 2**20} MB")
            failed += 1
            continue
        result = import_payments(c, name, raw, by)
        lines.append(result.line())
        failed += result.error is not None
    if not lines:
        raise PreventUpdate
    color = "success" if not failed else ("danger" if failed == len(lines) else "warning")
    return dbc.Alert([html.Div(line) for line in lines], color=color)


def payments_view(c) -> tuple[list[dict], list[dict]]:
    """(overdue invoices, bank transactions to assign by hand) as table rows."""
    from billing.payments import open_items, overdue
    names = {h.house_id: h.name for h in c.houses()}
    late = [{**x, "house_name": names.get(x["house_id"], "")} for x in overdue(c)]
    states = {"unmatched": "no invoice has this reference", "reversal": "reversal (returned by the bank)",
              "debit": "debit", "cancelled_invoice": "paid to a cancelled invoice"}
    items = [{**t, "what": states.get(t["state"], t["state"])} for t in open_items(c)]
    return late, items


def assign_payment(c, selected: list[dict] | None, invoice_id: str | None, by: str = "web"):
    """Assign the selected bank transaction to the invoice a manager typed: an alert."""
    from storage.ledger import LedgerError
    tx = ((selected or [{}])[0] or {}).get("tx_id")
    if not tx:
        return dbc.Alert("Select a bank transaction in the table first.", color="warning")
    invoice_id = (invoice_id or "").strip().upper()
    if not invoice_id:
        return dbc.Alert("Type the number of the invoice it pays (e.g. INV-2026-004).", color="warning")
    try:
        status = c.ledger.assign_bank_transaction(tx, invoice_id, by)
    except LedgerError as exc:
        return dbc.Alert(str(exc), color="danger")
    return dbc.Alert(f"Payment assigned: {invoice_id} is now {status.replace('_', ' ')}.", color="success")


def job_progress(jobs, job: dict | None):
    """(job store, poll disabled, progress value, progress style, message) for the page."""
    j = jobs.get(job["id"]) if job else None
    if j is None:
        return None, True, 0, {"display": "none"}, ""
    if j.status == "running":
        return no_update, False, j.percent, {}, f"{j.label}: {j.message}"
    alert = (dbc.Alert(j.result, color="success") if j.status == "done"
             else dbc.Alert(f"{j.label} failed: {j.error}", color="danger"))
    return {"id": j.job_id, "status": j.status}, True, 100, {"display": "none"}, alert


def history_rows(c) -> list[dict]:
    return [{"effective_from": t.effective_from.astimezone(c.tz).strftime("%Y-%m-%d %H:%M"), "mode": t.mode,
             "p_pv": t.p_pv, "p_grid_del": t.p_grid_del, "p_grid_con": t.p_grid_con}
            for t in reversed(c.ledger.tariff_versions())]


def p_con_text(values: dict) -> str:
    """What houses pay under the entered tariff, as the seed's UI shows it."""
    errors = tariff_errors(values)
    if errors:
        return "—"
    if values["mode"] == "static":
        return f"{(values['p_pv'] + values['p_grid_con']) / 2:.2f} ct/kWh (the mean of p_pv and p_grid_con)"
    return (f"per 15 minutes between {values['p_pv']:.2f} (all local) and {values['p_grid_con']:.2f} ct/kWh "
            f"(all from the grid), never above the grid price")


def submit(c, values: dict, effective_text: str | None, now: datetime, by: str = "web"):
    """(errors by field, message): validate and save a tariff version."""
    errors = {e.field: e.message for e in tariff_errors(values)}
    eff = now
    if effective_text:
        try:
            eff = parse_timestamp(effective_text, c.tz)
        except ReadingError as exc:
            errors["effective_from"] = str(exc).replace("timestamp: ", "")
    if errors:
        return errors, None
    p_con = values.get("p_con")
    tariff = Tariff(float(values["p_pv"]), float(values["p_grid_del"]), float(values["p_grid_con"]),
                    values["mode"], eff, None if p_con is None else float(p_con))
    try:
        c.add_tariff(tariff, created_by=by)
    except TariffError as exc:                    # e.g. a version at that time exists already
        return {exc.field: exc.message}, None
    except SettlementError as exc:
        return {"effective_from": str(exc)}, None
    return {}, f"Saved: in force from {eff.astimezone(c.tz):%Y-%m-%d %H:%M}"




def adopt(services, meter_id: str | None, name: str | None, first_day: str | None, created_by: str = "web"):
    """Adopt an unknown meter as a new house: (alert, whether it worked)."""
    c = services.community
    if not meter_id:
        return dbc.Alert("Select a meter in the table of unknown meters first.", color="warning"), False
    try:
        active_from = date.fromisoformat(first_day) if first_day else pd.Timestamp(c.clock()).tz_convert(c.tz).date()
    except ValueError:
        return dbc.Alert(f"Billed from: {first_day!r} is not a date (YYYY-MM-DD)", color="danger"), False
    try:
        house_id = c.adopt_meter(meter_id, name, active_from, created_by)
    except ValueError as exc:
        return dbc.Alert(str(exc), color="danger"), False
    if services.runtime is not None:
        services.runtime.registry_changed()
    return dbc.Alert([f"Meter {meter_id} is now house {house_id} ({name.strip()}), billed from {active_from}. "
                      "Readings it sent before today's adoption were not stored; its intervals before the "
                      "first new reading are shown as missing. ",
                      html.A("Open the house page", href=f"houses/{house_id}")], color="success"), True


def my_invoice_rows(c, house_ids: list[str], base: str) -> list[dict]:
    """A member's invoices: issued ones (with their status) and the drafts of the running and
    the last billing period."""
    names = {h.house_id: h.name for h in c.ledger.houses(active_only=False)}
    rows = []
    for period in c.recent_periods(2):
        try:
            s = c.settle(period, allow_incomplete=True)
        except SettlementError:
            continue
        if s.status == "closed":
            continue
        for inv in s.invoices:
            if inv["house_id"] in house_ids:
                rows.append(_my_row(inv, names, base))
    rows += [_my_row(inv, names, base) for inv in c.ledger.invoices_of(house_ids)]
    return rows


def statement_links(c, houses, base: str):
    """The annual statements (PDF, CSV) of ``houses`` for every year with closed periods, newest
    first; a sentence when there is none yet."""
    from billing.statements import years_with_closed_periods
    years = years_with_closed_periods(c)
    if not years or not houses:
        return html.P("No statement yet: a statement covers a year once one of its billing periods is closed.",
                      className="text-muted")
    return html.Ul([html.Li([f"{y} · {h.name}: ",
                             html.A("PDF", href=f"{base}api/statements/{h.house_id}/{y}.pdf", className="me-2"),
                             html.A("CSV", href=f"{base}api/statements/{h.house_id}/{y}.csv")])
                    for y in years for h in houses])


def _my_row(inv: dict, names: dict, base: str) -> dict:
    net = float(inv["net_amount_chf"])
    words = "credit to you" if net >= 0 else "amount due"
    return {"period": inv["period_start"][:7], "invoice_id": inv["invoice_id"],
            "house": names.get(inv["house_id"], inv["house_id"]), "status": inv["status"],
            "net": f"{abs(net):,.2f} CHF {words}", "download": f"[PDF]({base}api/invoices/{inv['invoice_id']}.pdf)"}
