"""Pricing: the seed's examples, the three modes, and properties that must hold in every interval."""
from datetime import datetime, timezone

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from pricing.engine import MIN_KWH, grid_flows, interval_prices, tariffs_in_force
from pricing.tariffs import Tariff, TariffError, tariff_errors


def prices(I, E, p_pv=20.0, p_grid_del=6.0, p_grid_con=30.0, mode="break_even"):
    t = tariffs_in_force([Tariff(p_pv, p_grid_del, p_grid_con, mode)], np.zeros(len(np.atleast_1d(I))))
    return interval_prices(np.atleast_1d(I), np.atleast_1d(E), t)


def profit_ct(I, E, p_con, p_pv, p_grid_del=6.0, p_grid_con=30.0):
    gi, ge = grid_flows(I, E)
    return I * p_con + ge * p_grid_del - E * p_pv - gi * p_grid_con


def test_seed_worked_example_surplus_cap():
    # section 14.5: E = 100, I = 20 -> p_con capped at 30, p_pv 10.8, profit 0
    p_con, p_pv = prices(20.0, 100.0)
    assert p_con[0] == pytest.approx(30.0)
    assert p_pv[0] == pytest.approx(10.8)
    assert profit_ct(20.0, 100.0, p_con[0], p_pv[0]) == pytest.approx(0.0, abs=1e-9)
    # the seed's verification lines
    assert 100 * p_pv[0] == pytest.approx(1080)
    assert 20 * p_con[0] + 80 * 6 == pytest.approx(1080)


def test_break_even_deficit_and_moderate_surplus():
    # deficit: I = 100, E = 50 -> p_con = 30 + 0.5 * (20 - 30) = 25, p_pv = policy
    p_con, p_pv = prices(100.0, 50.0)
    assert (p_con[0], p_pv[0]) == pytest.approx((25.0, 20.0))
    # moderate surplus: I = 100, E = 110 -> p_con = 6 + 1.1 * 14 = 21.4 (below the cap)
    p_con, p_pv = prices(100.0, 110.0)
    assert (p_con[0], p_pv[0]) == pytest.approx((21.4, 20.0))
    # balanced: p_con = p_pv
    p_con, p_pv = prices(40.0, 40.0)
    assert (p_con[0], p_pv[0]) == pytest.approx((20.0, 20.0))
    # nothing local: p_con = grid price
    p_con, _ = prices(40.0, 0.0)
    assert p_con[0] == pytest.approx(30.0)


def test_break_even_nobody_buys_pays_producers_grid_price():
    # I = 0: all production goes to the grid at p_grid_del; the community makes no loss
    p_con, p_pv = prices(0.0, 12.0)
    assert p_pv[0] == pytest.approx(6.0)
    assert profit_ct(0.0, 12.0, p_con[0], p_pv[0]) == pytest.approx(0.0)
    p_con, p_pv = prices(0.0, 0.0)
    assert np.isfinite(p_con[0]) and np.isfinite(p_pv[0])


def test_static_mode_is_seed_section_12():
    p_con, p_pv = prices([5.0, 0.0], [100.0, 3.0], mode="static")
    assert list(p_con) == [25.0, 25.0]          # (20 + 30) / 2
    assert list(p_pv) == [20.0, 20.0]


def test_zev_proportional():
    # I = 100, E = 40: local share 40 at 20 ct, 60 at grid 30 ct -> p_con = 26; producers get 20
    p_con, p_pv = prices(100.0, 40.0, mode="zev_proportional")
    assert (p_con[0], p_pv[0]) == pytest.approx((26.0, 20.0))
    # I = 20, E = 100: consumers pay 20; producers get (20*20 + 80*6)/100 = 8.8
    p_con, p_pv = prices(20.0, 100.0, mode="zev_proportional")
    assert (p_con[0], p_pv[0]) == pytest.approx((20.0, 8.8))


energy = st.floats(min_value=0.0, max_value=1e4, allow_nan=False, allow_infinity=False)


@st.composite
def tariff_values(draw):
    a, b, c = sorted(draw(st.lists(st.floats(0, 200, allow_nan=False), min_size=3, max_size=3)))
    return a, b, c   # p_grid_del <= p_pv <= p_grid_con


@settings(deadline=None)
@given(st.lists(st.tuples(energy, energy), min_size=1, max_size=50), tariff_values(),
       st.sampled_from(["break_even", "zev_proportional"]))
def test_profit_is_zero_in_every_interval_with_consumption(flows, tv, mode):
    I = np.array([f[0] for f in flows])
    E = np.array([f[1] for f in flows])
    p_grid_del, p_pv_policy, p_grid_con = tv
    p_con, p_pv = prices(I, E, p_pv_policy, p_grid_del, p_grid_con, mode)
    profit = profit_ct(I, E, p_con, p_pv, p_grid_del, p_grid_con)
    buyers = I > MIN_KWH
    assert np.all(np.abs(profit[buyers]) <= 1e-6)
    # never a loss when nobody buys (I at most 1 mWh): at most the dust's grid margin is kept
    assert np.all(profit[~buyers] >= -1e-6)
    assert np.all(profit[~buyers] <= MIN_KWH * (p_grid_con - p_grid_del) + 1e-6)


@settings(deadline=None)
@given(st.lists(st.tuples(energy, energy), min_size=1, max_size=50), tariff_values(),
       st.sampled_from(["break_even", "static", "zev_proportional"]))
def test_prices_stay_between_grid_prices(flows, tv, mode):
    I = np.array([f[0] for f in flows])
    E = np.array([f[1] for f in flows])
    p_grid_del, p_pv_policy, p_grid_con = tv
    p_con, p_pv = prices(I, E, p_pv_policy, p_grid_del, p_grid_con, mode)
    tol = 1e-9 * (1 + p_grid_con)
    assert np.all(p_con <= p_grid_con + tol)               # never dearer than the grid
    assert np.all(p_pv >= p_grid_del - tol)                # producers never get less than export
    assert np.all(p_pv <= p_pv_policy + tol)


def test_tariff_validation_names_each_field():
    errs = tariff_errors({"p_pv": "x", "p_grid_del": float("nan"), "p_grid_con": -1})
    assert {e.field for e in errs} == {"p_pv", "p_grid_del", "p_grid_con"}
    assert "must be a number" in str(errs[0])
    errs = tariff_errors({"p_pv": 35, "p_grid_del": 6, "p_grid_con": 30})
    assert [e.field for e in errs] == ["p_pv"] and "must not exceed p_grid_con" in errs[0].message
    errs = tariff_errors({"p_pv": 5, "p_grid_del": 6, "p_grid_con": 30})
    assert [e.field for e in errs] == ["p_grid_del"]
    errs = tariff_errors({"p_pv": 20, "p_grid_del": 6, "p_grid_con": 30, "mode": "cheap"})
    assert [e.field for e in errs] == ["mode"]
    assert tariff_errors({"p_pv": 20, "p_grid_del": 6, "p_grid_con": 30}) == []
    with pytest.raises(TariffError, match="p_grid_con"):
        Tariff(20, 6, float("inf"))
    with pytest.raises(TariffError, match="effective_from"):
        Tariff(20, 6, 30, effective_from=datetime(2026, 1, 1))


def test_tariff_versions_apply_from_their_effective_time():
    v1 = Tariff(20, 6, 30, "static", datetime(2026, 1, 1, tzinfo=timezone.utc))
    v2 = Tariff(10, 5, 40, "static", datetime(2026, 2, 1, tzinfo=timezone.utc))
    starts = np.array([datetime(2026, 1, 31, 23, 45, tzinfo=timezone.utc).timestamp(),
                       datetime(2026, 2, 1, tzinfo=timezone.utc).timestamp()])
    t = tariffs_in_force([v2, v1], starts)
    assert list(t.p_pv) == [20, 10] and list(t.version) == [0, 1]
    with pytest.raises(ValueError, match="no tariff version is in force before"):
        tariffs_in_force([v2], starts)
