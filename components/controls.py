"""Shared controls and cards."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, callback, dcc, html

import analytics
from analytics import BUCKETS, RANGES

REFRESH_MS = 60_000


def range_controls(prefix: str, default: str = "this_month") -> dbc.Row:
    """A range picker, custom dates (shown for "Custom dates") and a resolution picker: ids
    ``{prefix}-range``, ``{prefix}-dates``, ``{prefix}-bucket``. The page refreshes every minute
    (``{prefix}-refresh``) while the range includes now. The page registers
    ``range_callbacks(prefix)`` once."""
    return dbc.Row([
        dbc.Col([dbc.Label("Range"), dcc.Dropdown(id=f"{prefix}-range", clearable=False, value=default,
                                                  options=[{"label": v, "value": k} for k, v in RANGES.items()])],
                md=3),
        dbc.Col([dbc.Label("Days (first and last)"),
                 dcc.DatePickerRange(id=f"{prefix}-dates", display_format="YYYY-MM-DD", first_day_of_week=1),
                 html.Div(id=f"{prefix}-range-error", className="text-danger small")],
                id=f"{prefix}-dates-col", md=4, style={"display": "none"}),
        dbc.Col([dbc.Label("Resolution"), dcc.Dropdown(id=f"{prefix}-bucket", clearable=True, placeholder="automatic",
                                                       options=[{"label": b, "value": b} for b in BUCKETS])], md=2),
        dbc.Col(html.Div(id=f"{prefix}-live", className="text-muted small"), md=3, className="align-self-end"),
        dcc.Interval(id=f"{prefix}-refresh", interval=REFRESH_MS, disabled=True),
    ], className="mb-3")


def range_state(range_name, first_day, last_day, now: pd.Timestamp, tz) -> tuple[dict, str, bool, str]:
    """(dates column style, error text, refresh disabled, live note) for the chosen range."""
    style = {} if range_name == "custom" else {"display": "none"}
    try:
        rng = analytics.resolve_range(range_name, now, tz, first_day, last_day)
    except ValueError as exc:
        return style, str(exc).removeprefix("dates: "), True, ""
    live = analytics.includes_now(rng, now)
    return style, "", not live, "Updates every minute" if live else "Past range: not refreshed"


def range_inputs(prefix: str) -> list[Input]:
    """What a page under ``range_controls(prefix)`` recomputes on: range, resolution, custom dates
    and the minute's refresh (callback arguments: range_name, bucket, first_day, last_day, n)."""
    return [Input(f"{prefix}-range", "value"), Input(f"{prefix}-bucket", "value"),
            Input(f"{prefix}-dates", "start_date"), Input(f"{prefix}-dates", "end_date"),
            Input(f"{prefix}-refresh", "n_intervals")]


def range_callbacks(prefix: str) -> None:
    """Show the dates for a custom range, say what is wrong with them, and refresh only while the
    range includes now."""
    from web import current

    @callback(Output(f"{prefix}-dates-col", "style"), Output(f"{prefix}-range-error", "children"),
              Output(f"{prefix}-refresh", "disabled"), Output(f"{prefix}-live", "children"),
              Input(f"{prefix}-range", "value"), Input(f"{prefix}-dates", "start_date"),
              Input(f"{prefix}-dates", "end_date"))
    def _range_state(range_name, first_day, last_day):
        return range_state(range_name, first_day, last_day, pd.Timestamp.now(tz="UTC"), current().community.tz)


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
