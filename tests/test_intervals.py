"""Intervals engine: interpolation, flags, quarantine (unit level, plain data)."""
import numpy as np
import pandas as pd
import pytest

from billing.intervals import ESTIMATED, QUARANTINED, RESET, boundaries, meter_intervals

T0 = pd.Timestamp("2026-01-10T00:00:00Z")


def readings(rows):
    """rows: (minutes after T0, import_kwh, export_kwh)"""
    return pd.DataFrame({
        "ts": [T0 + pd.Timedelta(minutes=m) for m, _, _ in rows],
        "import_kwh": [i for _, i, _ in rows],
        "export_kwh": [e for _, _, e in rows],
    })


def bounds(n, start_min=0):
    return boundaries(T0 + pd.Timedelta(minutes=start_min), T0 + pd.Timedelta(minutes=start_min + 15 * n), 900)


def test_readings_on_boundaries_are_used_as_is():
    r = meter_intervals("m", readings([(0, 10.0, 1.0), (15, 10.5, 1.0), (30, 11.5, 1.25)]), bounds(2))
    assert list(r.delta_ei_kwh) == [0.5, 1.0]
    assert list(r.delta_eo_kwh) == [0.0, 0.25]
    assert list(r.flags) == [0, 0]


def test_linear_interpolation_across_irregular_readings():
    # counter 0 at -5 min, 2 at +10 min, 3 at +40 min: at 0 -> 2/15*5 = 0.6667; at 15 -> 2 + 1/30*5
    r = meter_intervals("m", readings([(-5, 0.0, None), (10, 2.0, None), (40, 3.0, None)]), bounds(2))
    at0, at15, at30 = 2 / 3, 2 + 5 / 30, 2 + 20 / 30
    assert r.delta_ei_kwh == pytest.approx([at15 - at0, at30 - at15])
    assert list(r.delta_eo_kwh) == [0.0, 0.0]     # export never reported: no PV, counts 0
    assert not r.flags.any()


def test_gap_longer_than_an_hour_is_estimated_and_spread_linearly():
    r = meter_intervals("m", readings([(0, 0.0, 0.0), (120, 8.0, 0.0), (135, 9.0, 0.0)]), bounds(9))
    assert r.delta_ei_kwh[:8] == pytest.approx([1.0] * 8)
    assert all(f & ESTIMATED for f in r.flags[:8])
    assert r.flags[8] == 0
    assert r.valid.all()


def test_no_reading_beyond_a_boundary_means_no_interval():
    r = meter_intervals("m", readings([(5, 1.0, 0.0), (40, 2.0, 0.0)]), bounds(3))
    assert list(r.valid) == [False, True, False]
    assert np.isnan(r.delta_ei_kwh[0]) and np.isnan(r.delta_ei_kwh[2])


def test_counter_reset_never_gives_negative_energy_and_is_flagged():
    # meter replaced between minute 20 and 25: new counter starts near 0
    r = meter_intervals("m", readings([(0, 100.0, 0), (10, 101.0, 0), (20, 102.0, 0), (25, 0.5, 0),
                                       (45, 2.5, 0), (60, 4.0, 0)]), bounds(4))
    assert (r.delta_ei_kwh >= 0).all()
    assert r.flags[1] & RESET and not r.flags[0] & RESET and not r.flags[3] & RESET
    # interval 15-30: 101.5 -> 102 before the reset (0.5), the gap counts 0, then 0.5 -> 1.0 (0.5)
    assert r.delta_ei_kwh[1] == pytest.approx(1.0)
    assert r.delta_ei_kwh[2] == pytest.approx(1.5) and r.delta_ei_kwh[3] == pytest.approx(1.5)
    assert r.quarantine.empty


def test_backwards_glitch_is_quarantined_not_a_reset():
    r = meter_intervals("m", readings([(0, 100.0, 0), (5, 50.0, 0), (15, 101.0, 0)]), bounds(1))
    assert r.delta_ei_kwh[0] == pytest.approx(1.0)
    assert r.flags[0] & QUARANTINED and not r.flags[0] & RESET
    assert len(r.quarantine) == 1
    assert "went backwards" in r.quarantine["reason"].iloc[0]


def test_implausible_power_is_quarantined_with_reason():
    # +500 kWh in 5 minutes = 6000 kW, then back on track
    r = meter_intervals("m", readings([(0, 100.0, 0), (5, 600.0, 0), (15, 100.5, 0)]), bounds(1), limit_kw=100)
    assert r.delta_ei_kwh[0] == pytest.approx(0.5)
    assert len(r.quarantine) == 1
    reason = r.quarantine["reason"].iloc[0]
    assert "6000.0 kW" in reason and "100 kW" in reason and reason.startswith("Ei")


def test_persistent_jump_is_treated_as_a_counter_change():
    r = meter_intervals("m", readings([(0, 100.0, 0), (10, 101.0, 0), (20, 9000.0, 0), (30, 9001.0, 0),
                                       (45, 9002.0, 0)]), bounds(3))
    assert r.quarantine.empty
    assert r.flags[1] & RESET
    assert (r.delta_ei_kwh < 10).all()


def test_power_limit_is_per_meter():
    rows = [(0, 0.0, 0), (15, 30.0, 0), (30, 60.0, 0)]      # a steady 120 kW
    strict = meter_intervals("m", readings(rows), bounds(2), limit_kw=100)
    # every reading after the first is implausible for a 100 kW meter: kept aside, nothing billed,
    # and the intervals are missing (so settlement refuses instead of billing guesses)
    assert len(strict.quarantine) == 2 and not strict.valid.any()
    loose = meter_intervals("m", readings(rows), bounds(2), limit_kw=200)
    assert loose.quarantine.empty and list(loose.delta_ei_kwh) == [30.0, 30.0]
