"""The year page and the language menu in a real headless Chromium (Debian's package, driven by
Playwright), logged in as the manager, on the hand-computed year of tests/test_statements.py: the
charts show the months of 2026 beside 2025 with the figures computed by hand, the Excel link
downloads the workbook with the browser's session; the language menu turns the page into German
and the choice stays after a reload and on the next visit (kept in the account)."""
from __future__ import annotations

import io
import threading

import pytest

from peers import free_port, wait_port
from test_browser import CHROMIUM, browser  # noqa: F401  (browser: fixture)
from test_browser_flows import Tab, tab  # noqa: F401  (tab: fixture, logged in as the manager)
from test_statements import IMPORT_1, IMPORT_2, make  # noqa: F401  (make: fixture)
from webauth import add_users

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
expect = sync_api.expect


@pytest.fixture
def app(make):
    """(community, base url) of the year of tests/test_statements.py served by waitress on a free
    port, with its users (overrides test_browser's ``app`` for the ``tab`` fixture)."""
    import waitress

    from web import create_app
    c = make()
    add_users(c)
    port = free_port()
    web = create_app(c)
    srv = waitress.create_server(web.server, host="127.0.0.1", port=port, threads=4)
    threading.Thread(target=srv.run, daemon=True).start()
    wait_port(port)
    try:
        yield c, f"http://127.0.0.1:{port}/"
    finally:
        srv.close()
        web.server.config["LEG"] = None


def test_year_page_charts_workbook_and_language_menu(app, tab):
    from openpyxl import load_workbook
    page = tab.page
    tab.follow("Year")
    expect(page.locator("#year-choice")).to_contain_text("2026")
    page.wait_for_function("() => { const g = document.querySelector('#year-energy .js-plotly-plot');"
                           " return g && g._fullData && g._fullData.length >= 2; }")
    this = tab.page.evaluate("""() => Array.from(document.querySelector('#year-energy .js-plotly-plot')._fullData,
                                t => ({name: t.name, y: Array.from(t.y, Number)}))""")
    by_name = {t["name"]: t["y"] for t in this}
    consumption = by_name["Consumption 2026"]
    assert len(consumption) == 12
    assert consumption[0] == pytest.approx(float(IMPORT_1[0]) + float(IMPORT_2[0]), abs=1e-6)   # 300.4 kWh
    assert sum(consumption) == pytest.approx(sum(map(float, IMPORT_1 + IMPORT_2)), abs=1e-3)
    assert sum(by_name["Consumption 2025"]) == 0                   # no data the year before
    expect(page.locator("#year-summary")).to_contain_text("2026: consumption")
    # the workbook, downloaded with the browser's login
    href = page.locator("#year-xlsx").get_attribute("href")
    assert href == "/api/year/2026.xlsx"
    r = page.request.get(tab.url + href.lstrip("/"))
    assert r.ok and load_workbook(io.BytesIO(r.body())).sheetnames == ["2026", "2025"]
    tab.assert_clean()

    # the language menu: German, on this page, after a reload and after logging in again
    page.click("#language-menu")
    page.click("#language-de")
    expect(page.locator("h3").first).to_have_text("Jahr")
    expect(page.locator("#language-menu")).to_contain_text("Deutsch")
    expect(page.locator("#year-summary")).to_contain_text("Verbrauch")
    assert page.url.endswith("/year")
    page.reload()
    expect(page.locator("h3").first).to_have_text("Jahr")
    expect(page.get_by_role("link", name="Abrechnung", exact=True)).to_be_visible()
    page.context.clear_cookies()                         # the cookie gone: the account remembers
    from test_browser import log_in
    from webauth import MANAGER
    log_in(page, tab.url, *MANAGER)
    expect(page.get_by_role("link", name="Abrechnung", exact=True)).to_be_visible()
