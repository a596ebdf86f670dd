"""Every page in a real headless Chromium (Debian's package, driven by Playwright), with the app served
by waitress on a free port, after logging in through the login form: the page renders its content
and the browser logs no error (a script or style the Content-Security-Policy blocks shows there,
too). A member sees their own pages and house only; anonymous visitors land on the login page; a
wrong password is refused; logging out ends the session. All of it at the root and under a base
path, as behind a reverse proxy."""
from __future__ import annotations

import re
import shutil
import threading
import time
from urllib.parse import urlsplit

import pandas as pd
import pytest

from community import Community
from config import parse_config
from peers import free_port, wait_port
from webauth import MANAGER, add_users, member

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
expect = sync_api.expect

TIMEOUT_MS = 15_000
# what a manager sees on each page
PAGES = {"": ["Energy flow", "Self-sufficiency", "Price signal"], "grid": ["Grid energy", "Grid value"],
         "meters": ["AA-1", "Store: embedded"], "quality": ["Quarantined readings", "issing intervals"],
         "houses/2": ["House", "Energy flow"], "tariffs": ["House price p_con", "History"],
         "settlement": ["Download CSV", "DRAFT-"], "my": ["My invoices", "DRAFT-"],
         "audit": ["Audit log", "member2"]}
MANAGER_ONLY = ["Community", "Grid", "Tariffs", "Settlement", "Meters", "Data quality", "Audit"]
# what identifies house 2 anywhere (its name, its meter, its draft invoices)
HOUSE_2 = re.compile(r"House 2|AA-2|DRAFT-\d{4}-\d{2}-2\b")
# the title and data (JSON) of every figure on the page; null until each has arrived
FIGURES_JS = """() => {
  const gs = Array.from(document.querySelectorAll('.js-plotly-plot'));
  if (!gs.every(g => g._fullData && g._fullData.length > 0 && g._fullLayout.title.text)) return null;
  return gs.map(g => JSON.stringify({title: g._fullLayout.title.text, data: g.data}));
}"""


class CSPBlocked(AssertionError):
    """The browser refused a script or style under the app's Content-Security-Policy."""


def serve(base_path, tmp_path):
    import waitress
    from simulator.profiles import profiles_for, simulate_counters
    from web import create_app
    port = free_port()
    cfg = parse_config({"houses": {"AA-1": {"id": 1, "name": "House 1"},
                                   "AA-2": {"id": 2, "name": "House 2", "pv_kwp": 10}},
                        "storage": {"data_dir": str(tmp_path / "data")}, "mqtt": {"enabled": False},
                        "web": {"base_path": base_path, "port": port}}, source="test")
    c = Community.open(cfg)
    add_users(c)
    now = pd.Timestamp.now(tz="UTC").floor("h")
    c.store_readings(simulate_counters(profiles_for(cfg.houses), now - pd.Timedelta(days=40), now, 900, c.tz))
    app = create_app(c)
    srv = waitress.create_server(app.server, host="127.0.0.1", port=port, threads=4)
    threading.Thread(target=srv.run, daemon=True).start()
    wait_port(port)
    srv.leg_app = app
    return c, srv, f"http://127.0.0.1:{port}{base_path}"


def log_in(page, url: str, username: str, password: str, path: str = "login"):
    """Log in through the form at ``url + path``, as a person does; returns once the next page loaded."""
    if page.url != url + path:
        page.goto(url + path)
    page.fill("#username", username)
    page.fill("#password", password)
    with page.expect_navigation():
        page.get_by_role("button", name="Log in").click()


class Watch:
    """A browser page that records console errors, uncaught exceptions, failed requests and
    responses, any request to this server outside the base path, and the app's Dash responses
    (layout and callbacks) since the last look."""

    def __init__(self, context, url: str):
        self.url = url
        self.page = context.new_page()
        self.response = None                    # of the last page opened
        self.problems: list[str] = []
        self.dash: list = []
        origin = "{0.scheme}://{0.netloc}".format(urlsplit(url))
        self.page.on("console", lambda m: m.type == "error" and self.problems.append(f"console: {m.text}"))
        self.page.on("pageerror", lambda e: self.problems.append(f"uncaught: {e}"))
        self.page.on("requestfailed", lambda r: self.problems.append(f"failed: {r.url} {r.failure}"))

        def response(r):
            if r.status >= 400:
                self.problems.append(f"HTTP {r.status}: {r.request.method} {r.url}")
            if r.url.startswith(origin) and not r.url.startswith(url):
                self.problems.append(f"outside the base path: {r.url}")
            if r.url.startswith(url + "_dash-"):
                self.dash.append(r)
        self.page.on("response", response)
        self.pending: set = set()
        self.page.on("request", lambda r: self.pending.add(r))
        self.page.on("requestfinished", lambda r: self.pending.discard(r))
        self.page.on("requestfailed", lambda r: self.pending.discard(r))

    def csp_check(self):
        blocked = [p for p in self.problems if "Content Security Policy" in p]
        if blocked:
            raise CSPBlocked(f"{self.page.url}: {blocked[:3]}")

    def open(self, path: str = ""):
        # what the page left was still loading is aborted by the navigation: no failure
        leaving = {f"failed: {r.url} net::ERR_ABORTED" for r in self.pending}
        self.response = self.page.goto(self.url + path)
        self.problems[:] = [p for p in self.problems if p not in leaving]
        self.settle()

    def settle(self, quiet_ms: int = 300):
        """Wait until the page's layout is in and its callbacks are done: no request in flight for
        ``quiet_ms`` and Dash no longer titles the page "Updating..."."""
        self.csp_check()
        try:
            self.page.wait_for_function("() => document.title !== 'Updating...' && !!document.querySelector('h3')")
            deadline, quiet_since = time.monotonic() + TIMEOUT_MS / 1000, None
            while True:
                self.page.wait_for_timeout(50)
                now = time.monotonic()
                if self.pending:
                    quiet_since = None
                elif quiet_since is None:
                    quiet_since = now
                elif now - quiet_since >= quiet_ms / 1000:
                    break
                assert now < deadline, f"{self.page.url}: requests still in flight: {[r.url for r in self.pending]}"
            self.page.wait_for_function("() => document.title !== 'Updating...'")
        except Exception:
            self.csp_check()
            raise

    def figures(self) -> list[str]:
        """Every figure of the page (title and data as JSON), once all arrived from their callbacks."""
        self.page.wait_for_function(FIGURES_JS)
        return self.page.evaluate(FIGURES_JS)

    def dash_bodies(self) -> list[str]:
        """The bodies of the Dash responses since the last call."""
        bodies = [r.text() for r in self.dash if r.status == 200]
        self.dash.clear()
        return bodies

    def nav(self) -> list[str]:
        """The navbar's entries: links and buttons, as shown."""
        items = self.page.locator("nav a.nav-link, nav button")
        return [items.nth(i).inner_text().strip() for i in range(items.count())]

    def assert_clean(self, expected: tuple[str, ...] = ()):
        """No error since the tab opened (but for ``expected`` ones, matched as substrings)."""
        self.csp_check()
        html = self.page.content()
        for text in ("Error loading layout", "Error loading dependencies", "Callback error"):
            assert text not in html, f"{self.page.url}: the page shows {text!r}"
        assert self.page.locator(".dash-fe-error__title, .dash-error-card").count() == 0, self.page.url
        problems = [p for p in self.problems if not any(e in p for e in expected)]
        assert not problems, f"{self.page.url}: {problems}"


@pytest.fixture(scope="module")
def browser():
    with sync_api.sync_playwright() as p:
        b = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"], headless=True)
        try:
            yield b
        finally:
            b.close()


@pytest.fixture(scope="module", params=["/", "/invoicing/"], ids=["root", "base_path"])
def app(request, tmp_path_factory):
    """(community, base url) of a served app with 40 days of two simulated houses and its users."""
    c, srv, url = serve(request.param, tmp_path_factory.mktemp("app"))
    try:
        yield c, url
    finally:
        srv.close()
        srv.leg_app.server.config["LEG"] = None    # no store handle outlives the test
        c.close()


@pytest.fixture
def watch(browser, app):
    c, url = app
    context = browser.new_context(viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        yield Watch(context, url)
    finally:
        context.close()


def test_every_page_renders_without_console_errors(app, watch):
    c, url = app
    log_in(watch.page, url, *MANAGER)
    assert watch.page.url == url                               # a manager starts at the community page
    watch.settle()
    for page, texts in PAGES.items():
        watch.open(page)
        # the browser enforces the policy: a blocked script or style would show as a console error
        policy = watch.response.headers.get("content-security-policy", "")
        assert "script-src 'self'" in policy and "'unsafe-inline'" not in policy.split("script-src")[1].split(";")[0]
        for text in texts:
            expect(watch.page.locator("body")).to_contain_text(text)
        watch.settle()
        watch.assert_clean()
    assert [n for n in MANAGER_ONLY if n not in watch.nav()] == [], watch.nav()


def test_a_member_sees_only_their_own_house(app, watch):
    c, url = app
    base = urlsplit(url).path
    page = watch.page
    user, password = member("1")
    log_in(page, url, user, password)
    assert page.url == url + "my"                                # a member starts at their invoices
    watch.settle()
    expect(page.locator("h3").first).to_have_text("My invoices")
    grid = page.locator("#my-invoices .ag-center-cols-container")
    expect(grid).to_contain_text("House 1")
    expect(grid).to_contain_text(f"DRAFT-{pd.Timestamp.now(tz=c.tz):%Y-%m}-1")
    assert set(grid.locator('[col-id="house"]').all_inner_texts()) == {"House 1"}
    # the navigation: their pages, their name and the way out; no manager page
    nav = watch.nav()
    assert {"Houses", "My invoices", f"{user} (member)", "Log out"} <= set(nav), nav
    assert [n for n in MANAGER_ONLY if n in nav] == [], nav
    expect(page.get_by_role("link", name="Houses", exact=True)).to_have_attribute("href", base + "houses/1")

    def nothing_of_house_2():
        assert not HOUSE_2.search(page.content()), f"{page.url}: {HOUSE_2.findall(page.content())}"
        for body in watch.dash_bodies():                           # layout and callbacks, not only what shows
            assert not HOUSE_2.search(body), f"{page.url}: {HOUSE_2.findall(body)} in {body[:300]}"

    nothing_of_house_2()
    # a manager's page, opened by its address
    for path in ("settlement", ""):
        watch.open(path)
        expect(page.locator("h3").first).to_have_text("Not available")
        assert page.locator("#settle-period, #settle-grid, #community-energy").count() == 0
        nothing_of_house_2()
    # their own house, with its figures
    watch.open("houses/1")
    expect(page.locator("#house-select")).to_contain_text("House 1")
    figures = watch.figures()
    assert len(figures) == 2 and all('"x":' in f for f in figures), figures
    watch.settle()
    nothing_of_house_2()
    page.click("#house-select")
    expect(page.get_by_role("listbox").get_by_role("option")).to_have_text(["House 1"])
    page.keyboard.press("Escape")
    # another house, by its address: nothing of it, no figure
    watch.open("houses/2")
    expect(page.locator("h3").first).to_have_text("Houses")
    assert page.locator(".js-plotly-plot").count() == 0
    assert page.evaluate(FIGURES_JS) == []
    nothing_of_house_2()
    watch.assert_clean()


def test_an_anonymous_visit_ends_on_the_login_page(app, watch):
    c, url = app
    base = urlsplit(url).path
    page = watch.page
    page.goto(url + "settlement")
    assert urlsplit(page.url).path == base + "login"
    expect(page.locator("#username")).to_be_visible()
    expect(page.locator("#password")).to_be_visible()
    assert "Download CSV" not in page.content()
    r = page.request.get(url + "api/periods")
    assert r.status == 401 and r.headers["content-type"] == "application/json"
    r = page.request.get(url + "_dash-layout")
    assert r.status == 401
    watch.assert_clean()


def test_the_login_leads_back_to_the_page_asked_for(app, watch):
    c, url = app
    base = urlsplit(url).path
    page = watch.page
    page.goto(url + "settlement")
    assert page.url == url + "login?next=" + base + "settlement"
    log_in(page, url, *MANAGER, path="login?next=" + base + "settlement")
    assert page.url == url + "settlement"


def test_a_wrong_password_is_refused(app, watch):
    c, url = app
    page = watch.page
    log_in(page, url, MANAGER[0], "not-the-password")
    assert page.url == url + "login"
    expect(page.get_by_role("alert")).to_have_text("Wrong user name or password.")
    expect(page.locator("#username")).to_be_visible()
    assert page.request.get(url + "api/periods").status == 401
    # the login page answers 401, which the browser reports
    watch.assert_clean(expected=(f"HTTP 401: POST {url}login", "status of 401"))


def test_log_out_through_the_navbar(app, watch):
    c, url = app
    base = urlsplit(url).path
    page = watch.page
    log_in(page, url, *member("2"))
    watch.settle()
    assert page.request.get(url + "api/houses").ok
    with page.expect_navigation():
        page.get_by_role("button", name="Log out").click()
    assert page.url == url + "login"
    expect(page.locator("#username")).to_be_visible()
    assert page.request.get(url + "api/houses").status == 401
    page.goto(url + "my")                                        # a later visit needs a login again
    assert page.url == url + "login?next=" + base + "my"
    expect(page.locator("#username")).to_be_visible()
    watch.assert_clean()
