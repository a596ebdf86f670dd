"""Shared controls and cards."""
from __future__ import annotations

import dash_bootstrap_components as dbc
from dash import dcc, html

from analytics import BUCKETS, RANGES


def range_controls(prefix: str, default: str = "this_month") -> dbc.Row:
    """A range picker and a resolution picker (ids ``{prefix}-range`` and ``{prefix}-bucket``)."""
    return dbc.Row([
        dbc.Col([dbc.Label("Range"), dcc.Dropdown(id=f"{prefix}-range", clearable=False, value=default,
                                                  options=[{"label": v, "value": k} for k, v in RANGES.items()])],
                md=4),
        dbc.Col([dbc.Label("Resolution"), dcc.Dropdown(id=f"{prefix}-bucket", clearable=True, placeholder="automatic",
                                                       options=[{"label": b, "value": b} for b in BUCKETS])], md=3),
        dcc.Interval(id=f"{prefix}-refresh", interval=60_000),
    ], className="mb-3")


def kpi_cards(k: dict) -> dbc.Row:
    def card(title, value):
        return dbc.Col(dbc.Card(dbc.CardBody([html.Div(title, className="text-muted small"),
                                              html.H4(value, className="mb-0")])), md=2)
    pct = lambda x: "n/a" if x is None else f"{x:.0%}"
    return dbc.Row([
        card("Consumption", f"{k['consumption_kwh']:,.0f} kWh"),
        card("Production", f"{k['production_kwh']:,.0f} kWh"),
        card("Self-sufficiency", pct(k["self_sufficiency"])),
        card("Self-consumption", pct(k["self_consumption"])),
        card("Grid import / export", f"{k['grid_import_kwh']:,.0f} / {k['grid_export_kwh']:,.0f} kWh"),
        card("Community balance", f"{k['balance_chf']:,.2f} CHF"),
    ], className="mb-3 g-2")
