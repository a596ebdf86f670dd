"""Settlement through the community service on real stores (SQLite ledger, DuckDB file)."""
import sqlite3
from datetime import datetime, timedelta, timezone
from decimal import Decimal

import pandas as pd
import pytest

from billing.intervals import RESET
from billing.settlement import IncompleteDataError, SettlementError, parse_period
from community import Community
from config import parse_config
from storage.ledger import LedgerError

TZ = "Europe/Zurich"


@pytest.fixture
def make_community(tmp_path):
    opened = []

    def make(houses, mode="break_even", clock=None, tariffs=None, sub="c"):
        cfg = parse_config({
            "houses": houses,
            "tariffs": tariffs or {"p_pv": 20.0, "p_grid_del": 6.0, "p_grid_con": 30.0},
            "pricing": {"mode": mode},
            "community": {"name": "Test", "timezone": TZ},
            "storage": {"data_dir": str(tmp_path / sub)},
        }, source="test")
        c = Community.open(cfg, clock=clock or (lambda: datetime(2030, 1, 1, tzinfo=timezone.utc)))
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


def frame(rows):
    """rows: (meter_id, local or aware ISO time, import_kwh, export_kwh)"""
    df = pd.DataFrame(rows, columns=["meter_id", "ts", "import_kwh", "export_kwh"])
    ts = pd.to_datetime(df["ts"])
    df["ts"] = (ts.dt.tz_localize(TZ) if ts.dt.tz is None else ts.dt.tz_convert("UTC"))
    df["ts"] = df["ts"].dt.tz_convert("UTC").astype("datetime64[us, UTC]")
    return df


TWO = {"M1": {"id": 1, "name": "One"}, "M2": {"id": 2, "name": "Two", "pv_kwp": 10}}


def test_seed_invoice_example_static(make_community):
    c = make_community({"M1": {"id": "house_1", "name": "House 1"}}, mode="static")
    c.store_readings(frame([("M1", "2026-01-01T00:00", 1000.0, 5000.0),
                            ("M1", "2026-02-01T00:00", 1120.3, 5450.5)]))
    inv = c.settle("2026-01").invoices[0]
    assert inv["house_id"] == "house_1"
    assert inv["energy_exported_kwh"] == Decimal("450.500")
    assert inv["energy_imported_kwh"] == Decimal("120.300")
    assert inv["export_revenue_ct"] == Decimal("9010.00")
    assert inv["import_cost_ct"] == Decimal("3007.50")
    assert inv["net_amount_ct"] == Decimal("6002.50")
    assert inv["net_amount_chf"] == Decimal("60.03")
    assert inv["period_start"] == "2026-01-01T00:00:00+01:00"
    assert inv["period_end"] == "2026-01-31T23:59:59+01:00"
    assert "estimated" in inv["details"]["flags"]       # one reading at each end of the month


def test_break_even_by_hand(make_community):
    # February 2026: 672 h = 2688 intervals. House 1 uses 1 kWh per interval, house 2 exports 2.
    # Every interval: I = 1, E = 2 -> p_con = 6 + 2 * 14 = 34 > 30: capped at 30,
    # p_pv = (1 * 30 + 1 * 6) / 2 = 18 ct/kWh.
    c = make_community(TWO)
    c.store_readings(frame([("M1", "2026-02-01T00:00", 0.0, 0.0), ("M1", "2026-03-01T00:00", 2688.0, 0.0),
                            ("M2", "2026-02-01T00:00", 0.0, 0.0), ("M2", "2026-03-01T00:00", 0.0, 5376.0)]))
    s = c.settle("2026-02")
    one, two = s.invoices
    assert one["import_cost_ct"] == Decimal("80640.00")         # 2688 x 30
    assert two["export_revenue_ct"] == Decimal("96768.00")      # 5376 x 18
    assert one["details"]["avg_p_con"] == 30 and two["details"]["avg_p_pv"] == 18
    assert s.summary.grid_export_kwh == pytest.approx(2688)
    assert s.summary.value_grid_export_ct == pytest.approx(16128)  # 2688 x 6
    assert s.summary.balance_ct == pytest.approx(0, abs=1e-6)


@pytest.mark.parametrize("month,hours", [("2026-03", 743), ("2026-10", 745), ("2026-07", 744)])
def test_dst_months_have_the_right_number_of_intervals(make_community, month, hours):
    p = parse_period(month, c_tz := __import__("zoneinfo").ZoneInfo(TZ))
    assert p.hours == hours
    c = make_community({"M1": {"id": 1, "name": "One"}}, mode="static")
    nxt = (p.end.tz_convert(c_tz)).strftime("%Y-%m-%dT%H:%M")
    c.store_readings(frame([("M1", f"{month}-01T00:00", 0.0, 0.0), ("M1", nxt, hours * 1.0, 0.0)]))
    inv = c.settle(month).invoices[0]
    assert inv["details"]["intervals"] == hours * 4
    assert inv["energy_imported_kwh"] == Decimal(hours).quantize(Decimal("0.001"))


def test_incomplete_data_is_refused_with_houses_and_first_gap(make_community):
    c = make_community(TWO)
    c.store_readings(frame([("M1", "2026-02-01T00:00", 0.0, 0.0), ("M1", "2026-03-01T00:00", 10.0, 0.0),
                            ("M2", "2026-02-01T00:00", 0.0, 0.0), ("M2", "2026-02-10T12:00", 0.0, 5.0)]))
    with pytest.raises(IncompleteDataError) as err:
        c.settle("2026-02")
    msg = str(err.value)
    assert "house 2" in msg and "2026-02-10 12:00" in msg and "house 1" not in msg
    assert "--allow-incomplete" in msg
    s = c.settle("2026-02", allow_incomplete=True)
    assert s.missing == {"2": 2688 - 912}         # covered: 1 Feb 00:00 to 10 Feb 12:00 = 9.5 days
    two = s.invoices[1]
    assert two["details"]["missing_intervals"] == s.missing["2"]
    assert two["energy_exported_kwh"] == Decimal("5.000")
    with pytest.raises(SettlementError):
        c.settle("2026-02", close=True)     # closing also refuses incomplete data


def test_house_active_from_mid_period(make_community):
    houses = {"M1": {"id": 1, "name": "One"}, "M2": {"id": 2, "name": "Two", "active_from": "2026-02-15"}}
    c = make_community(houses, mode="static")
    c.store_readings(frame([("M1", "2026-02-01T00:00", 0.0, 0.0), ("M1", "2026-03-01T00:00", 10.0, 0.0),
                            ("M2", "2026-02-15T00:00", 0.0, 0.0), ("M2", "2026-03-01T00:00", 4.0, 0.0)]))
    s = c.settle("2026-02")
    assert not s.missing and s.invoices[1]["details"]["intervals"] == 14 * 96


def test_close_issues_gapless_numbers_and_freezes_figures(make_community):
    c = make_community(TWO, clock=lambda: datetime(2026, 4, 2, tzinfo=timezone.utc))
    c.store_readings(frame([("M1", "2026-02-01T00:00", 0.0, 0.0), ("M1", "2026-04-01T00:00", 20.0, 0.0),
                            ("M2", "2026-02-01T00:00", 0.0, 0.0), ("M2", "2026-04-01T00:00", 0.0, 30.0)]))
    feb = c.settle("2026-02", close=True)
    assert feb.status == "closed"
    assert [i["invoice_id"] for i in feb.invoices] == ["INV-2026-001", "INV-2026-002"]
    mar = c.settle("2026-03", close=True)
    assert [i["invoice_id"] for i in mar.invoices] == ["INV-2026-003", "INV-2026-004"]
    before = c.settle("2026-02").invoices
    # new data for February arrives later: the issued invoices do not change
    c.store_readings(frame([("M1", "2026-02-14T00:00", 15.0, 0.0)]))
    after = c.settle("2026-02").invoices
    assert after == before and after[0]["energy_imported_kwh"] == str(feb.invoices[0]["energy_imported_kwh"])
    with pytest.raises(LedgerError, match="already closed"):
        c.ledger.close_period("2026-02", "", "", [], 2026, "x")
    with pytest.raises(SettlementError, match="already closed .* by cli"):
        c.settle("2026-02", close=True)
    con = sqlite3.connect(c.ledger.path)
    with pytest.raises(sqlite3.DatabaseError, match="immutable"):
        con.execute("UPDATE invoices SET net_amount_ct = '0' WHERE invoice_id = 'INV-2026-001'")
    with pytest.raises(sqlite3.DatabaseError, match="never deleted"):
        con.execute("DELETE FROM invoices")
    con.close()


def test_cannot_close_a_running_period(make_community):
    c = make_community(TWO, clock=lambda: datetime(2026, 2, 20, tzinfo=timezone.utc))
    with pytest.raises(SettlementError, match="not over yet"):
        c.settle("2026-02", close=True)


def test_bad_period_names_the_format():
    import zoneinfo
    for bad in ("2026-13", "2026/01", "26-01", ""):
        with pytest.raises(SettlementError, match="YYYY-MM"):
            parse_period(bad, zoneinfo.ZoneInfo(TZ))


def test_incremental_updates_match_a_full_recompute(make_community):
    rows = []
    counter = 0.0
    for k in range(0, 24 * 60, 7):            # a reading every 7 minutes for a day
        counter += 0.05 + (k % 97) / 1000
        rows.append(("M1", (pd.Timestamp("2026-05-04T00:00") + pd.Timedelta(minutes=k)).isoformat(), counter, None))
    full = frame(rows)
    a = make_community({"M1": {"id": 1, "name": "One"}}, sub="a")
    b = make_community({"M1": {"id": 1, "name": "One"}}, sub="b")
    a.store_readings(full)
    shuffled = full.sample(frac=1.0, random_state=3)
    for chunk in range(0, len(shuffled), 17):       # out-of-order batches
        b.store_readings(shuffled.iloc[chunk:chunk + 17])
    day = (pd.Timestamp("2026-05-03T22:00Z"), pd.Timestamp("2026-05-05T00:00Z"))
    ia, ib = a.store.read_intervals(*day), b.store.read_intervals(*day)
    assert len(ia) > 90
    pd.testing.assert_frame_equal(ia, ib, check_exact=False, rtol=1e-12)


def test_live_updates_match_a_full_recompute_and_leave_the_running_interval_alone(make_community):
    """Live ingest (in-order batches, ``appended=True``, as the pipeline sends them) against one
    recompute of everything: a 10-s meter with a counter reset and a 3-hour silence (its context
    then lies beyond the store's near margin), and a meter that reports every 40 minutes."""
    t0 = pd.Timestamp("2026-05-04T06:00Z")
    rows, c1, c2 = [], 100.0, 50.0
    for s in range(0, 6 * 3600, 10):
        if 2 * 3600 <= s < 5 * 3600:                 # silent for three hours
            continue
        c1 = 3.0 if s == 90 * 60 else c1 + 0.001 * (1 + s % 7)     # replaced meter at 07:30
        rows.append(("M1", t0 + pd.Timedelta(seconds=s), c1, None))
        if s % 2400 == 0:
            c2 += 0.6
            rows.append(("M2", t0 + pd.Timedelta(seconds=s), c2, None))
    full = frame(rows).sort_values("ts", kind="stable")
    houses = {"M1": {"id": 1, "name": "One"}, "M2": {"id": 2, "name": "Two"}}
    live, once = make_community(houses, sub="live"), make_community(houses, sub="once")
    once.store_readings(full)

    asked = []                                       # meters whose readings each update reads
    read = live.store.reading_windows
    live.store.reading_windows = lambda spans, **kw: (asked.append(set(spans)), read(spans, **kw))[1]
    for k in range(0, len(full), 6):                 # a minute of the 10-s meter per update
        batch = full.iloc[k:k + 6]
        live.store.write_readings(batch)
        spans = batch.groupby("meter_id")["ts"].agg(["min", "max"])
        live.update_intervals_many({m: (r["min"], r["max"]) for m, r in spans.iterrows()}, appended=True)

    day = (pd.Timestamp("2026-05-04T05:00Z"), pd.Timestamp("2026-05-04T13:00Z"))
    a, b = live.store.read_intervals(*day), once.store.read_intervals(*day)
    assert len(b) > 20 and (b["flags"] & RESET).any()
    pd.testing.assert_frame_equal(a, b, check_exact=False, rtol=1e-12)
    # 6 h of 10-s readings in 1-minute updates are ~300 updates; M1's intervals are recomputed
    # about once per quarter hour (when a reading passes an interval's end), not on every update
    m1_reads = sum("M1" in s for s in asked)
    assert 10 <= m1_reads <= 20, m1_reads


def test_reset_flag_reaches_the_invoice(make_community):
    c = make_community({"M1": {"id": 1, "name": "One"}}, mode="static")
    c.store_readings(frame([("M1", "2026-02-01T00:00", 500.0, 0.0), ("M1", "2026-02-10T00:00", 600.0, 0.0),
                            ("M1", "2026-02-10T00:10", 1.0, 0.0), ("M1", "2026-03-01T00:00", 51.0, 0.0)]))
    inv = c.settle("2026-02").invoices[0]
    assert inv["energy_imported_kwh"] == Decimal("150.000")
    assert "reset" in inv["details"]["flags"]
    iv = c.store.read_intervals(pd.Timestamp("2026-02-09T23:00Z"), pd.Timestamp("2026-02-09T23:15Z"))
    assert iv["flags"].iloc[0] & RESET


def test_tariff_versions_price_their_own_intervals_and_never_reach_into_closed_periods(make_community):
    from pricing.tariffs import Tariff, TariffConflict
    c = make_community({"M1": {"id": 1, "name": "One"}}, mode="static",
                       clock=lambda: datetime(2026, 4, 2, tzinfo=timezone.utc))
    c.store_readings(frame([("M1", "2026-02-01T00:00", 0.0, 0.0), ("M1", "2026-04-01T00:00", 2830.0, 0.0)]))
    march = datetime.fromisoformat("2026-03-01T00:00:00+01:00")
    c.add_tariff(Tariff(20, 6, 80, "static", march), "test")       # p_con (20 + 80) / 2 = 50
    feb, mar = c.settle("2026-02").invoices[0], c.settle("2026-03").invoices[0]
    # 2830 kWh over 1415 h (672 in February, 743 in March): 2 kWh per hour
    assert feb["energy_imported_kwh"] == Decimal("1344.000")
    assert feb["import_cost_ct"] == Decimal("33600.00")             # 1344 x 25
    assert mar["import_cost_ct"] == Decimal(1486 * 50).quantize(Decimal("0.01"))   # 743 h x 2 kWh x 50
    c.settle("2026-02", close=True)
    with pytest.raises(SettlementError, match="closed period"):
        c.add_tariff(Tariff(20, 6, 30, "static", datetime.fromisoformat("2026-02-15T00:00:00+01:00")), "test")
    # at the closed period's end: not refused as closed, only as a second version at that time
    with pytest.raises(TariffConflict, match="exists already"):
        c.add_tariff(Tariff(20, 6, 30, "static", march), "test")
    c.add_tariff(Tariff(20, 6, 30, "static", march + timedelta(minutes=15)), "test")


def test_intervals_before_active_from_are_not_billed(make_community):
    houses = {"M1": {"id": 1, "name": "One"}, "M2": {"id": 2, "name": "Two", "active_from": "2026-02-15"}}
    c = make_community(houses, mode="static")
    # house 2's meter already ran before the house joined: those 14 days are not its bill
    c.store_readings(frame([("M1", "2026-02-01T00:00", 0.0, 0.0), ("M1", "2026-03-01T00:00", 10.0, 0.0),
                            ("M2", "2026-02-01T00:00", 0.0, 0.0), ("M2", "2026-02-15T00:00", 100.0, 0.0),
                            ("M2", "2026-03-01T00:00", 104.0, 0.0)]))
    s = c.settle("2026-02")
    two = s.invoices[1]
    assert two["energy_imported_kwh"] == Decimal("4.000")
    assert two["details"]["intervals"] == 14 * 96
    assert s.summary.total_consumption_kwh == pytest.approx(14.0)


def test_a_house_that_left_is_still_settled_for_its_time(make_community, tmp_path):
    c = make_community(TWO, mode="static", clock=lambda: datetime(2026, 3, 2, tzinfo=timezone.utc), sub="leave")
    c.store_readings(frame([("M1", "2026-02-01T00:00", 0.0, 0.0), ("M1", "2026-03-01T00:00", 100.0, 0.0),
                            ("M2", "2026-02-01T00:00", 0.0, 0.0), ("M2", "2026-03-01T00:00", 0.0, 50.0)]))
    before = [(i["house_id"], i["import_cost_ct"], i["export_revenue_ct"]) for i in c.settle("2026-02").invoices]
    # house 2 leaves the configuration on 2 March: February still has both houses
    cfg = c.cfg.model_copy(deep=True)
    cfg.houses.pop("M2")
    c.ledger.sync_from_config(cfg)
    c.reload_registry()
    after = [(i["house_id"], i["import_cost_ct"], i["export_revenue_ct"]) for i in c.settle("2026-02").invoices]
    assert after == before and len(after) == 2
    assert [h.house_id for h in c.houses()] == ["1"]


def test_a_period_with_no_house_yet(make_community):
    c = make_community({"M1": {"id": 1, "name": "One", "active_from": "2027-01-01"}})
    s = c.settle("2026-02")
    assert s.invoices == [] and not s.missing


def test_a_quarantined_reading_is_kept_once(make_community):
    c = make_community({"M1": {"id": 1, "name": "One"}})
    c.store_readings(frame([("M1", "2026-02-01T00:00", 10.0, 0.0), ("M1", "2026-02-01T00:05", 900.0, 0.0),
                            ("M1", "2026-02-01T00:10", 10.1, 0.0)]))
    for minute in (20, 35, 50):
        c.store_readings(frame([("M1", f"2026-02-01T00:{minute}", 10.1 + minute / 1000, 0.0)]))
    q = c.store.read_quarantine("M1")
    assert len(q) == 1 and "implied power" in q["reason"].iloc[0]


def test_a_counter_missing_for_a_while_is_not_zero_energy(make_community):
    c = make_community({"M1": {"id": 1, "name": "One"}})
    base = pd.Timestamp("2026-02-01T00:00Z")
    rows = []
    for k in range(19):                       # every 5 min; Eo missing from 00:25 to 01:15
        eo = None if 5 <= k <= 15 else 0.02 * k
        rows.append(("M1", (base + pd.Timedelta(minutes=5 * k)).isoformat(), 1.0 + 0.01 * k, eo))
    for r in rows:                            # live: one reading at a time
        c.store_readings(frame([r]))
    iv = c.store.read_intervals(base, base + pd.Timedelta(hours=2))
    # while Eo is missing its intervals stay open (settlement reports them missing), never zero
    assert (iv["delta_eo_kwh"] > 0).all() and len(iv) < 6
    c.recompute_all()                         # with the whole series: interpolated across the gap
    iv = c.store.read_intervals(base, base + pd.Timedelta(hours=2))
    assert len(iv) == 6 and iv["delta_eo_kwh"].sum() == pytest.approx(0.36)      # 00:00..01:30


def test_a_dip_first_taken_as_a_reset_is_corrected_when_the_next_reading_shows_a_glitch(make_community):
    c = make_community({"M1": {"id": 1, "name": "One"}})
    rows = [("M1", "2026-02-01T00:00", 10.0, 0.0), ("M1", "2026-02-01T00:10", 10.2, 0.0),
            ("M1", "2026-02-01T00:20", 0.5, 0.0), ("M1", "2026-02-01T00:30", 10.4, 0.0),
            ("M1", "2026-02-01T00:45", 10.7, 0.0)]
    for r in rows:                           # one at a time: the dip is a reset until 00:30 arrives
        c.store_readings(frame([r]))
    live = c.store.read_intervals(pd.Timestamp("2026-01-31T23:00Z"), pd.Timestamp("2026-01-31T23:45Z"))
    c.recompute_all()
    full = c.store.read_intervals(pd.Timestamp("2026-01-31T23:00Z"), pd.Timestamp("2026-01-31T23:45Z"))
    pd.testing.assert_frame_equal(live, full)
    assert live["delta_ei_kwh"].sum() == pytest.approx(0.7) and not (live["flags"] & RESET).any()
