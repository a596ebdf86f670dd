"""What the pages show, as plain functions of the community (no Dash app needed): the pages'
callbacks call these, tests and benchmarks call them directly."""
from __future__ import annotations

from datetime import datetime

import dash_bootstrap_components as dbc
import pandas as pd

import analytics
from billing.settlement import SettlementError, invoice_rows
from components.charts import energy_figure, price_figure, value_figure
from components.controls import kpi_cards
from ingest.csv_files import parse_timestamp
from ingest.readings import ReadingError
from pricing.tariffs import Tariff, tariff_errors


def community_view(community, range_name: str, bucket: str | None, now: pd.Timestamp):
    rng = analytics.resolve_range(range_name, now, community.tz)
    if bucket:
        rng = analytics.Range(rng.start, rng.end, bucket)
    flows = analytics.community_flows(community, rng)
    return kpi_cards(analytics.kpis(flows)), energy_figure(flows), value_figure(flows), price_figure(flows)


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


