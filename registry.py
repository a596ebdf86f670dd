"""The meter registry as the manager edits it (browser, ``config.yaml``, command line): one place
that validates a meter (the ``config.MeterConfig`` rules), saves it in the ledger, deactivates
and replaces meters, issues push tokens and tests a connection with one read.

Replacing a meter: the old meter's final reading and the new one's start reading are stored at the
replacement time; the old meter counts for its house until then, the new one from then on, so
no energy is lost or counted twice.
"""
from __future__ import annotations

import hashlib
import secrets
from datetime import datetime

import pandas as pd
from pydantic import ValidationError

from config import MeterConfig, _format_error, meter_errors
from storage.ledger import Meter

SETTINGS_KEYS = ("loxone_http", "udp", "modbus", "http_push")


class RegistryError(ValueError):
    """``errors``: message per field (``connection``, ``modbus.host``, …)."""

    def __init__(self, errors: dict[str, str]):
        self.errors = errors
        super().__init__("; ".join(f"{k}: {v}" for k, v in errors.items()))


def validate(c, data: dict) -> MeterConfig:
    """A meter from a form or API body (the same fields as a ``meters:`` entry in config.yaml)."""
    try:
        m = MeterConfig.model_validate({k: v for k, v in data.items() if v not in (None, "")
                                        or k in SETTINGS_KEYS})
    except ValidationError as exc:
        errors = {}
        for e in exc.errors():
            field, _, msg = _format_error(e).partition(": ")
            errors.setdefault(field, msg)
        raise RegistryError(errors) from None
    errs = {}
    probe = type("Cfg", (), {"houses": c.cfg.houses, "meters": [m]})()
    for e in meter_errors(probe):
        field, _, msg = e.partition(": ")
        if not msg.endswith("is not a key under houses"):   # houses adopted in the browser have an id only
            errs.setdefault(field.removeprefix("meters[0]."), msg)
    if m.house and _house_id(c, m.house) not in {h.house_id for h in c.ledger.houses()}:
        errs.setdefault("house", f"{m.house!r} is not a house of the community")
    if errs:
        raise RegistryError(errs)
    return m


def _house_id(c, house: str | None) -> str | None:
    if house is None:
        return None
    h = c.cfg.houses.get(house)
    return str(h.id) if h is not None else house


def to_meter(c, m: MeterConfig, **extra) -> Meter:
    s = m.settings()
    return Meter(m.id, _house_id(c, m.house), m.connection, m.max_power_kw, m.active, m.name, m.type,
                 s.model_dump(by_alias=True) if s is not None else {}, **extra)


def save(c, data: dict, by: str, new: bool) -> Meter:
    """Add (``new``) or change a meter; returns it as stored."""
    m = validate(c, data)
    old = c.ledger.meter(m.id)
    if new and old is not None:
        raise RegistryError({"id": f"a meter {m.id!r} exists already"})
    if not new and old is None:
        raise RegistryError({"id": f"no meter {m.id!r}"})
    if new and m.id in c.cfg.houses:
        raise RegistryError({"id": f"{m.id!r} is a house's MQTT meter"})
    keep = {} if old is None else {"active_from": old.active_from, "retired_at": old.retired_at,
                                   "replaced_by": old.replaced_by}
    meter = to_meter(c, m, **keep)
    c.ledger.save_meter(meter, by)
    c.reload_registry()
    return c.ledger.meter(m.id)


def deactivate(c, meter_id: str, by: str) -> None:
    old = c.ledger.meter(meter_id)
    if old is None:
        raise RegistryError({"id": f"no meter {meter_id!r}"})
    from dataclasses import replace
    c.ledger.save_meter(replace(old, active=False), by, origin=old.origin)
    c.reload_registry()


def replace_meter(c, old_id: str, data: dict, final_reading: dict, start_reading: dict, at: datetime,
                  by: str) -> Meter:
    """Replace ``old_id`` by a new meter (``data``) at ``at``: the old meter's final counters and
    the new one's start counters (``{"import_kwh": …, "export_kwh": …}``) are stored as readings
    at that time."""
    from dataclasses import replace
    old = c.ledger.meter(old_id)
    if old is None or old.retired_at is not None:
        raise RegistryError({"id": f"no meter {old_id!r} in service"})
    data = {**data, "house": data.get("house") or old.house_id, "type": data.get("type") or old.type}
    m = validate(c, data)
    if c.ledger.meter(m.id) is not None:
        raise RegistryError({"id": f"a meter {m.id!r} exists already"})
    ts = pd.Timestamp(at).tz_convert("UTC")
    rows = []
    for mid, counters, what in ((old_id, final_reading, "final reading"), (m.id, start_reading, "start reading")):
        try:
            ei = None if counters.get("import_kwh") in (None, "") else float(counters["import_kwh"])
            eo = None if counters.get("export_kwh") in (None, "") else float(counters["export_kwh"])
        except (TypeError, ValueError):
            raise RegistryError({what.replace(" ", "_"): "counters must be numbers of kWh"}) from None
        if ei is None and eo is None:
            raise RegistryError({what.replace(" ", "_"): "give the import or the export counter (kWh)"})
        rows.append({"meter_id": mid, "ts": ts, "import_kwh": ei, "export_kwh": eo})
    new = to_meter(c, m, active_from=ts.isoformat())
    c.ledger.save_meter(new, by)
    c.ledger.save_meter(replace(old, active=False, retired_at=ts.isoformat(), replaced_by=m.id), by,
                        origin=old.origin)
    c.reload_registry()
    frame = pd.DataFrame(rows)
    frame["ts"] = pd.to_datetime(frame["ts"], utc=True).astype("datetime64[us, UTC]")
    frame["power_in_kw"] = frame["power_out_kw"] = float("nan")
    c.store_readings(frame)
    c.update_intervals_many({old_id: (ts, ts), m.id: (ts, ts)})
    return c.ledger.meter(m.id)


def issue_push_token(c, meter_id: str) -> str:
    """A new token for pushing readings of this meter (the old one stops working)."""
    if c.ledger.meter(meter_id) is None:
        raise RegistryError({"id": f"no meter {meter_id!r}"})
    token = secrets.token_urlsafe(24)
    c.ledger.set_push_token(meter_id, hashlib.sha256(token.encode()).hexdigest())
    return token


def push_token_ok(c, meter_id: str, token: str | None) -> bool:
    stored = c.ledger.push_token_hash(meter_id)
    return bool(stored and token) and secrets.compare_digest(stored, hashlib.sha256(token.encode()).hexdigest())


def test_connection(meter: Meter, tz, timeout_s: float = 30.0):
    """One read of a meter's connection: (Sample, None) or (None, what went wrong)."""
    from config import LoxoneHttpSettings, ModbusSettings, UdpSettings
    from ingest.sources import SourceError
    try:
        if meter.connection == "loxone_http":
            from ingest.loxone_http import read_http
            return read_http(LoxoneHttpSettings(**meter.settings), meter.type, tz=tz), None
        if meter.connection == "modbus":
            from ingest.modbus import read_modbus_once
            return read_modbus_once(ModbusSettings.model_validate(meter.settings)), None
        if meter.connection == "udp":
            from ingest.udp import read_udp_once
            return read_udp_once(UdpSettings(**meter.settings), meter.type, tz, timeout_s=timeout_s), None
    except SourceError as exc:
        return None, str(exc)
    return None, f"a {meter.connection} meter cannot be tested from here: its readings arrive by themselves"
