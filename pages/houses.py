"""Houses: one house's consumption, production and values, and its draft invoice."""
import dash
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, callback, dcc, html

import analytics
from components.charts import energy_figure, value_figure
from components.controls import range_controls
from web import current

dash.register_page(__name__, path_template="/houses/<house_id>", path="/houses/1", name="Houses", order=2)


def layout(house_id=None, **_):
    houses = current().community.houses()
    ids = [h.house_id for h in houses]
    value = house_id if house_id in ids else (ids[0] if ids else None)
    return html.Div([
        html.H3("Houses"),
        dbc.Row(dbc.Col([dbc.Label("House"), dcc.Dropdown(id="house-select", clearable=False, value=value,
                                                          options=[{"label": h.name, "value": h.house_id} for h in houses])],
                        md=4), className="mb-2"),
        range_controls("house"),
        html.Div(id="house-invoice"), dcc.Graph(id="house-energy"), dcc.Graph(id="house-value"),
    ])


def draft_invoice_card(invoice: dict | None):
    if invoice is None:
        return dbc.Alert("No invoice for this house in the current period.", color="secondary")
    net = float(invoice["net_amount_chf"])
    words = "credit to you" if net >= 0 else "amount due"
    return dbc.Alert([html.Strong(f"Current period {invoice['period_start'][:7]} (draft): "),
                      f"bought {invoice['energy_imported_kwh']} kWh, delivered {invoice['energy_exported_kwh']} kWh; "
                      f"{words} {abs(net):,.2f} CHF"], color="info")


@callback(Output("house-energy", "figure"), Output("house-value", "figure"), Output("house-invoice", "children"),
          Input("house-select", "value"), Input("house-range", "value"), Input("house-bucket", "value"),
          Input("house-refresh", "n_intervals"))
def _update(house_id, range_name, bucket, _n):
    c = current().community
    now = pd.Timestamp.now(tz="UTC")
    rng = analytics.resolve_range(range_name, now, c.tz)
    if bucket:
        rng = analytics.Range(rng.start, rng.end, bucket)
    flows = analytics.house_flows(c, house_id, rng)
    s = c.settle(now.tz_convert(c.tz).strftime("%Y-%m"), allow_incomplete=True)
    inv = next((i for i in s.invoices if i["house_id"] == house_id), None)
    return energy_figure(flows, house=True), value_figure(flows), draft_invoice_card(inv)
