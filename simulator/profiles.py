"""Load and PV profiles of simulated houses, vectorised over time (numpy).

Per house, power in kW at each step: base load (500 W by day, 200 W by night, +-20 %), a washing
machine (2 kW for 2 h daily), a dishwasher (1.5 kW for 1.5 h every second day), an optional EV
charger (11 kW) and PV from the sun's position at the site and a random daily clearness. The
meter's counters integrate the net power: import when consumption exceeds production, export
otherwise, as a smart meter at the house connection does.
"""
from __future__ import annotations

from dataclasses import dataclass
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

BASEL = (47.56, 7.59)


@dataclass(frozen=True)
class HouseProfile:
    meter_id: str
    pv_kwp: float = 0.0
    ev: str | None = None          # "day" (8-15 h, ~25 kWh daily) or "night" (22-03 h, ~50 kWh twice a week)


def sun_elevation_sin(ts_utc: pd.DatetimeIndex, lat: float, lon: float) -> np.ndarray:
    doy = ts_utc.dayofyear.to_numpy()
    hours = (ts_utc.hour + ts_utc.minute / 60).to_numpy()
    decl = np.radians(23.44) * np.sin(2 * np.pi * (284 + doy) / 365)
    hour_angle = np.radians(15 * (hours + lon / 15 - 12))
    la = np.radians(lat)
    return np.sin(la) * np.sin(decl) + np.cos(la) * np.cos(decl) * np.cos(hour_angle)


def house_power_kw(p: HouseProfile, ts_utc: pd.DatetimeIndex, tz: ZoneInfo, rng: np.random.Generator,
                   site=BASEL) -> tuple[np.ndarray, np.ndarray]:
    """(consumption_kw, production_kw) per step."""
    local = ts_utc.tz_convert(tz)
    hour = (local.hour + local.minute / 60).to_numpy()
    day = (local.normalize().asi8 // 86_400_000_000_000).astype(np.int64)
    days, day_idx = np.unique(day, return_inverse=True)
    n_days = len(days)
    load = np.where((hour >= 7) & (hour < 22), 0.5, 0.2) * rng.uniform(0.8, 1.2, len(ts_utc))
    wash_start = rng.uniform(9, 18, n_days)[day_idx]
    load += np.where((hour >= wash_start) & (hour < wash_start + 2), 2.0, 0.0)
    dish_start = rng.uniform(19, 21, n_days)[day_idx]
    load += np.where((day % 2 == 0) & (hour >= dish_start) & (hour < dish_start + 1.5), 1.5, 0.0)
    if p.ev == "day":
        ev_start = rng.uniform(8, 12.5, n_days)[day_idx]
        load += np.where((hour >= ev_start) & (hour < ev_start + 25 / 11), 11.0, 0.0)
    elif p.ev == "night":
        weekday = local.weekday.to_numpy()
        night = ((hour >= 22) & np.isin(weekday, (1, 4))) | ((hour < 3) & np.isin(weekday, (2, 5)))
        load += np.where(night & (((hour - 22) % 24) < 50 / 11), 11.0, 0.0)
    pv = np.zeros(len(ts_utc))
    if p.pv_kwp:
        clear = rng.uniform(0.2, 1.0, n_days)[day_idx]
        s = np.clip(sun_elevation_sin(ts_utc, *site), 0, None)
        pv = p.pv_kwp * 0.85 * s ** 1.2 * clear
    return load, pv


def simulate_counters(profiles: list[HouseProfile], start: pd.Timestamp, end: pd.Timestamp, step_s: int,
                      tz: ZoneInfo, seed: int = 1, start_counters: dict | None = None) -> pd.DataFrame:
    """Readings (meter_id, ts, import_kwh, export_kwh, power_in_kw, power_out_kw) every ``step_s``."""
    ts = pd.date_range(start, end, freq=f"{step_s}s", inclusive="left", tz="UTC")
    frames = []
    for k, p in enumerate(profiles):
        rng = np.random.default_rng(seed * 1000 + k)
        load, pv = house_power_kw(p, ts, tz, rng)
        net = load - pv
        e_in = np.cumsum(np.clip(net, 0, None)) * step_s / 3600
        e_out = np.cumsum(np.clip(-net, 0, None)) * step_s / 3600
        c_in, c_out = (start_counters or {}).get(p.meter_id, (1000.0 + 500 * k, 200.0 * k))
        frames.append(pd.DataFrame({
            "meter_id": p.meter_id,
            "ts": ts.astype("datetime64[us, UTC]"),
            "import_kwh": np.round(c_in + e_in, 3),
            "export_kwh": np.round(c_out + e_out, 3),
            "power_in_kw": np.round(np.clip(net, 0, None), 3),
            "power_out_kw": np.round(np.clip(-net, 0, None), 3),
        }))
    return pd.concat(frames, ignore_index=True)


def demo_profiles(houses: dict) -> list[HouseProfile]:
    """Profiles for the configured houses (keyed by MAC); the seed's houses 2 and 3 charge EVs."""
    ev = {"2": "day", "3": "night"}
    return [HouseProfile(mac, h.pv_kwp or 0.0, ev.get(str(h.id))) for mac, h in houses.items()]
