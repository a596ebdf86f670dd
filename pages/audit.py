"""Audit: who did what and when (logins, tariff changes, period closes, invoice status changes,
mails, tokens), the accounts and the API tokens. Managers only."""
import dash
from dash import html

from components.controls import data_grid

from auth.web import page_denied
from i18n import N_, tr
from web import current_accounts

dash.register_page(__name__, path="/audit", name=N_("Audit"), order=8)

LOG_COLUMNS = [("at", N_("At")), ("actor", N_("Who")), ("action", N_("Action")), ("detail", N_("Detail")),
               ("address", N_("Address"))]
USER_COLUMNS = [("username", N_("User name")), ("role", N_("Role")), ("houses", N_("Houses")), ("active", N_("Active")),
                ("password_changed_at", N_("Password changed at"))]
TOKEN_COLUMNS = [("token_id", N_("Token ID")), ("scope", N_("Scope")), ("label", N_("Label")),
                 ("created_by", N_("Created by")), ("created_at", N_("Created at")), ("revoked_at", N_("Revoked at")),
                 ("last_used_at", N_("Last used at"))]


def columns(spec) -> list[dict]:
    """AG Grid column definitions with the headers in the request's language."""
    return [{"field": f, "headerName": tr(h)} for f, h in spec]


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    a = current_accounts()
    users = [{**u, "houses": ", ".join(u["houses"])} for u in a.users()]
    return html.Div([
        html.H3(tr("Audit log")),
        data_grid(id="audit-log", rowData=a.audit_log(), columnSize="autoSize", style={"height": "420px"},
                   columnDefs=columns(LOG_COLUMNS)),
        html.H5(tr("Accounts"), className="mt-3"),
        data_grid(id="audit-users", rowData=users, columnSize="autoSize", style={"height": "220px"},
                   columnDefs=columns(USER_COLUMNS)),
        html.H5(tr("API tokens"), className="mt-3"),
        html.P(tr("Create and revoke them with {create} / {revoke}.",
                  create="python app.py token create --scope read|write", revoke="token revoke ID")),
        data_grid(id="audit-tokens", rowData=a.tokens(), columnSize="autoSize", style={"height": "200px"},
                   columnDefs=columns(TOKEN_COLUMNS)),
    ])
