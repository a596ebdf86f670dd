"""Figure builders: plain functions from a flows frame (analytics.FLOW_COLUMNS) to a figure."""
from __future__ import annotations

import plotly.graph_objects as go

from i18n import LANGUAGES, LOCALES, N_, catalogue, tr

CONSUMPTION, PRODUCTION, GRID, PRICE = "#c0392b", "#f1c40f", "#7f8c8d", "#2c3e50"
GRID_FED_IN = "#bdc3c7"


def _layout(fig: go.Figure, title: str, unit: str) -> go.Figure:
    fig.update_layout(title=title, yaxis_title=unit, barmode="relative", margin=dict(l=50, r=20, t=40, b=30),
                      legend=dict(orientation="h", y=-0.15), height=320, template="plotly_white")
    return fig


def energy_figure(flows, title: str | None = None, house: bool = False) -> go.Figure:
    """Consumption negative, production positive (kWh); a house also gets its net flow."""
    fig = go.Figure()
    fig.add_bar(x=flows["start"], y=-flows["consumption_kwh"], name=tr("Consumption"), marker_color=CONSUMPTION)
    fig.add_bar(x=flows["start"], y=flows["production_kwh"], name=tr("Production"), marker_color=PRODUCTION)
    if house:
        fig.add_scatter(x=flows["start"], y=flows["production_kwh"] - flows["consumption_kwh"], name=tr("Net"),
                        mode="lines", line=dict(color=PRICE))
    return _layout(fig, tr("Energy flow") if title is None else title, "kWh")


def value_figure(flows, title: str | None = None) -> go.Figure:
    """Consumption cost negative, PV delivery credit positive (CHF)."""
    fig = go.Figure()
    fig.add_bar(x=flows["start"], y=-flows["value_consumption_ct"] / 100, name=tr("Consumption cost"),
                marker_color=CONSUMPTION)
    fig.add_bar(x=flows["start"], y=flows["value_pv_delivery_ct"] / 100, name=tr("PV delivery credit"),
                marker_color=PRODUCTION)
    return _layout(fig, tr("Value flow") if title is None else title, "CHF")


def grid_figures(flows) -> tuple[go.Figure, go.Figure]:
    """Grid import negative, export positive: energy (kWh) and value (CHF)."""
    e = go.Figure()
    e.add_bar(x=flows["start"], y=-flows["grid_import_kwh"], name=tr("Grid import"), marker_color=GRID)
    e.add_bar(x=flows["start"], y=flows["grid_export_kwh"], name=tr("Grid export"), marker_color=PRODUCTION)
    v = go.Figure()
    v.add_bar(x=flows["start"], y=-flows["value_grid_import_ct"] / 100, name=tr("Grid import cost"), marker_color=GRID)
    v.add_bar(x=flows["start"], y=flows["value_grid_export_ct"] / 100, name=tr("Grid export revenue"),
              marker_color=PRODUCTION)
    return _layout(e, tr("Grid energy"), "kWh"), _layout(v, tr("Grid value"), "CHF")


def price_figure(flows, title: str | None = None) -> go.Figure:
    """p_con (what houses pay) and p_pv (what producers get), ct/kWh."""
    fig = go.Figure()
    fig.add_scatter(x=flows["start"], y=flows["p_con"], name=tr("p_con (house buys)"), mode="lines",
                    line=dict(color=CONSUMPTION, shape="hv"))
    fig.add_scatter(x=flows["start"], y=flows["p_pv"], name=tr("p_pv (PV delivery)"), mode="lines",
                    line=dict(color=PRODUCTION, shape="hv"))
    return _layout(fig, tr("Price signal") if title is None else title, "ct/kWh")


def share_figure(shares) -> go.Figure:
    """A LEG's consumption (negative) and production (positive), each split into the LEG share and
    the grid share the grid operator measured (kWh; analytics.share_flows)."""
    fig = go.Figure()
    fig.add_bar(x=shares["start"], y=-shares["leg_consumed_kwh"], name=tr("LEG share consumed"),
                marker_color=CONSUMPTION)
    fig.add_bar(x=shares["start"], y=-shares["grid_consumed_kwh"], name=tr("Grid share consumed"), marker_color=GRID)
    fig.add_bar(x=shares["start"], y=shares["leg_produced_kwh"], name=tr("LEG share produced"),
                marker_color=PRODUCTION)
    fig.add_bar(x=shares["start"], y=shares["grid_fed_in_kwh"], name=tr("Grid share fed in"),
                marker_color=GRID_FED_IN)
    return _layout(fig, tr("LEG share and grid share"), "kWh")


# plotly.js's own texts that these charts can show (the mode bar, a double click, a snapshot),
# translated through the catalogues; plotly's locale of each language (assets/plotly-locales.js)
PLOTLY_TEXTS = (N_("Download plot as a png"), N_("Zoom"), N_("Pan"), N_("Box Select"), N_("Lasso Select"),
                N_("Zoom in"), N_("Zoom out"), N_("Autoscale"), N_("Reset axes"), N_("Toggle Spike Lines"),
                N_("Show closest data on hover"), N_("Compare data on hover"), N_("Double-click to zoom back out"),
                N_("Taking snapshot - this may take a few seconds"), N_("Snapshot succeeded"))
PLOTLY_DATE = {"de": "%d.%m.%Y", "fr": "%d.%m.%Y", "it": "%d.%m.%Y"}


def plotly_locale(lang: str) -> dict:
    """plotly.js's locale of ``lang`` (its ``dictionary`` and ``format``): month and day names and
    number symbols from Babel (the Swiss locale), the texts from the catalogue."""
    from babel.dates import get_day_names, get_month_names
    from babel.numbers import get_decimal_symbol, get_group_symbol
    loc = LOCALES[lang]
    days = lambda width: [get_day_names(width, locale=loc)[i] for i in (6, 0, 1, 2, 3, 4, 5)]   # Sunday first
    months = lambda width: [get_month_names(width, locale=loc)[i] for i in range(1, 13)]
    return {"moduleType": "locale", "name": lang,
            "dictionary": {t: catalogue(lang)[t] for t in PLOTLY_TEXTS if t in catalogue(lang)},
            "format": {"days": days("wide"), "shortDays": days("abbreviated"), "months": months("wide"),
                       "shortMonths": months("abbreviated"), "date": PLOTLY_DATE[lang],
                       "decimal": get_decimal_symbol(loc), "thousands": get_group_symbol(loc)}}


def plotly_locales_js() -> str:
    """assets/plotly-locales.js: each language's locale, registered with plotly.js whether it is
    loaded already or later (plotly.js reads ``window.PlotlyLocales`` when it starts)."""
    import json
    out = ["// Written by `python scripts/i18n.py plotly` from Babel and the catalogues; do not edit.\n"]
    for lang in LANGUAGES:
        if lang == "en":
            continue
        out.append(f"(function () {{ var locale = {json.dumps(plotly_locale(lang), ensure_ascii=False, sort_keys=True)};\n"
                   "  if (typeof Plotly === 'undefined') { (window.PlotlyLocales = window.PlotlyLocales || []).push(locale); }\n"
                   "  else { Plotly.register(locale); } })();\n")
    return "".join(out)
