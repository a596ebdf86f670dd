"""The settlement page's payments in a real headless Chromium (Debian's package, driven by Playwright),
logged in as the manager through the login form, on the LEG of tests/test_payments.py with its closed
period 2026-03 (QR-IBAN): a camt.054 bank file is set on the Upload component's file input, the result
names the file and what it applied, the paid invoice shows paid in the invoice table, the payment
nobody's reference names waits in "Bank transactions to assign by hand", is selected there and
assigned to another invoice by its number (which becomes partially paid); the payout links of the
closed period point at the API and download the CSV (and the pain.001 with the browser's session);
an open period shows no payout buttons.
"""
from __future__ import annotations

import csv
import io
import threading
from decimal import Decimal
from xml.etree import ElementTree as ET

import pytest

from peers import free_port, wait_port
from test_browser import CHROMIUM, browser  # noqa: F401  (browser: fixture)
from test_browser_flows import Tab, tab  # noqa: F401  (tab: fixture, logged in as the manager)
from test_payments import closed, due  # noqa: F401  (closed: fixture)
from camt_files import Entry, Tx, camt
from webauth import add_users

pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
sync_api = pytest.importorskip("playwright.sync_api", reason="playwright is not installed (requirements-dev.txt)")
expect = sync_api.expect

PERIOD = "2026-03"
NOT_OURS = "RF18539007547034"              # a valid creditor reference that names no invoice
PAYOUT_HREF = f"/api/payouts.csv?period={PERIOD}"
# the cells of an AG Grid's rendered rows, by column id (only what the browser shows)
GRID_ROWS_JS = """(id) => Array.from(document.querySelectorAll(
    '#' + id + ' .ag-center-cols-container .ag-row')).map(r => Object.fromEntries(
    Array.from(r.querySelectorAll('[col-id]')).map(c => [c.getAttribute('col-id'), c.innerText.trim()])))"""


@pytest.fixture
def app(closed):
    """(community, base url) of the closed-period LEG served by waitress on a free port, with its
    users (overrides test_browser's ``app`` for the ``tab`` fixture)."""
    import waitress

    from web import create_app
    c, inv, _, _ = closed
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
        web.server.config["LEG"] = None    # no store handle outlives the test


def cell(tab, grid: str, row_id: str, col: str):
    """One rendered cell of an AG Grid row, the row found by its id (getRowId)."""
    return tab.page.locator(f'#{grid} .ag-center-cols-container .ag-row[row-id="{row_id}"] [col-id="{col}"]')


def test_bank_file_upload_assignment_by_hand_and_payouts(app, tab, closed):
    c, url = app
    _, inv, _, _ = closed
    page = tab.page
    one, two = inv["1"]["invoice_id"], inv["2"]["invoice_id"]
    assert one.startswith("INV-") and two.startswith("INV-")

    tab.open("settlement")
    expect(page.locator("h3").first).to_have_text("Settlement")
    # the page opens on the newest period that is not running: an open one, without payouts
    expect(page.locator("#settle-period")).to_contain_text("(open)")
    expect(page.locator("#settle-payouts-note")).to_have_text("Credits are paid out once the period is closed.")
    expect(page.locator("#settle-payouts")).to_be_hidden()
    expect(page.locator("#settle-payouts-csv")).to_be_hidden()
    expect(page.locator("#settle-payouts-xml")).to_be_hidden()

    # the closed period: its invoices issued, payouts offered
    tab.choose("settle-period", f"{PERIOD} (closed)")
    expect(page.locator("#settle-status")).to_contain_text("Closed: 5 invoices issued")
    expect(cell(tab, "settle-grid", one, "invoice_id")).to_have_text(one)
    expect(page.locator("#settle-payouts")).to_be_visible()
    expect(page.locator("#settle-payouts-csv")).to_have_attribute("href", PAYOUT_HREF)
    expect(page.locator("#settle-payouts-xml")).to_have_attribute("href", f"/api/payouts.xml?period={PERIOD}")
    expect(page.locator("#settle-payouts-note")).to_contain_text("houses with an IBAN")
    tab.settle()
    statuses = {r["invoice_id"]: r.get("status_text") for r in page.evaluate(GRID_ROWS_JS, "settle-grid")}
    assert statuses == {i["invoice_id"]: "issued" for i in inv.values()}, statuses
    expect(page.locator("#settle-open .ag-center-cols-container .ag-row")).to_have_count(0)
    expect(page.locator("#settle-overdue .ag-center-cols-container .ag-row")).to_have_count(0)

    # a camt.054 notification: house 1 pays its invoice in full, somebody pays 5.00 with a foreign reference
    name = "notification-2026-04-10.xml"
    notification = camt([
        Entry([Tx(f"{due(inv['1']):.2f}", inv["1"]["payment_reference"], "Owner 1", "TX-1")], acct_svcr_ref="E-1"),
        Entry([Tx("5.00", NOT_OURS, "Somebody", "TX-2", ref_type="SCOR")], acct_svcr_ref="E-2"),
    ], kind="054", version="08")
    file_input = page.locator("#settle-camt input[type=file]")
    expect(file_input).to_have_count(1)
    file_input.set_input_files(files=[{"name": name, "mimeType": "text/xml", "buffer": notification}])
    result = page.locator("#settle-camt-result .alert")
    expect(result).to_contain_text(f"{name}: ")
    expect(result).to_contain_text("2 transactions: 1 applied, 0 imported before, 1 unmatched")
    expect(result).to_contain_text(f"paid: {one}")
    expect(result).to_contain_class("alert-success")
    # the invoice table follows: house 1 paid, house 2 still issued
    expect(cell(tab, "settle-grid", one, "status_text")).to_have_text("paid")
    expect(cell(tab, "settle-grid", two, "status_text")).to_have_text("issued")
    assert c.ledger.invoice(one)["status"] == "paid"

    # the 5.00 waits to be assigned by hand
    rows = page.locator("#settle-open .ag-center-cols-container .ag-row")
    expect(rows).to_have_count(1)
    expect(rows).to_contain_text(NOT_OURS)
    tab.settle()
    [item] = page.evaluate(GRID_ROWS_JS, "settle-open")
    assert {k: item.get(k) for k in ("amount_chf", "reference", "debtor", "what", "file_name")} == {
        "amount_chf": "5.00", "reference": NOT_OURS, "debtor": "Somebody",
        "what": "no invoice has this reference", "file_name": name}, item

    # without a selection the page says what is missing and assigns nothing
    page.fill("#settle-assign-invoice", two.lower())
    page.click("#settle-assign")
    expect(page.locator("#settle-assign-result .alert")).to_have_text("Select a bank transaction in the table first.")
    assert c.ledger.invoice(two)["status"] == "issued"

    # selected (the row's checkbox, or the row itself where the grid has none), typed in lower case, assigned
    checkbox = rows.first.locator(".ag-selection-checkbox input, .ag-checkbox-input")
    if checkbox.count():
        checkbox.first.check()
    else:
        rows.first.locator('[col-id="reference"]').click()
    expect(rows.first).to_contain_class("ag-row-selected")
    page.click("#settle-assign")
    assigned = page.locator("#settle-assign-result .alert")
    expect(assigned).to_have_text(f"Payment assigned: {two} is now partially paid.")
    expect(assigned).to_contain_class("alert-success")
    expect(rows).to_have_count(0)                                   # nothing left to assign
    expect(cell(tab, "settle-grid", two, "status_text")).to_have_text("partially paid")
    expect(cell(tab, "settle-grid", one, "status_text")).to_have_text("paid")
    assert c.ledger.invoice(two)["status"] == "partially_paid"
    assert c.ledger.paid_amounts()[two] == Decimal("5.00")
    assert "assigned by hand: bank file " + name in c.ledger.events(two)[-1]["note"]

    # the payouts: the CSV through the link, as a user downloads it
    with page.expect_download() as d:
        page.click("#settle-payouts-csv")
    download = d.value
    assert download.failure() is None
    assert download.suggested_filename == f"payouts-{PERIOD}.csv"
    assert download.url == url.rstrip("/") + PAYOUT_HREF
    with open(download.path(), encoding="utf-8") as f:
        text = f.read()
    rows_csv = list(csv.DictReader(io.StringIO(text)))
    assert text.splitlines()[0] == "house_id,name,iban,amount_chf,reference", text
    assert [(r["house_id"], r["iban"], r["amount_chf"]) for r in rows_csv] == [
        (h, "CH9300762011623852957" if h != "5" else "", f"{Decimal(str(inv[h]['net_amount_chf'])):.2f}")
        for h in ("3", "4", "5")], rows_csv
    # the pain.001 by its link's address, with the browser's session
    xml_href = page.locator("#settle-payouts-xml").get_attribute("href")
    r = page.request.get(url.rstrip("/") + xml_href)
    assert r.ok and r.headers["content-disposition"] == f'attachment; filename="payouts-{PERIOD}.xml"'
    assert ET.fromstring(r.body()).tag.endswith("}Document") and b"pain.001.001.09" in r.body()

    # another period, open: the payout buttons go away again
    tab.choose("settle-period", "2026-04 (open)")
    expect(page.locator("#settle-payouts")).to_be_hidden()
    expect(page.locator("#settle-payouts-note")).to_have_text("Credits are paid out once the period is closed.")
    expect(page.locator("#settle-payouts-csv")).not_to_have_attribute("href", PAYOUT_HREF)
    tab.settle()
    tab.assert_clean()
