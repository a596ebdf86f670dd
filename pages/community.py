"""Community: energy flow, value flow, price signal and KPIs over a chosen range."""
import dash
import pandas as pd
from dash import Input, Output, callback, dcc, html

from components.controls import range_controls
from components.views import community_view
from web import current

dash.register_page(__name__, path="/", name="Community", order=0)


def layout(**_):
    return html.Div([
        html.H3("Community"),
        range_controls("community"),
        html.Div(id="community-kpis"),
        dcc.Graph(id="community-energy"), dcc.Graph(id="community-value"), dcc.Graph(id="community-price"),
    ])


@callback(Output("community-kpis", "children"), Output("community-energy", "figure"),
          Output("community-value", "figure"), Output("community-price", "figure"),
          Input("community-range", "value"), Input("community-bucket", "value"), Input("community-refresh", "n_intervals"))
def _update(range_name, bucket, _n):
    return community_view(current().community, range_name, bucket, pd.Timestamp.now(tz="UTC"))
