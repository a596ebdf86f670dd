"""Money and tables on a laptop and a phone, in a real headless Chromium (Debian's package, driven by
Playwright; the app and its users of tests/test_browser.py), logged in as the manager: the
settlement page and the community page need no horizontal scrolling at 1366×768 and at 390×844,
the invoice table's documents (PDF, CSV) are in sight in its grid, its amounts are CHF with two
decimals (no column in centimes), it sorts amounts as numbers, and the community page shows the
savings against the grid alone in CHF."""
from __future__ import annotations

import os
import re

import pytest

from test_browser import CHROMIUM, TIMEOUT_MS, Watch, app, browser, log_in  # noqa: F401  (app, browser: fixtures)
from webauth import MANAGER

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
expect = sync_api.expect

SHOTS = os.environ.get("LEG_SCREENSHOTS")          # a folder: the pages photographed there
VIEWPORTS = {"laptop": {"width": 1366, "height": 768}, "phone": {"width": 390, "height": 844}}
AMOUNT = r"-?\d{1,3}(’\d{3})*\.\d{2}"               # en_CH: 1’234.50
ROWS = "#settle-grid .ag-center-cols-container .ag-row"
# the page's widths: what it lays out and the window it has
WIDTHS_JS = "() => [document.documentElement.scrollWidth, window.innerWidth]"
# the first document link of the invoice grid, the grid's visible area and the window (rectangles)
BOXES_JS = """() => {
  const box = e => { const r = e.getBoundingClientRect(); return {left: r.left, right: r.right, top: r.top,
                                                                   bottom: r.bottom}; };
  const grid = document.querySelector('#settle-grid .ag-body-viewport') || document.querySelector('#settle-grid');
  const link = document.querySelector('#settle-grid .ag-row [col-id="download"] a');
  return {grid: box(grid), link: link && box(link), width: window.innerWidth};
}"""
# sorts the invoice grid's rows (these amounts in CHF) by a money column, as a click on its header
# does, and reads the column as the grid shows it, top to bottom
SORTED_JS = """([field, amounts]) => {
  const api = dash_ag_grid.getApi('settle-grid');
  api.setGridOption('rowData', amounts.map((a, i) => ({invoice_id: 'X-' + i, [field]: a,
                                                      shown: {[field]: 'shown ' + a}})));
  api.applyColumnState({state: [{colId: field, sort: 'asc'}], defaultState: {sort: null}});
  const out = [];
  api.forEachNodeAfterFilterAndSort(n => out.push(api.getCellValue({rowNode: n, colKey: field, useFormatter: true})));
  return out;
}"""


@pytest.fixture(params=list(VIEWPORTS), ids=list(VIEWPORTS))
def screen(request, browser, app):  # noqa: F811
    """(viewport name, a browser page logged in as the manager on a screen of that size)."""
    c, url = app
    context = browser.new_context(viewport=VIEWPORTS[request.param])
    context.set_default_timeout(TIMEOUT_MS)
    expect.set_options(timeout=TIMEOUT_MS)
    try:
        watch = Watch(context, url)
        log_in(watch.page, url, *MANAGER)
        watch.settle()
        yield request.param, watch
    finally:
        context.close()


def no_horizontal_scrolling(watch):
    scroll_width, inner_width = watch.page.evaluate(WIDTHS_JS)
    assert scroll_width <= inner_width, f"{watch.page.url}: {scroll_width} px wide in a window of {inner_width} px"


def test_the_invoice_table_fits_and_shows_chf(screen):
    name, watch = screen
    page = watch.page
    watch.open("settlement")
    expect(page.locator(ROWS).first).to_be_visible()
    watch.settle()
    no_horizontal_scrolling(watch)
    boxes = page.evaluate(BOXES_JS)
    link, grid = boxes["link"], boxes["grid"]
    assert link is not None, "no document link in the invoice table"
    assert 0 <= link["left"] and link["right"] <= boxes["width"], boxes          # in the window
    assert grid["left"] <= link["left"] and link["right"] <= grid["right"], boxes    # in the grid's visible part
    expect(page.locator(f'{ROWS} [col-id="download"] a').first).to_be_visible()
    expect(page.locator(f'{ROWS} [col-id="download"] a', has_text="PDF").first).to_have_attribute(
        "href", re.compile(r"api/invoices/DRAFT-\d{4}-\d{2}-\d\.pdf$"))
    # (the row selection's checkboxes come first, without a header)
    headers = [h.strip() for h in page.locator("#settle-grid .ag-header-cell-text").all_inner_texts() if h.strip()]
    assert headers[0] == "Download", headers
    # every column, also those a phone's grid has not drawn yet
    headers = page.evaluate("() => dash_ag_grid.getApi('settle-grid').getColumnDefs().map(c => c.headerName)")
    assert {"Net", "Cost CHF", "Credit CHF"} <= set(headers), headers
    assert not [h for h in headers if h and re.search(r"\bct\b", h)], headers
    if name == "laptop":                     # every column in sight: the amounts as shown
        nets = page.locator(f'{ROWS} [col-id="net_amount_chf"]').all_inner_texts()
        assert nets and all(re.fullmatch(rf"(owes|is owed) CHF {AMOUNT}", t.strip()) for t in nets), nets
        costs = page.locator(f'{ROWS} [col-id="import_cost_chf"]').all_inner_texts()
        assert costs and all(re.fullmatch(AMOUNT, t.strip()) for t in costs), costs
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/settlement-{name}.png", full_page=True)
    # amounts sort as numbers (9 before 100), and show as the server wrote them
    assert page.evaluate(SORTED_JS, ["import_cost_chf", [100, 9, -3.5, 1234.5]]) == [
        "shown -3.5", "shown 9", "shown 100", "shown 1234.5"]
    watch.assert_clean()


def test_the_community_page_fits_and_shows_the_savings(screen):
    _name, watch = screen
    page = watch.page
    watch.open("")
    card = page.locator(".card-body", has_text="Saved against the grid alone")
    expect(card).to_be_visible()
    expect(card.locator("h4")).to_have_text(re.compile(rf"^CHF {AMOUNT}$"))
    expect(page.locator(".card-body", has_text="Community balance").locator("h4")).to_have_text(
        re.compile(rf"^CHF {AMOUNT}$"))
    watch.settle()
    no_horizontal_scrolling(watch)
    if SHOTS:
        page.screenshot(path=f"{SHOTS}/community-{_name}.png", full_page=True)
    watch.assert_clean()


@pytest.mark.parametrize("locale", ["fr-CH", "it-CH", "de-CH"])
def test_every_page_fits_a_laptop_in_each_language(browser, app, locale):  # noqa: F811
    """Longer names in French and Italian: the menu wraps, no page runs past a 1366 px window, and
    an empty table says so in the language."""
    c, url = app
    context = browser.new_context(viewport=VIEWPORTS["laptop"], locale=locale)
    context.set_default_timeout(TIMEOUT_MS)
    try:
        watch = Watch(context, url)
        page = watch.page
        page.goto(url + "login")                       # the form in the browser's language
        page.fill("#username", MANAGER[0])
        page.fill("#password", MANAGER[1])
        with page.expect_navigation():
            page.press("#password", "Enter")
        watch.settle()
        for path in ("", "grid", "houses/1", "tariffs", "settlement", "year", "meters", "quality", "audit"):
            watch.open(path)
            watch.settle()
            no_horizontal_scrolling(watch)
        # the charts name the months in the language (plotly's locale from assets/plotly-locales.js)
        from babel.dates import get_month_names
        from datetime import datetime, timezone
        watch.open("")
        ticks = watch.page.locator("#community-energy .xtick text")
        expect(ticks.first).to_be_visible()
        month = get_month_names("abbreviated", locale=locale.replace("-", "_"))[datetime.now(timezone.utc).month]
        labels = " ".join(ticks.evaluate_all("els => els.map(e => e.textContent)"))
        assert month in labels, (month, labels)
        watch.open("settlement")
        empty = {"fr-CH": "Aucune ligne à afficher", "it-CH": "Nessuna riga da mostrare", "de-CH": "Keine Einträge"}
        expect(watch.page.locator("#settle-overdue .ag-overlay-no-rows-center, #settle-overdue .ag-overlay")
               .first).to_contain_text(empty[locale])
        watch.assert_clean()
    finally:
        context.close()
