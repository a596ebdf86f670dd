"""Grid: the community's exchange with the grid, energy and value."""
import dash
import pandas as pd
from dash import Input, Output, callback, dcc, html

import analytics
from components.charts import grid_figures
from components.controls import range_controls
from web import current

dash.register_page(__name__, path="/grid", name="Grid", order=1)


def layout(**_):
    return html.Div([html.H3("Grid"), range_controls("grid"), dcc.Graph(id="grid-energy"), dcc.Graph(id="grid-value")])


@callback(Output("grid-energy", "figure"), Output("grid-value", "figure"),
          Input("grid-range", "value"), Input("grid-bucket", "value"), Input("grid-refresh", "n_intervals"))
def _update(range_name, bucket, _n):
    c = current().community
    rng = analytics.resolve_range(range_name, pd.Timestamp.now(tz="UTC"), c.tz)
    if bucket:
        rng = analytics.Range(rng.start, rng.end, bucket)
    return grid_figures(analytics.community_flows(c, rng))
