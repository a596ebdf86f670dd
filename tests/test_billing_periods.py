"""Billing periods beyond the month (community.billing_period: quarter, year): local calendar
edges across DST, hand-computed invoices, one kind per community, no period billed twice when the
kind changes, drafts of every kind found by their ids."""
from datetime import datetime, timezone
from decimal import Decimal
from zoneinfo import ZoneInfo

import pandas as pd
import pytest

from billing.settlement import SettlementError, draft_candidates, parse_period, period_of, recent_periods
from community import Community
from config import ConfigError, parse_config
from test_settlement import frame

ZURICH = ZoneInfo("Europe/Zurich")
HOUSES = {"M1": {"id": 1, "name": "One"}, "M2": {"id": 2, "name": "Two", "pv_kwp": 10}}


@pytest.mark.parametrize("pid,hours,first,last", [
    ("2026-Q1", 90 * 24 - 1, "2026-01-01T00:00:00+01:00", "2026-03-31T23:59:59+02:00"),   # spring forward
    ("2026-Q2", 91 * 24, "2026-04-01T00:00:00+02:00", "2026-06-30T23:59:59+02:00"),
    ("2026-Q4", 92 * 24 + 1, "2026-10-01T00:00:00+02:00", "2026-12-31T23:59:59+01:00"),   # fall back
    ("2026", 365 * 24, "2026-01-01T00:00:00+01:00", "2026-12-31T23:59:59+01:00"),
    ("2028", 366 * 24, "2028-01-01T00:00:00+01:00", "2028-12-31T23:59:59+01:00"),          # leap year
    ("2026-03", 743, "2026-03-01T00:00:00+01:00", "2026-03-31T23:59:59+02:00"),
])
def test_periods_are_local_calendar_spans(pid, hours, first, last):
    p = parse_period(pid, ZURICH)
    assert p.hours == hours
    assert p.start_local.isoformat() == first and p.end_local_inclusive.isoformat() == last


def test_period_ids_refused_and_listed():
    for bad in ("2026-Q0", "2026-Q5", "2026-13", "26", "2026-1", "2026Q1", "", "2026-Q1-"):
        with pytest.raises(SettlementError, match="expected a month as YYYY-MM, a quarter as YYYY-Qn"):
            parse_period(bad, ZURICH)
    with pytest.raises(SettlementError, match=r"expected a quarter as YYYY-Qn.*bills by quarter"):
        parse_period("2026-03", ZURICH, "quarter")
    now = pd.Timestamp("2026-01-01T00:30:00+01:00")          # still 2025 in UTC: the local year counts
    assert period_of(now, ZURICH, "year") == "2026" and period_of(now, ZURICH, "quarter") == "2026-Q1"
    assert recent_periods(now, ZURICH, "quarter", 3) == ["2026-Q1", "2025-Q4", "2025-Q3"]
    assert recent_periods(now, ZURICH, "year") == ["2026", "2025", "2024"]
    assert draft_candidates("DRAFT-2026-Q3-7") == [("2026-Q3", "7"), ("2026", "Q3-7")]
    assert draft_candidates("DRAFT-2026-12-5") == [("2026-12", "5"), ("2026", "12-5")]


def test_billing_period_is_checked_in_the_configuration():
    with pytest.raises(ConfigError, match="billing_period"):
        parse_config({"community": {"billing_period": "week"}, "houses": HOUSES}, source="test")


@pytest.fixture
def open_community(tmp_path):
    opened = []

    def make(kind, sub="c", clock=datetime(2027, 2, 1, tzinfo=timezone.utc)):
        cfg = parse_config({"houses": HOUSES, "pricing": {"mode": "static"},
                            "tariffs": {"p_pv": 20.0, "p_grid_del": 6.0, "p_grid_con": 30.0},
                            "community": {"name": "Test", "timezone": "Europe/Zurich", "billing_period": kind},
                            "storage": {"data_dir": str(tmp_path / sub)}, "mqtt": {"enabled": False}}, source="test")
        c = Community.open(cfg, clock=lambda: clock)
        opened.append(c)
        # house 1 buys 1 kWh per hour all year, house 2 delivers 0.5 kWh per hour
        c.store_readings(frame([("M1", "2026-01-01T00:00", 0.0, 0.0), ("M1", "2027-01-01T00:00", 8760.0, 0.0),
                                ("M2", "2026-01-01T00:00", 0.0, 0.0), ("M2", "2027-01-01T00:00", 0.0, 4380.0)]))
        return c
    yield make
    for c in opened:
        c.close()


def test_a_quarterly_community_bills_quarters_to_hand_computed_figures(open_community):
    c = open_community("quarter")
    assert c.recent_periods(2) == ["2027-Q1", "2026-Q4"]
    with pytest.raises(SettlementError, match="bills by quarter"):
        c.settle("2026-03", allow_incomplete=True)
    q1, q4 = c.settle("2026-Q1"), c.settle("2026-Q4")
    one, two = q1.invoices[0], q1.invoices[1]
    # static: p_con = (20 + 30) / 2 = 25 ct, p_pv = 20 ct; Q1 has 2159 hours, Q4 2209
    assert one["energy_imported_kwh"] == Decimal("2159.000") and one["import_cost_ct"] == Decimal("53975.00")
    assert two["energy_exported_kwh"] == Decimal("1079.500") and two["export_revenue_ct"] == Decimal("21590.00")
    assert one["invoice_id"] == "DRAFT-2026-Q1-1" and one["period_start"] == "2026-01-01T00:00:00+01:00"
    assert q4.invoices[0]["import_cost_ct"] == Decimal(2209 * 25).quantize(Decimal("0.01"))
    assert c.invoice("DRAFT-2026-Q1-1")["import_cost_ct"] == Decimal("53975.00")
    from billing.lifecycle import document_pdf
    pdf = document_pdf(c, "DRAFT-2026-Q1-1")                             # a quarter's daily chart: 90 days
    assert pdf.startswith(b"%PDF") and document_pdf(c, "DRAFT-2026-03-1") is None
    closed = c.settle("2026-Q1", close=True, closed_by="test")
    assert [i["invoice_id"] for i in closed.invoices] == ["INV-2027-001", "INV-2027-002"]
    assert c.invoice("INV-2027-001")["period_id"] == "2026-Q1"
    rows = {p["period_id"]: p["status"] for p in c.periods()}
    assert rows["2026-Q1"] == "closed" and rows["2026-Q2"] == "open" and rows["2027-Q1"] == "running"


def test_a_yearly_community_numbers_on_its_own_and_a_changed_kind_never_bills_twice(open_community, tmp_path):
    year = open_community("year", sub="y")
    s = year.settle("2026", close=True, closed_by="test")
    assert s.invoices[0]["invoice_id"] == "INV-2027-001"                  # its own ledger, its own numbers
    assert Decimal(str(s.invoices[0]["import_cost_ct"])) == Decimal(8760 * 25).quantize(Decimal("0.01"))
    assert year.invoice("DRAFT-2027-1") is not None and year.invoice("DRAFT-2027-9") is None

    # a community that billed January monthly and now bills by quarter: Q1 would bill January again
    monthly = open_community("month", sub="m")
    monthly.settle("2026-01", close=True, closed_by="test")
    cfg = monthly.cfg.model_copy(update={"community": monthly.cfg.community.model_copy(update={"billing_period": "quarter"})})
    monthly.close()
    quarterly = Community.open(cfg, clock=lambda: datetime(2027, 2, 1, tzinfo=timezone.utc))
    try:
        with pytest.raises(SettlementError, match="overlaps the closed period 2026-01"):
            quarterly.settle("2026-Q1", close=True, closed_by="test")
        assert quarterly.settle("2026-01").status == "closed"                # still readable as issued
        assert quarterly.settle("2026-Q2", close=True, closed_by="test").invoices[0]["invoice_id"] == "INV-2027-003"
    finally:
        quarterly.close()


def test_periods_are_listed_from_the_first_month_with_data(tmp_path):
    """Data from 15 March 2026 (local), today 10 June: June (running), May, April, March; nothing
    before March, although a year of months is recent."""
    cfg = parse_config({"houses": HOUSES, "community": {"timezone": "Europe/Zurich"},
                        "storage": {"data_dir": str(tmp_path)}, "mqtt": {"enabled": False}}, source="test")
    c = Community.open(cfg, clock=lambda: datetime(2026, 6, 10, tzinfo=timezone.utc))
    try:
        assert [p["period_id"] for p in c.periods()] == ["2026-06"]          # no data: only the running month
        c.store_readings(frame([("M1", "2026-03-15T00:00", 0.0, 0.0), ("M1", "2026-03-20T00:00", 120.0, 0.0),
                                ("M1", "2026-05-01T00:00", 130.0, 0.0), ("M1", "2026-05-03T00:00", 140.0, 0.0)]))
        listed = c.periods()
        assert [p["period_id"] for p in listed] == ["2026-06", "2026-05", "2026-04", "2026-03"]
        assert [p["status"] for p in listed] == ["running", "open", "open", "open"]
        # March from the 15th: 17 local days, the 29th has 23 hours (DST): 17 x 96 - 4 quarter hours
        assert (listed[-1]["intervals"], listed[-1]["missing_intervals"] > 0) == (17 * 96 - 4, True)
    finally:
        c.close()
