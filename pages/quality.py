"""Data quality: per house the estimated, reset and quarantined intervals of a month; the
quarantined readings with their reasons; missing intervals from the settlement."""
import dash
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, callback, dcc, html

from components.controls import data_grid

import monitoring
from billing.settlement import parse_period
from components.views import leg_section, period_options
from auth.web import page_denied
from i18n import N_, tr
from web import current

dash.register_page(__name__, path="/quality", name=N_("Data quality"), order=6)

HOUSE_COLUMNS = [("house", N_("House")), ("intervals", N_("Intervals")), ("estimated", N_("Estimated")),
                 ("reset", N_("Reset")), ("quarantined", N_("Quarantined"))]
QUARANTINE_COLUMNS = [("meter_id", N_("Meter id")), ("time", N_("Time")), ("reason", N_("Reason"))]
CROSSCHECK_COLUMNS = [("meter", N_("Meter")), ("day", N_("Day")), ("measured_import_kwh", N_("Measured import kWh")),
                      ("computed_import_kwh", N_("Computed import kWh")),
                      ("measured_export_kwh", N_("Measured export kWh")),
                      ("computed_export_kwh", N_("Computed export kWh")), ("difference", N_("Difference"))]


def columns(spec, **extra) -> list[dict]:
    """AG Grid column definitions with the headers in the request's language; ``extra``: more
    settings of a column by its field."""
    return [{"field": f, "headerName": tr(h), **extra.get(f, {})} for f, h in spec]


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    c = current().community
    opts = period_options(c, pd.Timestamp.now(tz="UTC"))
    return html.Div([
        html.H3(tr("Data quality")),
        dbc.Row(dbc.Col([dbc.Label(tr("Period")),
                         dcc.Dropdown(id="quality-period", options=opts, value=opts[0]["value"], clearable=False)],
                        md=4), className="mb-3"),
        html.Div(id="quality-missing"),
        html.Div(id="quality-leg"),
        data_grid(id="quality-houses", columnDefs=columns(HOUSE_COLUMNS), columnSize="sizeToFit",
                   style={"height": "240px"}),
        html.H5(tr("Quarantined readings (kept aside, not billed)"), className="mt-3"),
        data_grid(id="quality-quarantine", columnDefs=columns(QUARANTINE_COLUMNS, reason={"flex": 3}),
                   style={"height": "240px"}),
        html.H5(tr("Total meter cross-check (measured grid exchange vs computed from the house meters)"),
                className="mt-3"),
        data_grid(id="quality-crosscheck", columnDefs=columns(CROSSCHECK_COLUMNS), columnSize="autoSize",
                   style={"height": "240px"}),
    ])


@callback(Output("quality-houses", "rowData"), Output("quality-quarantine", "rowData"),
          Output("quality-missing", "children"), Output("quality-crosscheck", "rowData"),
          Output("quality-leg", "children"), Input("quality-period", "value"))
def _update(period):
    c = current().community
    p = parse_period(period, c.tz)
    q = monitoring.quality_summary(c, p.start, p.end)
    s = c.settle(period, allow_incomplete=True)
    per_house = ", ".join(tr("house {house}: {n}", house=h, n=n) for h, n in s.missing.items())
    if s.missing:
        missing = dbc.Alert(tr("Missing intervals: {houses}", houses=per_house), color="warning")
    else:
        missing = dbc.Alert(tr("No missing intervals."), color="success")
    return q["houses"], q["quarantined"], missing, monitoring.total_crosscheck(c, p.start, p.end), leg_section(c, p)

