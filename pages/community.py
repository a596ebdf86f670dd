"""Community: energy flow, value flow, price signal and KPIs over a chosen range."""
import dash
import pandas as pd
from dash import Output, callback, html

from components.controls import graph, range_callbacks, range_controls, range_inputs
from components.views import community_view, page_range
from auth.web import page_denied
from i18n import N_, tr
from web import current

dash.register_page(__name__, path="/", name=N_("Community"), order=0)


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    return html.Div([
        html.H3(tr("Community")),
        range_controls("community"),
        html.Div(id="community-kpis"),
        graph(id="community-energy"), graph(id="community-value"), graph(id="community-price"),
        html.Div(id="community-shares"),
    ])


@callback(Output("community-kpis", "children"), Output("community-energy", "figure"),
          Output("community-value", "figure"), Output("community-price", "figure"),
          Output("community-shares", "children"), *range_inputs("community"))
def _update(range_name, bucket, first_day, last_day, _n):
    c = current().community
    return community_view(c, page_range(c, range_name, bucket, first_day, last_day, pd.Timestamp.now(tz="UTC")))


range_callbacks("community")
