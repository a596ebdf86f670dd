"""What the pages show, as plain functions of the community (no Dash app needed): the pages'
callbacks call these, tests and benchmarks call them directly."""
from __future__ import annotations

from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal

import dash_bootstrap_components as dbc
import pandas as pd
from dash import html, no_update
from dash.exceptions import PreventUpdate

import analytics
from billing.settlement import SettlementError, invoice_rows, period_of
from components.charts import energy_figure, grid_figures, price_figure, share_figure, value_figure
from components.controls import data_grid, graph, kpi_cards
from i18n import LOCALES, N_, chf, language, number, tr
from ingest.csv_files import parse_timestamp
from ingest.readings import ReadingError
from pricing.tariffs import Tariff, TariffError, tariff_errors


class Later:
    """A text translated when it is shown, not when it is made: a background job's label and
    result are made in a worker thread, where there is no request and so no language (logs get
    the English text)."""
    def __init__(self, msgid: str, **values):
        self.msgid, self.values = msgid, values

    def __str__(self) -> str:
        return tr(self.msgid, **{k: str(v) for k, v in self.values.items()})

    def __format__(self, spec: str) -> str:
        return format(str(self), spec)

    def __repr__(self) -> str:
        return f"Later({self.msgid!r}, {self.values!r})"


CENT = Decimal("0.01")


# invoice and period states as the tables show them (rows keep the code under "status")
STATUS_LABELS = {"draft": N_("draft"), "issued": N_("issued"), "paid": N_("paid"),
                 "partially_paid": N_("partially paid"), "cancelled": N_("cancelled"), "running": N_("running"),
                 "open": N_("open"), "closed": N_("closed")}


def status_text(status) -> str:
    """An invoice's or a period's state in the request's language (the code itself if unknown)."""
    label = STATUS_LABELS.get(status)
    return tr(label) if label else str(status or "")


def chf_of_ct(ct) -> Decimal:
    """Centimes (the ledger's and the CSV's unit) as CHF, rounded to the centime as the invoices are."""
    return (Decimal(str(ct)) / 100).quantize(CENT, ROUND_HALF_UP)


def net_text(net_chf) -> str:
    """An invoice's net seen from its house (a positive net is a credit to the house)."""
    net = Decimal(str(net_chf))
    return tr("owes CHF {amount}", amount=chf(-net)) if net < 0 else tr("is owed CHF {amount}", amount=chf(net))


def grid_money(row: dict, amounts: dict) -> dict:
    """``row`` for an AG Grid whose money columns are ``controls.MONEY_COLUMN``: each field of
    ``amounts`` (field -> CHF amount or None) becomes the amount as a number (the grid sorts and
    filters by it) and its text under ``shown`` (what the grid shows: ``net_text`` for the fields
    named ``NET_FIELDS``, else the amount in the language's number format)."""
    out = {**row, "shown": dict(row.get("shown", {}))}
    for field, amount in amounts.items():
        if amount is None or amount == "":
            out[field], out["shown"][field] = None, ""
            continue
        value = Decimal(str(amount)).quantize(CENT, ROUND_HALF_UP)
        out[field] = float(value)
        out["shown"][field] = net_text(value) if field in NET_FIELDS else chf(value)
    return out


def grid_kwh(row: dict, fields: tuple[str, ...]) -> dict:
    """``row`` with its energy ``fields`` (kWh) as numbers for a ``controls.MONEY_COLUMN``-style
    column: sorted as numbers, shown with three decimals in the language's number format."""
    out = {**row, "shown": dict(row.get("shown", {}))}
    for field in fields:
        if out.get(field) in (None, ""):
            continue
        value = Decimal(str(out[field]))
        out[field], out["shown"][field] = float(value), number(value, 3)
    return out


# the grids' columns that show an invoice's net as "owes CHF x" / "is owed CHF x"
NET_FIELDS = {"net_amount_chf", "net"}


def page_range(community, range_name: str, bucket: str | None, first_day, last_day,
               now: pd.Timestamp) -> analytics.Range:
    """The range of a page's controls; an incomplete or wrong custom range leaves the page as it is
    (the controls say what is wrong)."""
    try:
        return analytics.chosen_range(range_name, bucket, now, community.tz, first_day, last_day)
    except ValueError:
        raise PreventUpdate from None


def community_view(community, rng: analytics.Range):
    """(KPI cards, energy, value and price figures, the LEG/grid shares of a LEG billed from the
    grid operator's data)."""
    flows = analytics.community_flows(community, rng)
    return (kpi_cards(analytics.kpis(flows)), energy_figure(flows), value_figure(flows), price_figure(flows),
            share_section(analytics.share_flows(community, rng)))


def grid_view(community, rng: analytics.Range):
    """(grid energy and value figures, the LEG/grid shares): in a LEG billed from the grid
    operator's data the grid share is what the members exchange with the grid."""
    return (*grid_figures(analytics.community_flows(community, rng)),
            share_section(analytics.share_flows(community, rng)))


def share_section(shares) -> list:
    """The LEG share and grid share figure with its totals; nothing outside pricing.mode leg."""
    if shares is None:
        return []
    k = analytics.share_kpis(shares)
    pct = tr("n/a") if k["leg_share_of_consumption"] is None else f"{k['leg_share_of_consumption']:.0%}"
    text = tr("From the grid operator's data: LEG share consumed {leg_con} kWh, grid share consumed {grid_con} kWh "
              "(LEG share of the consumption {pct}); LEG share produced {leg_pro} kWh, grid share fed in "
              "{grid_fed} kWh. The grid operator bills the grid share itself.",
              leg_con=number(k["leg_consumed_kwh"], 1), grid_con=number(k["grid_consumed_kwh"], 1), pct=pct,
              leg_pro=number(k["leg_produced_kwh"], 1), grid_fed=number(k["grid_fed_in_kwh"], 1))
    return [dbc.Alert(text, color="light", className="small py-2 mb-1"), graph(figure=share_figure(shares))]


def house_view(community, house_id: str, rng: analytics.Range, now: pd.Timestamp):
    """(energy figure, value figure, KPI cards with the draft invoice card, live power card, LEG/grid
    shares) of one house."""
    flows = analytics.house_flows(community, house_id, rng)
    s = community.settle(period_of(now, community.tz, community.cfg.community.billing_period), allow_incomplete=True)
    inv = next((i for i in s.invoices if i["house_id"] == house_id), None)
    return (energy_figure(flows, house=True), value_figure(flows),
            html.Div([kpi_cards(analytics.kpis(flows)), draft_invoice_card(inv)]), live_power_card(community, house_id, now),
            share_section(analytics.share_flows(community, rng, house_id)))


def draft_invoice_card(invoice: dict | None):
    if invoice is None:
        return dbc.Alert(tr("No invoice for this house in the current period."), color="secondary")
    net = float(invoice["net_amount_chf"])
    values = dict(imported=number(invoice["energy_imported_kwh"]), exported=number(invoice["energy_exported_kwh"]),
                  amount=chf(abs(Decimal(str(invoice["net_amount_chf"])))))
    text = (tr("bought {imported} kWh, delivered {exported} kWh; credit to you {amount} CHF", **values) if net >= 0
            else tr("bought {imported} kWh, delivered {exported} kWh; amount due {amount} CHF", **values))
    return dbc.Alert([html.Strong(tr("Current period {period} (draft): ", period=invoice["period_start"][:7])),
                      text], color="info")


def live_power_card(community, house_id: str, now: pd.Timestamp):
    """The house's latest power draw (Pi) and feed-in (Po) per meter, with their age; meters that
    do not report power say so."""
    meters = community.meters_of(house_id)
    last = community.last_readings([m.meter_id for m in meters])
    items = []
    for m in meters:
        r = last.get(m.meter_id)
        if r is None:
            items.append(tr("{meter}: no reading yet", meter=m.meter_id))
            continue
        age = now - pd.Timestamp(r.ts_utc)
        when = pd.Timestamp(r.ts_utc).tz_convert(community.tz).strftime("%Y-%m-%d %H:%M:%S")
        if r.power_in_kw is None and r.power_out_kw is None:
            items.append(tr("{meter}: this meter reports no power (last counters {when})", meter=m.meter_id, when=when))
            continue
        fmt = lambda x: "–" if x is None else f"{x:.2f} kW"
        values = dict(meter=m.meter_id, power_in=fmt(r.power_in_kw), power_out=fmt(r.power_out_kw), when=when)
        items.append(tr("{meter}: drawing {power_in}, feeding in {power_out} at {when} (stale)", **values)
                     if age > pd.Timedelta(minutes=15)
                     else tr("{meter}: drawing {power_in}, feeding in {power_out} at {when}", **values))
    if not items:
        items = [tr("No meter registered for this house.")]
    return dbc.Card(dbc.CardBody([html.Div(tr("Live power"), className="text-muted small")]
                                 + [html.Div(t) for t in items]), className="mb-2")


def period_options(c, now: pd.Timestamp, months: int = 12) -> list[dict]:
    """Calendar months (the data quality page looks at months whatever the billing period), named
    in the page's language."""
    from babel.dates import format_date
    local = now.tz_convert(c.tz)
    first = local.normalize().replace(day=1)
    locale = LOCALES[language()]
    return [{"label": format_date((first - pd.DateOffset(months=k)).date(), "LLLL y", locale=locale),
             "value": (first - pd.DateOffset(months=k)).strftime("%Y-%m")} for k in range(months)]


def period_rows(c) -> list[dict]:
    """The settlement page's periods table."""
    return [{**p, "houses_missing": ", ".join(p["houses_missing"]), "closed_at": (p["closed_at"] or "")[:16],
             "status_text": status_text(p["status"])} for p in c.periods()]


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
        row = grid_money(grid_kwh({k: (str(v) if v is not None else "") for k, v in r.items()},
                                  ("energy_imported_kwh", "energy_exported_kwh")),
                         {"import_cost_chf": chf_of_ct(r["import_cost_ct"]),
                          "export_revenue_chf": chf_of_ct(r["export_revenue_ct"]), "net_amount_chf": r["net_amount_chf"]})
        row["download"] = f"{link(r['invoice_id'])} · [CSV]({base}api/invoices/{r['invoice_id']}.csv)"
        row["status_text"] = status_text(r["status"])
        row["mail"] = _mail_text(mails.get(r["invoice_id"]))
        rows.append(row)
    if s.status == "closed":
        for n in c.ledger.credit_notes(period):
            rows.append(grid_money({"invoice_id": n["credit_note_id"],
                                    "status_text": tr("credit note for {invoice}", invoice=n["invoice_id"]),
                                    "flags": n["reason"], "download": link(n["credit_note_id"]),
                                    "mail": _mail_text(mails.get(n["credit_note_id"]))},
                                   {"net_amount_chf": n["net_amount_chf"]}))
    over = s.period.end <= pd.Timestamp(c.clock())
    closable = s.status != "closed" and over and not s.missing
    notes = invoice_setup_notes(c.cfg)
    if s.status == "closed":
        alert = dbc.Alert(tr("Closed: {n} invoices issued. Their PDFs are stored and served as issued.",
                             n=len(s.invoices)), color="success")
    elif s.missing:
        alert = dbc.Alert(tr("Provisional: intervals missing for house(s) {houses}. The period can be closed once "
                             "the readings are complete.",
                             houses=", ".join(f"{h} ({n})" for h, n in s.missing.items())), color="warning")
    elif not over:
        alert = dbc.Alert(tr("Running: drafts so far; the period can be closed after its last day."), color="info")
    else:
        alert = dbc.Alert(tr("Open: drafts, recomputed on every view; complete data, ready to close."), color="info")
    margin = leg_margin_text(c, s.invoices)
    if margin:
        notes = [margin] + notes
    warnings = [] if s.status == "closed" else [dbc.Alert(text, color=color, className="small py-2")
                                                for text, color in leg_balance_notes(c, c.leg_reconciliation(s.period))]
    if notes or warnings:
        alert = html.Div([alert] + warnings + [dbc.Alert(n, color="secondary", className="small py-2") for n in notes])
    return alert, rows, closable


def leg_balance_notes(c, b) -> list[tuple[str, str]]:
    """(text, colour) of what the reconciliation ``b`` of a LEG's shares in a period finds
    (``Community.leg_reconciliation``, billing/leg.py):
    quarter hours where the LEG shares consumed and produced differ, metering points the grid
    operator sent no LEG share for, estimated quarter hours. Empty in the other modes, and when
    everything balances."""
    if b is None:
        return []
    out = []
    if not b.balanced:
        first = b.unbalanced.iloc[0]
        out.append((tr("The LEG shares do not balance in {n} quarter hour(s) (first {start}: consumed {consumed} kWh, "
                       "produced {produced} kWh). Ask the grid operator for a corrected delivery before closing.",
                       n=len(b.unbalanced), start=local_time(c, first["start"]), consumed=number(first["consumed_kwh"], 3),
                       produced=number(first["produced_kwh"], 3)), "warning"))
    if b.missing:
        points = ", ".join(f"{p} ({n})" for p, n in sorted(b.missing.items()))
        out.append((tr("No LEG share from the grid operator for these metering points (quarter hours): {points}",
                       points=points), "warning"))
    if b.estimated:
        out.append((tr("The grid operator estimated the LEG shares of {n} quarter hour(s); a later delivery may "
                       "revise them.", n=b.estimated), "secondary"))
    return out


def leg_balance_rows(c, b) -> list[dict]:
    """The data quality page's table of the unbalanced quarter hours of ``b`` (local time), at most 500."""
    if b is None:
        return []
    return [{"start": local_time(c, r.start), "consumed_kwh": round(r.consumed_kwh, 3),
             "produced_kwh": round(r.produced_kwh, 3), "difference_kwh": round(r.difference_kwh, 3)}
            for r in b.unbalanced.head(500).itertuples()]


LEG_COLUMNS = [("start", N_("Quarter hour")), ("consumed_kwh", N_("LEG share consumed kWh")),
               ("produced_kwh", N_("LEG share produced kWh")), ("difference_kwh", N_("Difference kWh"))]


def leg_section(c, period) -> list:
    """The data quality page's part for a LEG billed from the grid operator's data: the
    reconciliation of its LEG shares (notes, and the unbalanced quarter hours); empty otherwise."""
    b = c.leg_reconciliation(period)
    if b is None:
        return []
    notes = leg_balance_notes(c, b) or [(tr("The LEG shares balance in every quarter hour."), "success")]
    out = [html.H5(tr("LEG shares from the grid operator"), className="mt-3")]
    out += [dbc.Alert(text, color=color) for text, color in notes]
    rows = leg_balance_rows(c, b)
    if rows:
        out.append(data_grid(id="quality-leg-unbalanced", rowData=rows, columnSize="sizeToFit",
                              columnDefs=[{"field": f, "headerName": tr(h)} for f, h in LEG_COLUMNS],
                              style={"height": "240px"}))
    return out


DIRECTIONS = {"consumption": N_("consumption"), "production": N_("production")}


def metering_point_rows(c) -> list[dict]:
    """The Meters page's table of the houses' metering points (a LEG billed from the grid
    operator's data): per point its house, the last quarter hour delivered, the document that
    delivered last and when the grid operator created it and it was imported (local time); a
    point without any delivery says so. Empty when no house lists metering points."""
    point_house = c.point_houses()
    if not point_house:
        return []
    names = {h.house_id: h.name for h in c.houses()}
    seen = {p["metering_point"]: p for p in c.sdat.points()}
    rows = []
    for point, house in sorted(point_house.items(), key=lambda kv: (kv[1], kv[0])):
        p = seen.get(point)
        direction = DIRECTIONS.get(p["direction"]) if p else None
        rows.append({"metering_point": point, "house": names.get(house, house),
                     "direction": tr(direction) if direction else "",
                     "last_quarter_hour": local_time(c, p["last_start"]) if p else tr("no delivery yet"),
                     "document_id": p["document_id"] if p else "",
                     "created": local_time(c, p["creation"]) if p else "",
                     "imported": local_time(c, p["imported_at"]) if p and p.get("imported_at") else ""})
    return rows


def local_time(c, ts) -> str:
    return pd.Timestamp(ts).tz_convert(c.tz).strftime("%Y-%m-%d %H:%M")


def leg_margin_text(c, invoices: list[dict]) -> str | None:
    """For a LEG (pricing.mode leg): what the community keeps of the period, consumers' payments for
    their LEG shares minus the producers' credits (p_con - p_pv per kWh exchanged); None otherwise."""
    if c.cfg.pricing.mode != "leg" or not invoices:
        return None
    paid = sum((Decimal(str(i["import_cost_ct"])) for i in invoices), Decimal("0"))
    credited = sum((Decimal(str(i["export_revenue_ct"])) for i in invoices), Decimal("0"))
    return tr("Community margin: CHF {margin} (members pay CHF {paid} for their LEG shares, producers are "
              "credited CHF {credited}).", margin=chf(chf_of_ct(paid - credited)), paid=chf(chf_of_ct(paid)),
              credited=chf(chf_of_ct(credited)))


def invoice_setup_notes(cfg) -> list[str]:
    """What the invoices will lack because of the configuration (shown before a period is closed)."""
    notes = []
    if cfg.community.iban is None:
        notes.append(tr("No QR-bill on the invoices: community.iban and community.address are not set in "
                        "config.yaml."))
    if cfg.community.address is None:
        notes.append(tr("The invoices name the community without an address: set community.address in config.yaml."))
    missing = [h.name for h in cfg.houses.values() if h.owner is None]
    if missing:
        notes.append(tr("{n} house(s) without an owner address (the invoice shows the house's name only): {houses}",
                        n=len(missing), houses=", ".join(missing[:5]) + ("…" if len(missing) > 5 else "")))
    return notes


def mail_summary(run) -> Later:
    """A mailing's result (billing/mail.py MailRun) as the settlement page shows it, in the
    reader's language: how many were sent, not sent and failed, with the first documents' reasons."""
    details = "; ".join([f"{k}: {v}" for k, v in list(run.skipped.items())[:5]]
                        + [f"{k}: {v}" for k, v in list(run.failed.items())[:5]])
    if not details:
        return Later(N_("{sent} sent"), sent=len(run.sent))
    return Later(N_("{sent} sent, {skipped} not sent, {failed} failed ({details})"), sent=len(run.sent),
                 skipped=len(run.skipped), failed=len(run.failed), details=details)


def _mail_text(m: dict | None) -> str:
    if m is None:
        return ""
    if m["status"] == "sent":
        return tr("sent to {recipient} {at}", recipient=m["recipient"], at=m["at"][:16])
    if m["status"] == "sending":
        return tr("interrupted while sending to {recipient} ({at}): check, then release", recipient=m["recipient"],
                  at=m["at"][:16])
    return tr("failed: {error}", error=m["error"])


def close_job(services, period: str, by: str = "web") -> tuple[dict | None, str]:
    """Start closing ``period`` in the background (issue, then render and store every PDF):
    (job for the page's store, or None, and a message). Label and result are ``Later`` texts:
    translated when the page shows them."""
    from billing import lifecycle
    c = services.community

    def run(progress):
        s = lifecycle.close_period(c, period, by, progress)
        return Later(N_("{period} closed: {n} invoices issued, their PDFs stored"), period=period, n=len(s.invoices))
    return _start(services, f"close:{period}", Later(N_("Closing {period}"), period=period), run)


def mail_job(services, period: str, by: str = "web") -> tuple[dict | None, str]:
    """Start mailing a closed period's documents in the background."""
    from billing import mail
    c = services.community
    return _start(services, f"mail:{period}", Later(N_("Mailing {period}"), period=period),
                  lambda progress: Later(N_("Mailing {period}: {summary}"), period=period,
                                         summary=mail_summary(mail.send_period(c, period, by, progress))))


def _start(services, key: str, label: str, run):
    from jobs import JobBusy
    try:
        job = services.jobs.start(key, label, run, errors=(SettlementError, ValueError))
    except JobBusy as exc:
        return None, dbc.Alert(tr("{label} is already running ({percent}%)", label=str(exc.job.label),
                                  percent=exc.job.percent), color="warning")
    return {"id": job.job_id, "status": job.status}, ""


def invoice_action(c, action: str, selected: list[dict] | None, reason: str | None, by: str = "web"):
    """Mark the selected issued invoice paid, or cancel it with a credit note: an alert."""
    from billing import lifecycle, mail
    doc_id = ((selected or [{}])[0] or {}).get("invoice_id")
    if not doc_id:
        return dbc.Alert(tr("Select an invoice in the table first."), color="warning")
    if doc_id.startswith("DRAFT-"):
        return dbc.Alert(tr("{invoice} is a draft: invoices can be paid or cancelled once the period is closed.",
                            invoice=doc_id), color="warning")
    try:
        if action == "paid":
            lifecycle.mark_paid(c, doc_id, by, reason or None)
            return dbc.Alert(tr("{invoice} marked paid.", invoice=doc_id), color="success")
        if action == "cancel":
            if not (reason or "").strip():
                return dbc.Alert(tr("Give the reason for the cancellation (it is recorded with the credit note)."),
                                 color="warning")
            note = lifecycle.cancel(c, doc_id, by, reason)
            return dbc.Alert(tr("{invoice} cancelled: credit note {credit_note} issued.", invoice=doc_id,
                                credit_note=note["credit_note_id"]), color="success")
        if action == "release":
            mail.release(c, doc_id, by)
            return dbc.Alert(tr("{invoice} may be mailed again.", invoice=doc_id), color="success")
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
            lines.append(tr("{name}: refused: the upload could not be read (an empty or damaged file)", name=name))
            failed += 1
            continue
        if len(raw) > MAX_BANK_FILE_BYTES:
            lines.append(tr("{name}: refused: {size} bytes, more than a bank file of {limit} MB", name=name,
                            size=number(len(raw), 0), limit=MAX_BANK_FILE_BYTES // 2**20))
            failed += 1
            continue
        result = import_payments(c, name, raw, by)
        lines.append(result.line())
        failed += result.error is not None
    if not lines:
        raise PreventUpdate
    color = "success" if not failed else ("danger" if failed == len(lines) else "warning")
    return dbc.Alert([html.Div(line) for line in lines], color=color)


TRANSACTION_STATES = {"unmatched": N_("no invoice has this reference"),
                      "reversal": N_("reversal (returned by the bank)"), "debit": N_("debit"),
                      "cancelled_invoice": N_("paid to a cancelled invoice")}


def _state_text(state: str) -> str:
    text = TRANSACTION_STATES.get(state)
    return tr(text) if text else state


def payments_view(c) -> tuple[list[dict], list[dict]]:
    """(overdue invoices, bank transactions to assign by hand) as table rows."""
    from billing.payments import open_items, overdue
    names = {h.house_id: h.name for h in c.houses()}
    late = [{**x, "house_name": names.get(x["house_id"], ""), "status_text": status_text(x.get("status"))}
            for x in overdue(c)]
    items = [{**t, "what": _state_text(t["state"])} for t in open_items(c)]
    return late, items


def payment_grids(c) -> tuple[list[dict], list[dict]]:
    """``payments_view`` as the settlement page's grids show it (amounts in CHF, see ``grid_money``)."""
    late, items = payments_view(c)
    return ([grid_money(x, {"amount_due_chf": x["amount_due_chf"], "paid_chf": x["paid_chf"]}) for x in late],
            [grid_money(t, {"amount_chf": t.get("amount_chf")}) for t in items])


def assign_payment(c, selected: list[dict] | None, invoice_id: str | None, by: str = "web"):
    """Assign the selected bank transaction to the invoice a manager typed: an alert."""
    from storage.ledger import LedgerError
    tx = ((selected or [{}])[0] or {}).get("tx_id")
    if not tx:
        return dbc.Alert(tr("Select a bank transaction in the table first."), color="warning")
    invoice_id = (invoice_id or "").strip().upper()
    if not invoice_id:
        return dbc.Alert(tr("Type the number of the invoice it pays (e.g. INV-2026-004)."), color="warning")
    try:
        status = c.ledger.assign_bank_transaction(tx, invoice_id, by)
    except LedgerError as exc:
        return dbc.Alert(str(exc), color="danger")
    if status == "paid":
        text = tr("Payment assigned: {invoice} is now paid.", invoice=invoice_id)
    elif status == "partially_paid":
        text = tr("Payment assigned: {invoice} is now partially paid.", invoice=invoice_id)
    else:
        text = tr("Payment assigned: {invoice} is now {status}.", invoice=invoice_id, status=status.replace("_", " "))
    return dbc.Alert(text, color="success")


def job_progress(jobs, job: dict | None):
    """(job store, poll disabled, progress value, progress style, message) for the page."""
    j = jobs.get(job["id"]) if job else None
    if j is None:
        return None, True, 0, {"display": "none"}, ""
    if j.status == "running":
        return no_update, False, j.percent, {}, tr("{label}: {message}", label=str(j.label), message=j.message)
    alert = (dbc.Alert(str(j.result), color="success") if j.status == "done"
             else dbc.Alert(tr("{label} failed: {error}", label=str(j.label), error=j.error), color="danger"))
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
        return tr("{p_con} ct/kWh (the mean of p_pv and p_grid_con)",
                  p_con=f"{(values['p_pv'] + values['p_grid_con']) / 2:.2f}")
    return tr("per 15 minutes between {p_pv} (all local) and {p_grid_con} ct/kWh (all from the grid), never above "
              "the grid price", p_pv=f"{values['p_pv']:.2f}", p_grid_con=f"{values['p_grid_con']:.2f}")


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
    return {}, tr("Saved: in force from {when}", when=f"{eff.astimezone(c.tz):%Y-%m-%d %H:%M}")




def adopt(services, meter_id: str | None, name: str | None, first_day: str | None, created_by: str = "web"):
    """Adopt an unknown meter as a new house: (alert, whether it worked)."""
    c = services.community
    if not meter_id:
        return dbc.Alert(tr("Select a meter in the table of unknown meters first."), color="warning"), False
    try:
        active_from = date.fromisoformat(first_day) if first_day else pd.Timestamp(c.clock()).tz_convert(c.tz).date()
    except ValueError:
        return dbc.Alert(tr("Billed from: {value} is not a date (YYYY-MM-DD)", value=repr(first_day)),
                         color="danger"), False
    try:
        house_id = c.adopt_meter(meter_id, name, active_from, created_by)
    except ValueError as exc:
        return dbc.Alert(str(exc), color="danger"), False
    if services.runtime is not None:
        services.runtime.registry_changed()
    return dbc.Alert([tr("Meter {meter} is now house {house} ({name}), billed from {day}. Readings it sent before "
                         "today's adoption were not stored; its intervals before the first new reading are shown as "
                         "missing.", meter=meter_id, house=house_id, name=name.strip(), day=active_from), " ",
                      html.A(tr("Open the house page"), href=f"houses/{house_id}")], color="success"), True


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
        return html.P(tr("No statement yet: a statement covers a year once one of its billing periods is closed."),
                      className="text-muted")
    return html.Ul([html.Li([f"{y} · {h.name}: ",
                             html.A("PDF", href=f"{base}api/statements/{h.house_id}/{y}.pdf", className="me-2"),
                             html.A("CSV", href=f"{base}api/statements/{h.house_id}/{y}.csv")])
                    for y in years for h in houses])


def _my_row(inv: dict, names: dict, base: str) -> dict:
    return grid_money({"period": inv["period_start"][:7], "invoice_id": inv["invoice_id"],
                       "house": names.get(inv["house_id"], inv["house_id"]), "status": inv["status"],
                       "status_text": status_text(inv["status"]),
                       "download": f"[PDF]({base}api/invoices/{inv['invoice_id']}.pdf)"},
                      {"net": inv["net_amount_chf"]})
