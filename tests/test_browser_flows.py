"""What a manager does in a real headless Chromium (Debian's package, driven by Playwright), logged
in through the login form: open every page, change the range and resolution of the community
dashboard, post a tariff through the form (and a wrong one), download a period's invoices as CSV.
Each at the root and under a base path, as behind a reverse proxy: assets, callbacks, links, the
API and the download must all stay under it.
"""
from __future__ import annotations

import csv
import io
import math
import re
from decimal import Decimal
from urllib.parse import urlsplit

import pandas as pd
import pytest

from test_browser import CHROMIUM, Watch, app, browser, log_in  # noqa: F401  (app, browser: fixtures)
from webauth import MANAGER

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
expect = sync_api.expect

TIMEOUT_MS = 15_000
SEED_CSV_COLUMNS = ["invoice_id", "house_id", "period_start", "period_end", "energy_exported_kwh",
                    "energy_imported_kwh", "export_revenue_ct", "import_cost_ct", "net_amount_ct", "status"]
# the tariff the community starts with (config defaults, break-even pricing)
P_PV, P_GRID_DEL, P_GRID_CON = 20.0, 6.0, 30.0

# the plotly trace of a dcc.Graph whose name starts with a prefix, with its x as plotted (local time)
TRACE_JS = """([id, prefix]) => {
  const g = document.querySelector('#' + id + ' .js-plotly-plot');
  const f = g && g._fullData && g._fullData.find(t => String(t.name).startsWith(prefix));
  return f ? {name: f.name, x: Array.from(f.x || [], String), y: Array.from(f.y || [], Number)} : null;
}"""
# true once that trace starts at the given x (a prefix of plotly's "YYYY-MM-DDTHH:MM:SS.ffffff")
TRACE_STARTS_JS = """([id, prefix, first, second]) => {
  const g = document.querySelector('#' + id + ' .js-plotly-plot');
  const f = g && g._fullData && g._fullData.find(t => String(t.name).startsWith(prefix));
  return !!f && f.x && f.x.length > 1 && String(f.x[0]).startsWith(first) && String(f.x[1]).startsWith(second);
}"""


class Tab(Watch):
    """A browser page (see test_browser.Watch) that also lets a user navigate, choose in dropdowns,
    read plotted traces and call the API with the page's login; a link that downloads aborts its
    navigation, which is no failure."""

    def __init__(self, context, url: str):
        super().__init__(context, url)
        self.downloads: set[str] = set()
        self.page.on("download", lambda d: self.downloads.add(d.url))

    def follow(self, link_name: str):
        """Click a navigation link (the page changes without reloading the app)."""
        self.page.get_by_role("link", name=link_name, exact=True).click()
        expect(self.page.locator("h3").first).to_have_text(link_name)
        self.settle()

    def assert_clean(self):
        super().assert_clean(expected=tuple(f"failed: {u} net::ERR_ABORTED" for u in self.downloads))

    def choose(self, dropdown_id: str, label: str | re.Pattern):
        """Open a dcc.Dropdown and pick the option with this visible label (or the one label
        matching a pattern), as a user would."""
        self.page.click(f"#{dropdown_id}")
        option = self.page.get_by_role("listbox").get_by_role("option", name=label, exact=True)
        expect(option).to_have_count(1)
        text = option.inner_text().strip()
        option.click()
        expect(self.page.locator(f"#{dropdown_id}")).to_contain_text(text)

    def trace(self, graph_id: str, prefix: str) -> dict:
        t = self.page.evaluate(TRACE_JS, [graph_id, prefix])
        assert t is not None, f"#{graph_id}: no trace named {prefix}..."
        t["x"] = [pd.Timestamp(x) for x in t["x"]]
        return t

    def wait_trace_starts(self, graph_id: str, prefix: str, first: pd.Timestamp, second: pd.Timestamp):
        self.page.wait_for_function(TRACE_STARTS_JS, arg=[graph_id, prefix, f"{first:%Y-%m-%dT%H:%M}",
                                                          f"{second:%Y-%m-%dT%H:%M}"])

    def api(self, path: str):
        """GET from the API with the browser's session cookie."""
        r = self.page.request.get(self.url + path)
        assert r.ok, f"{path}: HTTP {r.status} {r.text()[:200]}"
        return r.json()


@pytest.fixture
def tab(browser, app):
    """A fresh browser context, logged in as the manager through the login form."""
    c, url = app
    context = browser.new_context(accept_downloads=True, viewport={"width": 1400, "height": 1000})
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        t = Tab(context, url)
        log_in(t.page, url, *MANAGER)
        assert t.page.url == url, f"the login did not lead to the community page: {t.page.url}"
        t.page.wait_for_load_state("networkidle")
        yield t
    finally:
        context.close()


def local_now(c) -> pd.Timestamp:
    return pd.Timestamp.now(tz="UTC").tz_convert(c.tz)


def hours_local(start_local: pd.Timestamp, last_local_naive: pd.Timestamp, tz) -> list[pd.Timestamp]:
    """Every hour from a local midnight to a local hour as the plot shows them (naive local time;
    one hour repeats or is skipped on a DST change, as the app's hourly buckets do)."""
    last = last_local_naive.tz_localize(tz, ambiguous=True, nonexistent="shift_forward").tz_convert("UTC")
    return [t.tz_convert(tz).tz_localize(None) for t in pd.date_range(start_local.tz_convert("UTC"), last, freq="h")]


# -- 1. every page --------------------------------------------------------------------------------------------

def test_every_page_loads_without_errors(app, tab):
    c, url = app
    base = urlsplit(url).path
    tab.open()
    nav = tab.page.locator("nav a.nav-link")
    links = {nav.nth(i).inner_text().strip(): nav.nth(i).get_attribute("href") for i in range(nav.count())}
    expected = {"Community": "", "Grid": "grid", "Houses": "houses/1", "Tariffs": "tariffs",
                "Settlement": "settlement", "Meters": "meters", "Data quality": "quality", "My invoices": "my"}
    for name, path in expected.items():
        assert links.get(name) == base + path, f"nav link {name!r}: {links.get(name)!r}, want {base + path!r}"

    def check(name):
        expect(tab.page.locator("h3").first).to_have_text(name)
        tab.assert_clean()                  # a failed callback shows here, as an HTTP 500
        if tab.page.locator(".js-plotly-plot").count():
            # every figure arrived from its callback: traces and a title
            tab.page.wait_for_function("""() => Array.from(document.querySelectorAll('.js-plotly-plot'))
                .every(g => g._fullData && g._fullData.length > 0 && g._fullLayout.title.text)""")
        tab.assert_clean()

    check("Community")
    for name, path in expected.items():     # through the navigation, as a user goes
        tab.follow(name)
        assert tab.page.url == url + path
        check(name)
    tab.open("houses/2")                    # a deep link, served under the base path
    check("Houses")
    expect(tab.page.locator("#house-select")).to_contain_text("House 2")


# -- 2. range and resolution of the community page --------------------------------------------------------------

def test_range_and_resolution_update_the_figures(app, tab):
    c, url = app
    tab.open()
    today = local_now(c).normalize()

    # the default range: this month, one bar per local day from the 1st
    month = today.replace(day=1)
    expect(tab.page.locator("#community-range")).to_contain_text("This month")
    tab.page.wait_for_function(TRACE_JS, arg=["community-energy", "Consumption"])
    x = tab.trace("community-energy", "Consumption")["x"]
    days = [(month + pd.DateOffset(days=k)).tz_localize(None) for k in range(len(x))]
    assert x == days and all(d <= today.tz_localize(None) for d in x), x

    # last 7 days: hourly from midnight six days ago up to the newest data
    start = today - pd.DateOffset(days=6)
    tab.choose("community-range", "Last 7 days")
    tab.wait_trace_starts("community-energy", "Consumption", start, start + pd.Timedelta(hours=1))
    hourly = tab.trace("community-energy", "Consumption")
    assert hourly["x"] == hours_local(start, hourly["x"][-1], c.tz)
    newest = local_now(c).tz_localize(None)
    assert newest - pd.Timedelta(hours=3) <= hourly["x"][-1] < newest, hourly["x"][-1]
    for graph, prefix in (("community-value", "Consumption cost"), ("community-price", "p_pv")):
        assert tab.trace(graph, prefix)["x"] == hourly["x"], f"#{graph} did not follow the range"
    assert all(v < 0 for v in hourly["y"][:24]), "consumption is plotted negative"

    # the same range by day: one bar per local day, the same energy in total
    tab.choose("community-bucket", "day")
    tab.wait_trace_starts("community-energy", "Consumption", start, start + pd.DateOffset(days=1))
    daily = tab.trace("community-energy", "Consumption")
    assert daily["x"] == [(start + pd.DateOffset(days=k)).tz_localize(None) for k in range(len(daily["x"]))]
    assert len(daily["x"]) == (7 if hourly["x"][-1] >= today.tz_localize(None) else 6)
    assert math.isclose(sum(daily["y"]), sum(hourly["y"]), rel_tol=1e-9)
    assert tab.trace("community-price", "p_pv")["x"] == daily["x"]
    tab.assert_clean()


# -- 3. tariffs through the form ----------------------------------------------------------------------------------

def history_grid_rows(tab) -> list[dict]:
    return tab.page.evaluate("""() => Array.from(document.querySelectorAll(
        '#tariff-history .ag-center-cols-container .ag-row')).map(r => Object.fromEntries(
        Array.from(r.querySelectorAll('[col-id]')).map(c => [c.getAttribute('col-id'), c.innerText.trim()])))""")


def test_post_a_tariff_and_see_it_in_the_price_signal(app, tab):
    c, url = app
    versions = tab.api("api/tariffs/history")
    tab.open("tariffs")
    expect(tab.page.locator("#tariff-history .ag-center-cols-container .ag-row")).to_have_count(len(versions))

    # static pricing at 27.5 ct/kWh from midnight three days ago: inside "Last 7 days", no period closed
    eff = local_now(c).normalize() - pd.DateOffset(days=3)
    eff_text = f"{eff:%Y-%m-%dT%H:%M}"
    tab.page.fill("#tariff-p_pv", "27.5")
    tab.page.select_option("#tariff-mode", "static")
    tab.page.fill("#tariff-effective", eff_text)
    expect(tab.page.locator("#tariff-pcon")).to_contain_text("28.75 ct/kWh")
    tab.page.click("#tariff-save")
    expect(tab.page.locator("#tariff-result")).to_contain_text(f"Saved: in force from {eff:%Y-%m-%d %H:%M}")
    expect(tab.page.locator("#tariff-history .ag-center-cols-container .ag-row")).to_have_count(len(versions) + 1)
    new = [r for r in history_grid_rows(tab) if r.get("effective_from") == f"{eff:%Y-%m-%d %H:%M}"]
    assert new == [{"effective_from": f"{eff:%Y-%m-%d %H:%M}", "mode": "static", "p_pv": "27.5",
                    "p_grid_del": "6", "p_grid_con": "30"}], history_grid_rows(tab)
    saved = tab.api("api/tariffs/history")
    assert len(saved) == len(versions) + 1
    assert {"p_pv": 27.5, "p_grid_del": P_GRID_DEL, "p_grid_con": P_GRID_CON, "mode": "static",
            "effective_from": eff.isoformat()} in [{k: v for k, v in t.items() if k != "p_con"} for t in saved]
    tab.assert_clean()

    # the community page, through the navigation: p_pv is 27.5 from the effective time on
    tab.follow("Community")
    start = local_now(c).normalize() - pd.DateOffset(days=6)
    tab.choose("community-range", "Last 7 days")
    tab.wait_trace_starts("community-price", "p_pv", start, start + pd.Timedelta(hours=1))
    p_pv, p_con = tab.trace("community-price", "p_pv"), tab.trace("community-price", "p_con")
    assert p_pv["x"] == p_con["x"]
    cut = eff.tz_localize(None)
    before = [y for x, y in zip(p_pv["x"], p_pv["y"]) if x < cut]
    after = [y for x, y in zip(p_pv["x"], p_pv["y"]) if x >= cut]
    assert len(before) >= 3 * 23 and len(after) >= 2 * 23, (len(before), len(after))
    assert after == pytest.approx([27.5] * len(after), abs=1e-6)
    assert [y for x, y in zip(p_con["x"], p_con["y"]) if x >= cut] == pytest.approx([28.75] * len(after), abs=1e-6)
    # before: break-even under the old tariff, p_pv as set (20) unless surplus caps it below
    assert max(before) == pytest.approx(P_PV, abs=1e-6) and all(y <= P_PV + 1e-6 for y in before), before
    tab.assert_clean()


def test_invalid_tariff_is_marked_and_not_saved(app, tab):
    c, url = app
    versions = tab.api("api/tariffs/history")
    tab.open("tariffs")
    rows = tab.page.locator("#tariff-history .ag-center-cols-container .ag-row")
    expect(rows).to_have_count(len(versions))
    field = lambda name: tab.page.locator(f"#tariff-{name}")
    column = lambda name: tab.page.locator(f"#tariff-{name}").locator("xpath=..")

    # p_pv above p_grid_con
    tab.page.fill("#tariff-p_pv", "27.5")
    tab.page.fill("#tariff-p_grid_con", "25")
    tab.page.click("#tariff-save")
    expect(tab.page.locator("#tariff-result")).to_contain_text("Not saved")
    expect(field("p_pv")).to_contain_class("is-invalid")
    expect(column("p_pv")).to_contain_text("must not exceed p_grid_con (27.5 > 25.0)")
    expect(column("p_pv").locator(".invalid-feedback")).to_be_visible()
    expect(field("p_grid_con")).not_to_contain_class("is-invalid")

    # a negative price: that field is marked, the one fixed is not any more
    tab.page.fill("#tariff-p_grid_con", "30")
    tab.page.fill("#tariff-p_grid_del", "-1")
    tab.page.click("#tariff-save")
    expect(column("p_grid_del")).to_contain_text("must be 0 or more, got -1")
    expect(field("p_grid_del")).to_contain_class("is-invalid")
    expect(field("p_pv")).not_to_contain_class("is-invalid")
    expect(tab.page.locator("#tariff-result")).to_contain_text("Not saved")

    # an effective time that is no time
    tab.page.fill("#tariff-p_grid_del", "6")
    tab.page.fill("#tariff-effective", "tomorrow")
    tab.page.click("#tariff-save")
    expect(column("effective")).to_contain_text("is not ISO 8601")
    expect(field("effective")).to_contain_class("is-invalid")
    expect(tab.page.locator("#tariff-result")).to_contain_text("Not saved")

    expect(rows).to_have_count(len(versions))
    assert tab.api("api/tariffs/history") == versions
    tab.assert_clean()


# -- 4. the settlement CSV --------------------------------------------------------------------------------------

def test_download_the_period_csv(app, tab):
    c, url = app
    base = urlsplit(url).path
    now = local_now(c)
    period = f"{now:%Y-%m}"
    tab.open("settlement")
    # the current month, however the option words it ("2026-11 (running)", "November 2026", ...)
    tab.choose("settle-period", re.compile(rf"(^|\D){period}(\D|$)|^{now:%B %Y}\b"))
    expect(tab.page.locator("#settle-csv")).to_have_attribute("href", f"{base}api/invoices.csv?period={period}")
    expect(tab.page.locator("#settle-grid .ag-center-cols-container .ag-row")).to_have_count(2)
    expect(tab.page.locator("#settle-grid")).to_contain_text(f"DRAFT-{period}-")

    with tab.page.expect_download() as d:
        tab.page.click("#settle-csv")
    download = d.value
    assert download.failure() is None
    assert download.suggested_filename == f"invoices-{period}.csv"
    assert download.url == urlsplit(url)._replace(path=f"{base}api/invoices.csv", query=f"period={period}").geturl()
    with open(download.path(), encoding="utf-8") as f:
        text = f.read()
    header, *_ = text.splitlines()
    assert header.split(",")[:len(SEED_CSV_COLUMNS)] == SEED_CSV_COLUMNS, header
    rows = list(csv.DictReader(io.StringIO(text)))
    assert sorted(r["house_id"] for r in rows) == sorted(h.house_id for h in c.houses()), rows

    body = tab.api(f"api/invoices?period={period}")
    assert body["period"] == period
    api_rows = {i["house_id"]: i for i in body["invoices"]}
    assert len(api_rows) == len(rows)
    for row in rows:
        inv = api_rows[row["house_id"]]
        assert {k: row[k] for k in SEED_CSV_COLUMNS} == {k: inv[k] for k in SEED_CSV_COLUMNS}
        assert row["invoice_id"] == f"DRAFT-{period}-{row['house_id']}" and row["status"] == "draft"
        assert Decimal(row["net_amount_ct"]) == Decimal(row["export_revenue_ct"]) - Decimal(row["import_cost_ct"])
        if now.day > 1:                     # a whole day of data at least: both houses consumed
            assert Decimal(row["energy_imported_kwh"]) > 0
    grid_ids = tab.page.evaluate("""() => Array.from(document.querySelectorAll(
        '#settle-grid .ag-center-cols-container [col-id="invoice_id"]')).map(c => c.innerText.trim())""")
    assert sorted(grid_ids) == sorted(r["invoice_id"] for r in rows)
    tab.assert_clean()
