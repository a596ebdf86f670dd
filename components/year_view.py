"""The year page's figures: month by month, a year beside the year before (analytics.year_months)."""
from __future__ import annotations

import pandas as pd
import plotly.graph_objects as go

import analytics
import i18n
from i18n import tr


def year_choices(community, now: pd.Timestamp) -> list[int]:
    """The years to offer, newest first: from the year of the first listed period to this one."""
    this = now.tz_convert(community.tz).year
    periods = community.periods()
    first = min((int(p["period_id"][:4]) for p in periods), default=this)
    return list(range(this, first - 1, -1))


def _month_labels(lang: str) -> list[str]:
    from babel.dates import get_month_names
    names = get_month_names("abbreviated", locale=i18n.LOCALES[lang])
    return [names[m] for m in range(1, 13)]


def year_view(community, year: int) -> tuple[list[go.Figure], dict]:
    """The figures (energy, self-sufficiency, savings) for ``year`` beside ``year - 1``, and the
    year's totals (consumption_kwh, production_kwh, savings_chf and last year's savings)."""
    lang = i18n.language()
    months = _month_labels(lang)
    this, last = analytics.year_months(community, year), analytics.year_months(community, year - 1)
    energy = go.Figure([
        go.Bar(x=months, y=this["consumption_kwh"], name=tr("Consumption {year}", year=year), marker_color="#d9534f"),
        go.Bar(x=months, y=last["consumption_kwh"], name=tr("Consumption {year}", year=year - 1),
               marker_color="#f0b7b5"),
        go.Bar(x=months, y=this["production_kwh"], name=tr("Production {year}", year=year), marker_color="#f0ad4e"),
        go.Bar(x=months, y=last["production_kwh"], name=tr("Production {year}", year=year - 1),
               marker_color="#f7d9a8"),
    ])
    energy.update_layout(barmode="group", title=tr("Energy by month"), yaxis_title="kWh", margin={"t": 50})
    pct = lambda s: [None if v is None or pd.isna(v) else round(100 * v, 1) for v in s]
    autarky = go.Figure([
        go.Bar(x=months, y=pct(this["self_sufficiency"]), name=str(year), marker_color="#5cb85c"),
        go.Bar(x=months, y=pct(last["self_sufficiency"]), name=str(year - 1), marker_color="#b5dfb5"),
    ])
    autarky.update_layout(barmode="group", title=tr("Self-sufficiency by month"), yaxis_title="%",
                          yaxis_range=[0, 100], margin={"t": 50})
    savings = go.Figure([
        go.Bar(x=months, y=this["savings_chf"], name=str(year), marker_color="#0275d8"),
        go.Bar(x=months, y=last["savings_chf"], name=str(year - 1), marker_color="#9cc4ec"),
    ])
    savings.update_layout(barmode="group", title=tr("Savings against the grid alone by month"), yaxis_title="CHF",
                          margin={"t": 50})
    totals = {"consumption_kwh": float(this["consumption_kwh"].sum()),
              "production_kwh": float(this["production_kwh"].sum()),
              "savings_chf": round(float(this["savings_chf"].sum()), 2),
              "savings_last_chf": round(float(last["savings_chf"].sum()), 2)}
    return [energy, autarky, savings], totals


def year_summary(year: int, totals: dict) -> str:
    return tr("{year}: consumption {consumption} kWh, production {production} kWh, savings against the grid "
              "alone CHF {savings} ({last_year}: CHF {last}).", year=year,
              consumption=i18n.number(totals["consumption_kwh"], 0), production=i18n.number(totals["production_kwh"], 0),
              savings=i18n.chf(totals["savings_chf"]), last_year=year - 1, last=i18n.chf(totals["savings_last_chf"]))


def xlsx_headers() -> dict[str, str]:
    """The workbook's column names in the request's language."""
    return {"month": tr("Month"), "consumption_kwh": tr("Consumption kWh"), "production_kwh": tr("Production kWh"),
            "grid_import_kwh": tr("Grid import kWh"), "self_sufficiency": tr("Self-sufficiency"),
            "cost_chf": tr("Cost CHF"), "credit_chf": tr("Credit CHF"),
            "savings_chf": tr("Savings CHF"), "total": tr("Total")}
