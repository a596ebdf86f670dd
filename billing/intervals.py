"""The intervals engine: cumulative counters -> per-house energy per interval.

For each meter and each counter (``import_kwh`` = Ei, ``export_kwh`` = Eo):

1. **Cleaning** (``judge_counter``; ``clean_counter`` for a whole series), reading by reading
   against the last accepted value. A normal step (not down, not faster than the meter's power
   limit, default 100 kW) is accepted. A suspect one is decided by the readings that follow it:
   * the trend comes back (a later reading is a normal step from the last accepted one): the
     suspect readings in between that lie on the way (not below the last accepted value, not above
     the confirming one) are accepted (a burst of values sent close together, or timed by their
     arrival), the others are glitches: *quarantined* (kept aside with their reason, not used);
   * a new level holds (at least ``NEW_LEVEL_READINGS`` consistent readings spanning at least
     ``NEW_LEVEL_S`` seconds, without a return to the old trend): the counter was reset or the
     meter exchanged. The first reading starts a new series, the gap before it counts as zero
     energy, flagged ``RESET`` for review, so a delta is never negative;
   * with no more readings to wait for (the end of the series, or the lookahead of
     ``LOOKAHEAD`` readings used up) a suspect reading is decided alone: a value below the last
     one is a reset, a rise too fast to be real is quarantined.
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
MIN_STEP_S = 1.0          # the time resolution of readings, for the plausibility rule
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
    backwards) or ``"spike"`` (the rise implies more power than ``limit_kw``). Steps closer than
    ``MIN_STEP_S`` are judged over that long: reading times are no finer than that (a meter's
    uptime has whole seconds; values timed by their arrival can be squeezed closer)."""
    if d_kwh < -_EPS:
        return "down"
    if d_kwh * 3600.0 / max(dt_s, MIN_STEP_S) > limit_kw:
        return "spike"
    return "ok"


NEW_LEVEL_READINGS = 3     # a new counter level needs this many mutually consistent readings ...
NEW_LEVEL_S = 60.0         # ... spanning at least this many seconds
LOOKAHEAD = 1000           # readings a suspect one waits for at most before it is decided alone

ACCEPT, BREAK, REJECT, OPEN = 0, 1, 2, 3     # judge_counter's verdicts (BREAK: accepted, new series)


def _spike_reason(label: str, d: float, dt_s: float, limit_kw: float) -> str:
    dt_h = max(dt_s, MIN_STEP_S) / 3600.0
    return (f"{label} rose {d:.3f} kWh in {dt_h * 60:.1f} min: implied power "
            f"{d / dt_h:.1f} kW exceeds the meter's limit of {limit_kw:g} kW")


def judge_counter(t_s: np.ndarray, v: np.ndarray, limit_kw: float, label: str = "counter",
                  final: bool = True, lookahead: int = LOOKAHEAD) -> tuple[np.ndarray, list[str | None]]:
    """The one plausibility rule for a counter's readings (sorted by time, NaN = not reported; the
    first reported value is the reference), as described in the module's docstring: a verdict per
    reading (ACCEPT, BREAK, REJECT with its reason, or OPEN: not decided yet, only when ``final`` is
    false and the readings that would decide it have not arrived). The ingest pipeline and the
    intervals engine both judge by it, so a reading stored live is judged alike when intervals
    are computed; the verdicts depend only on the readings, never on when they were judged."""
    n = len(t_s)
    verdict = np.full(n, ACCEPT, dtype=np.int8)
    reasons: list[str | None] = [None] * n
    present = np.flatnonzero(~np.isnan(v))
    m = len(present)
    if m < 2:
        return verdict, reasons
    d_all = np.diff(v[present])
    if (d_all >= -_EPS).all() and (d_all * 3600.0 / np.maximum(np.diff(t_s[present]), MIN_STEP_S) <= limit_kw).all():
        return verdict, reasons                  # fast path: every step is normal (the usual case)

    def ok(a: int, b: int) -> bool:
        return counter_step(v[b] - v[a], t_s[b] - t_s[a], limit_kw) == "ok"

    last, p = present[0], 1
    while p < m:
        i = present[p]
        if ok(last, i):
            last, p = i, p + 1
            continue
        back = level = None
        run = True                               # readings from i on consistent with each other
        stop = min(m, p + 1 + lookahead)
        for q in range(p + 1, stop):
            j = present[q]
            if ok(last, j):
                back = q
                break
            run = run and ok(present[q - 1], j)
            if run and q - p + 1 >= NEW_LEVEL_READINGS and t_s[j] - t_s[i] >= NEW_LEVEL_S:
                level = q
                break
        if back is not None:                     # the trend came back: keep what lies on the way
            hi = v[present[back]]
            for q in range(p, back):
                k = present[q]
                if v[last] - _EPS <= v[k] <= hi + _EPS:
                    last = k
                    continue
                verdict[k] = REJECT
                if v[k] < v[last] - _EPS:
                    reasons[k] = (f"{label} went backwards ({v[last]:.3f} -> {v[k]:.3f} kWh) "
                                  f"and recovered at a later reading")
                else:
                    reasons[k] = _spike_reason(label, v[k] - v[last], t_s[k] - t_s[last], limit_kw)
            last, p = present[back], back + 1
            continue
        if level is not None:                    # a new level held: a new series from i
            verdict[i] = BREAK
            last, p = present[level], level + 1
            continue
        if not final and stop == m:              # the readings that decide it are still to come
            verdict[present[p:]] = OPEN
            break
        if v[i] < v[last] - _EPS:                # decided alone: a dip is a reset ...
            verdict[i] = BREAK
            last = i
        else:                                    # ... a spike is quarantined
            verdict[i] = REJECT
            reasons[i] = _spike_reason(label, v[i] - v[last], t_s[i] - t_s[last], limit_kw)
        p += 1
    return verdict, reasons


def clean_counter(t_s: np.ndarray, v: np.ndarray, limit_kw: float, label: str = "counter") -> CleanCounter:
    """Classify one counter's stored readings (sorted by time; NaN = not reported) with
    ``judge_counter``; the last readings have no successor, so they are decided alone."""
    verdict, reasons = judge_counter(t_s, v, limit_kw, label, final=True)
    present = ~np.isnan(v)
    return CleanCounter(present & (verdict != REJECT), present & (verdict == BREAK), reasons)


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
