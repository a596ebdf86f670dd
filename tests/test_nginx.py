"""The shipped nginx snippet (deploy/nginx-leg-invoicing.conf) in a real nginx (Debian's package):
LEG-Invoicing under /invoicing/ (waitress, web.base_path /invoicing/) beside a stand-in for
LEG-Simulator at /, each on a free localhost port. Logged in through the proxy (the login form, then
the session cookie and the CSRF header as a browser sends them), pages, assets, Dash callbacks, the
REST API and the CSV download work; anonymous requests get the login page or 401; the prefix, the
redirects, the cookies and the forwarded headers are checked. The snippet is used byte for byte,
only its upstream port is replaced."""
import csv
import io
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from urllib.parse import parse_qs, urljoin, urlsplit

import pandas as pd
import pytest
import requests

from billing.settlement import CSV_FIELDS
from peers import free_port, wait_port
from webauth import MANAGER, member

NGINX = shutil.which("nginx") or next((p for p in ("/usr/sbin/nginx",) if Path(p).exists()), None)
pytestmark = pytest.mark.skipif(NGINX is None, reason="nginx is not installed (apt-get install nginx-light)")
SNIPPET = Path(__file__).resolve().parent.parent / "deploy" / "nginx-leg-invoicing.conf"
UPSTREAM = "127.0.0.1:8060"
PREFIX = "/invoicing/"


class Simulator(BaseHTTPRequestHandler):
    """Stand-in for LEG-Simulator at the site root: answers every GET with "simulator" and keeps
    the cookies it was sent."""
    cookies: list[str] = []

    def do_GET(self):
        self.cookies.append(self.headers.get("Cookie", ""))
        body = b"simulator"
        self.send_response(200)
        self.send_header("Content-Type", "text/plain")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *_):
        pass


def nginx_conf(tmp: Path, port: int, sim_port: int, snippet: Path) -> str:
    return f"""
{"user root;" if os.geteuid() == 0 else ""}
worker_processes 1;
pid {tmp}/nginx.pid;
error_log {tmp}/error.log info;
events {{ worker_connections 64; }}
http {{
    access_log {tmp}/access.log;
    client_body_temp_path {tmp}/client_body;
    proxy_temp_path {tmp}/proxy;
    fastcgi_temp_path {tmp}/fastcgi;
    uwsgi_temp_path {tmp}/uwsgi;
    scgi_temp_path {tmp}/scgi;
    server {{
        listen 127.0.0.1:{port};
        server_name localhost;
        include {snippet};
        location / {{
            proxy_pass http://127.0.0.1:{sim_port};
            proxy_set_header Host $host;
            proxy_set_header X-Forwarded-For $proxy_add_x_forwarded_for;
        }}
    }}
}}
"""


def children_of(pid: int) -> list[int]:
    out = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            fields = stat.read_text().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[1]) == pid:
            out.append(int(stat.parent.name))
    return out


def alive(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    from test_browser import serve
    tmp = tmp_path_factory.mktemp("nginx")
    c, srv, app_url = serve(PREFIX, tmp_path_factory.mktemp("app"))
    app_port = int(re.match(r"http://127\.0\.0\.1:(\d+)/", app_url).group(1))
    # every request as it reaches waitress from nginx (waitress clears X-Forwarded-* further in,
    # as no trusted_proxy is configured)
    seen = []
    inner = srv.application

    def recorder(environ, start_response):
        seen.append({k: environ.get(k) for k in ("PATH_INFO", "QUERY_STRING", "HTTP_HOST", "HTTP_X_FORWARDED_FOR",
                                                 "HTTP_X_REAL_IP", "HTTP_X_FORWARDED_PROTO",
                                                 "HTTP_X_FORWARDED_HOST", "CONTENT_LENGTH")})
        return inner(environ, start_response)

    srv.application = recorder
    handler = type("Simulator", (Simulator,), {"cookies": []})
    sim = ThreadingHTTPServer(("127.0.0.1", free_port()), handler)
    threading.Thread(target=sim.serve_forever, daemon=True).start()
    proc, workers = None, set()
    try:
        shipped = SNIPPET.read_text()
        assert shipped.count(UPSTREAM) == 1, f"{SNIPPET} must name the upstream {UPSTREAM} exactly once"
        snippet = tmp / SNIPPET.name
        snippet.write_text(shipped.replace(UPSTREAM, f"127.0.0.1:{app_port}"))
        port = free_port()
        conf = tmp / "nginx.conf"
        conf.write_text(nginx_conf(tmp, port, sim.server_address[1], snippet))
        cmd = [NGINX, "-p", str(tmp), "-c", str(conf), "-e", str(tmp / "error.log")]
        check = subprocess.run(cmd + ["-t"], capture_output=True, text=True, timeout=30)
        assert check.returncode == 0 and "test is successful" in check.stderr, check.stderr
        proc = subprocess.Popen(cmd + ["-g", "daemon off;"], stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        try:
            wait_port(port)
        except TimeoutError:
            raise RuntimeError(f"nginx did not start: {(tmp / 'error.log').read_text()[-2000:]}") from None
        workers = set(children_of(proc.pid))
        yield SimpleNamespace(url=f"http://127.0.0.1:{port}", port=port, app_port=app_port, community=c,
                              sim_cookies=handler.cookies,
                              seen=seen, tmp=tmp, shipped=shipped, snippet=snippet, check=check)
    finally:
        if proc is not None:
            workers |= set(children_of(proc.pid))
            proc.terminate()                           # fast shutdown; the master stops and reaps its workers
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
            for pid in workers:
                if alive(pid):
                    os.kill(pid, signal.SIGKILL)
            assert not [pid for pid in workers if alive(pid)], "an nginx worker outlived its master"
            assert not (tmp / "nginx.pid").exists()
        sim.shutdown()
        sim.server_close()
        srv.close()
        srv.leg_app.server.config["LEG"] = None    # no store handle outlives the test
        c.close()


def last_month(c) -> str:
    now = pd.Timestamp.now(tz=c.tz)
    return (now.replace(day=1) - pd.Timedelta(days=1)).strftime("%Y-%m")


def log_in(url: str, username: str, password: str, **headers) -> tuple[requests.Session, requests.Response]:
    """A session logged in through the proxy with the login form, sending the CSRF header on every
    request as Dash's renderer does; and the login's response (the redirect, not followed)."""
    s = requests.Session()
    s.headers["Accept-Language"] = "en"     # as a browser set to English; the pages' texts are asserted in English
    r = s.post(url + PREFIX + "login", data={"username": username, "password": password}, headers=headers,
               allow_redirects=False, timeout=30)
    assert r.status_code == 303, (r.status_code, r.text[:300])
    token = s.cookies.get("_csrf_token", path=PREFIX)
    assert token, s.cookies
    s.headers["X-CSRFToken"] = token
    return s, r


def set_cookies(r: requests.Response) -> dict[str, str]:
    """The Set-Cookie headers of a response, by cookie name."""
    return {h.split("=", 1)[0]: h for h in r.raw.headers.getlist("Set-Cookie")}


@pytest.fixture(scope="module")
def manager(stack):
    s, _ = log_in(stack.url, *MANAGER)
    yield s
    s.close()


def outputs_of(output: str) -> list[tuple[str, str]]:
    """(id, property) of a callback's outputs, from its output string in _dash-dependencies."""
    parts = output[2:-2].split("...") if output.startswith("..") else [output]
    return [tuple(o.rsplit(".", 1)) for o in parts]


def callback_body(dep: dict, values: dict) -> dict:
    """The POST body the Dash renderer sends for callback ``dep`` (an entry of _dash-dependencies);
    inputs and states not in ``values`` are None, as for components that were not set."""
    outputs = [{"id": i, "property": p} for i, p in outputs_of(dep["output"])]
    fill = lambda deps: [{**d, "value": values.get(f"{d['id']}.{d['property']}")} for d in deps]
    return {"output": dep["output"], "outputs": outputs if dep["output"].startswith("..") else outputs[0],
            "inputs": fill(dep["inputs"]), "state": fill(dep["state"]),
            "changedPropIds": [k for k in values if any(f"{d['id']}.{d['property']}" == k for d in dep["inputs"])]}


def test_nginx_accepts_the_shipped_snippet(stack):
    assert "syntax is ok" in stack.check.stderr and "test is successful" in stack.check.stderr
    # what nginx loaded is the shipped file, with only the upstream port changed
    assert stack.snippet.read_text() == stack.shipped.replace(UPSTREAM, f"127.0.0.1:{stack.app_port}")
    assert re.search(rf"^\s*proxy_pass http://{re.escape(UPSTREAM)};", stack.shipped, re.M), \
        "proxy_pass must name the upstream without a URI part, so the prefix is passed on"
    directives = dict(re.findall(r"^\s*(client_max_body_size|proxy_read_timeout)\s+(\d+)", stack.shipped, re.M))
    assert int(directives["client_max_body_size"]) >= 20 and int(directives["proxy_read_timeout"]) >= 120


def test_page_and_assets_under_prefix(stack, manager):
    r = manager.get(stack.url + "/invoicing/", timeout=30)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/html")
    urls = re.findall(r'<(?:script|link)\b[^>]*\b(?:src|href)="([^"]+)"', r.text)
    assert any(u.endswith(".js") or ".js?" in u for u in urls) and any(".css" in u for u in urls), urls
    assert all(u.startswith(PREFIX) for u in urls), [u for u in urls if not u.startswith(PREFIX)]
    config = json.loads(re.search(r'<script id="_dash-config" type="application/json">(.*?)</script>',
                                  r.text, re.S).group(1))
    assert config["requests_pathname_prefix"] == PREFIX
    css = next(u for u in urls if "/assets/" in u and ".css" in u)
    js = next(u for u in urls if "dash_renderer" in u)
    for u in (css, js):                                   # assets need no login
        a = requests.get(stack.url + u, timeout=30)
        assert a.status_code == 200 and len(a.content) > 1000, u
    # a page below the prefix is served by the app, too
    r = manager.get(stack.url + "/invoicing/settlement", allow_redirects=False, timeout=30)
    assert r.status_code == 200 and "_dash-config" in r.text


def test_dash_layout_and_dependencies(stack, manager):
    layout = manager.get(stack.url + "/invoicing/_dash-layout", timeout=30)
    assert layout.status_code == 200 and layout.headers["Content-Type"].startswith("application/json")
    hrefs = []

    def walk(node):
        if isinstance(node, dict):
            hrefs.extend(v for k, v in node.items() if k == "href" and isinstance(v, str))
            for v in node.values():
                walk(v)
        elif isinstance(node, list):
            for v in node:
                walk(v)

    walk(layout.json())
    assert "/invoicing/settlement" in hrefs and all(h.startswith(PREFIX) for h in hrefs), hrefs
    deps = manager.get(stack.url + "/invoicing/_dash-dependencies", timeout=30)
    assert deps.status_code == 200 and deps.headers["Content-Type"].startswith("application/json")
    assert any(("settle-grid", "rowData") in outputs_of(d["output"]) for d in deps.json())


def test_dash_callbacks_through_proxy(stack, manager):
    deps = manager.get(stack.url + "/invoicing/_dash-dependencies", timeout=30).json()
    post = lambda body: manager.post(stack.url + "/invoicing/_dash-update-component", json=body, timeout=120)

    # the pages router: /invoicing/settlement renders the settlement page
    router = next(d for d in deps if d["output"].startswith(".._pages_content.children"))
    r = post(callback_body(router, {"_pages_location.pathname": "/invoicing/settlement",
                                    "_pages_location.search": ""}))
    assert r.status_code == 200, r.text[:500]
    assert "settle-period" in json.dumps(r.json()["response"]["_pages_content"]["children"])

    # the settlement page: period -> status, invoice grid and download links
    period = last_month(stack.community)
    dep = next(d for d in deps if ("settle-grid", "rowData") in outputs_of(d["output"]))
    r = post(callback_body(dep, {"settle-period.value": period}))
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("application/json"), r.text[:500]
    resp = r.json()["response"]
    assert {(i, p) for i, props in resp.items() for p in props} == set(outputs_of(dep["output"]))
    rows = resp["settle-grid"]["rowData"]
    assert sorted(row["house_id"] for row in rows) == ["1", "2"]
    assert all(row["invoice_id"].startswith(f"DRAFT-{period}") for row in rows)
    assert resp["settle-csv"]["href"] == f"/invoicing/api/invoices.csv?period={period}"
    # every link the callback hands the browser (buttons, links in grid cells) works through the proxy
    links = {v for props in resp.values() for p, v in props.items() if p == "href"}
    links |= set(re.findall(r"\]\((/[^)\s]+)\)", json.dumps(rows)))
    assert all(u.startswith("/invoicing/api/") for u in links), links
    for u in sorted(links):
        d = manager.get(stack.url + u, timeout=120)
        assert d.status_code == 200 and d.headers["Content-Disposition"].startswith("attachment;"), u


def test_api_health_and_csv_download(stack, manager):
    r = requests.get(stack.url + "/invoicing/api/health", timeout=30)         # no login needed
    assert r.status_code == 200 and r.headers["Content-Type"] == "application/json"
    assert r.json()["status"] == "ok"
    period = last_month(stack.community)
    r = manager.get(stack.url + "/invoicing/api/invoices.csv", params={"period": period}, timeout=120)
    assert r.status_code == 200 and r.headers["Content-Type"].startswith("text/csv")
    assert r.headers["Content-Disposition"] == f'attachment; filename="invoices-{period}.csv"'
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert list(rows[0])[:len(CSV_FIELDS)] == CSV_FIELDS
    assert sorted(row["house_id"] for row in rows) == ["1", "2"]


def test_bad_parameters_get_the_apps_400_json(stack, manager):
    r = manager.get(stack.url + "/invoicing/api/invoices.csv", params={"period": "2026-13"}, timeout=30)
    assert r.status_code == 400 and r.headers["Content-Type"] == "application/json"
    assert r.json()["field"] == "period" and r.json()["error"]
    r = manager.get(stack.url + "/invoicing/api/prices", params={"start": "yesterday"}, timeout=30)
    assert r.status_code == 400 and r.json()["field"] == "start"


def test_request_bodies_up_to_the_limit(stack, manager):
    # 3 MB (nginx's default limit is 1 MB) reach the app, which names the unknown field
    r = manager.post(stack.url + "/invoicing/api/tariffs", json={"p_pv": 20, "padding": "x" * 3_000_000},
                     timeout=60)
    assert r.status_code == 400 and r.json()["field"] == "padding"
    # beyond client_max_body_size nginx answers 413 from the headers alone; the app never sees it
    with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
        s.sendall(b"POST /invoicing/api/tariffs?probe=oversize HTTP/1.1\r\nHost: 127.0.0.1\r\n"
                  b"Content-Type: application/json\r\nContent-Length: 25000000\r\nConnection: close\r\n\r\n")
        assert s.recv(100).split(b"\r\n", 1)[0].split()[1] == b"413"
    assert not [e for e in stack.seen if e["QUERY_STRING"] == "probe=oversize"]


def test_prefix_without_slash_redirects(stack, manager):
    r = requests.get(stack.url + "/invoicing", allow_redirects=False, timeout=30)
    assert r.status_code == 301 and r.headers["Location"] == "/invoicing/"
    r = requests.get(stack.url + "/invoicing?house=2", allow_redirects=False, timeout=30)
    assert r.status_code == 301 and r.headers["Location"] == "/invoicing/?house=2"
    r = manager.get(stack.url + "/invoicing", timeout=30)
    assert r.status_code == 200 and r.url == stack.url + "/invoicing/" and "_dash-config" in r.text


def test_anonymous_requests_need_a_login(stack):
    # a page: to the login form under the prefix, with the page asked for to come back to
    r = requests.get(stack.url + "/invoicing/settlement", allow_redirects=False, timeout=30)
    assert r.status_code == 303, r.status_code
    target = urljoin(stack.url + "/invoicing/settlement", r.headers["Location"])    # relative or absolute
    assert target.startswith(stack.url + PREFIX + "login?"), r.headers["Location"]
    assert parse_qs(urlsplit(target).query) == {"next": ["/invoicing/settlement"]}
    r = requests.get(stack.url + "/invoicing/settlement", timeout=30)
    assert r.status_code == 200 and r.url == target and 'id="username"' in r.text and "settle-" not in r.text
    urls = re.findall(r'\b(?:action|href|src)="([^"]+)"', r.text)
    assert urls and all(u.startswith(PREFIX) for u in urls), urls
    for path in ("", "my", "houses/1", "account"):
        r = requests.get(stack.url + PREFIX + path, allow_redirects=False, timeout=30)
        assert r.status_code == 303, path
        assert urljoin(stack.url + PREFIX, r.headers["Location"]).startswith(stack.url + PREFIX + "login?next="), \
            (path, r.headers["Location"])
    # the API and Dash's own routes: 401 in JSON
    for method, path in (("GET", "api/periods"), ("GET", f"api/invoices.csv?period={last_month(stack.community)}"),
                         ("POST", "api/tariffs"), ("GET", "_dash-layout"), ("GET", "_dash-dependencies"),
                         ("POST", "_dash-update-component")):
        r = requests.request(method, stack.url + PREFIX + path, json={} if method == "POST" else None,
                             allow_redirects=False, timeout=30)
        assert r.status_code == 401 and r.headers["Content-Type"] == "application/json", (method, path)
        assert r.json()["field"] == "Authorization"


def test_login_cookies_and_logout_through_the_proxy(stack):
    s, r = log_in(stack.url, *member("1"))
    assert urljoin(stack.url + PREFIX + "login", r.headers["Location"]) == stack.url + PREFIX + "my"
    cookies = set_cookies(r)
    session, csrf = cookies["leg_session"], cookies["_csrf_token"]
    # plain http here: no Secure flag, or the browser would not send the cookies back
    assert "HttpOnly" in session and "SameSite=Lax" in session and "Secure" not in session, session
    assert PREFIX.startswith(re.search(r"Path=([^;]*)", session).group(1)), session     # covers the prefix
    assert "Path=/invoicing/" in csrf and "HttpOnly" not in csrf and "SameSite=Lax" in csrf, csrf
    assert "Secure" not in csrf, csrf
    # the cookies come back through the proxy: the member's own house, their page
    assert [h["house_id"] for h in s.get(stack.url + PREFIX + "api/houses", timeout=30).json()] == ["1"]
    r = s.get(stack.url + PREFIX + "my", allow_redirects=False, timeout=30)
    assert r.status_code == 200 and "_dash-config" in r.text
    # a callback with the cookie: refused without the CSRF header, answered with it
    deps = s.get(stack.url + PREFIX + "_dash-dependencies", timeout=30).json()
    router = next(d for d in deps if d["output"].startswith(".._pages_content.children"))
    body = callback_body(router, {"_pages_location.pathname": "/invoicing/my", "_pages_location.search": ""})
    url = stack.url + PREFIX + "_dash-update-component"
    r = s.post(url, json=body, headers={"X-CSRFToken": None}, timeout=60)
    assert r.status_code == 403 and r.json()["field"] == "X-CSRFToken"
    r = s.post(url, json=body, timeout=60)
    assert r.status_code == 200 and "My invoices" in r.text and "House 2" not in r.text
    settle = next(d for d in deps if ("settle-grid", "rowData") in outputs_of(d["output"]))
    assert s.post(url, json=callback_body(settle, {"settle-period.value": last_month(stack.community)}),
                  timeout=60).status_code == 403                          # a manager's callback
    # logging out through the proxy: back to the login form, the session is over
    r = s.post(stack.url + PREFIX + "logout", allow_redirects=False, timeout=30)
    assert r.status_code == 303
    assert urljoin(stack.url + PREFIX + "logout", r.headers["Location"]) == stack.url + PREFIX + "login"
    assert s.get(stack.url + PREFIX + "api/houses", timeout=30).status_code == 401
    assert s.get(stack.url + PREFIX + "my", allow_redirects=False, timeout=30).status_code == 303


def test_a_browser_login_through_the_proxy(stack):
    # a browser sends the page's origin with the form
    s, r = log_in(stack.url, *MANAGER, Origin=stack.url)
    assert urljoin(stack.url + PREFIX + "login", r.headers["Location"]) == stack.url + PREFIX


def test_the_session_cookie_stays_with_the_app(stack):
    s, _ = log_in(stack.url, *MANAGER)
    before = len(stack.sim_cookies)
    assert s.get(stack.url + "/", timeout=30).text == "simulator"
    sent = stack.sim_cookies[before:]
    assert len(sent) == 1 and "leg_session" not in sent[0] and "_csrf_token" not in sent[0], sent


def test_simulator_at_root_beside_the_app(stack):
    for path in ("/", "/_dash-layout", "/invoicing-old/", "/api/health"):
        r = requests.get(stack.url + path, timeout=30)
        assert r.status_code == 200 and r.text == "simulator", path
    assert not [e for e in stack.seen if not e["PATH_INFO"].startswith(PREFIX)]


def test_forwarded_headers_reach_the_app(stack):
    r = requests.get(stack.url + "/invoicing/api/health?probe=xff", headers={"X-Forwarded-For": "203.0.113.7"},
                     timeout=30)
    assert r.status_code == 200
    env = next(e for e in stack.seen if e["QUERY_STRING"] == "probe=xff")
    assert env["PATH_INFO"] == "/invoicing/api/health"          # the prefix is passed on unchanged
    assert env["HTTP_X_FORWARDED_FOR"] == "203.0.113.7, 127.0.0.1"
    assert env["HTTP_X_REAL_IP"] == "127.0.0.1"
    assert env["HTTP_X_FORWARDED_PROTO"] == "http"
    assert env["HTTP_HOST"] == env["HTTP_X_FORWARDED_HOST"] == urlsplit(stack.url).netloc    # with the port


def test_nginx_logged_no_upstream_errors(stack):
    log = (stack.tmp / "error.log").read_text()
    errors = [line for line in log.splitlines() if re.search(r"\[(error|crit|alert|emerg)\]", line)
              and "client intended to send too large body" not in line]
    assert not errors, errors
    access = (stack.tmp / "access.log").read_text()
    assert "GET /invoicing/api/health" in access and '"GET / HTTP/1.1" 200' in access

