"""Access control: every registered Flask route and every Dash callback, requested as anonymous,
as the member of house A, as the member of house B, as a manager (and with API tokens), gets
exactly what its declared level allows — new routes and callbacks are picked up from the app,
not from a list kept here. Members never see another house's data. Plus: CSRF, login
throttling, token revocation, security headers."""
import re
from datetime import datetime, timezone

import pandas as pd
import pytest

from auth.web import LEVELS, member_outputs, output_ids, route_level
from billing import lifecycle
from community import Community
from config import parse_config
from simulator.profiles import profiles_for, simulate_counters
from webauth import MANAGER, add_users, login, member

BASE = "/"
HOUSES = {"MTR-A": {"id": 1, "name": "Alpha-House"}, "MTR-B": {"id": 2, "name": "Beta-House", "pv_kwp": 9}}
SECRET_OF_B = ("Beta-House", "MTR-B", "INV-2026-002")


@pytest.fixture(scope="module")
def world(tmp_path_factory):
    from web import create_app
    tmp = tmp_path_factory.mktemp("access")
    cfg = parse_config({"houses": HOUSES, "storage": {"data_dir": str(tmp)}, "mqtt": {"enabled": False},
                        "web": {"frame_ancestors": ["'self'", "https://sim.example.org"]}}, source="test")
    c = Community.open(cfg, clock=lambda: datetime(2026, 4, 2, tzinfo=timezone.utc))
    c.store_readings(simulate_counters(profiles_for(cfg.houses), pd.Timestamp("2026-02-27T00:00Z"),
                                       pd.Timestamp("2026-04-01T06:00Z"), 900, c.tz))
    lifecycle.close_period(c, "2026-03", "setup", workers=1)
    accounts = add_users(c)
    app = create_app(c, accounts=accounts)
    tokens = {"read": accounts.create_token("read", "setup"), "write": accounts.create_token("write", "setup")}
    server = app.server
    server.test_client().get("/")                           # Dash sets up its callbacks on the first request
    yield c, app, accounts, tokens
    c.close()


def clients(world):
    c, app, accounts, tokens = world
    s = app.server
    out = {"anonymous": s.test_client(), "member A": login(s.test_client(), BASE, *member("1")),
           "member B": login(s.test_client(), BASE, *member("2")), "manager": login(s.test_client(), BASE, *MANAGER)}
    for scope, text in tokens.items():
        cl = s.test_client()
        cl.environ_base["HTTP_AUTHORIZATION"] = f"Bearer {text}"
        out[f"{scope} token"] = cl
    return out


def allowed(level: str, who: str, method: str, path: str) -> bool:
    token = who.endswith("token")
    if level == "public":
        return True
    if level == "control":                       # the command line's secret, which no visitor has
        return False
    if who == "anonymous":
        return False
    if token and not (path.startswith("/api/") or path == "/metrics"):
        return False
    if level == "user":
        return not (token and method != "GET" and who != "write token")
    if level == "read":
        return who == "manager" or (token and method == "GET")
    if level == "write":
        return who in ("manager", "write token")
    return who == "manager"


def concrete(rule, app) -> str:
    """A URL for a rule, with real values for its parameters."""
    values = {"filename": "app.css", "path": "settlement", "invoice_id": "INV-2026-001.pdf", "meter_id": "MTR-A",
              "tx_id": "TX-1", "house_id": "1", "name": "2026.csv", "lang": "fr", "package_name": "dash", "fingerprinted_path": "dash-renderer/build/dash_renderer.min.js"}
    url = rule.rule
    for name in rule.arguments:
        url = re.sub(rf"<(?:[a-z]+:)?{name}>", values[name], url)
    return url


def test_every_route_answers_exactly_its_declared_level(world):
    c, app, accounts, tokens = world
    server = app.server
    cl = clients(world)
    rules = [r for r in server.url_map.iter_rules()]
    assert len(rules) >= 20
    for rule in rules:
        level = route_level(server, rule.endpoint, BASE)
        assert level in LEVELS
        if rule.endpoint.startswith("api."):                  # the API declares every route itself
            assert hasattr(server.view_functions[rule.endpoint], "_leg_access"), rule.endpoint
        url = concrete(rule, app)
        for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
            for who, client in cl.items():
                if rule.endpoint == "logout":
                    continue                                  # would end the session; tested below
                kwargs = {"json": {}} if method == "POST" else {}
                if rule.endpoint.endswith("_dash-update-component"):
                    kwargs = {"json": {"output": "_pages_content.children", "outputs": {"id": "_pages_content",
                              "property": "children"}, "inputs": [], "changedPropIds": []}}
                if rule.endpoint == "login":                  # wrong logins from one address would lock it
                    kwargs["environ_base"] = {"REMOTE_ADDR": f"192.0.2.{len(who)}{len(method)}"}
                r = client.open(url, method=method, **kwargs)
                denied = r.status_code in (401, 403) or (r.status_code == 303 and "/login" in r.headers["Location"])
                if rule.endpoint == "login":                  # 401 there means a wrong password, not no access
                    denied = b"<form" not in r.data
                if rule.endpoint == "api.meter_reading":      # its own check: the meter's push token
                    denied = r.status_code == 403 or (r.status_code == 401 and r.get_json()["field"] != "token")
                assert denied != allowed(level, who, method, url), (who, method, url, level, r.status_code)


def test_members_see_only_their_own_house(world):
    c, app, *_ = world
    a = clients(world)["member A"]
    for url in ("/api/houses", "/api/invoices?period=2026-03", "/api/invoices.csv?period=2026-03", "/api/tariffs",
                "/my", "/houses/1", "/_dash-layout"):
        r = a.get(url)
        assert r.status_code == 200, url
        for secret in SECRET_OF_B:
            assert secret.encode() not in r.data, (url, secret)
    assert [h["house_id"] for h in a.get("/api/houses").get_json()] == ["1"]
    assert [i["house_id"] for i in a.get("/api/invoices?period=2026-03").get_json()["invoices"]] == ["1"]
    for url in ("/api/invoices/INV-2026-002", "/api/invoices/INV-2026-002.pdf", "/api/invoices/INV-2026-002.csv",
                "/api/invoices/DRAFT-2026-04-2"):
        r = a.get(url)
        assert r.status_code == 404 and b"Beta" not in r.data, url
    assert a.get("/api/invoices/INV-2026-001.pdf").data.startswith(b"%PDF-")


def callback_body(app, key: str, inputs: dict | None = None) -> dict:
    cb = app.callback_map[key]
    ins = [{"id": i["id"], "property": i["property"], "value": (inputs or {}).get(i["id"])} for i in cb["inputs"]]
    st = [{"id": i["id"], "property": i["property"], "value": (inputs or {}).get(i["id"])} for i in cb["state"]]
    outs = key
    parsed = [{"id": o.rsplit(".", 1)[0], "property": o.rsplit(".", 1)[1]} for o in
              (outs.strip(".").split("...") if outs.startswith("..") else [outs])]
    return {"output": outs, "outputs": parsed if outs.startswith("..") else parsed[0], "inputs": ins,
            "state": st, "changedPropIds": [f"{ins[0]['id']}.{ins[0]['property']}"] if ins else []}


def test_every_dash_callback_is_checked_on_the_server(world):
    c, app, *_ = world
    cl = clients(world)
    keys = list(app.callback_map)
    assert len(keys) >= 15
    members = member_outputs()
    for key in keys:
        for_members = all(i in members for i in output_ids(key))
        inputs = {"house-select": "1", "house-range": "last_month", "settle-period": "2026-03",
                  "community-range": "last_month", "grid-range": "last_month"}
        for who, client in cl.items():
            r = client.post("/_dash-update-component", json=callback_body(app, key, inputs))
            denied = r.status_code in (401, 403)
            should = who == "manager" or (who.startswith("member") and for_members)
            assert denied != should, (who, key, r.status_code)
            if who == "member A" and not denied:
                for secret in SECRET_OF_B:
                    assert secret.encode() not in r.data, (key, secret)
    # a member asking for another house's figures gets nothing
    key = next(k for k in keys if "house-energy" in k)
    r = cl["member A"].post("/_dash-update-component", json=callback_body(app, key, {"house-select": "2",
                                                                               "house-range": "last_month"}))
    assert r.status_code == 204
    assert cl["member B"].post("/_dash-update-component", json=callback_body(
        app, key, {"house-select": "2", "house-range": "last_month"})).status_code == 200


def test_csrf_less_posts_with_a_cookie_are_refused(world):
    c, app, *_ = world
    m = login(app.server.test_client(), BASE, *MANAGER)
    body = {"p_pv": 19, "p_grid_del": 6, "p_grid_con": 30, "effective_from": "2026-05-01T00:00"}
    header = m.environ_base.pop("HTTP_X_CSRFTOKEN")
    r = m.post("/api/tariffs", json=body)
    assert r.status_code == 403 and r.get_json()["field"] == "X-CSRFToken"
    assert m.post("/api/tariffs", json=body, headers={"X-CSRFToken": "forged"}).status_code == 403
    r = m.post("/api/tariffs", json=body, headers={"X-CSRFToken": header})
    assert r.status_code == 201
    assert m.post("/logout").status_code == 403                     # logging out needs the token too
    assert m.post("/logout", data={"csrf_token": header}).status_code == 303
    assert m.get("/api/periods").status_code == 401                  # logged out
    # the change is in the audit log with who made it
    log = login(app.server.test_client(), BASE, *MANAGER).get("/api/audit").get_json()
    assert any(e["action"] == "tariff.add" and e["actor"] == "boss" for e in log)
    assert any(e["action"] == "logout" and e["actor"] == "boss" for e in log)
    assert any(e["action"] == "period.close" and e["actor"] == "setup" for e in log)


def test_tokens_scopes_and_revocation(world):
    c, app, accounts, _ = world
    s = app.server
    read, write = accounts.create_token("read", "test"), accounts.create_token("write", "test")
    h = lambda t: {"Authorization": f"Bearer {t}"}
    body = {"p_pv": 19, "p_grid_del": 6, "p_grid_con": 30, "effective_from": "2026-06-01T00:00"}
    cl = s.test_client()
    assert cl.get("/api/periods", headers=h(read)).status_code == 200
    assert cl.post("/api/tariffs", json=body, headers=h(read)).status_code == 403
    assert cl.post("/api/tariffs", json=body, headers=h(write)).status_code == 201       # no CSRF for tokens
    assert cl.get("/settlement", headers=h(write)).status_code == 403                    # tokens are for /api/
    accounts.revoke_token(read.split("_")[1], "test")
    assert cl.get("/api/periods", headers=h(read)).status_code == 401                    # at once
    assert cl.get("/api/periods", headers=h(read[:-2] + "xx")).status_code == 401
    stored = accounts.tokens()
    assert all(read not in str(t) for t in stored)                                       # stored hashed


def test_login_is_throttled_per_account_and_per_address(world):
    c, app, accounts, _ = world
    accounts.add_user("victim", "victim-password-1", "member", ["1"])
    cl = app.server.test_client()
    cl.environ_base["REMOTE_ADDR"] = "10.0.0.7"                   # the attacker
    for _ in range(5):
        assert cl.post("/login", data={"username": "victim", "password": "guess"}).status_code == 401
    r = cl.post("/login", data={"username": "victim", "password": "guess"})
    assert r.status_code == 401
    r = cl.post("/login", data={"username": "victim", "password": "victim-password-1"})
    assert r.status_code == 429 and int(r.headers["Retry-After"]) > 0        # even the right password waits
    # another address is throttled for this account too; the attacker's address for every account
    other = app.server.test_client()
    assert other.post("/login", data={"username": "victim", "password": "victim-password-1"},
                      environ_base={"REMOTE_ADDR": "10.0.0.9"}).status_code == 429
    assert cl.post("/login", data={"username": "boss", "password": "x"}).status_code == 429
    # a login form posted from another site is refused
    r = other.post("/login", data={"username": "boss", "password": MANAGER[1]},
                   headers={"Origin": "https://evil.example"}, environ_base={"REMOTE_ADDR": "10.0.0.8"})
    assert r.status_code == 403
    actions = [e["action"] for e in accounts.audit_log()]
    assert "login.failed" in actions


def test_security_headers_and_cookies(world):
    c, app, *_ = world
    cl = app.server.test_client()
    r = cl.post("/login", data={"username": MANAGER[0], "password": MANAGER[1]})
    cookies = r.headers.getlist("Set-Cookie")
    session = next(x for x in cookies if x.startswith("leg_session="))
    assert "HttpOnly" in session and "SameSite=Lax" in session and "Secure" not in session
    r = cl.post("/login", data={"username": MANAGER[0], "password": MANAGER[1]}, base_url="https://localhost")
    assert "Secure" in next(x for x in r.headers.getlist("Set-Cookie") if x.startswith("leg_session="))
    page = cl.get("/")
    csp = page.headers["Content-Security-Policy"]
    assert "frame-ancestors 'self' https://sim.example.org" in csp and "default-src 'self'" in csp
    assert "'unsafe-inline'" not in csp.split("script-src")[1].split(";")[0]
    assert page.headers["X-Content-Type-Options"] == "nosniff"
    assert cl.get("/api/health").headers["X-Content-Type-Options"] == "nosniff"
    assert "Content-Security-Policy" in app.server.test_client().get("/login").headers


def test_command_line_accounts_and_tokens(tmp_path):
    import yaml
    from click.testing import CliRunner

    import app as cli_app
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"houses": HOUSES, "storage": {"data_dir": str(tmp_path / "d")},
                                   "mqtt": {"enabled": False}}))
    run = lambda *args, input=None: CliRunner().invoke(cli_app.cli, [*args, "--config", str(cfg)], input=input)
    r = run("user", "add", "alice", "--role", "manager", "--password-stdin", input="a-long-password\n")
    assert r.exit_code == 0 and "password:" not in r.output
    r = run("user", "add", "bob", "--role", "member", "--house", "2")
    assert r.exit_code == 0 and re.search(r"password: \S{12,}", r.output)
    assert run("user", "add", "eve", "--role", "member").exit_code != 0            # a member needs a house
    assert run("user", "add", "eve", "--role", "manager", "--password-stdin", input="short\n").exit_code != 0
    listing = run("user", "list").output
    assert "alice" in listing and "bob" in listing and "member   houses: 2" in listing
    token = run("token", "create", "--scope", "read").output.strip().splitlines()[-1]
    assert re.fullmatch(r"leg_[0-9a-f]{12}_\S+", token)
    from web import create_app
    c = Community.open(parse_config(yaml.safe_load(cfg.read_text()), source="t"))
    try:
        client = create_app(c).server.test_client()
        assert client.get("/api/houses", headers={"Authorization": f"Bearer {token}"}).status_code == 200
        assert run("token", "revoke", token).exit_code == 0
        assert client.get("/api/houses", headers={"Authorization": f"Bearer {token}"}).status_code == 401
        r = client.post("/login", data={"username": "alice", "password": "a-long-password"})
        assert r.status_code == 303 and r.headers["Location"] == "/"
    finally:
        c.close()


def test_first_start_makes_a_manager_without_a_fixed_password(tmp_path):
    from auth.accounts import Accounts, bootstrap_manager
    c = Community.open(parse_config({"houses": HOUSES, "storage": {"data_dir": str(tmp_path)}}, source="t"))
    try:
        a = Accounts(c.ledger)
        name, password = bootstrap_manager(a, {})
        assert name == "admin" and len(password) >= 12 and a.verify("admin", password) is not None
        assert bootstrap_manager(a, {}) is None                          # only on a first start
    finally:
        c.close()
    c = Community.open(parse_config({"houses": HOUSES, "storage": {"data_dir": str(tmp_path / "b")}}, source="t"))
    try:
        a = Accounts(c.ledger)
        assert bootstrap_manager(a, {"LEG_ADMIN_USER": "chef", "LEG_ADMIN_PASSWORD": "from-the-environment"}) is None
        assert a.verify("chef", "from-the-environment").is_manager
    finally:
        c.close()


def test_a_user_changes_their_password(world):
    c, app, accounts, _ = world
    accounts.add_user("changer", "first-password-1", "member", ["1"])
    cl = login(app.server.test_client(), BASE, "changer", "first-password-1")
    form = {"current": "wrong-password", "new": "second-password-2", "confirm": "second-password-2"}
    token = cl.environ_base.pop("HTTP_X_CSRFTOKEN")
    assert cl.post("/account", data=form).status_code == 403                 # no CSRF token in the form
    r = cl.post("/account", data={**form, "csrf_token": token})
    assert r.status_code == 400 and b"current password is wrong" in r.data
    r = cl.post("/account", data={**form, "current": "first-password-1", "confirm": "other", "csrf_token": token})
    assert r.status_code == 400 and b"differ" in r.data
    r = cl.post("/account", data={**form, "current": "first-password-1", "csrf_token": token})
    assert r.status_code == 200 and b"Password changed" in r.data
    assert accounts.verify("changer", "first-password-1") is None
    assert accounts.verify("changer", "second-password-2").houses == frozenset({"1"})
