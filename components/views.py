"""What the pages show, as plain functions of the community (no Dash app needed): the pages'
callbacks call these, tests and benchmarks call them directly."""
from __future__ import annotations

from datetime import datetime

import dash_bootstrap_components as dbc
import pandas as pd
from dash import html
from dash.exceptions import PreventUpdate

import analytics
from billing.settlement import SettlementError, invoice_rows
from components.charts import energy_figure, grid_figures, price_figure, value_figure
from components.controls import kpi_cards
from ingest.csv_files import parse_timestamp
from ingest.readings import ReadingError
from pricing.tariffs import Tariff, tariff_errors


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
    s = community.settle(now.tz_convert(community.tz).strftime("%Y-%m"), allow_incomplete=True)
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
    local = now.tz_convert(c.tz)
    first = local.normalize().replace(day=1)
    return [{"label": (first - pd.DateOffset(months=k)).strftime("%B %Y"),
             "value": (first - pd.DateOffset(months=k)).strftime("%Y-%m")} for k in range(months)]


def settlement_view(c, period: str):
    """(status alert, grid rows) for a period."""
    try:
        s = c.settle(period, allow_incomplete=True)
    except SettlementError as exc:
        return dbc.Alert(str(exc), color="danger"), []
    rows = [{k: (str(v) if v is not None else "") for k, v in r.items()} for r in invoice_rows(s.invoices)]
    if s.status == "closed":
        alert = dbc.Alert(f"Closed: {len(rows)} invoices issued.", color="success")
    elif s.missing:
        alert = dbc.Alert("Provisional: intervals missing for house(s) "
                          + ", ".join(f"{h} ({n})" for h, n in s.missing.items()), color="warning")
    else:
        alert = dbc.Alert("Open: drafts, recomputed on every view; complete data.", color="info")
    return alert, rows


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


def submit(c, values: dict, effective_text: str | None, now: datetime):
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
    tariff = Tariff(float(values["p_pv"]), float(values["p_grid_del"]), float(values["p_grid_con"]),
                    values["mode"], eff)
    try:
        c.add_tariff(tariff, created_by="web")
    except SettlementError as exc:
        return {"effective_from": str(exc)}, None
    return {}, f"Saved: in force from {eff.astimezone(c.tz):%Y-%m-%d %H:%M}"


