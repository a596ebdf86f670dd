"""Payments both ways on a closed period (a LEG billed from SDAT-CH data: two consumers owe, three
producers are owed): bank files (camt.054 .08 and camt.053 .04, structures as Swiss banks send them)
mark invoices paid, partially paid or overpaid, keep what they cannot match, change nothing when
imported twice; payouts write a pain.001.001.09 file for the producers with an IBAN."""
from __future__ import annotations

import csv
import io
import subprocess
import sys
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
import yaml

from billing.pain001 import NS
from billing.payments import import_payments, open_items, overdue, payment_reference, payouts
from community import Community
from config import load_config
from sdat_files import leg_document, local_day
from camt_files import Entry, Tx, camt

ROOT = Path(__file__).resolve().parent.parent
QR_IBAN = "CH4431999123000889012"           # the Swiss Payment Standards' example QR-IBAN
POINTS = {f"CH10079012345000000000000000000{k:02d}": ("consumption" if k <= 2 else "production", k)
          for k in range(1, 6)}


@pytest.fixture
def closed(tmp_path):
    houses = {}
    for point, (direction, k) in POINTS.items():
        h = {"id": k, "name": f"House {k}", "owner": {"name": f"Owner {k}", "street": "Dorfstrasse",
                                                     "number": str(k), "postcode": "3000", "town": "Bern"}}
        if direction == "production" and k != 5:
            h["iban"] = "CH93 0076 2011 6238 5295 7"
        houses[point] = h
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({
        "community": {"name": "LEG Sonnenhalde", "iban": QR_IBAN, "payment_days": 30,
                      "address": {"name": "LEG Sonnenhalde", "street": "Hauptgasse", "number": "1",
                                  "postcode": "3000", "town": "Bern"}},
        "pricing": {"mode": "leg"}, "tariffs": {"p_pv": 15.0, "p_grid_del": 6.0, "p_grid_con": 30.0},
        "houses": houses, "storage": {"data_dir": str(tmp_path / "data")}, "mqtt": {"enabled": False}}))
    c = Community.open(load_config(cfg_file))
    start, end = local_day(2026, 3, 1, days=31)
    n = 2972
    # consumers 0.1 and 0.2 kWh per quarter hour; producers 0.15, 0.1, 0.05 (the same in sum)
    shares = {1: 0.1, 2: 0.2, 3: 0.15, 4: 0.1, 5: 0.05}
    doc = leg_document("DOC-M", datetime(2026, 4, 2, tzinfo=timezone.utc), start, end,
                       {p: (d, [shares[k]] * n, [0.0] * n) for p, (d, k) in POINTS.items()})
    assert c.import_sdat_file("march.xml", doc).error is None
    s = c.settle("2026-03", close=True)
    yield c, {i["house_id"]: i for i in s.invoices}, cfg_file, tmp_path
    c.close()


def due(inv) -> Decimal:
    return -Decimal(str(inv["net_amount_chf"]))


def test_references_are_those_of_the_qr_bills(closed):
    c, inv, _, _ = closed
    assert len(inv["1"]["payment_reference"]) == 27 and inv["1"]["payment_reference"].isdigit()
    assert inv["3"]["payment_reference"] == ""                 # a credit asks for no payment
    assert payment_reference(inv["1"], "CH93 0076 2011 6238 5295 7").startswith("RF")   # ordinary IBAN
    draft = c.settle("2026-04", allow_incomplete=True).invoices
    assert all(i["payment_reference"] == "" for i in draft)


def test_bank_files_mark_invoices_paid_and_keep_what_they_cannot_match(closed):
    c, inv, cfg_file, tmp_path = closed
    r1, r2 = inv["1"]["payment_reference"], inv["2"]["payment_reference"]
    a1, a2 = due(inv["1"]), due(inv["2"])
    notification = camt([
        Entry([Tx(f"{a1:.2f}", r1, "Owner 1", "TX-1"), Tx("10.00", r2[:5] + " " + r2[5:], "Owner 2", "TX-2")],
              acct_svcr_ref="E-1"),                                         # a batch of two payments
        Entry([Tx("5.00", "RF18539007547034", "Somebody", "TX-3", ref_type="SCOR")]),   # not ours
        Entry([Tx("10.00", r2, "Owner 2", "TX-4", credit=False)], reversal=True, credit=False),
    ], kind="054", version="08")
    f1 = tmp_path / "camt054.xml"
    f1.write_bytes(notification)
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "import-payments", str(f1), "--config", str(cfg_file)],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "2 applied" in r.stdout and "1 unmatched" in r.stdout and "1 reversals" in r.stdout
    assert "to assign by hand: unmatched: CHF 5.00 reference RF18539007547034" in r.stdout
    inv1, inv2 = c.ledger.invoice(inv["1"]["invoice_id"]), c.ledger.invoice(inv["2"]["invoice_id"])
    assert (inv1["status"], inv2["status"]) == ("paid", "partially_paid")
    events = c.ledger.events(inv["2"]["invoice_id"])
    assert "bank file camt054.xml: transaction TX-2 of CHF 10.00" in events[-1]["note"]

    again = import_payments(c, "camt054.xml", notification, "test")            # imported twice
    assert again.counts["known"] == 4 and again.counts["applied"] == 0 and again.changed == {}

    # the rest, and 3.00 too much, in a statement (camt.053 .04)
    rest = a2 - Decimal("10.00") + Decimal("3.00")
    stmt = camt([Entry([Tx(f"{rest:.2f}", r2, "Owner 2", "TX-5")], acct_svcr_ref="E-9")], kind="053", version="04")
    res = import_payments(c, "camt053.xml", stmt, "test")
    assert res.counts["applied"] == 1 and res.changed == {inv["2"]["invoice_id"]: "paid"}
    assert "overpaid by CHF 3.00" in c.ledger.events(inv["2"]["invoice_id"])[-1]["note"]
    assert c.ledger.paid_amounts()[inv["2"]["invoice_id"]] == a2 + Decimal("3.00")
    assert {t["state"] for t in open_items(c)} == {"unmatched", "reversal"}
    # the settlement's files now carry the current status
    assert {i["house_id"]: i["status"] for i in c.settle("2026-03").invoices}["2"] == "paid"


def test_unpaid_invoices_past_their_payment_days_are_listed(closed):
    c, inv, _, _ = closed
    late = overdue(c, today=datetime(2027, 3, 1).date())      # issued today, 30 days to pay
    assert {x["house_id"] for x in late} == {"1", "2"}
    assert overdue(c, today=datetime(2026, 1, 1).date()) == []


def test_payouts_for_three_credits_one_house_without_an_iban(closed):
    c, inv, cfg_file, tmp_path = closed
    files = payouts(c, "2026-03")
    assert [m["house_id"] for m in files.without_iban] == ["5"]
    rows = list(csv.DictReader(io.StringIO(files.csv.decode())))
    assert [r["house_id"] for r in rows] == ["3", "4", "5"] and rows[2]["iban"] == ""
    root = ET.fromstring(files.xml)
    n = {"p": NS}
    txs = root.findall("p:CstmrCdtTrfInitn/p:PmtInf/p:CdtTrfTxInf", n)
    amounts = [Decimal(t.findtext("p:Amt/p:InstdAmt", namespaces=n)) for t in txs]
    assert amounts == [Decimal(str(inv["3"]["net_amount_chf"])), Decimal(str(inv["4"]["net_amount_chf"]))]
    assert root.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:CtrlSum", namespaces=n) == f"{sum(amounts):.2f}"
    assert root.findtext("p:CstmrCdtTrfInitn/p:PmtInf/p:DbtrAcct/p:Id/p:IBAN", namespaces=n) == QR_IBAN
    assert txs[0].findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=n) == "CH9300762011623852957"
    with pytest.raises(ValueError, match="is not closed"):
        payouts(c, "2026-04")
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), "payouts", "--period", "2026-03", "--out",
                        str(tmp_path / "out"), "--config", str(cfg_file)], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert (tmp_path / "out" / "payouts-2026-03.xml").exists() and "house 5 (Owner 5)" in r.stderr


def test_a_payment_to_a_cancelled_invoice_is_kept_and_assigned_by_hand(closed):
    from billing import lifecycle
    from storage.ledger import LedgerError
    c, inv, _, _ = closed
    one, two = inv["1"]["invoice_id"], inv["2"]["invoice_id"]
    lifecycle.cancel(c, one, "test", "wrong address")
    stmt = camt([Entry([Tx(f"{due(inv['2']):.2f}", inv["1"]["payment_reference"], "Owner 2", "TX-C")],
                       acct_svcr_ref="E-C"),
                 Entry([Tx("7.00", "RF18539007547034", "Somebody", "TX-U", ref_type="SCOR")], acct_svcr_ref="E-U")],
                kind="054", version="08")
    res = import_payments(c, "late.xml", stmt, "test")
    assert res.counts["cancelled_invoice"] == 1 and res.counts["unmatched"] == 1 and res.changed == {}
    assert c.ledger.invoice(one)["status"] == "cancelled"
    listed = {t["state"]: t for t in open_items(c)}
    assert listed["cancelled_invoice"]["invoice_id"] == one and listed["cancelled_invoice"]["amount_chf"] == f"{due(inv['2']):.2f}"
    tx = listed["cancelled_invoice"]["tx_id"]
    # the manager sees that Owner 2 paid with the wrong slip: assigned to house 2's invoice
    with pytest.raises(LedgerError, match="cancelled"):
        c.ledger.assign_bank_transaction(tx, one, "test")
    with pytest.raises(LedgerError, match="asks for no payment"):
        c.ledger.assign_bank_transaction(tx, inv["3"]["invoice_id"], "test")
    with pytest.raises(LedgerError, match="no issued invoice INV-2099-001"):
        c.ledger.assign_bank_transaction(tx, "INV-2099-001", "test")
    assert c.ledger.assign_bank_transaction(tx, two, "manager") == "paid"
    assert "assigned by hand: bank file late.xml" in c.ledger.events(two)[-1]["note"]
    with pytest.raises(LedgerError, match="is applied"):
        c.ledger.assign_bank_transaction(tx, two, "manager")
    assert [t["state"] for t in open_items(c)] == ["unmatched"]
    assert import_payments(c, "late.xml", stmt, "test").counts["known"] == 2     # the assignment stands


def test_payments_through_the_api_for_managers_only(closed):
    from web import create_app
    from webauth import MANAGER, add_users, login, member
    c, inv, _, _ = closed
    add_users(c)
    app = create_app(c).server
    base = "/" if c.cfg.web.base_path in ("", "/") else c.cfg.web.base_path
    boss = login(app.test_client(), base, *MANAGER)
    owner = login(app.test_client(), base, *member("1"))
    stmt = camt([Entry([Tx(f"{due(inv['1']):.2f}", inv["1"]["payment_reference"], "Owner 1", "TX-A")], acct_svcr_ref="E-A"),
                 Entry([Tx("4.00", "RF18539007547034", "Somebody", "TX-B", ref_type="SCOR")], acct_svcr_ref="E-B")],
                kind="053", version="08")
    api = base + "api/"
    assert owner.post(api + "payments?name=s.xml", data=stmt).status_code == 403
    r = boss.post(api + "payments?name=s.xml", data=stmt)
    assert r.status_code == 201, r.data
    assert r.get_json()["counts"]["applied"] == 1 and r.get_json()["changed"] == {inv["1"]["invoice_id"]: "paid"}
    assert boss.post(api + "payments?name=s.xml", data=stmt).get_json()["counts"]["known"] == 2
    bad = boss.post(api + "payments?name=broken.xml", data=b"<Document><BkToCstmrStmt>")
    assert bad.status_code == 400 and bad.get_json()["error"].startswith("broken.xml: ")
    assert boss.post(api + "payments", data=b"").status_code == 400
    listed = boss.get(api + "payments").get_json()
    assert [t["reference"] for t in listed["open"]] == ["RF18539007547034"] and listed["overdue"] == []
    tx = listed["open"][0]["tx_id"]
    r = boss.post(api + f"payments/{tx}/assign", json={"invoice_id": inv["2"]["invoice_id"]})
    assert r.status_code == 200 and r.get_json()["status"] == "partially_paid"
    assert boss.post(api + f"payments/{tx}/assign", json={"invoice_id": inv["2"]["invoice_id"]}).status_code == 409
    assert boss.post(api + "payments/nope/assign", json={"invoice_id": inv["2"]["invoice_id"]}).status_code == 404
    assert boss.post(api + f"payments/{tx}/assign", json={"invoice_id": "x"}).status_code == 400
    r = boss.get(api + "payouts.csv?period=2026-03")
    assert r.status_code == 200 and r.headers["Content-Disposition"].endswith('payouts-2026-03.csv"')
    assert [row["house_id"] for row in csv.DictReader(io.StringIO(r.data.decode()))] == ["3", "4", "5"]
    x = boss.get(api + "payouts.xml?period=2026-03")
    assert x.status_code == 200 and ET.fromstring(x.data).tag == f"{{{NS}}}Document"
    assert boss.get(api + "payouts.xml?period=2026-04").status_code == 409            # not closed
    assert boss.get(api + "payouts.xml?period=2026-13").status_code == 400
    assert owner.get(api + "payouts.csv?period=2026-03").status_code == 403


def test_the_settlement_page_takes_bank_files_and_assignments(closed):
    """The page's functions (the browser drives the same through pages/settlement.py)."""
    import base64

    from components.views import assign_payment, payments_view, upload_bank_files
    c, inv, _, _ = closed
    stmt = camt([Entry([Tx("12.00", inv["1"]["payment_reference"], "Owner 1", "TX-P")], acct_svcr_ref="E-P"),
                 Entry([Tx("3.00", None, "Anonymous", "TX-N")], acct_svcr_ref="E-N")], kind="054", version="08")
    url = "data:text/xml;base64," + base64.b64encode(stmt).decode()
    alert = upload_bank_files(c, [url, "data:text/xml;base64,!!", "data:text/xml;base64,"
                                  + base64.b64encode(b"<x/>").decode()], ["bank.xml", "bad.xml", "other.xml"], "web")
    text = [d.children for d in alert.children]
    assert alert.color == "warning" and text[0].startswith("bank.xml: ") and "1 applied" in text[0]
    assert text[1] == "bad.xml: refused: the upload could not be read (an empty or damaged file)"
    assert text[2].startswith("other.xml: refused: ")
    late, items = payments_view(c)
    assert late == [] and [(t["amount_chf"], t["what"]) for t in items] == [("3.00", "no invoice has this reference")]
    assert assign_payment(c, [], "INV-2026-001").color == "warning"
    assert assign_payment(c, items, "INV-2099-001").color == "danger"
    ok = assign_payment(c, items, inv["1"]["invoice_id"].lower())
    assert ok.color == "success" and "partially paid" in ok.children
    assert payments_view(c)[1] == [] and c.ledger.paid_amounts()[inv["1"]["invoice_id"]] == Decimal("15.00")
