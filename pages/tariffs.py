"""Tariffs: set p_pv, p_grid_del, p_grid_con (and the mode) from a date; history of versions."""
from datetime import datetime, timezone

import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, html

from components.controls import data_grid

from components.views import history_rows, p_con_text, submit
from pricing.tariffs import PRICING_MODES, TARIFF_FIELDS
from auth.web import actor, page_denied
from i18n import N_, tr
from web import current

dash.register_page(__name__, path="/tariffs", name=N_("Tariffs"), order=3)

LABELS = {"p_pv": N_("p_pv: PV delivery (house sells), ct/kWh"), "p_grid_del": N_("p_grid_del: grid delivery, ct/kWh"),
          "p_grid_con": N_("p_grid_con: grid consumption, ct/kWh")}
# the pricing modes in the dropdown (the value, and the history's column, is the mode's key)
MODE_LABELS = {"break_even": N_("break_even"), "static": N_("static"), "zev_proportional": N_("zev_proportional"),
               "leg": N_("leg")}
HISTORY_COLUMNS = [("effective_from", N_("Effective from")), ("mode", N_("Mode")), ("p_pv", "p_pv"),
                   ("p_grid_del", "p_grid_del"), ("p_grid_con", "p_grid_con")]


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    c = current().community
    t = c.ledger.tariff_versions()[-1]
    fields = [dbc.Col([dbc.Label(tr(LABELS[f]), html_for=f"tariff-{f}"),
                       dbc.Input(id=f"tariff-{f}", type="number", value=getattr(t, f), step="any"),
                       dbc.FormFeedback(id=f"tariff-{f}-error", type="invalid")], md=4) for f in TARIFF_FIELDS]
    return html.Div([
        html.H3(tr("Tariffs")),
        dbc.Row(fields, className="mb-2"),
        dbc.Row([
            dbc.Col([dbc.Label(tr("Pricing mode")),
                     dbc.Select(id="tariff-mode", value=t.mode,
                                options=[{"label": tr(MODE_LABELS.get(m, m)), "value": m} for m in PRICING_MODES])],
                    md=4),
            dbc.Col([dbc.Label(tr("Effective from (local time; empty: now)")),
                     dbc.Input(id="tariff-effective", placeholder="2026-12-01T00:00"),
                     dbc.FormFeedback(id="tariff-effective-error", type="invalid")], md=4),
            dbc.Col([dbc.Label(tr("House price p_con")),
                     html.Div(id="tariff-pcon", className="form-control-plaintext")], md=4),
        ], className="mb-2"),
        dbc.Button(tr("Save new tariff version"), id="tariff-save", color="primary", className="mb-2"),
        html.Div(id="tariff-result"),
        html.H5(tr("History"), className="mt-3"),
        data_grid(id="tariff-history", rowData=history_rows(c),
                   columnDefs=[{"field": f, "headerName": tr(h)} for f, h in HISTORY_COLUMNS],
                   columnSize="sizeToFit", style={"height": "260px"}),
    ])


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
    errors, message = submit(c, values, effective, datetime.now(timezone.utc), actor())
    result = (dbc.Alert(message, color="success") if message
              else dbc.Alert(tr("Not saved: see the fields marked."), color="danger"))
    return ([f in errors for f in TARIFF_FIELDS] + [errors.get(f, "") for f in TARIFF_FIELDS]
            + ["effective_from" in errors, errors.get("effective_from", ""), result, history_rows(c)])
