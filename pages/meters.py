"""Meters: every meter with its status; meters heard but not registered; the store's health."""
import dash
import dash_bootstrap_components as dbc
import pandas as pd
from dash import ALL, Input, Output, State, callback, dcc, html, no_update

from components.controls import data_grid

import monitoring
import registry
from auth.web import actor, page_denied
from components import meter_form
from components.views import adopt
from i18n import N_, number, tr
from ingest.pipeline import MAX_UNKNOWN
from web import current

dash.register_page(__name__, path="/meters", name=N_("Meters"), order=5)

METER_COLUMNS = [("meter_id", N_("Meter")), ("name", N_("Name")), ("house", N_("House")), ("type", N_("Type")),
                 ("connection", N_("Connection")),
                 ("status", N_("Status")), ("reason", N_("Reason")), ("last_import_kwh", N_("Ei kWh")),
                 ("last_export_kwh", N_("Eo kWh")), ("last_seen", N_("Last seen")), ("accepted", N_("Accepted")),
                 ("rejected", N_("Rejected")), ("resets", N_("Resets"))]
UNKNOWN_COLUMNS = [("meter_id", N_("Meter id")), ("messages", N_("Messages")), ("source", N_("Source")),
                   ("first_seen", N_("First seen")), ("last_seen", N_("Last seen"))]
POINT_COLUMNS = [("metering_point", N_("Metering point")), ("house", N_("House")), ("direction", N_("Direction")),
                 ("last_quarter_hour", N_("Last quarter hour")), ("document_id", N_("Last delivery")),
                 ("created", N_("Created by the grid operator")), ("imported", N_("Imported"))]
SDAT_COLUMNS = [("metering_point", N_("Metering point")), ("values", N_("Values")), ("first_seen", N_("First seen")),
                ("last_seen", N_("Last seen")), ("file", N_("File"))]
# the form's choices: (value, label shown with tr()); types and connections are config.yaml's keys
METER_TYPES = [("apartment", N_("apartment")), ("solar", N_("solar")), ("total", N_("total"))]
CONNECTIONS = [("modbus", "Modbus"), ("loxone_http", N_("Loxone via HTTP")), ("udp", "UDP"),
               ("http_push", N_("HTTP push")), ("mqtt", "MQTT"), ("import", N_("File import"))]


def columns(spec) -> list[dict]:
    """AG Grid column definitions with the headers in the request's language."""
    return [{"field": f, "headerName": tr(h)} for f, h in spec]


def layout(**_):
    if (denied := page_denied()) is not None:
        return denied
    return html.Div([
        html.H3(tr("Meters")), html.Div(id="meters-store"),
        data_grid(id="meters-grid", columnDefs=columns(METER_COLUMNS),
                   columnSize="autoSize", style={"height": "320px"}, getRowId="params.data.meter_id",
                   dashGridOptions={"rowSelection": {"mode": "singleRow"}}),
        meter_form_layout(current().community),
        html.H5(tr("Heard on MQTT but not registered (not billed)"), className="mt-3"),
        data_grid(id="meters-unknown", columnDefs=columns(UNKNOWN_COLUMNS),
                   columnSize="sizeToFit", style={"height": "200px"}, getRowId="params.data.meter_id",
                   dashGridOptions={"rowSelection": {"mode": "singleRow"}}),
        html.Div(id="meters-unknown-note", className="text-muted small"),
        html.Div(id="meters-sdat-unknown"),
        dbc.Row([
            dbc.Col([dbc.Label(tr("House name"), html_for="adopt-name"), dbc.Input(id="adopt-name", maxLength=100)],
                    md=4),
            dbc.Col([dbc.Label(tr("Billed from (local date; empty: today)"), html_for="adopt-from"),
                     dbc.Input(id="adopt-from", placeholder=tr("YYYY-MM-DD"))], md=3),
            dbc.Col(dbc.Button(tr("Adopt selected meter as a house"), id="adopt-button", color="primary"), md=4,
                    className="align-self-end"),
        ], className="mt-2"),
        html.Div(id="adopt-result", className="mt-2"),
        dcc.Interval(id="meters-refresh", interval=15_000),
    ])


def meter_form_layout(c):
    houses = [{"label": f"{h.name} ({h.house_id})", "value": h.house_id} for h in c.houses()]
    opt = lambda choices: [{"label": tr(label), "value": v} for v, label in choices]
    return dbc.Card(dbc.CardBody([
        html.H5(tr("Add, edit, test or replace a meter")),
        html.P(tr("Select a meter in the table to edit it, or fill in a new one. An apartment meter bills its "
                  "house's consumption, a solar meter is its house's production, a total meter measures the "
                  "building's grid exchange (cross-checked on the Data quality page, never billed)."),
               className="text-muted small"),
        dbc.Row([
            dbc.Col([dbc.Label(tr("Meter id")), dbc.Input(id="mf-id", placeholder=tr("apartment-1"))], md=2),
            dbc.Col([dbc.Label(tr("Name")), dbc.Input(id="mf-name")], md=2),
            dbc.Col([dbc.Label(tr("Type")), dbc.Select(id="mf-type", value="apartment", options=opt(METER_TYPES))],
                    md=2),
            dbc.Col([dbc.Label(tr("House")), dbc.Select(id="mf-house", options=[{"label": tr("(none: total meter)"),
                                                                                 "value": ""}] + houses)], md=2),
            dbc.Col([dbc.Label(tr("Connection")), dbc.Select(id="mf-connection", value="modbus",
                                                             options=opt(CONNECTIONS))], md=2),
            dbc.Col(dbc.Checkbox(id="mf-active", label=tr("Active"), value=True), md=1, className="align-self-end"),
        ], className="g-2 mb-2"),
        *meter_form.settings_groups(),
        dbc.ButtonGroup([
            dbc.Button(tr("Save new meter"), id="mf-add", color="primary"),
            dbc.Button(tr("Save changes"), id="mf-save", color="secondary"),
            dbc.Button(tr("Test connection"), id="mf-test", color="info"),
            dbc.Button(tr("Deactivate"), id="mf-deactivate", color="warning"),
            dbc.Button(tr("New push token"), id="mf-token", color="secondary", outline=True),
        ], className="mt-2"),
        dcc.Loading(html.Div(id="mf-result", className="mt-2")),
        html.Details([
            html.Summary(tr("Replace the selected meter by the one in the form")),
            dbc.Row([
                dbc.Col([dbc.Label(tr("Old meter's final import / export (kWh)")),
                         dbc.InputGroup([dbc.Input(id="mf-final-import", type="number"),
                                         dbc.Input(id="mf-final-export", type="number")])], md=4),
                dbc.Col([dbc.Label(tr("New meter's start import / export (kWh)")),
                         dbc.InputGroup([dbc.Input(id="mf-start-import", type="number"),
                                         dbc.Input(id="mf-start-export", type="number")])], md=4),
                dbc.Col([dbc.Label(tr("When (local; empty: now)")),
                         dbc.Input(id="mf-when", placeholder="2026-12-01T00:00")], md=2),
                dbc.Col(dbc.Button(tr("Replace"), id="mf-replace", color="danger"), md=2, className="align-self-end"),
            ], className="g-2"),
        ], className="mt-3"),
    ]), className="mt-3")


def _form(values_list, ids):
    return {(i["connection"], i["key"]): v for i, v in zip(ids, values_list)}


def store_alert(community):
    h = community.store.health() if hasattr(community.store, "health") else {"backend": "embedded"}
    if h.get("spool_batches"):
        return dbc.Alert(tr("InfluxDB: {lines} lines waiting in the spool (oldest {age} s); they are written as soon "
                            "as InfluxDB answers.", lines=number(h["spool_lines"], 0), age=f"{h['spool_age_s']:.0f}"),
                         color="warning")
    if "spool_batches" in h:
        return dbc.Alert(tr("Store: {backend}, spool empty", backend=h.get("backend")), color="light")
    return dbc.Alert(tr("Store: {backend}", backend=h.get("backend")), color="light")


def unknown_note(runtime) -> str:
    dropped = runtime.pipeline.unknown_dropped if runtime is not None else 0
    return (tr("{dropped} more unknown meters were heard: the list keeps the {kept} heard most recently.",
               dropped=number(dropped, 0), kept=number(MAX_UNKNOWN, 0)) if dropped else "")


def sdat_unknown(community):
    """The metering points of the houses with the grid operator's last delivery for each, and the
    metering points in its files that no house lists (counted, never billed)."""
    from components.views import metering_point_rows
    points = metering_point_rows(community)
    out = []
    if points:
        out += [html.H5(tr("Metering points (data from the grid operator)"), className="mt-3"),
                data_grid(id="meters-sdat-points", rowData=points, columnDefs=columns(POINT_COLUMNS),
                          columnSize="sizeToFit", style={"height": "200px"})]
    rows = community.sdat.unknown() if (community.cfg.data_dir / "sdat.sqlite").exists() else []
    if rows:
        out += [html.H5(tr("In the grid operator's files but not listed by any house (not billed)"), className="mt-3"),
                data_grid(id="meters-sdat-grid", rowData=rows, columnDefs=columns(SDAT_COLUMNS),
                          columnSize="sizeToFit", style={"height": "160px"})]
    return html.Div(out) if out else None


@callback(Output("meters-grid", "rowData"), Output("meters-unknown", "rowData"), Output("meters-store", "children"),
          Output("meters-unknown-note", "children"), Output("meters-sdat-unknown", "children"),
          Input("meters-refresh", "n_intervals"))
def _update(_n):
    s = current()
    now = pd.Timestamp.now(tz="UTC")
    return (monitoring.meter_rows(s.community, s.runtime, now), monitoring.unknown_rows(s.runtime, s.community.tz),
            store_alert(s.community), unknown_note(s.runtime), sdat_unknown(s.community))


@callback(Output("adopt-result", "children"), Input("adopt-button", "n_clicks"),
          State("meters-unknown", "selectedRows"), State("adopt-name", "value"), State("adopt-from", "value"),
          prevent_initial_call=True)
def _adopt(_n, selected, name, first_day):
    alert, _ok = adopt(current(), (selected or [{}])[0].get("meter_id"), name, first_day, actor())
    return alert


@callback(Output({"type": "mf-group", "connection": ALL}, "style"), Input("mf-connection", "value"),
          State({"type": "mf-group", "connection": ALL}, "id"))
def _show_settings(connection, ids):
    return [{} if i["connection"] == connection else {"display": "none"} for i in ids]


@callback(Output("mf-id", "value"), Output("mf-name", "value"), Output("mf-type", "value"), Output("mf-house", "value"),
          Output("mf-connection", "value"), Output("mf-active", "value"),
          Output({"type": "mf-setting", "connection": ALL, "key": ALL}, "value"),
          Input("meters-grid", "selectedRows"), State({"type": "mf-setting", "connection": ALL, "key": ALL}, "id"),
          prevent_initial_call=True)
def _fill(selected, ids):
    meter = current().community.ledger.meter((selected or [{}])[0].get("meter_id", "")) if selected else None
    if meter is None:
        return (no_update,) * 6 + ([no_update] * len(ids),)
    values, settings = meter_form.values_of(meter)
    return (values["id"], values["name"], values["type"], values["house"] or "", values["connection"],
            values["active"], [settings.get((i["connection"], i["key"]), no_update) for i in ids])


@callback(Output("mf-result", "children"), Input("mf-add", "n_clicks"), Input("mf-save", "n_clicks"),
          Input("mf-test", "n_clicks"), Input("mf-deactivate", "n_clicks"), Input("mf-token", "n_clicks"),
          Input("mf-replace", "n_clicks"),
          State("mf-id", "value"), State("mf-name", "value"), State("mf-type", "value"), State("mf-house", "value"),
          State("mf-connection", "value"), State("mf-active", "value"),
          State({"type": "mf-setting", "connection": ALL, "key": ALL}, "value"),
          State({"type": "mf-setting", "connection": ALL, "key": ALL}, "id"), State("meters-grid", "selectedRows"),
          State("mf-final-import", "value"), State("mf-final-export", "value"), State("mf-start-import", "value"),
          State("mf-start-export", "value"), State("mf-when", "value"), prevent_initial_call=True)
def _act(_a, _s, _t, _d, _k, _r, mid, name, mtype, house, connection, active, setting_values, ids, selected,
         final_i, final_e, start_i, start_e, when):
    s = current()
    c = s.community
    values = {"id": mid, "name": name, "type": mtype, "house": house or None, "connection": connection,
              "active": active}
    settings = _form(setting_values, ids)
    action = dash.ctx.triggered_id
    if action == "mf-test":
        return meter_form.test(c, values, settings)
    if action in ("mf-add", "mf-save"):
        alert, saved = meter_form.save(c, values, settings, actor(), new=action == "mf-add")
    elif action == "mf-deactivate":
        try:
            registry.deactivate(c, mid or "", actor())
        except registry.RegistryError as exc:
            return dbc.Alert(str(exc), color="danger")
        alert, saved = dbc.Alert(tr("Meter {meter} deactivated: its readings are no longer taken.", meter=mid),
                                 color="warning"), mid
    elif action == "mf-token":
        try:
            token = registry.issue_push_token(c, mid or "")
        except registry.RegistryError as exc:
            return dbc.Alert(str(exc), color="danger")
        url = dash.get_relative_path(f"/api/meters/{mid}/reading")
        return dbc.Alert([tr("Push URL for {meter} (shown once; the previous token stops working):", meter=mid) + " ",
                          html.Code(f"{url}?token={token}&value=<v>")], color="info")
    else:
        alert = meter_form.replace(c, (selected or [{}])[0].get("meter_id"), values, settings,
                                   {"import_kwh": final_i, "export_kwh": final_e},
                                   {"import_kwh": start_i, "export_kwh": start_e}, when, actor())
        saved = True
    if saved and s.runtime is not None:
        s.runtime.registry_changed()
    return alert
