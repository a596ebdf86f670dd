"""Meters: every meter with its status; meters heard but not registered; the store's health."""
import dash
import dash_ag_grid as dag
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, State, callback, dcc, html

import monitoring
from components.views import adopt
from auth.web import actor, page_denied
from web import current

dash.register_page(__name__, path="/meters", name="Meters", order=5)

METER_COLUMNS = [("meter_id", "Meter"), ("house", "House"), ("type", "Type"), ("connection", "Connection"),
                 ("status", "Status"), ("reason", "Reason"), ("last_import_kwh", "Ei kWh"),
                 ("last_export_kwh", "Eo kWh"), ("last_seen", "Last seen"), ("accepted", "Accepted"),
                 ("rejected", "Rejected"), ("resets", "Resets")]


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    return html.Div([
        html.H3("Meters"), html.Div(id="meters-store"),
        dag.AgGrid(id="meters-grid", columnDefs=[{"field": f, "headerName": h} for f, h in METER_COLUMNS],
                   columnSize="autoSize", style={"height": "320px"}),
        html.H5("Heard on MQTT but not registered (not billed)", className="mt-3"),
        dag.AgGrid(id="meters-unknown", columnDefs=[{"field": f} for f in
                   ("meter_id", "messages", "source", "first_seen", "last_seen")],
                   columnSize="sizeToFit", style={"height": "200px"}, getRowId="params.data.meter_id",
                   dashGridOptions={"rowSelection": {"mode": "singleRow"}}),
        dbc.Row([
            dbc.Col([dbc.Label("House name", html_for="adopt-name"), dbc.Input(id="adopt-name", maxLength=100)], md=4),
            dbc.Col([dbc.Label("Billed from (local date; empty: today)", html_for="adopt-from"),
                     dbc.Input(id="adopt-from", placeholder="YYYY-MM-DD")], md=3),
            dbc.Col(dbc.Button("Adopt selected meter as a house", id="adopt-button", color="primary"), md=4,
                    className="align-self-end"),
        ], className="mt-2"),
        html.Div(id="adopt-result", className="mt-2"),
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


@callback(Output("adopt-result", "children"), Input("adopt-button", "n_clicks"),
          State("meters-unknown", "selectedRows"), State("adopt-name", "value"), State("adopt-from", "value"),
          prevent_initial_call=True)
def _adopt(_n, selected, name, first_day):
    alert, _ok = adopt(current(), (selected or [{}])[0].get("meter_id"), name, first_day, actor())
    return alert
