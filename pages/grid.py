"""Grid: the community's exchange with the grid, energy and value."""
import dash
import pandas as pd
from dash import Input, Output, callback, dcc, html

from components.controls import range_callbacks, range_controls
from components.views import grid_view, page_range
from auth.web import page_denied
from web import current

dash.register_page(__name__, path="/grid", name="Grid", order=1)


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    return html.Div([html.H3("Grid"), range_controls("grid"), dcc.Graph(id="grid-energy"), dcc.Graph(id="grid-value")])


@callback(Output("grid-energy", "figure"), Output("grid-value", "figure"),
          Input("grid-range", "value"), Input("grid-bucket", "value"), Input("grid-dates", "start_date"),
          Input("grid-dates", "end_date"), Input("grid-refresh", "n_intervals"))
def _update(range_name, bucket, first_day, last_day, _n):
    c = current().community
    return grid_view(c, page_range(c, range_name, bucket, first_day, last_day, pd.Timestamp.now(tz="UTC")))


range_callbacks("grid")
