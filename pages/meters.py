"""Meters: every meter with its status; meters heard but not registered; the store's health."""
import dash
import dash_ag_grid as dag
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, callback, dcc, html

import monitoring
from web import current

dash.register_page(__name__, path="/meters", name="Meters", order=5)

METER_COLUMNS = [("meter_id", "Meter"), ("house", "House"), ("type", "Type"), ("connection", "Connection"),
                 ("status", "Status"), ("reason", "Reason"), ("last_import_kwh", "Ei kWh"),
                 ("last_export_kwh", "Eo kWh"), ("last_seen", "Last seen"), ("accepted", "Accepted"),
                 ("rejected", "Rejected"), ("resets", "Resets")]


def layout(**_):
    return html.Div([
        html.H3("Meters"), html.Div(id="meters-store"),
        dag.AgGrid(id="meters-grid", columnDefs=[{"field": f, "headerName": h} for f, h in METER_COLUMNS],
                   columnSize="autoSize", style={"height": "320px"}),
        html.H5("Heard on MQTT but not registered (not billed)", className="mt-3"),
        dag.AgGrid(id="meters-unknown", columnDefs=[{"field": f} for f in
                   ("meter_id", "messages", "source", "first_seen", "last_seen")],
                   columnSize="sizeToFit", style={"height": "200px"}),
        dcc.Interval(id="meters-refresh", interval=15_000),
    ])


def store_alert(community):
    h = community.store.health() if hasattr(community.store, "health") else {"backend": "embedded"}
    if h.get("spool_batches"):
        return dbc.Alert(f"InfluxDB: {h['spool_lines']:,} lines waiting in the spool (oldest "
                         f"{h['spool_age_s']:.0f} s); they are written as soon as InfluxDB answers.", color="warning")
    return dbc.Alert(f"Store: {h.get('backend')}" + (", spool empty" if "spool_batches" in h else ""), color="light")


@callback(Output("meters-grid", "rowData"), Output("meters-unknown", "rowData"), Output("meters-store", "children"),
          Input("meters-refresh", "n_intervals"))
def _update(_n):
    s = current()
    now = pd.Timestamp.now(tz="UTC")
    return (monitoring.meter_rows(s.community, s.runtime, now), monitoring.unknown_rows(s.runtime, s.community.tz),
            store_alert(s.community))
