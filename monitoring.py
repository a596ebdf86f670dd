"""Meter status and data quality for the pages and the API: plain functions, tested on their own."""
from __future__ import annotations

import pandas as pd

from billing.intervals import ESTIMATED, QUARANTINED, RESET

STALE_AFTER = pd.Timedelta(minutes=15)


def meter_rows(community, runtime, now: pd.Timestamp) -> list[dict]:
    """One row per meter: its house, connection, last values and when, OK / stale / error with
    the reason, and the accepted and rejected counts since the app started."""
    status = runtime.pipeline.status() if runtime is not None else {}
    meters = community.ledger.meters(active_only=False)
    stored = community.last_readings([m.meter_id for m in meters])
    houses = {h.house_id: h for h in community.ledger.houses(active_only=False)}
    rows = []
    for m in meters:
        st, last = status.get(m.meter_id), stored.get(m.meter_id)
        seen = st.last_seen if st and st.last_seen else (last.ts_utc if last else None)
        seen = pd.Timestamp(seen) if seen is not None else None
        if m.retired_at:
            state, reason = "replaced", f"counted until {pd.Timestamp(m.retired_at).tz_convert(community.tz):%Y-%m-%d %H:%M}" + (
                f", then {m.replaced_by}" if m.replaced_by else "")
        elif not m.active:
            state, reason = "inactive", "readings are not taken"
        elif st and st.last_rejection_at and (seen is None or pd.Timestamp(st.last_rejection_at) > seen):
            state, reason = "error", st.last_rejection
        elif seen is None:
            state, reason = "no data", "nothing received yet"
        elif now - seen > STALE_AFTER:
            state, reason = "stale", f"last reading {(now - seen).total_seconds() / 60:.0f} min ago"
        else:
            state, reason = "OK", ""
        h = houses.get(m.house_id)
        rows.append({
            "meter_id": m.meter_id, "name": m.name or "", "house": h.name if h else (m.house_id or "(building)"),
            "type": m.type,
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


def total_crosscheck(community, start: pd.Timestamp, end: pd.Timestamp) -> list[dict]:
    """Per total meter and local day: the grid exchange it measured next to the grid exchange
    computed from the house meters (import = what the houses used beyond local production,
    export = the surplus). Total meters are never billed; this only checks the house meters."""
    import numpy as np

    from billing.intervals import boundaries, meter_intervals
    totals = [m for m in community.ledger.meters(active_only=False) if m.type == "total"]
    if not totals:
        return []
    computed = community.community_intervals(start, end)
    bounds = boundaries(start, end, community.interval_s)
    starts = pd.to_datetime(bounds[:-1], unit="s", utc=True)
    rows = []
    for m in totals:
        window = community.store.reading_window(m.meter_id, start, end, context=1)
        if window.empty:
            rows.append({"meter": m.label, "day": "", "measured_import_kwh": None, "computed_import_kwh": None,
                         "measured_export_kwh": None, "computed_export_kwh": None,
                         "difference": "no readings from this meter"})
            continue
        res = meter_intervals(m.meter_id, window, bounds, m.max_power_kw,
                              (bool(window["import_kwh"].notna().any()), bool(window["export_kwh"].notna().any())))
        df = pd.DataFrame({"start": starts, "m_in": res.delta_ei_kwh, "m_out": res.delta_eo_kwh, "ok": res.valid})
        df = df.merge(computed[["start", "grid_import_kwh", "grid_export_kwh"]], on="start", how="left")
        df = df[df["ok"] & df["grid_import_kwh"].notna()]
        if df.empty:
            continue
        day = df["start"].dt.tz_convert(community.tz).dt.strftime("%Y-%m-%d")
        for d, g in df.groupby(day):
            mi, ci = float(g["m_in"].sum()), float(g["grid_import_kwh"].sum())
            mo, co = float(np.nansum(g["m_out"])), float(g["grid_export_kwh"].sum())
            diff = abs(mi - ci) / ci if ci > 0 else (0.0 if mi == 0 else 1.0)
            rows.append({"meter": m.label, "day": d, "measured_import_kwh": round(mi, 3),
                         "computed_import_kwh": round(ci, 3), "measured_export_kwh": round(mo, 3),
                         "computed_export_kwh": round(co, 3),
                         "difference": f"{diff:.1%}" + (" — check the house meters" if diff > 0.05 else "")})
    return rows


SILENT_AFTER = pd.Timedelta(hours=1)     # a meter this long without a reading needs a look
# less free space than this in data_dir while writes fail: the disk is full, whatever the store's
# error says (DuckDB can report a failed commit on a full disk as a failed rollback)
FULL_DISK_BYTES = 16 * 1024 * 1024


def _disk_free(path) -> int | None:
    import shutil
    try:
        return shutil.disk_usage(path).free
    except OSError:
        return None


def health(services, now: pd.Timestamp) -> tuple[dict, int]:
    """(the health report, 200 or 503). 503 when an operator must act: an ingest thread died, the
    store does not answer or cannot write (a full disk: the pipeline keeps the readings and
    retries), or the store's spool has waited over an hour. Meters silent for an hour make the
    status "degraded" (200): the meter or its link may be at fault, not this server."""
    from ingest.pipeline import describe_store_error
    c, runtime = services.community, services.runtime
    problems, warnings = [], []
    try:
        store = c.store.health() if hasattr(c.store, "health") else {"backend": c.cfg.storage.backend}
    except Exception as exc:                  # the report goes on: it is what tells the operator
        store = {"backend": c.cfg.storage.backend}
        problems.append(f"store health unknown: {describe_store_error(exc)}")
    try:
        c.store.last_readings([])
        store["reachable"] = True
    except Exception as exc:                  # StoreUnavailable, or the embedded store's own error
        store["reachable"] = False
        problems.append(f"store unreachable: {describe_store_error(exc)}")
    free = _disk_free(c.cfg.data_dir)
    store["disk_free_mb"] = None if free is None else round(free / 2**20, 1)
    if store.get("spool_age_s", 0) and store["spool_age_s"] > 3600:
        problems.append(f"{store.get('spool_lines', 0)} lines waiting in the spool for {store['spool_age_s']:.0f} s")
    ingest = None
    meters = []
    if runtime is not None:
        p = runtime.pipeline
        if p.write_failures and p.last_write_error:
            reason = p.last_write_error
            if free is not None and free < FULL_DISK_BYTES and "disk is full" not in reason:
                reason = f"the data disk is full ({free // 1024} KiB free in {c.cfg.data_dir}; the store says: {reason})"
            problems.append(f"store cannot write: {reason} ({p.write_failures} failed attempts; "
                            "the readings are kept and written when it can)")
        threads = {"pipeline": bool(p._thread and p._thread.is_alive())}
        if runtime.mqtt is not None:
            threads["mqtt"] = bool(runtime.mqtt._feeder and runtime.mqtt._feeder.is_alive())
        threads.update({f"connection:{k}": v for k, v in runtime.connections.alive().items()})
        problems += [f"ingest thread {name} is not running" for name, ok in threads.items() if not ok]
        problems += [f"meter connection {k} cannot start: {e}" for k, e in runtime.connections.errors.items()]
        ingest = {"threads": threads, "queued": p.queued, "spool_waiting": store.get("spool_lines", 0),
                  "write_failures": p.write_failures, "last_write_error": p.last_write_error,
                  "mqtt_connected": bool(runtime.mqtt and runtime.mqtt.connected.is_set()),
                  "simulator": runtime.simulator is not None}
        status = p.status()
        for m in c.meters():
            if m.retired_at:
                continue
            st = status.get(m.meter_id)
            seen = pd.Timestamp(st.last_seen) if st and st.last_seen else None
            if seen is None and store["reachable"]:
                last = c.last_reading(m.meter_id)
                seen = pd.Timestamp(last.ts_utc) if last else None
            age = (now - seen).total_seconds() if seen is not None else None
            meters.append({"meter_id": m.meter_id, "last_reading_age_s": None if age is None else round(age, 1)})
            if m.connection != "import" and (age is None or age > SILENT_AFTER.total_seconds()):
                warnings.append(f"meter {m.meter_id}: " + ("no reading yet" if age is None
                                                           else f"no reading for {age / 60:.0f} min"))
    state = "failing" if problems else ("degraded" if warnings else "ok")
    from api.routes import VERSION
    return ({"status": state, "version": VERSION, "problems": problems, "warnings": warnings, "store": store,
             "ingest": ingest, "meters": meters}, 503 if problems else 200)
