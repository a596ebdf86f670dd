"""Houses: one house's consumption, production and values, its live power and its draft invoice."""
import dash
import dash_bootstrap_components as dbc
import pandas as pd
from dash import Input, Output, callback, dcc, html

from dash.exceptions import PreventUpdate

from auth.principal import can_see_house, visible_houses
from auth.web import current_principal
from components.controls import graph, range_callbacks, range_controls, range_inputs
from components.views import house_view, page_range
from i18n import N_, tr
from web import current

dash.register_page(__name__, path_template="/houses/<house_id>", path="/houses/1", name=N_("Houses"), order=2,
                   members=True)
# members may run this page's callbacks (for their own houses only: checked in each)
MEMBER_OUTPUTS = {"house-energy", "house-value", "house-invoice", "house-power",
                  "house-dates-col", "house-range-error", "house-refresh", "house-live", "house-shares"}


def layout(house_id=None, **_):
    houses = visible_houses(current_principal(), current().community.houses())
    ids = [h.house_id for h in houses]
    if house_id is not None and house_id not in ids and house_id != "1":
        return html.Div([html.H3(tr("Houses")), dbc.Alert(tr("No house {house} to show.", house=house_id),
                                                          color="warning")])
    value = house_id if house_id in ids else (ids[0] if ids else None)
    return html.Div([
        html.H3(tr("Houses")),
        dbc.Row(dbc.Col([dbc.Label(tr("House")), dcc.Dropdown(id="house-select", clearable=False, value=value,
                                                          options=[{"label": h.name, "value": h.house_id} for h in houses])],
                        md=4), className="mb-2"),
        range_controls("house"),
        html.Div(id="house-power"), html.Div(id="house-invoice"), graph(id="house-energy"),
        graph(id="house-value"), html.Div(id="house-shares"),
    ])


@callback(Output("house-energy", "figure"), Output("house-value", "figure"), Output("house-invoice", "children"),
          Output("house-power", "children"), Output("house-shares", "children"),
          Input("house-select", "value"), *range_inputs("house"))
def _update(house_id, range_name, bucket, first_day, last_day, _n):
    c = current().community
    if not can_see_house(current_principal(), house_id):
        raise PreventUpdate
    now = pd.Timestamp.now(tz="UTC")
    return house_view(c, house_id, page_range(c, range_name, bucket, first_day, last_day, now), now)


range_callbacks("house")
