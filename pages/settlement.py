"""Settlement: periods with their completeness, a period's invoices (drafts, or issued once
closed), closing a period (confirmed, in the background with progress) and the downloads."""
import dash
import dash_bootstrap_components as dbc
from dash import Input, Output, State, callback, dcc, html, no_update

from billing.mail import configured as mail_configured
from components.controls import FITTED_GRID, MONEY_COLUMN, NUMBER_COLUMN, WRAPPED_COLUMN, data_grid
from components.views import (assign_payment, close_job, invoice_action, job_progress, mail_job, payment_grids,
                              period_rows, settlement_view, upload_bank_files)
from auth.web import actor, page_denied
from i18n import N_, tr
from web import current

dash.register_page(__name__, path="/settlement", name=N_("Settlement"), order=4)

# the documents first: on a narrow screen they stay in sight, the other columns scroll in the grid
INVOICE_COLUMNS = [("download", N_("Download")), ("invoice_id", N_("Invoice")), ("house_name", N_("House")),
                   ("net_amount_chf", N_("Net")), ("import_cost_chf", N_("Cost CHF")),
                   ("export_revenue_chf", N_("Credit CHF")), ("energy_imported_kwh", N_("Bought kWh")),
                   ("energy_exported_kwh", N_("Delivered kWh")), ("status_text", N_("Status")),
                   ("missing_intervals", N_("Missing intervals")), ("flags", N_("Flags")), ("mail", N_("E-mail"))]
INVOICE_GRID = dict(download={"cellRenderer": "markdown", "minWidth": 110, "sortable": False},
                    invoice_id={"minWidth": 130, **WRAPPED_COLUMN}, house_name=WRAPPED_COLUMN,
                    net_amount_chf={**MONEY_COLUMN, **WRAPPED_COLUMN, "minWidth": 130},
                    import_cost_chf=MONEY_COLUMN, export_revenue_chf=MONEY_COLUMN, status_text=WRAPPED_COLUMN,
                    energy_imported_kwh=NUMBER_COLUMN, energy_exported_kwh=NUMBER_COLUMN,
                    flags=WRAPPED_COLUMN, mail={**WRAPPED_COLUMN, "minWidth": 130})
OVERDUE_COLUMNS = [("invoice_id", N_("Invoice")), ("house_id", N_("House")), ("house_name", N_("Name")),
                   ("due_on", N_("Due on")), ("amount_due_chf", N_("Amount due CHF")), ("paid_chf", N_("Paid CHF")),
                   ("status_text", N_("Status"))]
OPEN_COLUMNS = [("booking_date", N_("Booked")), ("amount_chf", N_("Amount CHF")), ("reference", N_("Reference")),
                ("debtor", N_("Paid by")), ("what", N_("What")), ("invoice_id", N_("Invoice")),
                ("file_name", N_("Bank file"))]
PERIOD_COLUMNS = [("period_id", N_("Period")), ("status_text", N_("Status")), ("invoices", N_("Invoices")),
                  ("missing_intervals", N_("Missing intervals")), ("houses_missing", N_("Houses with gaps")),
                  ("closed_at", N_("Closed at")), ("closed_by", N_("Closed by"))]
# a period in the dropdown, by its status
PERIOD_LABELS = {"running": N_("{period} (running)"), "open": N_("{period} (open)"),
                 "closed": N_("{period} (closed)")}


def columns(spec, **extra) -> list[dict]:
    """AG Grid column definitions with the headers in the request's language; ``extra``: more
    settings of a column by its field."""
    return [{"field": f, "headerName": tr(h), **extra.get(f, {})} for f, h in spec]


def period_label(row: dict) -> str:
    label = PERIOD_LABELS.get(row["status"])
    return tr(label, period=row["period_id"]) if label else f"{row['period_id']} ({row['status']})"


def upload_text() -> list:
    """The bank file drop zone's sentence, its "choose files" a link wherever the language puts it."""
    before, _, after = tr("Bank files (camt.054 or camt.053): drop them here or {link}", link="\0").partition("\0")
    return [part for part in (before, html.A(tr("choose files"), href="#"), after) if not isinstance(part, str) or part]


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    rows = period_rows(current().community)
    opts = [{"label": period_label(r), "value": r["period_id"]} for r in rows]
    default = next((r["period_id"] for r in rows if r["status"] != "running"), rows[0]["period_id"])
    return html.Div([
        html.H3(tr("Settlement")),
        dbc.Row([
            dbc.Col([dbc.Label(tr("Period")), dcc.Dropdown(id="settle-period", options=opts, value=default,
                                                       clearable=False)], md=3),
            dbc.Col(dbc.ButtonGroup(className="flex-wrap", children=[
                html.A(dbc.Button(tr("Download CSV"), color="secondary"), id="settle-csv", href=""),
                html.A(dbc.Button(tr("Download all (ZIP)"), color="secondary"), id="settle-zip", href=""),
                dbc.Button(tr("Close period…"), id="settle-close", color="danger"),
            ]), md=6, className="align-self-end"),
        ], className="mb-3"),
        html.Div(id="settle-status"),
        dbc.Progress(id="settle-progress", value=0, striped=True, animated=True, className="mb-2",
                     style={"display": "none"}),
        html.Div(id="settle-job-message"),
        dcc.Store(id="settle-job"), dcc.Interval(id="settle-poll", interval=500, disabled=True),
        data_grid(id="settle-grid", columnDefs=columns(INVOICE_COLUMNS, **INVOICE_GRID), **FITTED_GRID,
                   style={"height": "420px"}, getRowId="params.data.invoice_id",
                   dashGridOptions={"rowSelection": {"mode": "singleRow"}}),
        dbc.Row([
            dbc.Col(dbc.Input(id="settle-reason", placeholder=tr("Note or reason (required to cancel)"), maxLength=200),
                    md=4),
            dbc.Col(dbc.ButtonGroup(className="flex-wrap", children=[
                dbc.Button(tr("Mark paid"), id="settle-paid", color="success", outline=True),
                dbc.Button(tr("Cancel with a credit note"), id="settle-cancel-invoice", color="danger", outline=True),
                dbc.Button(tr("Release interrupted e-mail"), id="settle-release", color="secondary", outline=True),
                dbc.Button(tr("E-mail issued invoices"), id="settle-mail", color="primary",
                           disabled=not mail_configured(current().community.cfg),
                           title=tr("needs smtp.host in config.yaml")),
            ]), md=8),
        ], className="mt-2"),
        html.Div(id="settle-action-result", className="mt-2"),
        html.H5(tr("Payments"), className="mt-4"),
        dbc.Row([
            dbc.Col(dcc.Upload(id="settle-camt", multiple=True, accept=".xml,application/xml,text/xml",
                               children=html.Div(upload_text()),
                               className="border border-secondary rounded p-3 text-center"), md=6),
            dbc.Col([dbc.ButtonGroup(className="flex-wrap", children=[
                html.A(dbc.Button(tr("Payouts (CSV)"), color="secondary"), id="settle-payouts-csv", href=""),
                html.A(dbc.Button(tr("Payouts for the bank (pain.001)"), color="secondary"), id="settle-payouts-xml",
                       href=""),
            ], id="settle-payouts"), html.Div(id="settle-payouts-note", className="form-text")],
                md=6, className="align-self-center"),
        ]),
        dcc.Loading(html.Div(id="settle-camt-result", className="mt-2")),
        html.H6(tr("Overdue invoices"), className="mt-3"),
        data_grid(id="settle-overdue", columnDefs=columns(OVERDUE_COLUMNS, amount_due_chf=MONEY_COLUMN,
                                                           paid_chf=MONEY_COLUMN),
                   **FITTED_GRID, style={"height": "220px"}),
        html.H6(tr("Bank transactions to assign by hand"), className="mt-3"),
        data_grid(id="settle-open", columnDefs=columns(OPEN_COLUMNS, amount_chf=MONEY_COLUMN, debtor=WRAPPED_COLUMN,
                                                        what=WRAPPED_COLUMN),
                   **FITTED_GRID, style={"height": "220px"}, getRowId="params.data.tx_id",
                   dashGridOptions={"rowSelection": {"mode": "singleRow"}}),
        dbc.Row([
            dbc.Col(dbc.Input(id="settle-assign-invoice", placeholder=tr("Invoice it pays, e.g. INV-2026-004"),
                              maxLength=40), md=4),
            dbc.Col(dbc.Button(tr("Assign to this invoice"), id="settle-assign", color="success", outline=True), md=4),
        ], className="mt-2"),
        html.Div(id="settle-assign-result", className="mt-2"),
        html.H5(tr("Periods"), className="mt-3"),
        data_grid(id="settle-periods", rowData=rows, columnDefs=columns(PERIOD_COLUMNS),
                   columnSize="autoSize", style={"height": "300px"}),
        dbc.Modal([
            dbc.ModalHeader(dbc.ModalTitle(tr("Close this period?"))),
            dbc.ModalBody(id="settle-confirm-text"),
            dbc.ModalFooter([dbc.Button(tr("Cancel"), id="settle-cancel", color="secondary"),
                             dbc.Button(tr("Issue the invoices and close"), id="settle-confirm", color="danger")]),
        ], id="settle-modal", is_open=False),
    ])


@callback(Output("settle-status", "children"), Output("settle-grid", "rowData"), Output("settle-csv", "href"),
          Output("settle-zip", "href"), Output("settle-close", "disabled"),
          Input("settle-period", "value"), Input("settle-job", "data"), Input("settle-action-result", "children"),
          Input("settle-camt-result", "children"), Input("settle-assign-result", "children"))
def _update(period, *_):
    c = current().community
    alert, rows, closable = settlement_view(c, period, dash.get_relative_path("/"))
    api = dash.get_relative_path("/api/")
    return alert, rows, f"{api}invoices.csv?period={period}", f"{api}invoices.zip?period={period}", not closable


@callback(Output("settle-modal", "is_open"), Output("settle-confirm-text", "children"),
          Input("settle-close", "n_clicks"), Input("settle-cancel", "n_clicks"), Input("settle-confirm", "n_clicks"),
          State("settle-period", "value"), prevent_initial_call=True)
def _confirm(_open, _cancel, _confirm, period):
    if dash.ctx.triggered_id != "settle-close":
        return False, no_update
    n = len(current().community.settle(period, allow_incomplete=True).invoices)
    return True, tr("Closing {period} issues {n} invoices with numbers that cannot be reused. Issued invoices never "
                    "change; corrections are made with credit notes.", period=period, n=n)


@callback(Output("settle-job", "data"), Output("settle-poll", "disabled"), Output("settle-progress", "value"),
          Output("settle-progress", "style"), Output("settle-job-message", "children"),
          Input("settle-confirm", "n_clicks"), Input("settle-mail", "n_clicks"), Input("settle-poll", "n_intervals"),
          State("settle-period", "value"), State("settle-job", "data"), prevent_initial_call=True)
def _job(_confirm, _mail, _tick, period, job):
    s = current()
    if dash.ctx.triggered_id in ("settle-confirm", "settle-mail"):
        start = close_job if dash.ctx.triggered_id == "settle-confirm" else mail_job
        job, message = start(s, period, actor())
        if job is None:
            return no_update, True, 0, {"display": "none"}, message
        return job, False, 0, {}, tr("Started…")
    return job_progress(s.jobs, job)


@callback(Output("settle-action-result", "children"), Input("settle-paid", "n_clicks"),
          Input("settle-cancel-invoice", "n_clicks"), Input("settle-release", "n_clicks"),
          State("settle-grid", "selectedRows"), State("settle-reason", "value"), prevent_initial_call=True)
def _action(_paid, _cancel, _release, selected, reason):
    action = {"settle-paid": "paid", "settle-cancel-invoice": "cancel", "settle-release": "release"}[dash.ctx.triggered_id]
    return invoice_action(current().community, action, selected, reason, actor())


@callback(Output("settle-payouts-csv", "href"), Output("settle-payouts-xml", "href"),
          Output("settle-payouts", "style"), Output("settle-payouts-note", "children"),
          Input("settle-period", "value"))
def _payouts(period):
    closed = next((r for r in period_rows(current().community) if r["period_id"] == period), {}).get("status") == "closed"
    if not closed:
        return "", "", {"display": "none"}, tr("Credits are paid out once the period is closed.")
    api = dash.get_relative_path("/api/")
    return (f"{api}payouts.csv?period={period}", f"{api}payouts.xml?period={period}", {},
            tr("Credits of this period for the houses with an IBAN; the CSV lists the others."))


@callback(Output("settle-camt-result", "children"), Input("settle-camt", "contents"),
          State("settle-camt", "filename"), prevent_initial_call=True)
def _bank_files(contents, names):
    return upload_bank_files(current().community, contents, names, actor())


@callback(Output("settle-assign-result", "children"), Input("settle-assign", "n_clicks"),
          State("settle-open", "selectedRows"), State("settle-assign-invoice", "value"), prevent_initial_call=True)
def _assign(_n, selected, invoice_id):
    return assign_payment(current().community, selected, invoice_id, actor())


@callback(Output("settle-overdue", "rowData"), Output("settle-open", "rowData"),
          Input("settle-camt-result", "children"), Input("settle-assign-result", "children"),
          Input("settle-action-result", "children"))
def _payments(*_):
    return payment_grids(current().community)
