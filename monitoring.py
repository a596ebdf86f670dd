"""Meter status and data quality for the pages and the API: plain functions, tested on their own."""
from __future__ import annotations

import pandas as pd

from billing.intervals import ESTIMATED, QUARANTINED, RESET

STALE_AFTER = pd.Timedelta(minutes=15)


def meter_rows(community, runtime, now: pd.Timestamp) -> list[dict]:
    """One row per meter: its house, connection, last values and when, OK / stale / error with
    the reason, and the accepted and rejected counts since the app started."""
    status = runtime.pipeline.status() if runtime is not None else {}
    stored = community.last_readings([m.meter_id for m in community.meters()])
    houses = {h.house_id: h for h in community.houses()}
    rows = []
    for m in community.meters():
        st, last = status.get(m.meter_id), stored.get(m.meter_id)
        seen = st.last_seen if st and st.last_seen else (last.ts_utc if last else None)
        seen = pd.Timestamp(seen) if seen is not None else None
        if st and st.last_rejection_at and (seen is None or pd.Timestamp(st.last_rejection_at) > seen):
            state, reason = "error", st.last_rejection
        elif seen is None:
            state, reason = "no data", "nothing received yet"
        elif now - seen > STALE_AFTER:
            state, reason = "stale", f"last reading {(now - seen).total_seconds() / 60:.0f} min ago"
        else:
            state, reason = "OK", ""
        h = houses.get(m.house_id)
        rows.append({
            "meter_id": m.meter_id, "house": h.name if h else m.house_id, "type": h.type if h else "",
            "connection": m.connection, "status": state, "reason": reason or "",
            "last_import_kwh": (st.last_import_kwh if st and st.last_import_kwh is not None
                                else (last.import_kwh if last else None)),
            "last_export_kwh": (st.last_export_kwh if st and st.last_export_kwh is not None
                                else (last.export_kwh if last else None)),
            "last_seen": seen.tz_convert(community.tz).strftime("%Y-%m-%d %H:%M:%S") if seen is not None else "",
            "accepted": st.accepted if st else 0, "rejected": st.rejected_total if st else 0,
            "resets": st.resets if st else 0,
        })
    return rows


def unknown_rows(runtime, tz) -> list[dict]:
    """Meters heard on MQTT that are not in the registry (counted, never billed)."""
    if runtime is None:
        return []
    return [{"meter_id": u.meter_id, "messages": u.messages, "source": u.source,
             "first_seen": pd.Timestamp(u.first_seen).tz_convert(tz).strftime("%Y-%m-%d %H:%M"),
             "last_seen": pd.Timestamp(u.last_seen).tz_convert(tz).strftime("%Y-%m-%d %H:%M")}
            for u in runtime.pipeline.unknown_meters().values()]


def quality_summary(community, start: pd.Timestamp, end: pd.Timestamp) -> dict:
    """Per house for [start, end): intervals present, estimated, reset, quarantined; and the
    quarantined readings with their reasons."""
    iv = community.store.read_intervals(start, end)
    per_house = []
    for h in community.houses():
        f = iv.loc[iv["house_id"] == h.house_id, "flags"].astype(int)
        per_house.append({"house": h.name, "intervals": int(len(f)),
                          "estimated": int(((f & ESTIMATED) > 0).sum()), "reset": int(((f & RESET) > 0).sum()),
                          "quarantined": int(((f & QUARANTINED) > 0).sum())})
    q = community.store.read_quarantine()
    q = q[(q["ts"] >= start) & (q["ts"] < end)] if len(q) else q
    readings = [{"meter_id": r.meter_id, "time": r.ts.tz_convert(community.tz).strftime("%Y-%m-%d %H:%M:%S"),
                 "reason": r.reason} for r in q.itertuples(index=False)]
    return {"houses": per_house, "quarantined": readings}
