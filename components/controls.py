"""Shared controls and cards."""
from __future__ import annotations

import re

import dash_ag_grid as dag
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, callback, dcc, html

import analytics
from analytics import BUCKETS, RANGES
from i18n import N_, chf, language, number, tr

REFRESH_MS = 60_000
# the labels of analytics.RANGES and BUCKETS, marked for the catalogues (shown with tr())
RANGE_LABELS = (N_("Today"), N_("Last 7 days"), N_("This month"), N_("Last month"), N_("This year"),
                N_("Custom dates"))
BUCKET_LABELS = {"15min": N_("15min"), "hour": N_("hour"), "day": N_("day"), "month": N_("month")}
# what analytics.resolve_range says about wrong custom dates (after "dates: "), in the catalogues
RANGE_ERRORS = [(re.compile(r"(?P<first>.*) to (?P<last>.*) are not dates \(YYYY-MM-DD\)"),
                 N_("{first} to {last} are not dates (YYYY-MM-DD)")),
                (re.compile(r"choose the first and the last day of the range"),
                 N_("choose the first and the last day of the range")),
                (re.compile(r"the last day is before the first day"), N_("the last day is before the first day")),
                (re.compile(r"at most (?P<days>\d+) days at a time"), N_("at most {days} days at a time"))]


def range_error_text(error: str) -> str:
    """analytics' message about wrong custom dates in the request's language (as it is if unknown)."""
    for pattern, msgid in RANGE_ERRORS:
        if m := pattern.fullmatch(error):
            return tr(msgid, **m.groupdict())
    return error


def range_controls(prefix: str, default: str = "this_month") -> dbc.Row:
    """A range picker, custom dates (shown for "Custom dates") and a resolution picker: ids
    ``{prefix}-range``, ``{prefix}-dates``, ``{prefix}-bucket``. The page refreshes every minute
    (``{prefix}-refresh``) while the range includes now. The page registers
    ``range_callbacks(prefix)`` once."""
    return dbc.Row([
        dbc.Col([dbc.Label(tr("Range")),
                 dcc.Dropdown(id=f"{prefix}-range", clearable=False, value=default,
                              options=[{"label": tr(v), "value": k} for k, v in RANGES.items()])], md=3),
        dbc.Col([dbc.Label(tr("Days (first and last)")),
                 dcc.DatePickerRange(id=f"{prefix}-dates", display_format="YYYY-MM-DD", first_day_of_week=1,
                                     start_date_placeholder_text=tr("Start Date"),
                                     end_date_placeholder_text=tr("End Date")),
                 html.Div(id=f"{prefix}-range-error", className="text-danger small")],
                id=f"{prefix}-dates-col", md=4, style={"display": "none"}),
        dbc.Col([dbc.Label(tr("Resolution")),
                 dcc.Dropdown(id=f"{prefix}-bucket", clearable=True, placeholder=tr("automatic"),
                              options=[{"label": tr(BUCKET_LABELS.get(b, b)), "value": b} for b in BUCKETS])], md=2),
        dbc.Col(html.Div(id=f"{prefix}-live", className="text-muted small"), md=3, className="align-self-end"),
        dcc.Interval(id=f"{prefix}-refresh", interval=REFRESH_MS, disabled=True),
    ], className="mb-3")


def range_state(range_name, first_day, last_day, now: pd.Timestamp, tz) -> tuple[dict, str, bool, str]:
    """(dates column style, error text, refresh disabled, live note) for the chosen range."""
    style = {} if range_name == "custom" else {"display": "none"}
    try:
        rng = analytics.resolve_range(range_name, now, tz, first_day, last_day)
    except ValueError as exc:
        return style, range_error_text(str(exc).removeprefix("dates: ")), True, ""
    live = analytics.includes_now(rng, now)
    return style, "", not live, tr("Updates every minute") if live else tr("Past range: not refreshed")


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


# AG Grid columns of CHF amounts: the cell's value is the amount as a number (what the grid sorts
# by); it shows the text the server wrote for it in the request's language (the row's
# "shown", see components.views.grid_money), so a grid writes amounts as every other page does
MONEY_COLUMN = {"valueFormatter": {"function": "params.data && params.data.shown && "
                                               "params.data.shown[params.colDef.field] || params.value"},
                "cellDataType": "number"}
# the same for any number with its text under ``shown`` (kWh in the language's number format)
NUMBER_COLUMN = MONEY_COLUMN
# every table of the app fits its grid's width: the columns share it, long headers and texts wrap
FITTED_GRID = {"columnSize": "responsiveSizeToFit",
               "defaultColDef": {"wrapHeaderText": True, "autoHeaderHeight": True, "minWidth": 90}}
WRAPPED_COLUMN = {"wrapText": True, "autoHeight": True, "cellStyle": {"lineHeight": "1.4", "paddingTop": "4px",
                                                                      "paddingBottom": "4px"}}


def kpi_cards(k: dict) -> dbc.Row:
    def card(title, value):
        return dbc.Col(dbc.Card(dbc.CardBody([html.Div(title, className="text-muted small"),
                                              html.H4(value, className="mb-0")]), className="h-100"),
                       xs=6, md=4, xl=True)
    pct = lambda x: tr("n/a") if x is None else f"{x:.0%}"
    kwh = lambda x: f"{number(x, 0)} kWh"
    return dbc.Row([
        card(tr("Consumption"), kwh(k["consumption_kwh"])),
        card(tr("Production"), kwh(k["production_kwh"])),
        card(tr("Self-sufficiency"), pct(k["self_sufficiency"])),
        card(tr("Self-consumption"), pct(k["self_consumption"])),
        card(tr("Grid import / export"), f"{number(k['grid_import_kwh'], 0)} / {kwh(k['grid_export_kwh'])}"),
        card(tr("Community balance"), f"CHF {chf(k['balance_chf'])}"),
        card(tr("Saved against the grid alone"), f"CHF {chf(k['savings_chf'])}"),
    ], className="mb-3 g-2")


# AG Grid's own texts (an empty table, loading, paging, the filter menu), in the request's language
GRID_TEXTS = {"noRowsToShow": N_("No rows to show"), "loadingOoo": N_("Loading…"), "page": N_("Page"),
              "of": N_("of"), "to": N_("to"), "more": N_("more"), "filterOoo": N_("Filter…"),
              "contains": N_("Contains"), "equals": N_("Equals")}


def data_grid(**kwargs) -> dag.AgGrid:
    """An AG Grid table whose own texts are in the request's language (GRID_TEXTS)."""
    options = {"localeText": {key: tr(text) for key, text in GRID_TEXTS.items()}, **kwargs.pop("dashGridOptions", {})}
    return dag.AgGrid(dashGridOptions=options, **kwargs)


def graph(**kwargs) -> dcc.Graph:
    """A chart in the request's language: month and day names, number symbols and the mode bar's
    texts from plotly's locale (assets/plotly-locales.js, components/charts.py plotly_locale)."""
    return dcc.Graph(config={"locale": language(), "displaylogo": False}, **kwargs)
