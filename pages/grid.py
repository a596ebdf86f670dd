"""Grid: the community's exchange with the grid, energy and value."""
import dash
import pandas as pd
from dash import Output, callback, html

from components.controls import graph, range_callbacks, range_controls, range_inputs
from components.views import grid_view, page_range
from auth.web import page_denied
from i18n import N_, tr
from web import current

dash.register_page(__name__, path="/grid", name=N_("Grid"), order=1)


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    return html.Div([html.H3(tr("Grid")), range_controls("grid"), graph(id="grid-energy"),
                     graph(id="grid-value"), html.Div(id="grid-shares")])


@callback(Output("grid-energy", "figure"), Output("grid-value", "figure"), Output("grid-shares", "children"),
          *range_inputs("grid"))
def _update(range_name, bucket, first_day, last_day, _n):
    c = current().community
    return grid_view(c, page_range(c, range_name, bucket, first_day, last_day, pd.Timestamp.now(tz="UTC")))


range_callbacks("grid")
