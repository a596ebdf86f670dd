"""Load and PV profiles of simulated houses, vectorised over time (numpy).

Per house, power in kW at each step: base load (500 W by day 7-22 h, 200 W by night, +-20 %), a
washing machine (2 kW for 2 h daily), a dishwasher (1.5 kW for 1.5 h every second day), an optional
EV charger (11 kW: "day" charges about 25 kWh between 8 and 15 h daily, "night" about 50 kWh
between 22 and 03 h twice a week) and PV from the sun's position at the site (Basel) and the
season, with a random daily clearness. Each day's random choices come from (seed, house, day), so
a profile is the same whichever range it is computed for. The meter integrates the net power:
import when consumption exceeds production, export otherwise, as a meter at the house connection.
"""
from __future__ import annotations

import zlib
from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

BASEL = (47.56, 7.59)


@dataclass(frozen=True)
class HouseProfile:
    meter_id: str
    index: int                     # stable per house: part of the random seed
    pv_kwp: float = 0.0
    ev: str | None = None          # "day" | "night" | None


def sun_elevation_sin(ts_utc: pd.DatetimeIndex, lat: float, lon: float) -> np.ndarray:
    """Sine of the sun's elevation (declination and hour angle; good to a degree or two)."""
    doy = ts_utc.day_of_year.to_numpy()
    hours = (ts_utc.hour + ts_utc.minute / 60 + ts_utc.second / 3600).to_numpy()
    decl = np.radians(23.44) * np.sin(2 * np.pi * (284 + doy) / 365)
    hour_angle = np.radians(15 * (hours + lon / 15 - 12))
    la = np.radians(lat)
    return np.sin(la) * np.sin(decl) + np.cos(la) * np.cos(decl) * np.cos(hour_angle)


def _day_params(seed: int, house: int, days: np.ndarray) -> np.ndarray:
    """Per day: wash start, dish start, EV start (h), clearness (0.2-1)."""
    out = np.empty((len(days), 4))
    for k, d in enumerate(days):
        rng = np.random.default_rng([seed, house, int(d) + 100_000])
        out[k] = [rng.uniform(9, 18), rng.uniform(19, 21), rng.uniform(8, 12.5), rng.uniform(0.2, 1.0)]
    return out


def house_power_kw(p: HouseProfile, ts_utc: pd.DatetimeIndex, tz: ZoneInfo, seed: int = 1,
                   offset_months: int = 0, site=BASEL) -> tuple[np.ndarray, np.ndarray]:
    """(consumption_kw, production_kw) at each time; ``offset_months`` shifts the season and the
    time of day the profile follows (the demo can show summer in winter)."""
    if len(ts_utc) == 0:
        return np.zeros(0), np.zeros(0)
    prof_ts = ts_utc + pd.DateOffset(months=offset_months) if offset_months else ts_utc
    local = prof_ts.tz_convert(tz)
    hour = (local.hour + local.minute / 60 + local.second / 3600).to_numpy()
    day = (local.normalize().tz_localize(None).asi8 // 86_400_000_000_000).astype(np.int64)
    days, idx = np.unique(day, return_inverse=True)
    params = _day_params(seed, p.index, days)[idx]
    wash, dish, ev_start, clear = params.T
    noise = np.random.default_rng([seed, p.index, int(ts_utc[0].timestamp())]).uniform(0.8, 1.2, len(ts_utc))
    load = np.where((hour >= 7) & (hour < 22), 0.5, 0.2) * noise
    load += np.where((hour >= wash) & (hour < wash + 2), 2.0, 0.0)
    load += np.where((day % 2 == 0) & (hour >= dish) & (hour < dish + 1.5), 1.5, 0.0)
    if p.ev == "day":
        load += np.where((hour >= ev_start) & (hour < ev_start + 25 / 11), 11.0, 0.0)
    elif p.ev == "night":
        weekday = local.day_of_week.to_numpy()
        evening = (hour >= 22) & np.isin(weekday, (1, 4))               # Tuesday and Friday nights
        morning = (hour < 3) & np.isin(weekday, (2, 5))
        since_22 = np.where(evening, hour - 22, hour + 2)
        load += np.where((evening | morning) & (since_22 < 50 / 11), 11.0, 0.0)
    pv = np.zeros(len(ts_utc))
    if p.pv_kwp:
        s = np.clip(sun_elevation_sin(prof_ts, *site), 0, None)
        pv = p.pv_kwp * 0.85 * s ** 1.2 * clear
    return load, pv


def integrate(p: HouseProfile, start: pd.Timestamp, end: pd.Timestamp, step_s: int, tz: ZoneInfo,
              seed: int = 1, offset_months: int = 0):
    """Per step in [start, end): times, import and export energy (kWh) and net power (kW)."""
    ts = pd.date_range(start, end, freq=f"{step_s}s", inclusive="left")
    load, pv = house_power_kw(p, ts, tz, seed, offset_months)
    net = load - pv
    e_in = np.clip(net, 0, None) * step_s / 3600
    e_out = np.clip(-net, 0, None) * step_s / 3600
    return ts, e_in, e_out, net


def simulate_counters(profiles: list[HouseProfile], start: pd.Timestamp, end: pd.Timestamp, step_s: int,
                      tz: ZoneInfo, seed: int = 1, offset_months: int = 0,
                      start_counters: dict | None = None) -> pd.DataFrame:
    """Readings (meter_id, ts, import_kwh, export_kwh, power_in_kw, power_out_kw) every ``step_s``:
    each reading's counters include the energy of the step before it."""
    frames = []
    for p in profiles:
        ts, e_in, e_out, net = integrate(p, start, end, step_s, tz, seed, offset_months)
        c_in, c_out = (start_counters or {}).get(p.meter_id, base_counters(p))
        frames.append(pd.DataFrame({
            "meter_id": p.meter_id,
            "ts": (ts + pd.Timedelta(seconds=step_s)).astype("datetime64[us, UTC]"),
            "import_kwh": np.round(c_in + np.cumsum(e_in), 3),
            "export_kwh": np.round(c_out + np.cumsum(e_out), 3),
            "power_in_kw": np.round(np.clip(net, 0, None), 3),
            "power_out_kw": np.round(np.clip(-net, 0, None), 3),
        }))
    return pd.concat(frames, ignore_index=True)


def base_counters(p: HouseProfile) -> tuple[float, float]:
    """Believable counter values for a meter that has been running for a while."""
    return 1000.0 + 750.0 * p.index, (300.0 * p.index if p.pv_kwp else 0.0)


def profiles_for(houses: dict, only_simulated: bool = False) -> list[HouseProfile]:
    """Profiles for configured houses (keyed by MAC); the seed's houses 2 and 3 charge EVs."""
    ev = {"2": "day", "3": "night"}
    out = []
    for mac, h in houses.items():
        if only_simulated and h.type != "simulated":
            continue
        idx = int(h.id) if str(h.id).isdigit() else zlib.crc32(str(h.id).encode()) % 1000
        out.append(HouseProfile(mac, idx, h.pv_kwp or 0.0, ev.get(str(h.id))))
    return out
