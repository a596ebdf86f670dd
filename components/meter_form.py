"""The meter form of the Meters page: the same fields as a ``meters:`` entry in config.yaml,
with the connection's settings shown for the chosen connection. Plain functions turn the form's
values into that entry and back, save, test, deactivate and replace (tested without a browser)."""
from __future__ import annotations

import dash_bootstrap_components as dbc
import pandas as pd
from dash import html

import registry
from ingest.csv_files import parse_timestamp
from ingest.readings import ReadingError
from i18n import N_, number, tr

# (settings key, label (shown with tr()), kind)
FIELDS = {
    "loxone_http": [("url", N_("URL (http://<miniserver>/dev/sps/io/<uuid>/state)"), "text"),
                    ("field", N_("Value field (empty: power_kwh, power, value, kwh, energy)"), "text"),
                    ("interval_s", N_("Poll every (s)"), "number"), ("username", N_("User (optional)"), "text"),
                    ("password", N_("Password (optional)"), "password")],
    "udp": [("port", N_("UDP port"), "number"), ("sender_ip", N_("Sender IP (optional)"), "text"),
            ("format", N_("Format: json, csv or raw"), "text"), ("field", N_("Value field (json)"), "text")],
    "modbus": [("host", N_("Host"), "text"), ("port", N_("Port"), "number"), ("device_id", N_("Device id"), "number"),
               ("interval_s", N_("Poll every (s)"), "number"),
               ("import-table", N_("Import register table (holding/input)"), "text"),
               ("import-address", N_("Import register address (empty: none)"), "number"),
               ("import-type", N_("Import data type (uint16 … float64)"), "text"),
               ("import-word_order", N_("Import word order (big/little)"), "text"),
               ("import-scale", N_("Import scale (kWh per unit)"), "number"),
               ("export-table", N_("Export register table"), "text"),
               ("export-address", N_("Export register address (empty: none)"), "number"),
               ("export-type", N_("Export data type"), "text"), ("export-word_order", N_("Export word order"), "text"),
               ("export-scale", N_("Export scale"), "number")],
    "http_push": [("format", N_("Format: json, csv or raw"), "text"), ("field", N_("Value field (json)"), "text")],
}
DEFAULTS = {"modbus": {"port": 502, "device_id": 1, "interval_s": 60, "import-table": "holding",
                       "import-type": "float32", "import-word_order": "big", "import-scale": 1,
                       "export-table": "holding", "export-type": "float32", "export-word_order": "big",
                       "export-scale": 1},
            "loxone_http": {"interval_s": 900}, "udp": {"format": "json"}, "http_push": {"format": "raw"}}


def field_id(connection: str, key: str) -> dict:
    return {"type": "mf-setting", "connection": connection, "key": key}


def settings_groups() -> list:
    """One group of inputs per connection; the page shows the chosen one."""
    groups = []
    for conn, fields in FIELDS.items():
        inputs = [dbc.Col([dbc.Label(tr(label)), dbc.Input(id=field_id(conn, key), type=kind,
                                                        value=DEFAULTS.get(conn, {}).get(key))], md=3)
                  for key, label, kind in fields]
        groups.append(html.Div(dbc.Row(inputs, className="g-2"), id={"type": "mf-group", "connection": conn},
                               style={"display": "none"}))
    return groups


def form_data(values: dict, settings: dict[tuple[str, str], object]) -> dict:
    """A ``meters:`` entry from the form: ``values`` (id, name, type, house, connection, active,
    max_power_kw) and ``settings`` ((connection, key) → value)."""
    conn = values.get("connection")
    data = {k: values.get(k) for k in ("id", "name", "type", "house", "connection", "max_power_kw")}
    data["active"] = bool(values.get("active", True))
    if conn in FIELDS:
        block: dict = {}
        for key, _, _ in FIELDS[conn]:
            v = settings.get((conn, key))
            if v in (None, ""):
                continue
            if "-" in key:
                reg, sub = key.split("-")
                block.setdefault(reg, {})[sub] = v
            else:
                block[key] = v
        for reg in ("import", "export"):           # a register without an address is not read
            if reg in block and "address" not in block[reg]:
                del block[reg]
        data[conn] = block
    return data


def save(c, values, settings, by: str, new: bool):
    """(alert, saved meter id or None)."""
    try:
        m = registry.save(c, form_data(values, settings), by, new)
    except registry.RegistryError as exc:
        return _errors(exc), None
    return dbc.Alert(tr("Meter {meter} saved.", meter=m.meter_id), color="success"), m.meter_id


def test(c, values, settings) -> dbc.Alert:
    """Test the connection as entered in the form (saved or not): the value read, or the error."""
    try:
        m = registry.validate(c, form_data(values, settings))
    except registry.RegistryError as exc:
        return _errors(exc)
    sample, error = registry.test_connection(registry.to_meter(c, m), c.tz, timeout_s=15)
    if error:
        return dbc.Alert(tr("Test of {meter} failed: {error}", meter=m.id, error=error), color="danger")
    imported = number(sample.import_kwh, 3) if sample.import_kwh is not None else None
    exported = number(sample.export_kwh, 3) if sample.export_kwh is not None else None
    if imported is not None and exported is not None:
        text = tr("Test of {meter}: read import {imported} kWh, export {exported} kWh", meter=m.id,
                  imported=imported, exported=exported)
    elif imported is not None:
        text = tr("Test of {meter}: read import {imported} kWh", meter=m.id, imported=imported)
    elif exported is not None:
        text = tr("Test of {meter}: read export {exported} kWh", meter=m.id, exported=exported)
    else:
        text = tr("Test of {meter}: no value read", meter=m.id)
    return dbc.Alert(text, color="success")


def replace(c, old_id: str | None, values, settings, final: dict, start: dict, when: str | None, by: str):
    if not old_id:
        return dbc.Alert(tr("Select the meter to replace in the table first."), color="warning")
    try:
        at = parse_timestamp(when, c.tz) if when else pd.Timestamp.now(tz="UTC").floor("s").to_pydatetime()
    except ReadingError as exc:
        return dbc.Alert(tr("Replacement time: {error}", error=str(exc).replace("timestamp: ", "")), color="danger")
    try:
        new = registry.replace_meter(c, old_id, form_data(values, settings), final, start, at, by)
    except registry.RegistryError as exc:
        return _errors(exc)
    return dbc.Alert(tr("Meter {old} replaced by {new} at {when}: {old} counts until then, {new} from then on.",
                        old=old_id, new=new.meter_id, when=f"{pd.Timestamp(at).tz_convert(c.tz):%Y-%m-%d %H:%M}"),
                     color="success")


def _errors(exc: registry.RegistryError) -> dbc.Alert:
    return dbc.Alert([html.Div(f"{k}: {v}") for k, v in exc.errors.items()], color="danger")


def values_of(meter) -> tuple[dict, dict]:
    """(values, settings) to fill the form with a stored meter."""
    values = {"id": meter.meter_id, "name": meter.name, "type": meter.type, "house": meter.house_id,
              "connection": meter.connection, "active": meter.active, "max_power_kw": meter.max_power_kw}
    settings = {}
    for key, _, _ in FIELDS.get(meter.connection, []):
        if "-" in key:
            reg, sub = key.split("-")
            v = (meter.settings.get(reg) or {}).get(sub)
        else:
            v = meter.settings.get(key)
        settings[(meter.connection, key)] = v
    return values, settings
