"""Tariffs: set p_pv, p_grid_del, p_grid_con (and the mode) from a date; history of versions."""
from datetime import datetime, timezone

import dash
import dash_ag_grid as dag
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, html

from billing.settlement import SettlementError
from ingest.csv_files import parse_timestamp
from ingest.readings import ReadingError
from pricing.tariffs import PRICING_MODES, TARIFF_FIELDS, Tariff, tariff_errors
from web import current

dash.register_page(__name__, path="/tariffs", name="Tariffs", order=3)

LABELS = {"p_pv": "p_pv: PV delivery (house sells), ct/kWh", "p_grid_del": "p_grid_del: grid delivery, ct/kWh",
          "p_grid_con": "p_grid_con: grid consumption, ct/kWh"}


def layout(**_):
    c = current().community
    t = c.ledger.tariff_versions()[-1]
    fields = [dbc.Col([dbc.Label(LABELS[f], html_for=f"tariff-{f}"),
                       dbc.Input(id=f"tariff-{f}", type="number", value=getattr(t, f), step="any"),
                       dbc.FormFeedback(id=f"tariff-{f}-error", type="invalid")], md=4) for f in TARIFF_FIELDS]
    return html.Div([
        html.H3("Tariffs"),
        dbc.Row(fields, className="mb-2"),
        dbc.Row([
            dbc.Col([dbc.Label("Pricing mode"), dbc.Select(id="tariff-mode", value=t.mode,
                                                           options=[{"label": m, "value": m} for m in PRICING_MODES])], md=4),
            dbc.Col([dbc.Label("Effective from (local time; empty: now)"),
                     dbc.Input(id="tariff-effective", placeholder="2026-12-01T00:00"),
                     dbc.FormFeedback(id="tariff-effective-error", type="invalid")], md=4),
            dbc.Col([dbc.Label("House price p_con"), html.Div(id="tariff-pcon", className="form-control-plaintext")], md=4),
        ], className="mb-2"),
        dbc.Button("Save new tariff version", id="tariff-save", color="primary", className="mb-2"),
        html.Div(id="tariff-result"),
        html.H5("History", className="mt-3"),
        dag.AgGrid(id="tariff-history", rowData=history_rows(c), columnDefs=[{"field": f} for f in
                   ("effective_from", "mode", "p_pv", "p_grid_del", "p_grid_con")],
                   columnSize="sizeToFit", style={"height": "260px"}),
    ])


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


@callback(Output("tariff-pcon", "children"),
          [Input(f"tariff-{f}", "value") for f in TARIFF_FIELDS] + [Input("tariff-mode", "value")])
def _pcon(p_pv, p_grid_del, p_grid_con, mode):
    return p_con_text({"p_pv": p_pv, "p_grid_del": p_grid_del, "p_grid_con": p_grid_con, "mode": mode})


@callback([Output(f"tariff-{f}", "invalid") for f in TARIFF_FIELDS]
          + [Output(f"tariff-{f}-error", "children") for f in TARIFF_FIELDS]
          + [Output("tariff-effective", "invalid"), Output("tariff-effective-error", "children"),
             Output("tariff-result", "children"), Output("tariff-history", "rowData")],
          Input("tariff-save", "n_clicks"),
          [State(f"tariff-{f}", "value") for f in TARIFF_FIELDS]
          + [State("tariff-mode", "value"), State("tariff-effective", "value")],
          prevent_initial_call=True)
def _save(_n, p_pv, p_grid_del, p_grid_con, mode, effective):
    c = current().community
    values = {"p_pv": p_pv, "p_grid_del": p_grid_del, "p_grid_con": p_grid_con, "mode": mode}
    errors, message = submit(c, values, effective, datetime.now(timezone.utc))
    result = dbc.Alert(message, color="success") if message else dbc.Alert("Not saved: see the fields marked.",
                                                                           color="danger")
    return ([f in errors for f in TARIFF_FIELDS] + [errors.get(f, "") for f in TARIFF_FIELDS]
            + ["effective_from" in errors, errors.get("effective_from", ""), result, history_rows(c)])
