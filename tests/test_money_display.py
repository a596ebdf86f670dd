"""Money as people read it: CHF with two decimals in the language's number format in the KPI cards
(with the savings against the grid alone) and the tables, an invoice's net as "owes CHF x" /
"is owed CHF x"; the tables keep the amounts as numbers, so they sort by amount; the centimes stay
in the CSV and the API (tests/test_web.py)."""
from __future__ import annotations

from contextlib import contextmanager
from decimal import Decimal

import flask
import pytest

from test_web import community  # noqa: F401  (fixture: two houses, 2026-02 complete)

KPIS = {"consumption_kwh": 12345.6, "production_kwh": 2000.0, "grid_import_kwh": 11000.0, "grid_export_kwh": 500.0,
        "self_sufficiency": 0.109, "self_consumption": 0.75, "balance_chf": -1234.5, "savings_chf": 1234.567}


@contextmanager
def speaking(lang: str):
    """A request in ``lang`` (what i18n.language() answers)."""
    app = flask.Flask(__name__)
    with app.test_request_context("/"):
        flask.g.leg_language = lang
        yield


def cards(row) -> dict[str, str]:
    """KPI card title -> value as shown."""
    out = {}
    for col in row.children:
        title, value = col.children.children.children
        out[title.children] = value.children
    return out


@pytest.mark.parametrize("lang, title, value, balance", [
    ("en", "Saved against the grid alone", "CHF 1’234.57", "CHF -1’234.50"),
    ("de", "Gespart gegenüber reinem Netzbezug", "CHF 1’234.57", "CHF -1’234.50"),
])
def test_the_kpi_cards_show_the_savings_in_chf_in_the_language(lang, title, value, balance):
    from components.controls import kpi_cards
    with speaking(lang):
        shown = cards(kpi_cards(KPIS))
    assert shown[title] == value
    assert balance in shown.values() and "12’346 kWh" in shown.values()


def test_french_writes_the_savings_with_its_own_separators():
    from components.controls import kpi_cards
    with speaking("fr"):
        shown = cards(kpi_cards(KPIS))
    assert shown["Économisé par rapport au réseau seul"].replace("\u202f", " ") == "CHF 1 234,57"


def test_an_invoice_net_says_who_owes_whom():
    from components.views import net_text
    with speaking("en"):
        assert (net_text("-806.40"), net_text(Decimal("12.5")), net_text(0)) == (
            "owes CHF 806.40", "is owed CHF 12.50", "is owed CHF 0.00")
    with speaking("de"):
        assert (net_text(-1806.4), net_text(3)) == ("schuldet CHF 1’806.40", "hat CHF 3.00 zugut")
    with speaking("it"):
        assert net_text(-5) == "deve CHF 5.00"


def test_grid_money_keeps_numbers_to_sort_by_and_the_text_to_show():
    from components.views import chf_of_ct, grid_money
    assert chf_of_ct("10265.74") == Decimal("102.66") and chf_of_ct("0.50") == Decimal("0.01")   # as invoices round
    with speaking("en"):
        rows = [grid_money({"id": i}, {"paid_chf": amount, "net_amount_chf": amount})
                for i, amount in enumerate(["1234.5", "-3", "99.999", None])]
    assert [r["paid_chf"] for r in rows] == [1234.5, -3.0, 100.0, None]
    assert [r["shown"]["paid_chf"] for r in rows] == ["1’234.50", "-3.00", "100.00", ""]
    assert [r["shown"]["net_amount_chf"] for r in rows] == ["is owed CHF 1’234.50", "owes CHF 3.00",
                                                             "is owed CHF 100.00", ""]
    by_amount = sorted((r for r in rows if r["paid_chf"] is not None), key=lambda r: r["paid_chf"])
    assert [r["id"] for r in by_amount] == [1, 2, 0]            # numbers: -3 < 100 < 1234.5 (text would not)


def test_the_settlement_table_shows_chf_and_no_centimes(community):  # noqa: F811
    from components.controls import MONEY_COLUMN
    from components.views import settlement_view
    from web import create_app
    create_app(community)                                       # the pages register with an app
    from pages.settlement import INVOICE_COLUMNS, INVOICE_GRID, columns
    with speaking("en"):
        _alert, rows, _ = settlement_view(community, "2026-02")
        defs = columns(INVOICE_COLUMNS, **INVOICE_GRID)
    headers = [d["headerName"] for d in defs]
    assert headers[0] == "Download" and not [h for h in headers if h.endswith(" ct")], headers
    money = [d["field"] for d in defs if d.get("valueFormatter") == MONEY_COLUMN["valueFormatter"]]
    # the amounts, and the energy, sort as numbers and show their text (CHF, kWh in the language)
    assert money == ["net_amount_chf", "import_cost_chf", "export_revenue_chf", "energy_imported_kwh",
                     "energy_exported_kwh"]
    money = money[:3]
    one = next(r for r in rows if r["house_id"] == "1")
    assert (one["import_cost_chf"], one["net_amount_chf"]) == (806.4, -806.4)          # 2688 kWh x 30 ct
    assert one["shown"]["import_cost_chf"] == "806.40" and one["shown"]["net_amount_chf"] == "owes CHF 806.40"
    assert one["import_cost_ct"] == "80640.00"                  # the centimes stay with the row (CSV, API)
    assert all(f in one for f in money)


def test_my_invoices_and_the_house_page_in_chf(community):  # noqa: F811
    import analytics
    import pandas as pd

    from components.views import draft_invoice_card, house_view, my_invoice_rows
    with speaking("de"):
        rows = my_invoice_rows(community, ["1"], "/")
        inv = community.settle("2026-02", allow_incomplete=True).invoices[0]
        card = str(draft_invoice_card(inv))
        now = pd.Timestamp("2026-02-20T12:00Z")
        rng = analytics.Range(pd.Timestamp("2026-01-31T23:00Z"), pd.Timestamp("2026-02-28T23:00Z"), "day")
        _e, _v, invoice, _p, _s = house_view(community, "1", rng, now)
    assert "806.40" in card and "2’688.0 kWh" in card
    assert "Gespart gegenüber reinem Netzbezug" in str(invoice) and "CHF " in str(invoice)
    for r in rows:
        assert isinstance(r["net"], float) and r["shown"]["net"].startswith(("schuldet CHF ", "hat CHF "))
