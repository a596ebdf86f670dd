"""Settlement: a period's invoices (drafts, or issued once closed) and the CSV download."""
import dash
import dash_ag_grid as dag
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, callback, dcc, html

from components.views import period_options, settlement_view
from web import current

dash.register_page(__name__, path="/settlement", name="Settlement", order=4)


def layout(**_):
    c = current().community
    opts = period_options(c, pd.Timestamp.now(tz="UTC"))
    return html.Div([
        html.H3("Settlement"),
        dbc.Row([dbc.Col([dbc.Label("Period"), dcc.Dropdown(id="settle-period", options=opts,
                                                            value=opts[1]["value"], clearable=False)], md=4),
                 dbc.Col(html.A(dbc.Button("Download CSV", color="secondary"), id="settle-csv", href=""),
                         md=3, className="align-self-end")], className="mb-3"),
        html.Div(id="settle-status"),
        dag.AgGrid(id="settle-grid", columnDefs=[{"field": f, "headerName": h} for f, h in (
            ("invoice_id", "Invoice"), ("house_id", "House"), ("house_name", "Name"),
            ("energy_imported_kwh", "Bought kWh"), ("energy_exported_kwh", "Delivered kWh"),
            ("import_cost_ct", "Cost ct"), ("export_revenue_ct", "Credit ct"), ("net_amount_chf", "Net CHF"),
            ("status", "Status"), ("missing_intervals", "Missing intervals"), ("flags", "Flags"))],
            columnSize="autoSize", style={"height": "420px"}),
    ])


@callback(Output("settle-status", "children"), Output("settle-grid", "rowData"), Output("settle-csv", "href"),
          Input("settle-period", "value"))
def _update(period):
    c = current().community
    alert, rows = settlement_view(c, period)
    base = dash.get_relative_path("/")
    return alert, rows, f"{base}api/invoices.csv?period={period}"
