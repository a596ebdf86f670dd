"""Audit: who did what and when (logins, tariff changes, period closes, invoice status changes,
mails, tokens), the accounts and the API tokens. Managers only."""
import dash
import dash_ag_grid as dag
from dash import html

from auth.web import page_denied
from web import current_accounts

dash.register_page(__name__, path="/audit", name="Audit", order=8)


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    a = current_accounts()
    users = [{**u, "houses": ", ".join(u["houses"])} for u in a.users()]
    return html.Div([
        html.H3("Audit log"),
        dag.AgGrid(id="audit-log", rowData=a.audit_log(), columnSize="autoSize", style={"height": "420px"},
                   columnDefs=[{"field": f} for f in ("at", "actor", "action", "detail", "address")]),
        html.H5("Accounts", className="mt-3"),
        dag.AgGrid(id="audit-users", rowData=users, columnSize="autoSize", style={"height": "220px"},
                   columnDefs=[{"field": f} for f in ("username", "role", "houses", "active", "password_changed_at")]),
        html.H5("API tokens", className="mt-3"),
        html.P("Create and revoke them with python app.py token create --scope read|write / token revoke ID."),
        dag.AgGrid(id="audit-tokens", rowData=a.tokens(), columnSize="autoSize", style={"height": "200px"},
                   columnDefs=[{"field": f} for f in ("token_id", "scope", "label", "created_by", "created_at",
                                                       "revoked_at", "last_used_at")]),
    ])
