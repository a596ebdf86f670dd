"""Annual statements per house on real stores (SQLite ledger, DuckDB file): the months priced as
the settlement prices them (hand-computed, static tariffs with a change in July), equal to the
monthly invoices; a quarterly community's months add up to its quarter invoices; credit notes;
the CSV read back; the PDF in the house's language."""
import csv
import io
import shutil
import subprocess
from datetime import datetime, timezone
from decimal import ROUND_HALF_UP, Decimal

import pytest

from billing.statements import (CSV_FIELDS, statement, statement_csv, statement_html, statement_pdf,
                                statements, years_with_closed_periods)
from community import Community
from config import parse_config
from pricing.tariffs import Tariff
from test_settlement import frame

TZ = "Europe/Zurich"
CLOCK = datetime(2027, 2, 1, tzinfo=timezone.utc)
MONTHS = [f"2026-{m:02d}" for m in range(1, 13)]
# kWh per month of 2026 (one decimal: every amount is exact to 0.01 ct, only CHF rounding is left)
IMPORT_1 = ["100.1", "90.3", "80.5", "60.7", "40.9", "30.1", "30.3", "35.5", "50.7", "70.9", "90.1", "110.3"]
EXPORT_1 = ["10.2", "20.4", "40.6", "60.8", "80.2", "90.4", "95.6", "85.8", "60.2", "40.4", "20.6", "10.8"]
IMPORT_2 = ["200.3", "180.7", "150.1", "120.9", "100.5", "90.3", "95.7", "99.9", "110.1", "140.5", "170.3", "210.7"]
HOUSES = {"M1": {"id": 1, "name": "Sonnenhof Müller", "pv_kwp": 8},
          "M2": {"id": 2, "name": "Casa Rossi", "language": "it"}}
JULY = datetime.fromisoformat("2026-07-01T00:00:00+02:00")


def _readings():
    """A reading at every local month start of 2026 and on 1 January 2027."""
    rows = []
    for meter, imports, exports in (("M1", IMPORT_1, EXPORT_1), ("M2", IMPORT_2, ["0"] * 12)):
        i, e = Decimal("1000.0"), Decimal("500.0")
        for k in range(13):
            ts = f"2026-{k + 1:02d}-01T00:00" if k < 12 else "2027-01-01T00:00"
            rows.append((meter, ts, float(i), float(e)))
            if k < 12:
                i, e = i + Decimal(imports[k]), e + Decimal(exports[k])
    return frame(rows)


@pytest.fixture
def make(tmp_path):
    opened = []

    def build(kind="month", sub="c"):
        cfg = parse_config({"houses": HOUSES, "pricing": {"mode": "static"},
                            "tariffs": {"p_pv": 20.0, "p_grid_del": 6.0, "p_grid_con": 30.0},
                            "community": {"name": "LEG Sonnenhalde", "timezone": TZ, "billing_period": kind},
                            "storage": {"data_dir": str(tmp_path / sub)}, "mqtt": {"enabled": False}},
                           source="test")
        c = Community.open(cfg, clock=lambda: CLOCK)
        opened.append(c)
        c.store_readings(_readings())
        # from July: p_pv 22, p_grid_con 32 -> p_con (22 + 32) / 2 = 27
        c.add_tariff(Tariff(22.0, 6.0, 32.0, "static", JULY), "test")
        return c

    yield build
    for c in opened:
        c.close()


def chf(x: Decimal) -> Decimal:
    return x.quantize(Decimal("0.01"), rounding=ROUND_HALF_UP)


def by_hand(imported: str, exported: str, month: int) -> dict:
    """static: p_con = (p_pv + p_grid_con) / 2 (25 ct, from July 27 ct), p_pv 20 ct (from July 22 ct)."""
    p_con, p_pv = (Decimal(25), Decimal(20)) if month < 7 else (Decimal(27), Decimal(22))
    cost_ct, credit_ct = Decimal(imported) * p_con, Decimal(exported) * p_pv
    return {"imported_kwh": Decimal(imported).quantize(Decimal("0.001")),
            "exported_kwh": Decimal(exported).quantize(Decimal("0.001")),
            "cost_chf": chf(cost_ct / 100), "credit_chf": chf(credit_ct / 100),
            "net_chf": chf((credit_ct - cost_ct) / 100)}


def test_monthly_statement_is_hand_computed_and_equals_the_monthly_invoices(make):
    c = make()
    with pytest.raises(ValueError, match="no period has been closed yet"):
        statement(c, "1", 2026)
    assert years_with_closed_periods(c) == []
    for month in MONTHS[:6]:
        c.settle(month, close=True, closed_by="test")
    assert years_with_closed_periods(c) == [2026]

    st = statement(c, "1", 2026)
    assert (st.house_id, st.house_name, st.year) == ("1", "Sonnenhof Müller", 2026)
    assert st.closed_periods == MONTHS[:6]
    assert [m["month"] for m in st.months] == MONTHS                      # every month with data
    assert [m["period_id"] for m in st.months] == MONTHS[:6] + [""] * 6   # July on: not billed yet
    # January by hand: 100.1 kWh x 25 ct = 2502.5 ct -> CHF 25.03; 10.2 kWh x 20 ct = 204 ct -> CHF 2.04;
    # net (204 - 2502.5) / 100 = -22.985 -> CHF -22.99 (rounded once, from the ct amounts, half away from zero).
    # July, with the new tariff: 30.3 x 27 = 818.1 ct -> 8.18; 95.6 x 22 = 2103.2 ct -> 21.03; net 12.851 -> 12.85
    jan, jul = st.months[0], st.months[6]
    assert (jan["imported_kwh"], jan["exported_kwh"]) == (Decimal("100.100"), Decimal("10.200"))
    assert (jan["cost_chf"], jan["credit_chf"], jan["net_chf"]) == (Decimal("25.03"), Decimal("2.04"), Decimal("-22.99"))
    assert (jul["cost_chf"], jul["credit_chf"], jul["net_chf"]) == (Decimal("8.18"), Decimal("21.03"), Decimal("12.85"))
    for k, m in enumerate(st.months):
        assert {key: m[key] for key in ("imported_kwh", "exported_kwh", "cost_chf", "credit_chf", "net_chf")} \
            == by_hand(IMPORT_1[k], EXPORT_1[k], k + 1), m["month"]
        assert isinstance(m["cost_chf"], Decimal) and m["missing_intervals"] == 0

    # the year's invoices: one per closed month, and each month's figures are its invoice's
    assert [i["period_id"] for i in st.invoices] == MONTHS[:6]
    assert [i["invoice_id"] for i in st.invoices] == [f"INV-2027-{n:03d}" for n in (1, 3, 5, 7, 9, 11)]
    for m, inv in zip(st.months, st.invoices):
        issued = c.ledger.invoice(inv["invoice_id"])
        assert m["imported_kwh"] == Decimal(issued["energy_imported_kwh"]) == inv["energy_imported_kwh"]
        assert m["exported_kwh"] == Decimal(issued["energy_exported_kwh"])
        assert m["cost_ct"] == Decimal(issued["import_cost_ct"]) and m["credit_ct"] == Decimal(issued["export_revenue_ct"])
        assert m["net_chf"] == Decimal(issued["net_amount_chf"]) == inv["net_amount_chf"]
        assert inv["status"] == "issued" and inv["credit_note_id"] is None
        assert inv["period_start"] == f"{m['month']}-01"
    billed = sum(m["net_chf"] for m in st.months[:6])
    assert billed == sum(i["net_amount_chf"] for i in st.invoices) == st.totals["invoiced_chf"]
    assert st.totals["imported_kwh"] == sum(Decimal(x) for x in IMPORT_1)
    assert st.totals["exported_kwh"] == sum(Decimal(x) for x in EXPORT_1)
    assert st.totals["net_chf"] == sum(by_hand(IMPORT_1[k], EXPORT_1[k], k + 1)["net_chf"] for k in range(12))
    assert st.totals["balance_chf"] == st.totals["invoiced_chf"]

    # the other house (Italian, buys only) and every house at once give the same figures
    two = statement(c, "2", 2026)
    assert [m["cost_chf"] for m in two.months] == [by_hand(IMPORT_2[k], "0", k + 1)["cost_chf"] for k in range(12)]
    assert all(m["credit_chf"] == 0 for m in two.months)
    assert [i["invoice_id"] for i in two.invoices] == [f"INV-2027-{n:03d}" for n in (2, 4, 6, 8, 10, 12)]
    both = statements(c, 2026)
    assert [s.house_id for s in both] == ["1", "2"]
    assert both[0].months == st.months and both[1].invoices == two.invoices

    # refused: a year without a closed period, an unknown house, a language the documents do not have
    for year in (2025, 2027):
        with pytest.raises(ValueError, match=f"year {year} has no closed billing period; statements exist for 2026"):
            statement(c, "1", year)
    with pytest.raises(ValueError, match="house '9' is not a house of this community"):
        statement(c, "9", 2026)
    with pytest.raises(ValueError, match="language 'xx'"):
        statement_pdf(c, st, "xx")

    # a cancelled invoice: its credit note is listed and the balance no longer counts it
    march = st.invoices[2]
    c.ledger.cancel_invoice(march["invoice_id"], "test", "wrong meter", 2027)
    st = statement(c, "1", 2026)
    march = st.invoices[2]
    assert (march["status"], march["credit_note_id"]) == ("cancelled", "CN-2027-001")
    assert march["credit_note_chf"] == -march["net_amount_chf"] and len(march["credit_note_on"]) == 10
    assert st.totals["credit_notes_chf"] == -march["net_amount_chf"]
    assert st.totals["balance_chf"] == st.totals["invoiced_chf"] - march["net_amount_chf"]

    # the CSV, read back: months, their total, then each invoice and its credit note
    rows = list(csv.DictReader(io.StringIO(statement_csv(st).decode("utf-8"))))
    assert list(rows[0]) == CSV_FIELDS
    assert [r["kind"] for r in rows] == ["month"] * 12 + ["total"] + ["invoice"] * 3 + ["credit_note"] \
        + ["invoice"] * 3
    assert all(r["house_id"] == "1" for r in rows)
    for r, m in zip(rows, st.months):
        assert r["month"] == m["month"] and r["period_id"] == m["period_id"]
        for key in ("imported_kwh", "exported_kwh", "cost_chf", "credit_chf", "net_chf"):
            assert Decimal(r[key]) == m[key]
    assert rows[0]["net_chf"] == "-22.99" and rows[0]["imported_kwh"] == "100.100"
    total = rows[12]
    assert total["month"] == "2026" and Decimal(total["net_chf"]) == st.totals["net_chf"]
    assert Decimal(total["imported_kwh"]) == st.totals["imported_kwh"]
    invoices = [r for r in rows if r["kind"] == "invoice"]
    assert [r["document_id"] for r in invoices] == [i["invoice_id"] for i in st.invoices]
    assert [Decimal(r["net_chf"]) for r in invoices] == [i["net_amount_chf"] for i in st.invoices]
    assert invoices[2]["status"] == "cancelled" and Decimal(invoices[0]["cost_chf"]) == Decimal("25.03")
    note = rows[16]
    assert (note["document_id"], note["refers_to"], note["period_id"]) == ("CN-2027-001", march["invoice_id"], "2026-03")
    assert Decimal(note["net_chf"]) == -march["net_amount_chf"]

    # the PDF: German for house 1 (the community's language), Italian for house 2 (its own)
    pdf = statement_pdf(c, st)
    assert pdf.startswith(b"%PDF") and statement_pdf(c, st) == pdf               # the same bytes again
    assert pages(c, st) <= 2
    html = statement_html(c, st)
    assert "Jahresabrechnung 2026" in html and "Sonnenhof Müller" in html and "CN-2027-001" in html
    assert "Conteggio annuale 2026" in statement_html(c, two) and "Settembre" in statement_html(c, two)
    if shutil.which("pdftotext"):
        text = pdf_text(pdf)
        assert "Jahresabrechnung 2026" in text and "Sonnenhof Müller" in text
        assert "INV-2027-001" in text and "CN-2027-001" in text and "storniert" in text
        assert "22.99" in text and "Januar" in text and "offen" in text
        en = pdf_text(statement_pdf(c, st, "en"))
        assert "Annual statement 2026" in en and "Credit note for INV-2027-005" in en
        assert "Casa Rossi" in pdf_text(statement_pdf(c, two))


def test_quarterly_months_add_up_to_the_quarter_invoices(make):
    c = make("quarter", sub="q")
    c.settle("2026-Q1", close=True, closed_by="test")
    c.settle("2026-Q2", close=True, closed_by="test")
    st = statement(c, "1", 2026)
    assert st.closed_periods == ["2026-Q1", "2026-Q2"]
    assert [m["period_id"] for m in st.months] == ["2026-Q1"] * 3 + ["2026-Q2"] * 3 + [""] * 6
    assert [i["period_id"] for i in st.invoices] == ["2026-Q1", "2026-Q2"]
    for q, inv in enumerate(st.invoices):
        months = st.months[3 * q:3 * q + 3]
        issued = c.ledger.invoice(inv["invoice_id"])
        assert sum(m["imported_kwh"] for m in months) == Decimal(issued["energy_imported_kwh"])
        assert sum(m["exported_kwh"] for m in months) == Decimal(issued["energy_exported_kwh"])
        assert sum(m["cost_ct"] for m in months) == Decimal(issued["import_cost_ct"])
        assert sum(m["credit_ct"] for m in months) == Decimal(issued["export_revenue_ct"])
        # each month rounded on its own: at most half a Rappen each away from the quarter's rounding
        assert abs(sum(m["net_chf"] for m in months) - inv["net_amount_chf"]) <= Decimal("0.015")
    for k, m in enumerate(st.months):
        assert m["net_chf"] == by_hand(IMPORT_1[k], EXPORT_1[k], k + 1)["net_chf"]
    # Q1 by hand: 270.9 kWh x 25 = 6772.5 ct, 71.2 kWh x 20 = 1424 ct, net -53.485 -> CHF -53.49
    assert st.invoices[0]["net_amount_chf"] == Decimal("-53.49")
    # while the months, each rounded (-22.985, -18.495, -12.005 away from zero), add up to CHF -53.50
    assert [m["net_chf"] for m in st.months[:3]] == [Decimal("-22.99"), Decimal("-18.50"), Decimal("-12.01")]
    assert years_with_closed_periods(c) == [2026]


def pdf_text(pdf: bytes) -> str:
    out = subprocess.run(["pdftotext", "-layout", "-", "-"], input=pdf, capture_output=True, check=True)
    return out.stdout.decode("utf-8").replace("\u202f", " ").replace("\u00a0", " ").replace("’", "'")


def pages(c, st) -> int:
    """Pages of the statement as WeasyPrint lays it out (with the stylesheet of the PDF)."""
    import os

    from documents.render import TEMPLATES, _font_config, _html_class, _stylesheet, url_fetcher
    doc = _html_class()(string=statement_html(c, st), base_url=str(TEMPLATES) + os.sep, url_fetcher=url_fetcher())
    return len(doc.render(stylesheets=[_stylesheet()], font_config=_font_config()).pages)


def test_statements_through_the_api_the_page_and_the_command(make, tmp_path):
    """A member downloads their own house's statement (PDF and CSV) and no other's; the manager
    every house's; My invoices links them; ``app.py statements`` writes the files."""
    import sys
    from pathlib import Path

    import yaml

    from components.views import statement_links
    from web import create_app
    from webauth import MANAGER, add_users, login, member
    c = make()
    for month in MONTHS[:3]:
        c.settle(month, close=True, closed_by="test")
    add_users(c)
    app = create_app(c).server
    base = "/" if c.cfg.web.base_path in ("", "/") else c.cfg.web.base_path
    api = base + "api/"
    boss = login(app.test_client(), base, *MANAGER)
    owner = login(app.test_client(), base, *member("1"))

    idx = owner.get(api + "statements").get_json()
    assert idx == {"years": [2026], "houses": ["1"], "statements": ["statements/1/2026.pdf"]}
    assert boss.get(api + "statements").get_json()["houses"] == ["1", "2"]
    r = owner.get(api + "statements/1/2026.csv")
    assert r.status_code == 200 and r.headers["Content-Disposition"].endswith('statement-2026-house-1.csv"')
    rows = list(csv.DictReader(io.StringIO(r.data.decode("utf-8"))))
    assert rows == list(csv.DictReader(io.StringIO(statement_csv(statement(c, "1", 2026)).decode("utf-8"))))
    jan = next(row for row in rows if row["kind"] == "month" and row["month"] == "2026-01")
    assert (jan["cost_chf"], jan["credit_chf"], jan["net_chf"]) == ("25.03", "2.04", "-22.99")
    pdf = owner.get(api + "statements/1/2026.pdf?language=fr")
    assert pdf.status_code == 200 and pdf.data.startswith(b"%PDF") and pdf.mimetype == "application/pdf"
    assert owner.get(api + "statements/2/2026.pdf").status_code == 404           # another member's house
    assert boss.get(api + "statements/2/2026.csv").status_code == 200
    assert boss.get(api + "statements/9/2026.csv").status_code == 404             # no such house
    r = boss.get(api + "statements/1/2025.pdf")
    assert r.status_code == 404 and "statements exist for 2026" in r.get_json()["error"]
    assert boss.get(api + "statements/1/2026.txt").status_code == 400
    assert boss.get(api + "statements/1/2026.pdf?language=xx").status_code == 400

    links = statement_links(c, c.ledger.houses(), "/")
    hrefs = [a.href for li in links.children for a in li.children[1:]]
    assert hrefs == ["/api/statements/1/2026.pdf", "/api/statements/1/2026.csv",
                     "/api/statements/2/2026.pdf", "/api/statements/2/2026.csv"]
    c.close()

    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({"houses": HOUSES, "pricing": {"mode": "static"},
                                   "community": {"name": "LEG Sonnenhalde", "timezone": TZ},
                                   "storage": {"data_dir": str(tmp_path / "c")}, "mqtt": {"enabled": False}}))
    root = Path(__file__).resolve().parent.parent
    run = lambda *a: subprocess.run([sys.executable, str(root / "app.py"), *a, "--config", str(cfg)],
                                    capture_output=True, text=True, timeout=300, cwd=root)
    r = run("statements", "--year", "2026", "--house", "2", "--out", str(tmp_path / "out"))
    assert r.returncode == 0, r.stderr
    assert "house 2 (Casa Rossi): 12 months, 3 invoices" in r.stdout
    assert (tmp_path / "out" / "statement-2026-house-2.pdf").read_bytes().startswith(b"%PDF")
    assert (tmp_path / "out" / "statement-2026-house-2.csv").read_bytes().startswith(b"kind,")
    r = run("statements", "--year", "2024", "--out", str(tmp_path / "out"))
    assert r.returncode == 1 and "year 2024 has no closed billing period" in r.stderr


def test_savings_against_the_grid_alone_by_hand(make):
    """January, static tariff: p_con 25, p_pv 20, p_grid_con 30, p_grid_del 6 ct/kWh. House 1 buys
    100.1 kWh (5 ct/kWh less than the grid: 500.5 ct) and sells 10.2 kWh (14 ct/kWh more than the
    grid pays: 142.8 ct): 643.3 ct; house 2 buys 200.3 kWh: 1001.5 ct. The community: 1644.8 ct."""
    import pandas as pd

    import analytics
    c = make()
    s = c.settle("2026-01", allow_incomplete=True)
    got = {i["house_id"]: i["details"] for i in s.invoices}
    assert (got["1"]["grid_only_cost_ct"], got["1"]["grid_only_credit_ct"], got["1"]["savings_ct"]) == \
        ("3003.00", "61.20", "643.30")
    assert got["2"]["savings_ct"] == "1001.50"
    jan = analytics.Range(pd.Timestamp("2025-12-31T23:00Z"), pd.Timestamp("2026-01-31T23:00Z"), "day")
    assert analytics.kpis(analytics.community_flows(c, jan))["savings_chf"] == 16.45
    assert analytics.kpis(analytics.house_flows(c, "1", jan))["savings_chf"] == 6.43
    # the invoice says it, in the house's language (house 2 reads Italian)
    from billing.invoice_documents import invoice_documents
    from documents.render import build_context
    docs = {d.house_id: d for d in invoice_documents(c, s)}
    notes_de = " ".join(build_context(docs["1"])["notes"]).replace("\u00a0", " ")        # the community's language
    assert "sparen Sie in dieser Periode CHF 6.43" in notes_de, notes_de
    notes_it = " ".join(build_context(docs["2"])["notes"]).replace("\u00a0", " ")
    assert "in questo periodo risparmia CHF 10.02" in notes_it and "30.00 ct/kWh" in notes_it, notes_it
