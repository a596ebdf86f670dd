"""The embedded demo: months of simulated history for the configured houses."""
from __future__ import annotations

import pandas as pd

from simulator.profiles import demo_profiles, simulate_counters

HISTORY_MONTHS = 4
STEP_S = 300


def ensure_history(community, now: pd.Timestamp | None = None, seed: int = 1) -> int:
    """Fill the store with simulated readings from the start of the month HISTORY_MONTHS ago
    up to now, unless readings exist; returns how many were added."""
    if community.store.meter_ids():
        return 0
    now = now or pd.Timestamp.now(tz="UTC")
    start = (now.tz_convert(community.tz).normalize().replace(day=1)
             - pd.DateOffset(months=HISTORY_MONTHS)).tz_convert("UTC")
    end = now.floor(f"{STEP_S}s")
    readings = simulate_counters(demo_profiles(community.cfg.houses), start, end, STEP_S,
                                 community.tz, seed=seed)
    result = community.store.write_readings(readings)
    community.recompute_all()
    return result.inserted
