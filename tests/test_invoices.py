"""Invoice documents end to end: closing a period stores each invoice's PDF, which is then served
byte for byte; the PDF's text shows the CSV's figures; paid and cancelled (a credit note, never an
edit), each change recorded with who and when; the period ZIP; `settle --out` writes the PDFs;
mailing through a real local SMTP server (aiosmtpd) never sends a document twice."""
import io
import re
import shutil
import sqlite3
import subprocess
import zipfile
from datetime import datetime, timezone
from decimal import Decimal

import pandas as pd
import pytest

from billing import lifecycle, mail
from billing.exports import invoices_csv
from billing.invoice_documents import invoice_documents
from billing.settlement import SettlementError
from community import Community
from config import parse_config
from documents import qr
from peers import free_port
from simulator.profiles import profiles_for, simulate_counters

PDFTOTEXT = shutil.which("pdftotext")
needs_pdftotext = pytest.mark.skipif(PDFTOTEXT is None, reason="pdftotext is missing (apt-get install poppler-utils)")

ADDRESS = {"name": "LEG Sonnenhof", "street": "Hauptstrasse", "number": "1", "postcode": "8000", "town": "Zürich"}
HOUSES = {
    "M1": {"id": 1, "name": "One", "email": "anna@example.ch",
           "owner": {"name": "Anna Muster", "street": "Bahnhofstrasse", "number": "1", "postcode": "8001",
                     "town": "Zürich"}},
    "M2": {"id": 2, "name": "Two", "pv_kwp": 30, "language": "fr", "email": "paul@example.ch"},
    "M3": {"id": 3, "name": "Three", "language": "it"},
    "M4": {"id": 4, "name": "Four", "language": "en", "pv_kwp": 8, "email": "jo@example.ch"},
}


def make(tmp_path, smtp_port=None):
    data = {"houses": HOUSES, "storage": {"data_dir": str(tmp_path / "data")},
            "community": {"name": "Sonnenhof", "iban": "CH44 3199 9123 0008 8901 2", "address": ADDRESS}}
    if smtp_port:
        data["smtp"] = {"host": "127.0.0.1", "port": smtp_port, "security": "none",
                        "sender": "Sonnenhof <billing@example.ch>"}
    cfg = parse_config(data, source="test")
    c = Community.open(cfg, clock=lambda: datetime(2026, 4, 2, 8, tzinfo=timezone.utc))
    c.store_readings(simulate_counters(profiles_for(cfg.houses), pd.Timestamp("2026-02-27T00:00Z"),
                                       pd.Timestamp("2026-04-01T06:00Z"), 900, c.tz))
    return c


@pytest.fixture
def closed(tmp_path):
    c = make(tmp_path)
    s = lifecycle.close_period(c, "2026-03", "manager@test")
    yield c, s
    c.close()


def text_of(pdf: bytes) -> str:
    r = subprocess.run([PDFTOTEXT, "-layout", "-", "-"], input=pdf, capture_output=True, check=True)
    return r.stdout.decode()


def plain(text: str) -> str:
    """Numbers as digits and a dot, whatever the language's separators."""
    return re.sub(r"(?<=\d)[’' ](?=\d{3})", "", text).replace(",", ".")


@needs_pdftotext
def test_every_issued_pdf_shows_the_csv_figures_in_its_language(closed):
    c, s = closed
    assert [i["invoice_id"] for i in s.invoices] == ["INV-2026-001", "INV-2026-002", "INV-2026-003", "INV-2026-004"]
    words = {"de": ("Rechnung", "Zu bezahlen"), "fr": ("Facture", ""), "it": ("Fattura", ""), "en": ("Invoice", "")}
    langs = {"1": "de", "2": "fr", "3": "it", "4": "en"}
    for inv in s.invoices:
        pdf = c.ledger.document(inv["invoice_id"])
        text = plain(text_of(pdf))
        assert inv["invoice_id"] in text and words[langs[inv["house_id"]]][0] in text
        net = Decimal(str(inv["net_amount_chf"]))
        assert f"{abs(net):.2f}" in text, (inv["invoice_id"], net)
        assert f"{Decimal(str(inv['energy_imported_kwh'])):.1f}" in text
        assert f"{Decimal(str(inv['energy_exported_kwh'])):.1f}" in text
        assert f"M{inv['house_id']}" in text and "2026" in text
        # a QR-bill exactly when the house owes money
        assert (("Zahlteil" in text or "Section paiement" in text or "Sezione pagamento" in text
                 or "Payment part" in text) == (net < 0)), inv["invoice_id"]
    house2 = next(i for i in s.invoices if i["house_id"] == "2")
    assert Decimal(str(house2["net_amount_chf"])) > 0, "the 30 kWp house earns a credit"


def test_qr_payload_matches_the_amount_due_and_there_is_none_for_a_credit(closed):
    c, s = closed
    docs = {d.house_id: d for d in invoice_documents(c, s)}
    payload = qr.qr_payload(docs["1"]).splitlines()
    assert payload[0] == "SPC" and payload[3].replace(" ", "") == "CH4431999123000889012"
    inv1 = next(i for i in s.invoices if i["house_id"] == "1")
    assert payload[18] == f"{-Decimal(str(inv1['net_amount_chf'])):.2f}" and payload[19] == "CHF"
    assert "Anna Muster" in payload and "INV-2026-001" in "\n".join(payload)
    assert qr.qr_payload(docs["2"]) is None                     # the community owes house 2


def test_issued_pdfs_are_served_byte_for_byte_even_after_new_data(closed, tmp_path):
    c, s = closed
    first = lifecycle.document_pdf(c, "INV-2026-001")
    assert first == c.ledger.document("INV-2026-001") and first.startswith(b"%PDF-")
    # late readings change what a fresh rendering would show; the issued PDF does not change
    c.store_readings(simulate_counters(profiles_for(c.cfg.houses), pd.Timestamp("2026-03-10T00:00Z"),
                                       pd.Timestamp("2026-03-10T02:00Z"), 60, c.tz))
    assert lifecycle.document_pdf(c, "INV-2026-001") == first
    con = sqlite3.connect(c.ledger.path)
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        con.execute("UPDATE documents SET pdf = x'00' WHERE document_id = 'INV-2026-001'")
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        con.execute("DELETE FROM documents")
    con.close()
    from web import create_app
    from webauth import MANAGER, add_users, login
    add_users(c)
    client = login(create_app(c).server.test_client(), "/", *MANAGER)
    r1, r2 = client.get("/api/invoices/INV-2026-001.pdf"), client.get("/api/invoices/INV-2026-001.pdf")
    assert r1.status_code == 200 and r1.mimetype == "application/pdf" and r1.data == r2.data == first
    assert client.get("/api/invoices/INV-2026-099.pdf").status_code == 404
    z = zipfile.ZipFile(io.BytesIO(client.get("/api/invoices.zip?period=2026-03").data))
    assert z.read("2026-03/INV-2026-001.pdf") == first
    assert z.read("2026-03/invoices-2026-03.csv") == invoices_csv(s.invoices)


def test_paid_and_cancelled_with_a_credit_note_recorded_with_who_and_when(closed):
    c, s = closed
    lifecycle.mark_paid(c, "INV-2026-001", "treasurer", "bank statement 12")
    with pytest.raises(SettlementError, match="is paid; it cannot become paid"):
        lifecycle.mark_paid(c, "INV-2026-001", "treasurer")
    with pytest.raises(SettlementError, match="give a reason"):
        lifecycle.cancel(c, "INV-2026-003", "manager", "  ")
    note = lifecycle.cancel(c, "INV-2026-003", "manager", "wrong meter assigned")
    assert note["credit_note_id"] == "CN-2026-001" and note["invoice_id"] == "INV-2026-003"
    inv3 = c.ledger.invoice("INV-2026-003")
    assert inv3["status"] == "cancelled" and Decimal(note["net_amount_chf"]) == -Decimal(inv3["net_amount_chf"])
    assert inv3["net_amount_chf"] == str(s.invoices[2]["net_amount_chf"])      # the invoice keeps its figures
    with pytest.raises(SettlementError, match="is cancelled"):
        lifecycle.cancel(c, "INV-2026-003", "manager", "again")
    assert lifecycle.cancel(c, "INV-2026-001", "manager", "refund")["credit_note_id"] == "CN-2026-002"  # paid → cancelled
    events = c.ledger.events("INV-2026-001")
    assert [(e["status"], e["by"]) for e in events] == [("issued", "manager@test"), ("paid", "treasurer"),
                                                        ("cancelled", "manager")]
    assert events[1]["note"] == "bank statement 12" and events[1]["at"] >= events[0]["at"]
    pdf = lifecycle.document_pdf(c, "CN-2026-001")
    assert pdf == c.ledger.document("CN-2026-001")
    if PDFTOTEXT:
        text = text_of(pdf)
        assert "CN-2026-001" in text and "INV-2026-003" in text
        assert "Sezione pagamento" not in text and "Zahlteil" not in text   # a credit note has no QR-bill
    with pytest.raises(SettlementError, match="no issued invoice"):
        lifecycle.mark_paid(c, "DRAFT-2026-04-1", "x")


def test_settle_command_writes_the_pdfs(tmp_path):
    from click.testing import CliRunner

    import app
    import yaml
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({"houses": HOUSES, "storage": {"data_dir": str(tmp_path / "data")},
                                        "community": {"name": "Sonnenhof"}, "mqtt": {"enabled": False}}))
    c = Community.open(parse_config(yaml.safe_load(cfg_file.read_text()), source="t"))
    c.store_readings(simulate_counters(profiles_for(c.cfg.houses), pd.Timestamp("2026-02-27T00:00Z"),
                                       pd.Timestamp("2026-04-01T06:00Z"), 900, c.tz))
    c.close()
    out = tmp_path / "out"
    r = CliRunner().invoke(app.cli, ["settle", "--period", "2026-03", "--out", str(out), "--close",
                                     "--config", str(cfg_file)])
    assert r.exit_code == 0, r.output
    names = sorted(p.name for p in out.iterdir())
    assert names == ["INV-2026-001.pdf", "INV-2026-002.pdf", "INV-2026-003.pdf", "INV-2026-004.pdf", "invoices.csv"]
    again = tmp_path / "again"
    r = CliRunner().invoke(app.cli, ["settle", "--period", "2026-03", "--out", str(again), "--config", str(cfg_file)])
    assert r.exit_code == 0 and (again / "INV-2026-002.pdf").read_bytes() == (out / "INV-2026-002.pdf").read_bytes()


@pytest.fixture
def smtp_server():
    """A real SMTP server on a free port that keeps what it receives."""
    from aiosmtpd.controller import Controller
    from aiosmtpd.handlers import Message

    class Keep(Message):
        def __init__(self):
            super().__init__()
            self.messages = []

        def handle_message(self, message):
            self.messages.append(message)
    class Server:                    # a stopped Controller cannot start again: a new one each time
        def __init__(self):
            self.port, self.handler, self.ctl = free_port(), Keep(), None

        def start(self):
            self.ctl = Controller(self.handler, hostname="127.0.0.1", port=self.port)
            self.ctl.start()

        def stop(self):
            if self.ctl:
                self.ctl.stop()
                self.ctl = None
    server = Server()
    server.start()
    yield server.port, server.handler, server
    server.stop()


def test_mailing_sends_each_document_once_and_records_the_result(tmp_path, smtp_server):
    port, handler, ctl = smtp_server
    c = make(tmp_path, port)
    try:
        with pytest.raises(ValueError, match="no issued invoices"):
            mail.send_period(c, "2026-03", "manager")
        lifecycle.close_period(c, "2026-03", "manager")
        run = mail.send_period(c, "2026-03", "manager")
        assert sorted(run.sent) == ["INV-2026-001", "INV-2026-002", "INV-2026-004"]
        assert run.skipped == {"INV-2026-003": "house 3 has no e-mail address"} and not run.failed
        got = {m["To"]: m for m in handler.messages}
        assert set(got) == {"anna@example.ch", "paul@example.ch", "jo@example.ch"}
        from email.header import decode_header, make_header
        subject = str(make_header(decode_header(got["paul@example.ch"]["Subject"])))
        assert subject == "Votre facture d'électricité INV-2026-002 (2026-03)"
        att = [p for p in got["anna@example.ch"].walk() if p.get_filename() == "INV-2026-001.pdf"][0]
        assert att.get_payload(decode=True) == c.ledger.document("INV-2026-001")
        # a second click sends nothing
        again = mail.send_period(c, "2026-03", "manager")
        assert again.sent == [] and again.skipped["INV-2026-001"] == "already sent" and len(handler.messages) == 3
        # a credit note goes out; with the server down it fails, is recorded, and goes out later
        lifecycle.cancel(c, "INV-2026-004", "manager", "duplicate")
        ctl.stop()
        down = mail.send_period(c, "2026-03", "manager")
        assert list(down.failed) == ["CN-2026-001"] and c.ledger.mails(["CN-2026-001"])["CN-2026-001"]["status"] == "failed"
        ctl.start()
        up = mail.send_period(c, "2026-03", "manager")
        assert up.sent == ["CN-2026-001"] and handler.messages[-1]["To"] == "jo@example.ch"
        # an interrupted send (claimed, never finished) is not repeated until released by a person
        lifecycle.cancel(c, "INV-2026-002", "manager", "tariff error")
        assert c.ledger.claim_mail("CN-2026-002", "paul@example.ch", "manager")    # then the process died
        assert "interrupted" in mail.send_period(c, "2026-03", "manager").skipped["CN-2026-002"]
        with pytest.raises(ValueError, match="no interrupted send"):
            mail.release(c, "INV-2026-001", "manager")
        mail.release(c, "CN-2026-002", "manager")
        assert mail.send_period(c, "2026-03", "manager").sent == ["CN-2026-002"]
    finally:
        c.close()
