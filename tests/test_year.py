"""The year page: the months of a year beside the year before, and the Excel workbook of the
monthly figures (read back with openpyxl), on the hand-computed year of tests/test_statements.py."""
from __future__ import annotations

import io

import pytest

import analytics
from test_statements import IMPORT_1, IMPORT_2, EXPORT_1, make  # noqa: F401  (make: fixture)


def test_year_months_by_hand(make):
    c = make()
    df = analytics.year_months(c, 2026)
    assert list(df["month"]) == [f"2026-{m:02d}" for m in range(1, 13)]
    jan = df.iloc[0]
    assert jan["consumption_kwh"] == pytest.approx(100.1 + 200.3) and jan["production_kwh"] == pytest.approx(10.2)
    # every kWh produced is used inside: grid import = consumption - production
    assert jan["grid_import_kwh"] == pytest.approx(300.4 - 10.2)
    assert jan["self_sufficiency"] == pytest.approx(10.2 / 300.4)
    # savings (see test_statements): house 1 643.3 ct, house 2 1001.5 ct
    assert jan["savings_chf"] == 16.45
    assert df["consumption_kwh"].sum() == pytest.approx(sum(map(float, IMPORT_1 + IMPORT_2)))
    last = analytics.year_months(c, 2025)                       # no data: zeros, no self-sufficiency
    assert last["consumption_kwh"].sum() == 0 and last["self_sufficiency"].isna().all()
    house = analytics.year_months(c, 2026, "1")
    assert house.iloc[6]["production_kwh"] == pytest.approx(float(EXPORT_1[6]))


def test_year_workbook_and_page(make):
    import dash
    import flask
    from openpyxl import load_workbook

    from components.year_view import year_summary, year_view
    from web import create_app
    from webauth import MANAGER, add_users, login, member
    c = make()
    add_users(c)
    app = create_app(c)
    server = app.server
    boss = login(server.test_client(), "/", *MANAGER)
    r = boss.get("/api/year/2026.xlsx", headers={"Accept-Language": "de"})
    assert r.status_code == 200 and r.headers["Content-Disposition"].endswith('year-2026.xlsx"')
    book = load_workbook(io.BytesIO(r.data))
    assert book.sheetnames == ["2026", "2025"]
    sheet = book["2026"]
    assert sheet["A1"].value == "LEG Sonnenhalde 2026"
    assert [cell.value for cell in sheet[3]][:3] == ["Monat", "Verbrauch kWh", "Produktion kWh"]
    assert sheet["A4"].value == "2026-01" and sheet["B4"].value == pytest.approx(300.4) and sheet["H4"].value == 16.45
    assert sheet["A16"].value == "Total"
    assert sheet["B16"].value == pytest.approx(sum(map(float, IMPORT_1 + IMPORT_2)), abs=1e-3)
    assert boss.get("/api/year/2026.csv").status_code == 400
    owner = login(server.test_client(), "/", *member("1"))
    assert owner.get("/api/year/2026.xlsx").status_code == 403         # the community's figures: managers

    with server.test_request_context("/year", headers={"Accept-Language": "fr"}):
        figures, totals = year_view(c, 2026)
        assert [t.name for t in figures[0].data] == ["Consommation 2026", "Consommation 2025",
                                                     "Production 2026", "Production 2025"]
        assert list(figures[0].data[0].x)[:3] == ["janv.", "févr.", "mars"]
        assert figures[2].data[0].y[0] == 16.45
        text = year_summary(2026, totals).replace("\u202f", " ")
        total_kwh = round(sum(map(float, IMPORT_1 + IMPORT_2)))
        assert text.startswith(f"2026 : consommation {total_kwh // 1000} {total_kwh % 1000:03d} kWh")
        assert text.endswith("(2025 : CHF 0,00).")                                  # 2025: nothing saved
        flask.g.principal = server.config["LEG_ACCOUNTS"].principal(MANAGER[0])
        page = dash.page_registry["pages.year"]["layout"]()
        assert "Télécharger les chiffres mensuels (Excel)" in str(page)
