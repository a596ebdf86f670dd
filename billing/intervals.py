"""The intervals engine: cumulative counters -> per-house energy per interval.

For each meter and each counter (``import_kwh`` = Ei, ``export_kwh`` = Eo):

1. **Cleaning** (``clean_counter``), reading by reading against the last accepted value:
   * a value below the last accepted one that is followed by a value at or above it again is a
     glitch: *quarantined* (kept aside with its reason, not used);
   * a value below the last accepted one that the next reading confirms is a counter *reset*
     (meter replaced or wrapped): accepted, and the gap before it counts as zero energy, flagged
     ``RESET`` for review, so a delta is never negative;
   * an increase implying more power than the meter's limit (default 100 kW) is *quarantined*,
     unless the next reading continues from it at a plausible rate: then the counter jumped
     (meter exchanged) and it is treated like a reset.
2. **Interpolation** at the interval boundaries (quarter hours, UTC-aligned, which are also local
   quarter hours in every zone with whole-quarter-hour offsets): linear between the accepted readings
   on either side; a reading exactly on a boundary is used as is. A boundary whose neighbouring
   readings are more than one hour apart is ``ESTIMATED``.
3. **Deltas**: counter at the end minus counter at the start of each interval; summed over the
   house's meters. An interval is stored only when every meter of the house covers both of its
   boundaries; an interval missing for an active house is *incomplete* (see billing.settlement).

A counter that a meter has never reported (a house without export, say) contributes 0; one it
reports but that is missing around an interval leaves the interval open (incomplete).
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import pandas as pd

ESTIMATED = 1     # a boundary was interpolated across readings more than 1 h apart
RESET = 2         # a counter reset or jump lies in the interval: energy unknown there, review it
QUARANTINED = 4   # a reading in the interval was quarantined (implausible) and not used
FLAG_NAMES = {ESTIMATED: "estimated", RESET: "reset", QUARANTINED: "quarantined"}

ESTIMATE_GAP_S = 3600.0
_EPS = 1e-9


def flag_names(flags: int) -> list[str]:
    return [name for bit, name in FLAG_NAMES.items() if flags & bit]


@dataclass
class CleanCounter:
    accepted: np.ndarray          # bool mask over the input readings
    breaks: np.ndarray            # bool mask: a discontinuity lies between the previous accepted reading and this one
    reasons: list[str | None]     # reason per quarantined reading


def counter_step(d_kwh: float, dt_s: float, limit_kw: float) -> str:
    """The plausibility rule for one step of a cumulative counter: ``"ok"``, ``"down"`` (it went
    backwards) or ``"spike"`` (the rise implies more power than ``limit_kw``)."""
    if d_kwh < -_EPS:
        return "down"
    if d_kwh * 3600.0 / max(dt_s, 1e-6) > limit_kw:
        return "spike"
    return "ok"


def clean_counter(t_s: np.ndarray, v: np.ndarray, limit_kw: float, label: str = "counter") -> CleanCounter:
    """Classify one counter's readings (sorted by time; NaN = not reported) as described above.
    The last reading has no successor to confirm it: a dip there counts as a reset, a spike is
    quarantined."""
    n = len(t_s)
    accepted = np.zeros(n, dtype=bool)
    breaks = np.zeros(n, dtype=bool)
    reasons: list[str | None] = [None] * n
    present = np.flatnonzero(~np.isnan(v))
    # fast path: every step is ok (the usual case), judged with the same rule, vectorised
    if len(present) > 1:
        d = np.diff(v[present])
        dt = np.maximum(np.diff(t_s[present]), 1e-6)
        if (d >= -_EPS).all() and (d * 3600.0 / dt <= limit_kw).all():
            accepted[present] = True
            return CleanCounter(accepted, breaks, reasons)
    last = -1
    for k, i in enumerate(present):
        if last < 0:
            accepted[i] = True
            last = i
            continue
        nxt = present[k + 1] if k + 1 < len(present) else -1
        d = v[i] - v[last]
        dt_s = t_s[i] - t_s[last]
        step = counter_step(d, dt_s, limit_kw)
        if step == "down":
            if nxt >= 0 and v[nxt] >= v[last] - _EPS:
                reasons[i] = (f"{label} went backwards ({v[last]:.3f} -> {v[i]:.3f} kWh) "
                              f"and recovered at the next reading")
                continue
            breaks[i] = True                     # reset: confirmed by the next reading (or last one)
        elif step == "spike":
            if nxt >= 0 and counter_step(v[nxt] - v[i], t_s[nxt] - t_s[i], limit_kw) == "ok":
                breaks[i] = True                 # counter jumped and continues from there
            else:
                dt_h = max(dt_s, 1e-6) / 3600.0
                reasons[i] = (f"{label} rose {d:.3f} kWh in {dt_h * 60:.1f} min: implied power "
                              f"{d / dt_h:.1f} kW exceeds the meter's limit of {limit_kw:g} kW")
                continue
        accepted[i] = True
        last = i
    return CleanCounter(accepted, breaks, reasons)


@dataclass
class CounterDeltas:
    delta: np.ndarray      # kWh per interval (NaN where not covered)
    flags: np.ndarray      # uint8 per interval


def counter_deltas(t_s: np.ndarray, v: np.ndarray, clean: CleanCounter, bounds_s: np.ndarray) -> CounterDeltas:
    """Deltas per interval between consecutive ``bounds_s`` from the accepted readings."""
    n_iv = len(bounds_s) - 1
    flags = np.zeros(n_iv, dtype=np.uint8)
    ta = t_s[clean.accepted]
    va = v[clean.accepted].astype(np.float64)
    br = clean.breaks[clean.accepted]
    if len(ta) == 0:
        return CounterDeltas(np.full(n_iv, np.nan), flags)
    # counters flat across every discontinuity: subtract the jump from everything after it
    jumps = np.where(br, np.diff(va, prepend=va[0]), 0.0)
    adj = va - np.cumsum(jumps)
    values = np.interp(bounds_s, ta, adj)
    values[(bounds_s < ta[0]) | (bounds_s > ta[-1])] = np.nan
    delta = np.diff(values)
    # estimated: the readings around a boundary (not exactly on one) are more than 1 h apart
    nxt = np.clip(np.searchsorted(ta, bounds_s, side="left"), 0, len(ta) - 1)
    prv = np.clip(np.searchsorted(ta, bounds_s, side="right") - 1, 0, len(ta) - 1)
    exact = ta[nxt] == bounds_s
    est_b = ~exact & ((ta[nxt] - ta[prv]) > ESTIMATE_GAP_S)
    flags |= np.where(est_b[:-1] | est_b[1:], ESTIMATED, 0).astype(np.uint8)
    # reset: the gap (previous accepted reading, break reading) overlaps the interval
    for j in np.flatnonzero(br):
        g0, g1 = ta[j - 1], ta[j]
        hit = (bounds_s[:-1] < g1) & (bounds_s[1:] > g0)
        flags[hit] |= RESET
    # quarantined readings inside an interval
    bad_t = t_s[[r is not None for r in clean.reasons]] if any(r is not None for r in clean.reasons) else []
    for tq in bad_t:
        k = np.searchsorted(bounds_s, tq, side="right") - 1
        if 0 <= k < n_iv:
            flags[k] |= QUARANTINED
    return CounterDeltas(delta, flags)


@dataclass
class MeterResult:
    delta_ei_kwh: np.ndarray
    delta_eo_kwh: np.ndarray
    flags: np.ndarray
    valid: np.ndarray
    quarantine: pd.DataFrame   # meter_id, ts, import_kwh, export_kwh, reason


def meter_intervals(meter_id: str, readings: pd.DataFrame, bounds_s: np.ndarray,
                    limit_kw: float = 100.0, reports: tuple[bool, bool] = (False, False)) -> MeterResult:
    """Interval deltas of one meter's readings (columns ts, import_kwh, export_kwh) over bounds.
    ``reports``: whether the meter has ever reported (import, export): a counter it reports but
    that is missing from the window leaves the intervals open, never zero."""
    readings = readings.sort_values("ts")
    t_s = readings["ts"].to_numpy(dtype="datetime64[us]").astype(np.int64) / 1e6
    n_iv = len(bounds_s) - 1
    deltas, flags, valid = {}, np.zeros(n_iv, dtype=np.uint8), np.ones(n_iv, dtype=bool)
    reasons: dict[int, list[str]] = {}
    for (col, label), reported in zip((("import_kwh", "Ei"), ("export_kwh", "Eo")), reports):
        v = readings[col].to_numpy(dtype=np.float64, na_value=np.nan)
        if np.isnan(v).all():
            if reported:                            # reported elsewhere, missing here: unknown
                deltas[col] = np.full(n_iv, np.nan)
                valid &= False
            else:
                deltas[col] = np.zeros(n_iv)        # a counter this meter does not have
            continue
        cc = clean_counter(t_s, v, limit_kw, label)
        cd = counter_deltas(t_s, v, cc, bounds_s)
        deltas[col] = cd.delta
        flags |= cd.flags
        valid &= ~np.isnan(cd.delta)
        for i, r in enumerate(cc.reasons):
            if r is not None:
                reasons.setdefault(i, []).append(r)
    if reasons:
        idx = sorted(reasons)
        q = readings.iloc[idx][["ts", "import_kwh", "export_kwh"]].copy()
        q.insert(0, "meter_id", meter_id)
        q["reason"] = ["; ".join(reasons[i]) for i in idx]
    else:
        q = pd.DataFrame(columns=["meter_id", "ts", "import_kwh", "export_kwh", "reason"])
    return MeterResult(np.where(valid, deltas["import_kwh"], np.nan),
                       np.where(valid, deltas["export_kwh"], np.nan), flags, valid, q)


def boundaries(start: pd.Timestamp, end: pd.Timestamp, interval_s: int) -> np.ndarray:
    """Interval boundaries (epoch seconds) from start to end inclusive; both must be aligned."""
    s, e = int(start.timestamp()), int(end.timestamp())
    return np.arange(s, e + 1, interval_s, dtype=np.float64)


def floor_boundary(ts: pd.Timestamp, interval_s: int) -> pd.Timestamp:
    return pd.Timestamp(math.floor(ts.timestamp() / interval_s) * interval_s, unit="s", tz="UTC")


def ceil_boundary(ts: pd.Timestamp, interval_s: int) -> pd.Timestamp:
    return pd.Timestamp(math.ceil(ts.timestamp() / interval_s) * interval_s, unit="s", tz="UTC")
