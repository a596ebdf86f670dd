"""REST endpoints (JSON). Bad parameters get 400 with ``{"error": ..., "field": ...}``; a tariff
version at a time that has one already gets 409. Errors no route answers itself are answered as
JSON by ``web._error_handlers``."""
from __future__ import annotations

import logging
import math
import re
import sqlite3
from datetime import datetime, timezone

import flask
import pandas as pd

from auth.principal import can_see_house, visible_houses, visible_invoices
from auth.web import access, actor, current_principal
from billing import exports, lifecycle
from billing.settlement import SettlementError, parse_period
from ingest.csv_files import parse_timestamp
from ingest.readings import ReadingError
from pricing.tariffs import Tariff, TariffConflict, TariffError, tariff_errors, version_conflict

api = flask.Blueprint("api", __name__)
VERSION = "0.1.0"
log = logging.getLogger("leg.api")
_INVOICE_ID = re.compile(r"^(INV-\d{4}-\d{3,}|CN-\d{4}-\d{3,}|DRAFT-\d{4}(?:-\d{2}|-Q[1-4])?-[A-Za-z0-9_.-]{1,64})$")


def _svc():
    from web import current
    return current()


def _bad(message: str, field: str, status: int = 400):
    log.warning("%s %s: %d %s: %s", flask.request.method, flask.request.path, status, field, message)
    return flask.jsonify({"error": message, "field": field}), status


def _time_param(name: str, tz, default=None):
    text = flask.request.args.get(name)
    if text is None:
        return default
    try:
        return pd.Timestamp(parse_timestamp(text if "T" in text else text + "T00:00:00", tz))
    except ReadingError as exc:
        raise ValueError(str(exc).replace("timestamp", name, 1)) from None
    except (OverflowError, ValueError):         # a date before year 1 in UTC, or outside pandas' range
        raise ValueError(f"{name}: {text[:40]!r} is outside the dates this app can handle") from None


def _tariff_json(t: Tariff, tz) -> dict:
    return {"p_pv": t.p_pv, "p_grid_del": t.p_grid_del, "p_grid_con": t.p_grid_con,
            "p_con": t.p_con_static if t.mode == "static" else (t.p_con if t.p_con is not None else t.p_pv)
            if t.mode == "leg" else None, "mode": t.mode,
            "effective_from": t.effective_from.astimezone(tz).isoformat()}


@api.get("/health")
@access("public")
def health():
    """Status for operators and monitors: 503 when something needs action (see monitoring.health)."""
    import monitoring
    body, status = monitoring.health(_svc(), pd.Timestamp.now(tz="UTC"))
    return flask.jsonify(body), status


@api.get("/tariffs")
@access("user")
def tariffs_current():
    c = _svc().community
    now = datetime.now(timezone.utc)
    versions = [t for t in c.ledger.tariff_versions() if t.effective_from <= now]
    t = versions[-1]
    body = _tariff_json(t, c.tz)
    if t.mode != "static":
        recent = c.community_intervals(pd.Timestamp(now) - pd.Timedelta(hours=2), pd.Timestamp(now))
        if len(recent):
            body["p_con"] = round(float(recent["p_con"].iloc[-1]), 4)
            body["p_con_interval_start"] = recent["start"].iloc[-1].tz_convert(c.tz).isoformat()
    return flask.jsonify(body)


@api.get("/tariffs/history")
@access("user")
def tariffs_history():
    c = _svc().community
    return flask.jsonify([_tariff_json(t, c.tz) for t in c.ledger.tariff_versions()])


@api.post("/tariffs")
@access("write")
def tariffs_post():
    c = _svc().community
    if not flask.request.is_json:
        return _bad("the body must be JSON (Content-Type: application/json)", "body", 415)
    try:
        data = flask.current_app.json.loads(flask.request.get_data())
    except ValueError as exc:                   # not JSON, not UTF-8, nested too deeply, a 5,000-digit number
        return _bad(f"the body is not valid JSON: {str(exc)[:200]}", "body")
    if not isinstance(data, dict):
        return _bad("the body must be a JSON object with p_pv, p_grid_del, p_grid_con", "body")
    unknown = sorted(set(data) - {"p_pv", "p_grid_del", "p_grid_con", "p_con", "mode", "effective_from"})
    if unknown:
        return _bad(f"unknown field {unknown[0]!r}", unknown[0])
    current = c.ledger.tariff_versions()[-1]
    values = {"mode": data.get("mode", current.mode), **{k: data.get(k) for k in ("p_pv", "p_grid_del", "p_grid_con", "p_con")}}
    errors = tariff_errors(values)
    if errors:
        return _bad(errors[0].message, errors[0].field)
    given = data.get("effective_from")
    if given is not None and not isinstance(given, str):
        return _bad(f"must be a date-time text (ISO 8601, e.g. 2026-04-01T00:00), got {type(given).__name__} "
                    f"{str(given)[:40]}", "effective_from")
    try:
        eff = parse_timestamp(given, c.tz) if given else datetime.now(timezone.utc)
        tariff = Tariff(float(values["p_pv"]), float(values["p_grid_del"]), float(values["p_grid_con"]),
                        values["mode"], eff, None if values["p_con"] is None else float(values["p_con"]))
    except ReadingError as exc:
        return _bad(str(exc).replace("timestamp: ", ""), "effective_from")
    except TariffError as exc:
        return _bad(exc.message, exc.field)
    except OverflowError:                       # before year 1 once in UTC
        return _bad(f"{given[:40]!r} is outside the dates this app can handle", "effective_from")
    conflict = version_conflict(c.ledger.tariff_versions(), tariff, c.tz)
    if conflict is not None:
        return _bad(conflict.message, conflict.field, 409)
    try:
        c.add_tariff(tariff, created_by=actor())
    except TariffConflict as exc:
        return _bad(exc.message, exc.field, 409)
    except (TariffError, SettlementError) as exc:
        return _bad(str(exc), "effective_from")
    except sqlite3.IntegrityError:              # the same time stored meanwhile (the ledger's unique index)
        conflict = version_conflict(c.ledger.tariff_versions(), tariff, c.tz)
        if conflict is None:
            raise
        return _bad(conflict.message, conflict.field, 409)
    return flask.jsonify(_tariff_json(tariff, c.tz)), 201


@api.get("/prices")
@access("read")
def prices():
    c = _svc().community
    now = pd.Timestamp.now(tz="UTC")
    try:
        start = _time_param("start", c.tz, now.tz_convert(c.tz).normalize().tz_convert("UTC"))
        end = _time_param("end", c.tz, start + pd.Timedelta(days=1))
    except ValueError as exc:
        field = "start" if str(exc).startswith("start") else "end"
        return _bad(str(exc), field)
    if end <= start:
        return _bad("end must be after start", "end")
    if end - start > pd.Timedelta(days=366):
        return _bad("at most 366 days at a time", "end")
    p = c.community_intervals(start, end)
    rows = [{"start": r.start.tz_convert(c.tz).isoformat(), "p_con": _num(r.p_con), "p_pv": _num(r.p_pv),
             "I_kwh": _num(r.total_consumption_kwh), "E_kwh": _num(r.total_production_kwh)}
            for r in p.itertuples(index=False)]
    return flask.jsonify(rows)


def _num(x):
    x = float(x)
    return round(x, 6) if math.isfinite(x) else None


@api.get("/houses")
@access("user")
def houses():
    c = _svc().community
    return flask.jsonify([{"house_id": h.house_id, "name": h.name, "type": h.type, "pv_kwp": h.pv_kwp,
                           "active_from": h.active_from} for h in visible_houses(current_principal(), c.houses())])


@api.get("/meters")
@access("read")
def meters():
    s = _svc()
    status = s.runtime.pipeline.status() if s.runtime else {}
    out = []
    for m in s.community.ledger.meters(active_only=False):
        st = status.get(m.meter_id)
        out.append({"meter_id": m.meter_id, "name": m.name, "type": m.type, "house_id": m.house_id,
                    "connection": m.connection, "active": m.active, "active_from": m.active_from,
                    "retired_at": m.retired_at, "replaced_by": m.replaced_by,
                    "last_seen": st.last_seen.isoformat() if st and st.last_seen else None,
                    "last_import_kwh": st.last_import_kwh if st else None,
                    "last_export_kwh": st.last_export_kwh if st else None,
                    "accepted": st.accepted if st else 0, "rejected": dict(st.rejected) if st else {},
                    "last_rejection": st.last_rejection if st else None})
    return flask.jsonify(out)


def _period():
    """(period, None) for a valid ?period=YYYY-MM, or (None, an error response)."""
    period = flask.request.args.get("period")
    if not period:
        return None, _bad("period is required (YYYY-MM)", "period")
    try:
        parse_period(period, _svc().community.tz)
    except SettlementError as exc:
        return None, _bad(str(exc), "period")
    except (OverflowError, ValueError):         # a well-formed month outside the supported years
        return None, _bad(f"period {period[:40]!r} is outside the dates this app can handle", "period")
    return period, None


def _settlement():
    """(period, settlement, None) for ?period=YYYY-MM, or (None, None, an error response)."""
    period, err = _period()
    if err:
        return None, None, err
    try:
        return period, _svc().community.settle(period, allow_incomplete=True), None
    except SettlementError as exc:
        return None, None, _bad(str(exc), "period")


@api.get("/invoices")
@access("user")
def invoices():
    period, s, err = _settlement()
    if err:
        return err
    p = current_principal()
    missing = {h: n for h, n in s.missing.items() if can_see_house(p, h)}
    return flask.jsonify({"period": period, "status": s.status, "missing": missing,
                          "invoices": [_invoice_json(i) for i in visible_invoices(p, s.invoices)]})


def _invoice_json(inv: dict) -> dict:
    return {k: (v if k == "details" else str(v)) for k, v in inv.items()}


def _download(data: bytes, name: str, mimetype: str):
    return flask.Response(data, mimetype=mimetype, headers={"Content-Disposition": f'attachment; filename="{name}"'})


@api.get("/invoices.csv")
@access("user")
def invoices_csv():
    period, s, err = _settlement()
    if err:
        return err
    return _download(exports.invoices_csv(visible_invoices(current_principal(), s.invoices)), exports.csv_name(period),
                     "text/csv; charset=utf-8")


@api.get("/invoices.zip")
@access("read")
def invoices_zip():
    period, s, err = _settlement()
    if err:
        return err
    pdfs = lifecycle.period_pdfs(_svc().community, s)
    return _download(exports.period_zip(s, pdfs), f"invoices-{period}.zip", "application/zip")


@api.get("/periods")
@access("read")
def periods():
    return flask.jsonify(_svc().community.periods())


def _one_invoice(invoice_id: str):
    if not _INVOICE_ID.match(invoice_id):
        return None, _bad("invoice_id: expected INV-YYYY-NNN or DRAFT-<period>-<house>", "invoice_id")
    inv = _svc().community.invoice(invoice_id)
    if inv is None or not can_see_house(current_principal(), inv["house_id"]):   # others' invoices: not found
        return None, _bad(f"no invoice {invoice_id}", "invoice_id", 404)
    return inv, None


@api.get("/invoices/<invoice_id>")
@access("user")
def invoice(invoice_id: str):
    if invoice_id.endswith(".pdf"):
        doc_id = invoice_id.removesuffix(".pdf")
        if not _INVOICE_ID.match(doc_id):
            return _bad("invoice_id: expected INV-YYYY-NNN, CN-YYYY-NNN or DRAFT-<period>-<house>", "invoice_id")
        c = _svc().community
        note = c.ledger.credit_note(doc_id)
        owner = c.invoice(note["invoice_id"] if note else doc_id)
        pdf = lifecycle.document_pdf(c, doc_id) if owner and can_see_house(current_principal(), owner["house_id"]) else None
        if pdf is None:
            return _bad(f"no invoice {doc_id}", "invoice_id", 404)
        return _download(pdf, f"{doc_id}.pdf", "application/pdf")
    if invoice_id.endswith(".csv"):
        inv, err = _one_invoice(invoice_id.removesuffix(".csv"))
        return err or _download(exports.invoices_csv([inv]), f"{inv['invoice_id']}.csv", "text/csv; charset=utf-8")
    inv, err = _one_invoice(invoice_id)
    if err:
        return err
    body = _invoice_json(inv)
    if inv["status"] != "draft":
        c = _svc().community
        body["history"] = c.ledger.events(invoice_id)
        body["credit_notes"] = [n for n in c.ledger.credit_notes(inv["period_id"]) if n["invoice_id"] == invoice_id]
    return flask.jsonify(body)


@api.get("/statements")
@access("user")
def statements_index():
    """The years with closed periods, and the houses the caller may see (their statements' links)."""
    from billing.statements import years_with_closed_periods
    c = _svc().community
    p = current_principal()
    houses = [h.house_id for h in c.ledger.houses(active_only=False) if can_see_house(p, h.house_id)]
    years = years_with_closed_periods(c)
    return flask.jsonify({"years": years, "houses": houses,
                          "statements": [f"statements/{h}/{y}.pdf" for y in years for h in houses]})


@api.get("/statements/<house_id>/<name>")
@access("user")
def statement_file(house_id: str, name: str):
    """The annual statement of a house: ``<year>.pdf`` (``?language=de|fr|it|en``) or ``<year>.csv``."""
    from billing import statements as st_mod
    year, dot, kind = name.partition(".")
    if not (dot and kind in ("pdf", "csv") and year.isdigit() and len(year) == 4):
        return _bad("expected <year>.pdf or <year>.csv, e.g. 2026.pdf", "name")
    c = _svc().community
    if not can_see_house(current_principal(), house_id):          # others' houses: not found
        return _bad(f"no house {house_id[:40]}", "house_id", 404)
    language = flask.request.args.get("language")
    if language is not None and language not in ("de", "fr", "it", "en"):
        return _bad("language: one of de, fr, it, en", "language")
    try:
        st = st_mod.statement(c, house_id, int(year))
    except ValueError as exc:
        return _bad(str(exc), "year", 404)
    if kind == "csv":
        return _download(st_mod.statement_csv(st), st_mod.csv_name(st), "text/csv; charset=utf-8")
    return _download(st_mod.statement_pdf(c, st, language), st_mod.pdf_name(st), "application/pdf")


@api.get("/year/<name>")
@access("read")
def year_workbook(name: str):
    """``<year>.xlsx``: the community's monthly figures of the year and the year before (managers)."""
    import analytics
    from components.year_view import xlsx_headers
    year, dot, kind = name.partition(".")
    if not (dot and kind == "xlsx" and year.isdigit() and 1970 <= int(year) <= 2200):
        return _bad("expected <year>.xlsx, e.g. 2026.xlsx", "name")
    data = analytics.year_xlsx(_svc().community, [int(year), int(year) - 1], xlsx_headers())
    return _download(data, f"year-{year}.xlsx", "application/vnd.openxmlformats-officedocument.spreadsheetml.sheet")


@api.get("/audit")
@access("manager")
def audit():
    """The audit log, newest first (managers)."""
    return flask.jsonify(flask.current_app.config["LEG_ACCOUNTS"].audit_log())


@api.route("/meters/<meter_id>/reading", methods=["GET", "POST"])
@access("public")
def meter_reading(meter_id: str):
    """A reading pushed by the meter itself (a Loxone virtual HTTP output): the meter's own token
    (``?token=`` or header ``X-Meter-Token``), the value as the body (the meter's push format) or
    as ``?value=``. Checked like every other reading; 202 when handed to the ingest pipeline."""
    import registry
    from ingest.readings import Reading
    from ingest.sources import Sample, SourceError
    from ingest.udp import parse_datagram
    s = _svc()
    c = s.community
    token = flask.request.args.get("token") or flask.request.headers.get("X-Meter-Token")
    if not registry.push_token_ok(c, meter_id, token):
        return _bad("unknown meter or wrong token", "token", 401)
    meter = c.ledger.meter(meter_id)
    if s.runtime is None:
        return _bad("ingest does not run in this process", "meter_id", 503)
    settings = meter.settings if meter.connection == "http_push" else {}
    raw = flask.request.args.get("value")
    data = raw.encode() if raw is not None else flask.request.get_data(cache=False)
    fmt = "raw" if raw is not None else settings.get("format", "raw")
    try:
        value, ts = parse_datagram(data, fmt, settings.get("field"), c.tz)
    except SourceError as exc:
        s.runtime.pipeline.reject(meter_id, exc.code, str(exc), "http_push")
        return _bad(str(exc), "value")
    sample = Sample.single(value, meter.type, ts)
    s.runtime.pipeline.submit(Reading(meter_id, sample.ts_utc, sample.import_kwh, sample.export_kwh), "http_push")
    return flask.jsonify({"meter_id": meter_id, "value_kwh": value, "ts": sample.ts_utc.isoformat()}), 202


@api.post("/backup")
@access("control")
def backup():
    """A consistent snapshot into ``{"dir": ...}``, for ``python app.py backup`` on this host."""
    from storage.backup import BackupError, snapshot
    s = _svc()
    body = flask.request.get_json(silent=True) or {}
    if not isinstance(body.get("dir"), str) or not body["dir"]:
        return _bad("give the backup folder as {\"dir\": ...}", "dir")
    try:
        manifest = snapshot(s.community, body["dir"], s.runtime.pipeline if s.runtime else None)
    except (BackupError, OSError) as exc:
        return _bad(str(exc), "dir")
    return flask.jsonify(manifest), 201


# -- payments: bank files in, payouts out ---------------------------------------------------------
@api.post("/payments")
@access("manager")
def payments_post():
    """A bank file (camt.054 notification or camt.053 statement) as the request body, its name as
    ``?name=``: what became of its transactions. Importing a file again changes nothing."""
    from billing.payments import import_payments
    raw = flask.request.get_data(cache=False)
    name = (flask.request.args.get("name") or "upload.xml")[:200]
    if not raw:
        return _bad("send the bank file (camt.053 or camt.054 XML) as the request body", "file")
    result = import_payments(_svc().community, name, raw, actor())
    if result.error:
        return _bad(f"{name}: {result.error}", "file")
    return flask.jsonify({"file": name, "message": result.message, "transactions": result.transactions,
                          "counts": result.counts, "changed": result.changed, "summary": result.line()}), 201


@api.get("/payments")
@access("manager")
def payments_get():
    """What a treasurer looks at: bank transactions to assign by hand (unmatched, reversals, debits,
    payments to cancelled invoices) and invoices past their payment term."""
    from billing.payments import open_items, overdue
    c = _svc().community
    return flask.jsonify({"open": open_items(c), "overdue": overdue(c)})


@api.post("/payments/<tx_id>/assign")
@access("manager")
def payments_assign(tx_id: str):
    """``{"invoice_id": ...}``: a listed credit applied to an issued invoice by hand."""
    from storage.ledger import LedgerError
    body = flask.request.get_json(silent=True)
    invoice_id = body.get("invoice_id") if isinstance(body, dict) else None
    if not isinstance(invoice_id, str) or not _INVOICE_ID.match(invoice_id) or invoice_id.startswith("DRAFT-"):
        return _bad("give the issued invoice as {\"invoice_id\": \"INV-YYYY-NNN\"}", "invoice_id")
    try:
        status = _svc().community.ledger.assign_bank_transaction(tx_id[:200], invoice_id, actor())
    except LedgerError as exc:
        return _bad(str(exc), "invoice_id" if "invoice" in str(exc).split(":")[0] else "tx_id",
                    404 if str(exc).startswith("no ") else 409)
    return flask.jsonify({"tx_id": tx_id, "invoice_id": invoice_id, "status": status})


def _payouts():
    """(period, billing.payments.PayoutFiles, None), or (None, None, an error response): 409 when
    the period is not closed or the community has no IBAN to pay from."""
    from billing.payments import payouts
    period, err = _period()
    if err:
        return None, None, err
    try:
        return period, payouts(_svc().community, period), None
    except ValueError as exc:
        return None, None, _bad(str(exc), "period", 409)


@api.get("/payouts.csv")
@access("manager")
def payouts_csv():
    """The payouts of a closed period: house, name, IBAN, amount, reference (houses without IBAN too)."""
    period, files, err = _payouts()
    return err or _download(files.csv, f"payouts-{period}.csv", "text/csv; charset=utf-8")


@api.get("/payouts.xml")
@access("manager")
def payouts_xml():
    """The pain.001.001.09 credit transfer of a closed period's credits, for the bank."""
    period, files, err = _payouts()
    if err:
        return err
    if files.xml is None:
        return _bad(f"{period}: no house has a credit and an IBAN, so there is nothing to transfer", "period", 404)
    return _download(files.xml, f"payouts-{period}.xml", "application/xml")
