"""My invoices: a member's houses and invoices (issued, and the drafts of the running and the
last month) with their downloads. Managers see every house."""
import dash
import dash_bootstrap_components as dbc
from dash import html

from auth.principal import visible_houses
from auth.web import current_principal
from components.controls import FITTED_GRID, MONEY_COLUMN, WRAPPED_COLUMN, data_grid
from components.views import my_invoice_rows, statement_links
from i18n import N_, tr
from web import current

dash.register_page(__name__, path="/my", name=N_("My invoices"), order=7, members=True)


def layout(**_):
    c = current().community
    houses = visible_houses(current_principal(), c.houses())
    base = dash.get_relative_path("/")
    return html.Div([
        html.H3(tr("My invoices")),
        html.P([(tr("Your houses:") if len(houses) > 1 else tr("Your house:")) + " "]
               + [html.A(h.name, href=f"{base}houses/{h.house_id}", className="me-3") for h in houses]),
        data_grid(id="my-invoices", rowData=my_invoice_rows(c, [h.house_id for h in houses], base),
                   columnDefs=[{"field": "download", "headerName": tr("Download"), "cellRenderer": "markdown",
                                "sortable": False},
                               {"field": "period", "headerName": tr("Period")},
                               {"field": "invoice_id", "headerName": tr("Invoice"), "minWidth": 130, **WRAPPED_COLUMN},
                               {"field": "house", "headerName": tr("House"), **WRAPPED_COLUMN},
                               {"field": "status_text", "headerName": tr("Status")},
                               {"field": "net", "headerName": tr("Amount"), "minWidth": 130, **MONEY_COLUMN,
                                **WRAPPED_COLUMN}],
                   **FITTED_GRID, style={"height": "420px"}),
        dbc.FormText(tr("Drafts change until their month is settled; issued invoices never change (a correction "
                        "comes as a credit note).")),
        html.H5(tr("Annual statements"), className="mt-4"),
        html.Div(statement_links(c, houses, base), id="my-statements"),
    ])
