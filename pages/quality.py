"""Data quality: per house the estimated, reset and quarantined intervals of a month; the
quarantined readings with their reasons; missing intervals from the settlement."""
import dash
import dash_ag_grid as dag
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, callback, dcc, html

import monitoring
from billing.settlement import parse_period
from components.views import period_options
from auth.web import page_denied
from web import current

dash.register_page(__name__, path="/quality", name="Data quality", order=6)


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    c = current().community
    opts = period_options(c, pd.Timestamp.now(tz="UTC"))
    return html.Div([
        html.H3("Data quality"),
        dbc.Row(dbc.Col([dbc.Label("Period"), dcc.Dropdown(id="quality-period", options=opts, value=opts[0]["value"],
                                                           clearable=False)], md=4), className="mb-3"),
        html.Div(id="quality-missing"),
        dag.AgGrid(id="quality-houses", columnDefs=[{"field": f} for f in
                   ("house", "intervals", "estimated", "reset", "quarantined")], columnSize="sizeToFit",
                   style={"height": "240px"}),
        html.H5("Quarantined readings (kept aside, not billed)", className="mt-3"),
        dag.AgGrid(id="quality-quarantine", columnDefs=[{"field": "meter_id"}, {"field": "time"},
                                                        {"field": "reason", "flex": 3}], style={"height": "240px"}),
        html.H5("Total meter cross-check (measured grid exchange vs computed from the house meters)",
                className="mt-3"),
        dag.AgGrid(id="quality-crosscheck", columnDefs=[{"field": f} for f in (
            "meter", "day", "measured_import_kwh", "computed_import_kwh", "measured_export_kwh",
            "computed_export_kwh", "difference")], columnSize="autoSize", style={"height": "240px"}),
    ])


@callback(Output("quality-houses", "rowData"), Output("quality-quarantine", "rowData"),
          Output("quality-missing", "children"), Output("quality-crosscheck", "rowData"),
          Input("quality-period", "value"))
def _update(period):
    c = current().community
    p = parse_period(period, c.tz)
    q = monitoring.quality_summary(c, p.start, p.end)
    s = c.settle(period, allow_incomplete=True)
    missing = dbc.Alert("No missing intervals." if not s.missing else
                        "Missing intervals: " + ", ".join(f"house {h}: {n}" for h, n in s.missing.items()),
                        color="success" if not s.missing else "warning")
    return q["houses"], q["quarantined"], missing, monitoring.total_crosscheck(c, p.start, p.end)
