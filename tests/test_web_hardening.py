"""Hostile input to the web app, through Flask's test client: where a login may send the visitor
(``next``), tariff values at and beyond their bounds, duplicate tariff versions, oversized
requests and user names, replayed session cookies after logout and password changes, malformed
API and Dash callback requests, and a ledger that cannot write its audit rows."""
import logging
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import pytest

from auth.accounts import MAX_USERNAME_INPUT, AccountError, Accounts
from auth.web import callback_body_error, safe_next
from community import Community
from config import parse_config
from pricing.tariffs import MAX_PRICE_CT, Tariff, TariffConflict, TariffError, tariff_errors
from storage.ledger import MIGRATIONS, Ledger, _split_sql
from web import MAX_REQUEST_BYTES
from webauth import MANAGER, add_users, login, member

ROOT = Path(__file__).resolve().parent.parent

HOUSES = {"M1": {"id": 1, "name": "One"}, "M2": {"id": 2, "name": "Two", "pv_kwp": 10}}
BASE = "/leg/"
GOOD = {"p_pv": 18, "p_grid_del": 5, "p_grid_con": 32}


def settings(tmp_path, base: str = BASE) -> dict:
    return {"houses": HOUSES, "storage": {"data_dir": str(tmp_path)}, "mqtt": {"enabled": False},
            "web": {"base_path": base}}


def open_world(tmp_path, base: str = BASE):
    from web import create_app
    c = Community.open(parse_config(settings(tmp_path, base), source="test"))
    df = pd.DataFrame({"meter_id": ["M1", "M1", "M2", "M2"],
                       "ts": pd.to_datetime(["2026-02-01T00:00+01:00", "2026-03-01T00:00+01:00"] * 2, utc=True),
                       "import_kwh": [0.0, 2688.0, 0.0, 0.0], "export_kwh": [0.0, 0.0, 0.0, 5376.0]})
    df["ts"] = df["ts"].astype("datetime64[us, UTC]")
    df["power_in_kw"] = df["power_out_kw"] = float("nan")
    c.store_readings(df)
    return c, create_app(c)


@pytest.fixture
def world(tmp_path):
    c, app = open_world(tmp_path)
    add_users(c)
    yield c, app
    c.close()


@pytest.fixture
def manager(world):
    return login(world[1].server.test_client(), BASE, *MANAGER)


def rows(c, table: str) -> int:
    return c.ledger._rows(f"SELECT count(*) FROM {table}")[0][0]


def copy_session(app, source):
    """A second client holding a copy of ``source``'s session cookie (what a thief would keep)."""
    cookie = source.get_cookie("leg_session", path=BASE)
    assert cookie is not None
    thief = app.server.test_client()
    thief.set_cookie("leg_session", cookie.value, path=BASE)
    return thief


# -- 1. where a login may send the visitor ------------------------------------------------------

BAD_NEXT = ["/%09/evil.example", "/%0d%0a/evil.example", "/%2509/evil.example", "//evil.example",
            "/%2F%2Fevil.example", "/%5Cevil.example", "/%5C%5Cevil.example", "https://evil.example/",
            "https:evil.example", "%20//evil.example", "/%E2%80%8B/evil.example", "{base}%0d%0aSet-Cookie:%20x=1",
            "{base}../../evil", "{base}%09x", "javascript:alert(1)", "evil.example"]


@pytest.mark.parametrize("base", ["/", BASE])
def test_next_goes_only_to_a_path_under_the_base_path_once_decoded(tmp_path, base):
    c, app = open_world(tmp_path, base)
    try:
        add_users(c)
        for raw in BAD_NEXT:
            raw = raw.format(base=base)
            r = app.server.test_client().post(f"{base}login?next={raw}", data=dict(zip(("username", "password"),
                                                                                       MANAGER)))
            assert r.status_code == 303 and r.headers["Location"] == base, (raw, r.status_code, r.headers.get("Location"))
        # as a form field too, with the raw control characters (no 500 for CR/LF in a header)
        for raw in ("/\t/evil.example", base + "\r\nSet-Cookie: x=1", base + "\n", "/\\evil.example"):
            r = app.server.test_client().post(base + "login", data={"username": MANAGER[0], "password": MANAGER[1],
                                                                    "next": raw})
            assert r.status_code == 303 and r.headers["Location"] == base, raw
        good = base + "houses/1?range=last_month"
        r = app.server.test_client().post(base + "login", data={"username": MANAGER[0], "password": MANAGER[1],
                                                                "next": good})
        assert r.headers["Location"] == good
        # members land on their own page when next is refused
        r = app.server.test_client().post(f"{base}login?next=/%09/evil.example",
                                          data=dict(zip(("username", "password"), member("1"))))
        assert r.headers["Location"] == base + "my"
        # the login page does not echo a refused next into its form
        assert b"evil.example" not in app.server.test_client().get(f"{base}login?next=/%09/evil.example").data
        # an anonymous visit to a path with CR/LF is sent to the login, not to a 500
        r = app.server.test_client().get(base + "houses%0d%0aSet-Cookie:x=1")
        assert r.status_code == 303 and "\n" not in r.headers["Location"] and "/login?next=" in r.headers["Location"]
    finally:
        c.close()


def test_safe_next_rules():
    assert safe_next("/leg/settlement?period=2026-03", "/leg/") == "/leg/settlement?period=2026-03"
    assert safe_next(" /leg/my ", "/leg/") == "/leg/my"                               # stripped
    assert safe_next("/leg/é", "/leg/") == "/leg/%C3%A9"                              # quoted anew
    for bad in ("/other/", "/leg", "/leg/%2e%2e/x", "/leg/\u00a0x", "/leg/\u202ex", "/leg/" + "a" * 3000, None, 5,
                "/leg/%25252525252541"):                               # still encoded after five decodings
        assert safe_next(bad, "/leg/") is None, bad
    assert safe_next("/leg/%252541", "/leg/") == "/leg/A"


# -- 2. tariff values and versions -----------------------------------------------------------------

def test_tariff_prices_are_bounded_and_effective_from_is_a_date_text(manager, world):
    c, _ = world
    url = BASE + "api/tariffs"
    for field in ("p_pv", "p_grid_del", "p_grid_con"):
        r = manager.post(url, json={**GOOD, "p_grid_con": 32, field: 1e308})
        assert r.status_code == 400 and r.get_json()["field"] == field
    r = manager.post(url, json={**GOOD, "p_grid_con": MAX_PRICE_CT + 0.01})
    assert r.status_code == 400 and r.get_json()["field"] == "p_grid_con" and "at most 1000" in r.get_json()["error"]
    huge = "1" + "0" * 400                                   # a 400-digit integer: JSON allows it
    r = manager.post(url, data='{"p_pv": %s, "p_grid_del": 5, "p_grid_con": 32}' % huge,
                     content_type="application/json")
    assert r.status_code == 400 and r.get_json()["field"] == "p_pv" and len(r.get_json()["error"]) < 200
    r = manager.post(url, data='{"p_pv": 1%s, "p_grid_del": 5, "p_grid_con": 32}' % ("0" * 5000),
                     content_type="application/json")     # beyond Python's digit limit: not JSON it reads
    assert r.status_code == 400 and r.get_json()["field"] == "body"
    for value in (12345, ["2026-05-01"], {"date": "2026-05-01"}, True):
        r = manager.post(url, json={**GOOD, "effective_from": value})
        assert r.status_code == 400 and r.get_json()["field"] == "effective_from", value
        assert "date-time text" in r.get_json()["error"]
    r = manager.post(url, json={**GOOD, "effective_from": "0001-01-01T00:00"})
    assert r.status_code == 400 and r.get_json()["field"] == "effective_from"
    assert len(c.ledger.tariff_versions()) == 1                                   # nothing stored
    # the bounds themselves are allowed
    r = manager.post(url, json={"p_pv": MAX_PRICE_CT, "p_grid_del": 0, "p_grid_con": MAX_PRICE_CT,
                                "effective_from": "2026-05-01T00:00"})
    assert r.status_code == 201


def test_the_tariff_rules_hold_for_every_path():
    """The command line builds a Tariff, the Tariffs page calls tariff_errors: both refuse it."""
    with pytest.raises(TariffError, match="p_grid_con: must be at most 1000"):
        Tariff(20, 6, 1e308, "static", datetime(2026, 5, 1, tzinfo=timezone.utc))
    with pytest.raises(TariffError, match="finite"):
        Tariff(float("inf"), 6, 30)
    errors = tariff_errors({"p_pv": 10 ** 400, "p_grid_del": 1, "p_grid_con": 2, "mode": "static"})
    assert [e.field for e in errors] == ["p_pv"] and len(errors[0].message) < 100


def test_one_tariff_version_per_effective_from(manager, world):
    c, _ = world
    url = BASE + "api/tariffs"
    assert manager.post(url, json={**GOOD, "effective_from": "2026-05-01T00:00"}).status_code == 201
    for same in ("2026-05-01T00:00", "2026-04-30T22:00:00+00:00"):               # the same instant
        r = manager.post(url, json={"p_pv": 19, "p_grid_del": 5, "p_grid_con": 33, "effective_from": same})
        assert r.status_code == 409, same
        body = r.get_json()
        assert body["field"] == "effective_from" and "exists already" in body["error"]
        assert "2026-05-01T00:00:00+02:00" in body["error"]
    assert [t.p_pv for t in c.ledger.tariff_versions()] == [20.0, 18.0]
    assert manager.post(url, json={**GOOD, "effective_from": "2026-05-01T00:15"}).status_code == 201
    # the ledger itself refuses a duplicate, whoever writes it
    with pytest.raises(sqlite3.IntegrityError):
        c.ledger.add_tariff(Tariff(1, 0, 2, "static", datetime(2026, 4, 30, 22, tzinfo=timezone.utc)), "test")


def test_migration_keeps_the_later_of_duplicate_tariff_versions(tmp_path):
    path = tmp_path / "ledger.sqlite"
    con = sqlite3.connect(path, isolation_level=None)
    for version, script in enumerate(MIGRATIONS[:8], 1):                         # a ledger before migration 9
        for statement in _split_sql(script):
            con.execute(statement)
        con.execute(f"PRAGMA user_version = {version}")
    for eff, p_pv in (("1970-01-01T00:00:00+00:00", 20), ("2026-01-01T00:00:00+00:00", 21),
                      ("2026-01-01T00:00:00+00:00", 22), ("2026-01-01T00:00:00+00:00", 23),
                      ("2026-02-01T00:00:00+00:00", 24)):
        con.execute("INSERT INTO tariff_versions (effective_from, mode, p_pv, p_grid_del, p_grid_con, created_at, "
                    "created_by) VALUES (?, 'static', ?, 5, 30, '2026-01-01T00:00:00+00:00', 'old')", (eff, p_pv))
    con.close()
    ledger = Ledger(path)
    try:
        # the engine used the last added of the duplicates (23): it stays, pricing is unchanged
        assert [t.p_pv for t in ledger.tariff_versions()] == [20, 23, 24]
        kept = ledger._rows("SELECT id, p_pv, superseded_by FROM tariff_versions_superseded ORDER BY id")
        assert [tuple(r) for r in kept] == [(2, 21.0, 4), (3, 22.0, 4)]
        audit = [e["detail"] for e in Accounts(ledger).audit_log() if e["action"] == "tariff.add"]
        assert len(audit) == 5 and sum("superseded" in d for d in audit) == 2        # nothing lost
        with pytest.raises(sqlite3.IntegrityError):
            ledger.add_tariff(Tariff(21, 5, 30, "static", datetime(2026, 1, 1, tzinfo=timezone.utc)), "new")
    finally:
        ledger.close()


# -- 3. request size and user names ------------------------------------------------------------------

def test_requests_over_the_limit_get_413(manager, world):
    c, app = world
    assert MAX_REQUEST_BYTES == 20 * 1024 * 1024
    big = b"x" * (MAX_REQUEST_BYTES + 1)
    r = manager.post(BASE + "api/tariffs", data=big, content_type="application/json")
    assert r.status_code == 413 and r.is_json and r.get_json()["field"] == "body"
    failures, audit = rows(c, "login_failures"), rows(c, "audit_log")
    r = app.server.test_client().post(BASE + "login", data={"username": "u" * (30 * 1024 * 1024), "password": "x"})
    assert r.status_code == 413 and r.mimetype == "text/plain" and b"20 MB" in r.data
    assert (rows(c, "login_failures"), rows(c, "audit_log")) == (failures, audit)


def test_long_user_names_are_refused_before_anything_is_stored(world):
    c, app = world
    failures, audit = rows(c, "login_failures"), rows(c, "audit_log")
    anonymous = app.server.test_client()
    r = anonymous.post(BASE + "login", data={"username": "u" * (MAX_USERNAME_INPUT + 1), "password": "x"})
    assert r.status_code == 400 and b"at most 100 characters" in r.data
    r = anonymous.post(BASE + "login", data={"username": "u" * 400_000, "password": "x"})     # under the form limit
    assert r.status_code == 400
    with pytest.raises(AccountError, match="username"):
        Accounts(c.ledger).verify("v" * 1000, "x", "10.0.0.1")
    assert (rows(c, "login_failures"), rows(c, "audit_log")) == (failures, audit)
    stored = c.ledger._rows("SELECT max(length(key)) FROM login_failures")[0][0]
    assert stored is None
    # at the limit it is an ordinary wrong login, counted and audited
    assert anonymous.post(BASE + "login", data={"username": "u" * MAX_USERNAME_INPUT, "password": "x"}).status_code == 401
    assert rows(c, "audit_log") == audit + 1


# -- 4. sessions end on the server -------------------------------------------------------------------

def test_a_copied_cookie_stops_working_after_logout(world):
    c, app = world
    browser = login(app.server.test_client(), BASE, *MANAGER)
    thief = copy_session(app, browser)
    assert thief.get(BASE + "api/periods").status_code == 200
    assert browser.post(BASE + "logout").status_code == 303
    assert thief.get(BASE + "api/periods").status_code == 401
    assert thief.get(BASE + "settlement").status_code == 303                    # to the login page
    assert browser.get(BASE + "api/periods").status_code == 401
    again = login(app.server.test_client(), BASE, *MANAGER)                      # a new login works
    assert again.get(BASE + "api/periods").status_code == 200


def test_a_copied_cookie_stops_working_after_a_password_change(world):
    c, app = world
    name, password = member("1")
    browser = login(app.server.test_client(), BASE, name, password)
    thief = copy_session(app, browser)
    assert thief.get(BASE + "api/houses").status_code == 200
    r = browser.post(BASE + "account", data={"current": password, "new": "a-new-password-1",
                                             "confirm": "a-new-password-1"})
    assert r.status_code == 200 and b"Password changed" in r.data
    assert browser.get(BASE + "api/houses").status_code == 200                  # the changing session goes on
    assert thief.get(BASE + "api/houses").status_code == 401
    # a cookie from before session generations existed (no epoch) logs nobody in
    forged = app.server.session_interface.get_signing_serializer(app.server).dumps({"user": name, "csrf": "x"})
    old = app.server.test_client()
    old.set_cookie("leg_session", forged, path=BASE)
    assert old.get(BASE + "api/houses").status_code == 401


def test_a_password_set_on_the_command_line_ends_the_sessions(tmp_path):
    import yaml
    from click.testing import CliRunner

    import app as cli_app
    from web import create_app
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump(settings(tmp_path / "data")))

    def serve():
        c = Community.open(parse_config(yaml.safe_load(cfg.read_text()), source="test"))
        return c, create_app(c)
    c, app = serve()
    try:
        add_users(c)
        cookie = login(app.server.test_client(), BASE, *MANAGER).get_cookie("leg_session", path=BASE).value
    finally:
        c.close()
    c, app = serve()                                           # the cookie outlives a restart
    try:
        replay = app.server.test_client()
        replay.set_cookie("leg_session", cookie, path=BASE)
        assert replay.get(BASE + "api/periods").status_code == 200
    finally:
        c.close()
    r = CliRunner().invoke(cli_app.cli, ["user", "passwd", MANAGER[0], "--password-stdin", "--config", str(cfg)],
                           input="a-password-from-the-cli\n")
    assert r.exit_code == 0, r.output
    c, app = serve()
    try:
        replay = app.server.test_client()
        replay.set_cookie("leg_session", cookie, path=BASE)
        assert replay.get(BASE + "api/periods").status_code == 401
        assert login(app.server.test_client(), BASE, MANAGER[0], "a-password-from-the-cli")
    finally:
        c.close()


# -- 5. API and callback errors are JSON -------------------------------------------------------------

def test_bad_requests_get_json_4xx_not_500(manager, world):
    deep = "[" * 100_000
    r = manager.post(BASE + "api/tariffs", data=deep, content_type="application/json")
    assert r.status_code == 400 and r.get_json() == {"error": "the body is not valid JSON: the JSON is nested too "
                                                     "deeply", "field": "body"}
    r = manager.get(BASE + "api/prices?start=0001-01-01&end=0001-12-31")
    assert r.status_code == 400 and r.get_json()["field"] == "start" and "dates this app can handle" in r.get_json()["error"]
    r = manager.get(BASE + "api/prices?start=2026-01-01&end=9999-12-31")
    assert r.status_code == 400 and r.get_json()["field"] == "end"
    for period in ("9999-12", "0000-12"):
        r = manager.get(BASE + f"api/invoices?period={period}")
        assert r.status_code == 400 and r.get_json()["field"] == "period", period
        assert manager.get(BASE + f"api/invoices.csv?period={period}").status_code == 400
    r = manager.get(BASE + "api/no-such-route")
    assert r.status_code == 404 and r.get_json()["field"] == "path"
    assert world[1].server.test_client().get(BASE + "api/no-such-route").status_code == 404
    r = manager.delete(BASE + "api/houses")
    assert r.status_code == 405 and r.is_json


@pytest.mark.parametrize("body", ["[1]", "{}", "[" * 100_000, "null", '"x"', '{"output": 5}',
                                  '{"output": "_pages_content.children", "inputs": 7}',
                                  '{"output": "_pages_content.children", "inputs": [1, 2]}',
                                  '{"output": "_pages_content.children", "inputs": [], "changedPropIds": [1]}'])
def test_malformed_callback_requests_get_400(manager, body):
    r = manager.post(BASE + "_dash-update-component", data=body, content_type="application/json")
    assert r.status_code == 400 and r.is_json and "field" in r.get_json(), (body[:40], r.status_code)


def test_callback_body_rules():
    callbacks = {"a.children": {"inputs": [{"id": "x", "property": "value"}], "state": []}}
    ok = {"output": "a.children", "outputs": {"id": "a", "property": "children"},
          "inputs": [{"id": "x", "property": "value", "value": 1}], "changedPropIds": ["x.value"]}
    assert callback_body_error(ok, callbacks) is None
    assert callback_body_error({**ok, "inputs": []}, callbacks)[1] == "inputs"
    assert callback_body_error({**ok, "state": [{"id": "y"}]}, callbacks)[1] == "state"
    assert callback_body_error({**ok, "inputs": [[{"id": {"type": "x"}, "property": "value"}]]}, callbacks) is None


def test_an_unexpected_error_is_json_500_without_a_traceback(manager, world, monkeypatch, caplog):
    c, _ = world

    def broken(*args, **kwargs):
        raise RuntimeError("the internal detail")
    monkeypatch.setattr(c, "periods", broken)
    with caplog.at_level(logging.ERROR, logger="leg.web"):
        r = manager.get(BASE + "api/periods")
    assert r.status_code == 500 and r.is_json
    assert b"internal detail" not in r.data and b"Traceback" not in r.data
    assert "the internal detail" in caplog.text                           # the operator's log has it


# -- 6. a ledger that cannot write ------------------------------------------------------------------

def test_logins_go_on_when_the_audit_row_cannot_be_written(world, caplog):
    """A full disk cannot be produced portably in a test, so the ledger file is capped at its current
    size (``PRAGMA max_page_count``) and the audit log filled up to it: SQLite then fails every new
    audit row with its own "database or disk is full", exactly as on a full disk."""
    c, app = world
    c.ledger._rows(f"PRAGMA max_page_count = {c.ledger._rows('PRAGMA page_count')[0][0]}")
    for size in (3000, 300, 30, 0):                          # big rows first, then the gaps they leave
        for _ in range(10_000):
            try:
                with c.ledger.transaction() as con:
                    con.execute("INSERT INTO audit_log (at, actor, action, detail) VALUES ('-', 't', 'f', ?)",
                                ("x" * size,))
            except sqlite3.Error:
                break
        else:
            pytest.fail("the capped ledger never filled up")
    audit = rows(c, "audit_log")
    with caplog.at_level(logging.ERROR, logger="leg.auth"):
        browser = login(app.server.test_client(), BASE, *MANAGER)
        assert browser.get(BASE + "api/periods").status_code == 200
    assert "audit row not written" in caplog.text and "action=login" in caplog.text
    assert rows(c, "audit_log") == audit


def test_a_failed_login_that_cannot_be_counted_answers_503(world, caplog):
    """Counting a failed login must not be skipped (that would escape the throttling). The failure
    is injected with an SQLite authorizer that refuses every write to login_failures and
    audit_log — what a full disk does to those statements, without needing one."""
    c, app = world

    def refuse(action, table, *_):
        writes = (sqlite3.SQLITE_INSERT, sqlite3.SQLITE_UPDATE, sqlite3.SQLITE_DELETE)
        return sqlite3.SQLITE_DENY if action in writes and table in ("login_failures", "audit_log") else sqlite3.SQLITE_OK
    c.ledger._con.set_authorizer(refuse)
    try:
        anonymous = app.server.test_client()
        with caplog.at_level(logging.ERROR, logger="leg.auth"):
            r = anonymous.post(BASE + "login", data={"username": MANAGER[0], "password": "wrong"})
        assert r.status_code == 503 and b"cannot write its ledger" in r.data and b"Traceback" not in r.data
        assert "cannot be counted" in caplog.text
        browser = login(app.server.test_client(), BASE, *MANAGER)                 # the right password still works
        assert browser.get(BASE + "api/periods").status_code == 200
    finally:
        c.ledger._con.set_authorizer(None)


def test_a_duplicate_tariff_version_is_refused_on_every_path(world, tmp_path):
    """The page's form (components.views.submit) and the command line refuse it as the API does:
    the rule is Community.add_tariff's."""
    c, _ = world
    c.add_tariff(Tariff(18, 5, 30, "static", datetime(2026, 6, 1, tzinfo=timezone.utc)), "test")
    with pytest.raises(TariffConflict, match="exists already"):
        c.add_tariff(Tariff(19, 5, 30, "static", datetime(2026, 6, 1, tzinfo=timezone.utc)), "test")
    cfg = tmp_path / "cli.yaml"
    cfg.write_text(f"storage: {{data_dir: '{tmp_path / 'cli-data'}'}}\nmqtt: {{enabled: false}}\n"
                   "houses: {H1: {id: 1, name: House 1}}\n")
    add = [sys.executable, str(ROOT / "app.py"), "tariffs", "add", "--p-pv", "18", "--p-grid-del", "5",
           "--p-grid-con", "30", "--effective-from", "2026-07-01T00:00", "--config", str(cfg)]
    assert subprocess.run(add, capture_output=True, text=True, timeout=120).returncode == 0
    again = subprocess.run(add, capture_output=True, text=True, timeout=120)
    assert again.returncode == 1 and "exists already" in again.stderr and "Traceback" not in again.stderr
