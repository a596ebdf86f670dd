"""Year: month by month, this year beside last year (energy, self-sufficiency, savings), and the
monthly figures as an Excel download."""
import dash
import pandas as pd
from dash import Input, Output, callback, dcc, html
from dash.exceptions import PreventUpdate

from auth.web import page_denied
from components.controls import graph
from components.year_view import year_choices, year_summary, year_view
from i18n import N_, tr
from web import current

dash.register_page(__name__, path="/year", name=N_("Year"), order=2)


def layout(**kwargs):
    if (denied := page_denied()) is not None:
        return denied
    c = current().community
    years = year_choices(c, pd.Timestamp.now(tz="UTC"))
    base = dash.get_relative_path("/")
    return html.Div([
        html.H3(tr("Year")),
        html.Div([html.Label(tr("Year"), htmlFor="year-choice", className="me-2"),
                  dcc.Dropdown(id="year-choice", options=[{"label": str(y), "value": y} for y in years],
                               value=years[0], clearable=False, style={"width": "10rem"}),
                  html.A(tr("Download the monthly figures (Excel)"), id="year-xlsx", className="btn btn-outline-primary ms-3",
                         href=f"{base}api/year/{years[0]}.xlsx")],
                 className="d-flex align-items-center mb-3"),
        html.P(id="year-summary"),
        graph(id="year-energy"), graph(id="year-autarky"), graph(id="year-savings"),
    ])


@callback(Output("year-energy", "figure"), Output("year-autarky", "figure"), Output("year-savings", "figure"),
          Output("year-summary", "children"), Output("year-xlsx", "href"), Input("year-choice", "value"))
def _update(year):
    if isinstance(year, bool) or not isinstance(year, int) or not 1970 <= year <= 2200:
        raise PreventUpdate                      # not a year the dropdown offers
    c = current().community
    figures, totals = year_view(c, year)
    return (*figures, year_summary(year, totals), dash.get_relative_path(f"/api/year/{year}.xlsx"))
