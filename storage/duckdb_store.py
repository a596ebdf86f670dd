"""Embedded time-series store on a DuckDB file (the zero-setup default).

Timestamps are stored as naive ``TIMESTAMP`` holding UTC (no ICU or other extension is needed,
and extension auto-loading is switched off so nothing is ever downloaded at run time). DuckDB
allows one writing process: in embedded mode one process runs the web server and the ingest
threads; calls from several threads are serialised by a lock.

DuckDB keeps in memory what a connection has written: the blocks of new readings stay in its cache
and about 10 bytes per reading of its own bookkeeping are only given back when the file is closed
(a write path with its duplicate check grew the process by about 28 MiB per million readings). The
store therefore reopens its file after ``reopen_every_rows`` written readings (closing it merges
the write-ahead log; about 0.1 s under the lock), which keeps a long-running app's memory flat.
"""
from __future__ import annotations

import logging
import threading
import time
from pathlib import Path

import duckdb
import pandas as pd

from storage.timeseries import (INTERVAL_COLUMNS, QUARANTINE_COLUMNS, READING_COLUMNS,
                                TimeSeriesStore, WriteResult, split_batch)

log = logging.getLogger(__name__)

SCHEMA = """
CREATE TABLE IF NOT EXISTS readings (
    meter_id VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,
    import_kwh DOUBLE,
    export_kwh DOUBLE,
    power_in_kw DOUBLE,
    power_out_kw DOUBLE,
    PRIMARY KEY (meter_id, ts)
);
CREATE TABLE IF NOT EXISTS intervals (
    house_id VARCHAR NOT NULL,
    start TIMESTAMP NOT NULL,
    delta_ei_kwh DOUBLE NOT NULL,
    delta_eo_kwh DOUBLE NOT NULL,
    flags UTINYINT NOT NULL DEFAULT 0
);
CREATE TABLE IF NOT EXISTS quarantine (
    meter_id VARCHAR NOT NULL,
    ts TIMESTAMP NOT NULL,
    import_kwh DOUBLE,
    export_kwh DOUBLE,
    reason VARCHAR NOT NULL
);
"""


def _naive_utc(ts) -> pd.Timestamp:
    ts = pd.Timestamp(ts)
    if ts.tzinfo is None:
        raise ValueError(f"timestamp {ts} has no time zone")
    return ts.tz_convert("UTC").tz_localize(None)


def _to_naive(df: pd.DataFrame, col: str) -> pd.DataFrame:
    df = df.copy()
    df[col] = pd.to_datetime(df[col], utc=True).dt.tz_localize(None).astype("datetime64[us]")
    return df


# How far around a span the first, cheap query looks for its context readings. Meters that report
# every few seconds to every 15 minutes find them within it; a meter after a longer gap (or a new one)
# gets one further query of its own. Wider margins cost every live update a scan of that much
# history (two days of 10-s readings of 200 meters are 3.5 million rows).
NEAR = "INTERVAL 2 HOUR"
# The first margin of ``reading_windows``: the context of a meter that reports every few seconds
# to every few minutes lies within it; the others' is looked for within NEAR, then anywhere.
CLOSE = "INTERVAL 15 MINUTE"


def _to_utc(df: pd.DataFrame, *cols: str) -> pd.DataFrame:
    for col in cols:
        df[col] = df[col].astype("datetime64[us]").dt.tz_localize("UTC")
    return df


class DuckDBStore(TimeSeriesStore):
    def __init__(self, path: str | Path, memory_limit_mb: int | None = None,
                 reopen_every_rows: int | None = None):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        config = {"autoinstall_known_extensions": False, "autoload_known_extensions": False}
        if memory_limit_mb:                    # DuckDB caches up to 80 % of RAM by default
            config["memory_limit"] = f"{memory_limit_mb}MB"
            if self.path != ":memory:":
                config["temp_directory"] = str(Path(self.path).parent / "duckdb_tmp")
        self._config = config
        # an in-memory database cannot be reopened: it would be empty
        self.reopen_every_rows = reopen_every_rows if self.path != ":memory:" else None
        self.written_since_open = 0
        self.reopens = 0
        self.reopen_seconds_max = 0.0
        self._conn: duckdb.DuckDBPyConnection | None = None
        self._closed = False
        self._lock = threading.RLock()
        with self._lock:
            self._con.execute(SCHEMA)

    @property
    def _con(self) -> duckdb.DuckDBPyConnection:
        """The open connection (opened again here if a reopen could not open it)."""
        if self._closed:
            raise RuntimeError(f"the embedded store {self.path} is closed")
        if self._conn is None:
            self._conn = duckdb.connect(self.path, config=self._config)
        return self._conn

    def close(self) -> None:
        with self._lock:
            self._close_connection()
            self._closed = True

    def set_threads(self, n: int) -> None:
        """Run this file's queries on ``n`` threads in all: the calling one and ``n - 1`` of
        DuckDB's (by default a worker per core and 8 for asynchronous I/O, native threads of each
        open file: 200 communities' files in one process held 1,800 of them). Kept across reopens."""
        n = max(1, int(n))
        with self._lock:
            self._config["threads"] = n
            self._config["async_threads"] = n - 1
            try:
                self._con.execute(f"SET threads = {n}")
                self._con.execute(f"SET async_threads = {n - 1}")
            except duckdb.CatalogException:           # a DuckDB without asynchronous I/O threads
                self._config.pop("async_threads")

    def _close_connection(self) -> None:
        if self._conn is not None:
            self._conn.close()
            self._conn = None

    def reopen(self) -> None:
        """Close the file and open it again: gives back what DuckDB holds for this connection's
        writes. Calls from other threads wait for it (the lock); if the file cannot be opened now,
        the next call tries again and fails with DuckDB's error until it can."""
        with self._lock:
            t0 = time.monotonic()
            self._close_connection()
            self.written_since_open = 0
            self._con.execute("SELECT 1").fetchall()
            took = time.monotonic() - t0
            self.reopens += 1
            self.reopen_seconds_max = max(self.reopen_seconds_max, took)
            log.info("embedded store reopened to release its write memory (%.2f s)", took)

    def snapshot_to(self, folder: Path) -> None:
        """The database, copied as of now (writes wait), under its own file name in ``folder``."""
        target = Path(folder) / Path(self.path).name
        with self._lock:
            name = self._con.execute("SELECT current_database()").fetchall()[0][0]
            self._con.execute("ATTACH ? AS leg_backup", [target.as_posix()])
            try:
                self._con.execute(f'COPY FROM DATABASE "{name}" TO leg_backup')
            finally:
                self._con.execute("DETACH leg_backup")

    def health(self) -> dict:
        """The store's own memory (its block cache and query memory) against its cap, and how often
        it was reopened to give back the memory of its writes."""
        with self._lock:
            used = self._con.execute("SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchall()
            limit = self._con.execute("SELECT current_setting('memory_limit')").fetchall()
        return {"backend": "embedded", "memory_bytes": int(used[0][0]), "memory_limit": limit[0][0],
                "reopens": self.reopens, "written_since_open": self.written_since_open}

    def _df(self, sql: str, params=()) -> pd.DataFrame:
        with self._lock:
            return self._con.execute(sql, params).df()

    # -- raw readings -------------------------------------------------------------------------
    def write_readings(self, readings: pd.DataFrame) -> WriteResult:
        if readings.empty:
            return WriteResult()
        df = pd.DataFrame({c: readings[c] if c in readings else None for c in READING_COLUMNS})
        df["ts"] = pd.to_datetime(df["ts"], utc=True).dt.tz_localize(None).astype("datetime64[us]")
        for c in READING_COLUMNS[2:]:
            df[c] = df[c].astype("float64")
        keys = list(zip(df["meter_id"].tolist(), df["ts"].tolist()))
        if len(set(keys)) < len(keys):          # the usual batch has each (meter, time) once
            df, dup_count, clashing = split_batch(df)
            conflicts = [clashing]
        else:
            dup_count, conflicts = 0, []
        with self._lock:
            con = self._con
            con.register("incoming", df)
            try:
                # one statement, committed by itself: the primary key's index skips the readings
                # stored already (a few ms a write; BEGIN, a join against the stored range and an
                # anti join cost three times that, which many small writes of many communities feel)
                inserted = int(con.execute("INSERT OR IGNORE INTO readings SELECT * FROM incoming").fetchall()[0][0])
                stored = None
                if inserted < len(df):
                    # some were stored already (a redelivery): the same values are duplicates,
                    # others conflicts; the rows just inserted compare equal to themselves
                    lo_hi = {"lo": df["ts"].min(), "hi": df["ts"].max()}
                    stored = con.execute("""
                        SELECT i.*, (i.import_kwh IS NOT DISTINCT FROM r.import_kwh
                                     AND i.export_kwh IS NOT DISTINCT FROM r.export_kwh) AS same
                        FROM incoming i JOIN (SELECT * FROM readings WHERE ts BETWEEN $lo AND $hi) r
                        USING (meter_id, ts)""", lo_hi).df()
            finally:
                con.unregister("incoming")
        if stored is not None and len(stored):
            differ = stored[~stored["same"]].drop(columns="same")
            dup_count += len(df) - inserted - len(differ)
            conflicts.append(differ)
        conflicts_df = pd.concat([c for c in conflicts if len(c)], ignore_index=True) \
            if any(len(c) for c in conflicts) else pd.DataFrame(columns=READING_COLUMNS)
        if len(conflicts_df):
            conflicts_df = _to_utc(conflicts_df, "ts")
        if inserted and self.reopen_every_rows:
            with self._lock:
                self.written_since_open += inserted
                if self.written_since_open >= self.reopen_every_rows:
                    try:
                        self.reopen()
                    except Exception:          # the readings are committed; the next call reconnects
                        log.exception("embedded store: reopening %s failed", self.path)
        return WriteResult(inserted=inserted, duplicates=dup_count, conflicts=conflicts_df)

    def read_readings(self, meter_id=None, start=None, end=None) -> pd.DataFrame:
        where, params = [], []
        if meter_id is not None:
            where.append("meter_id = ?"); params.append(meter_id)
        if start is not None:
            where.append("ts >= ?"); params.append(_naive_utc(start))
        if end is not None:
            where.append("ts < ?"); params.append(_naive_utc(end))
        sql = "SELECT * FROM readings" + (" WHERE " + " AND ".join(where) if where else "") \
            + " ORDER BY meter_id, ts"
        return _to_utc(self._df(sql, params), "ts")

    def reading_window(self, meter_id, start, end, context=3) -> pd.DataFrame:
        s, e = _naive_utc(start), _naive_utc(end)
        sql = """
            (SELECT * FROM readings WHERE meter_id = $m AND ts < $s ORDER BY ts DESC LIMIT $n)
            UNION ALL
            (SELECT * FROM readings WHERE meter_id = $m AND ts >= $s AND ts <= $e)
            UNION ALL
            (SELECT * FROM readings WHERE meter_id = $m AND ts > $e ORDER BY ts LIMIT $n)
            ORDER BY ts"""
        return _to_utc(self._df(sql, {"m": meter_id, "s": s, "e": e, "n": context}), "ts")

    def reading_windows(self, spans, context=3, look_after: bool = True) -> dict[str, pd.DataFrame]:
        """All meters at once: one scan for the span and ``CLOSE`` around it, then, for the meters
        whose context lies further away (a sparse meter, a long gap, a new meter), a query per side
        within ``NEAR`` and, for those still short of it, one without a bound. ``look_after=False``
        when nothing follows the spans (live ingest).

        The store picks the context: of the readings around a span only the ``context`` nearest
        come back, not the many that dense meters have there (materialised, those would cost time
        and memory on every live update)."""
        if not spans:
            return {}
        sp = self._spans_frame(spans)
        df = self._with_spans(sp, """
            SELECT meter_id, ts, import_kwh, export_kwh, power_in_kw, power_out_kw FROM (
                SELECT r.*, s.lo, s.hi,
                       row_number() OVER (PARTITION BY r.meter_id, r.ts < s.lo ORDER BY r.ts DESC) AS back,
                       row_number() OVER (PARTITION BY r.meter_id, r.ts > s.hi ORDER BY r.ts) AS ahead
                FROM readings r JOIN spans s USING (meter_id)
                WHERE r.ts >= s.lo - {margin} AND r.ts <= s.hi + {margin})
            WHERE ts BETWEEN lo AND hi OR (ts < lo AND back <= {n}) OR (ts > hi AND ahead <= {n})
            ORDER BY meter_id, ts""".format(margin=CLOSE, n=int(context)))
        groups = dict(tuple(df.groupby("meter_id", sort=False))) if len(df) else {}
        parts, need_before, need_after = {}, [], []
        for m, (lo, hi) in spans.items():
            lo_n, hi_n = _naive_utc(lo), _naive_utc(hi)
            g = groups.get(m, df.iloc[0:0])
            before, after = g[g["ts"] < lo_n], g[g["ts"] > hi_n]
            inside = g[(g["ts"] >= lo_n) & (g["ts"] <= hi_n)]
            parts[m] = [before, inside, after]
            if len(before) < context:
                need_before.append(m)
            if look_after and len(after) < context:
                need_after.append(m)
        for names, side, near, order, slot in (
                (need_before, "r.ts < s.lo", f"r.ts >= s.lo - {NEAR}", "DESC", 0),
                (need_after, "r.ts > s.hi", f"r.ts <= s.hi + {NEAR}", "ASC", 2)):
            for bound in (f"AND {near}", ""):
                if not names:
                    break
                extra = self._with_spans(sp[sp["meter_id"].isin(names)], f"""
                    SELECT meter_id, ts, import_kwh, export_kwh, power_in_kw, power_out_kw FROM (
                        SELECT r.*, row_number() OVER (PARTITION BY r.meter_id ORDER BY r.ts {order}) AS rn
                        FROM readings r JOIN spans s USING (meter_id) WHERE {side} {bound})
                    WHERE rn <= {int(context)}""")
                for m, g in extra.groupby("meter_id", sort=False):
                    parts[m][slot] = g
                names = [m for m in names if len(parts[m][slot]) < context]
        out = {}
        for m, (b, i, a) in parts.items():
            w = pd.concat([x for x in (b, i, a) if len(x)]) if any(len(x) for x in (b, i, a)) else df.iloc[0:0]
            w = w.drop_duplicates(subset=["ts"]).sort_values("ts")
            out[m] = _to_utc(w.reindex(columns=READING_COLUMNS).reset_index(drop=True), "ts")
        return out

    @staticmethod
    def _spans_frame(spans) -> pd.DataFrame:
        sp = pd.DataFrame([(m, _naive_utc(lo), _naive_utc(hi)) for m, (lo, hi) in spans.items()],
                          columns=["meter_id", "lo", "hi"])
        sp["lo"] = sp["lo"].astype("datetime64[us]")
        sp["hi"] = sp["hi"].astype("datetime64[us]")
        return sp

    def _with_spans(self, sp: pd.DataFrame, sql: str) -> pd.DataFrame:
        with self._lock:
            self._con.register("spans", sp)
            try:
                return self._con.execute(sql).df()
            finally:
                self._con.unregister("spans")

    def replace_intervals_many(self, spans, intervals) -> None:
        self._replace_many("intervals", "house_id", "start", spans,
                           _to_naive(intervals.reindex(columns=INTERVAL_COLUMNS), "start"), inclusive_end=False)

    def replace_quarantine_many(self, spans, rows) -> None:
        self._replace_many("quarantine", "meter_id", "ts", spans,
                           _to_naive(rows.reindex(columns=QUARANTINE_COLUMNS), "ts"), inclusive_end=True)

    def _replace_many(self, table, key, tcol, spans, df, inclusive_end) -> None:
        if not spans and not len(df):
            return
        sp = pd.DataFrame([(k, _naive_utc(lo), _naive_utc(hi)) for k, (lo, hi) in spans.items()],
                          columns=["k", "lo", "hi"]).astype({"k": object})
        sp["lo"] = sp["lo"].astype("datetime64[us]")
        sp["hi"] = sp["hi"].astype("datetime64[us]")
        end_op = "<=" if inclusive_end else "<"
        with self._lock:
            con = self._con
            con.register("spans", sp)
            con.register("incoming", df)
            try:
                con.execute("BEGIN")
                con.execute(f"DELETE FROM {table} USING spans WHERE {table}.{key} = spans.k "
                            f"AND {table}.{tcol} >= spans.lo AND {table}.{tcol} {end_op} spans.hi")
                if len(df):
                    con.execute(f"INSERT INTO {table} SELECT * FROM incoming")
                con.execute("COMMIT")
            except Exception:
                con.execute("ROLLBACK")
                raise
            finally:
                con.unregister("spans")
                con.unregister("incoming")

    def neighbour_times(self, spans, look_after: bool = True
                        ) -> dict[str, tuple[pd.Timestamp | None, pd.Timestamp | None]]:
        if not spans:
            return {}
        sp = self._spans_frame(spans)
        sql = """
            SELECT s.meter_id,
                   list_last(max(r.ts, 2) FILTER (WHERE r.ts < s.lo)) AS prev,
                   min(r.ts) FILTER (WHERE r.ts > s.hi) AS next
            FROM spans s JOIN readings r USING (meter_id) {where}
            GROUP BY s.meter_id"""
        near = self._with_spans(sp, sql.format(
            where=f"WHERE r.ts >= s.lo - {NEAR} AND r.ts <= s.hi + {NEAR}"))
        found = {r.meter_id: [r.prev, r.next] for r in near.itertuples(index=False)}
        missing = [m for m in spans if pd.isna(found.get(m, [None])[0])
                   or (look_after and pd.isna(found.get(m, [None, None])[1]))]
        if missing:                     # beyond the NEAR margin (or none at all): one wider query
            far = self._with_spans(sp[sp["meter_id"].isin(missing)], sql.format(where=""))
            for r in far.itertuples(index=False):
                found[r.meter_id] = [r.prev, r.next if look_after else None]
        ts = lambda x: None if x is None or pd.isna(x) else pd.Timestamp(x).tz_localize("UTC")
        return {m: (ts(found.get(m, [None, None])[0]), ts(found.get(m, [None, None])[1]) if look_after else None)
                for m in spans}

    def last_readings(self, meter_ids) -> pd.DataFrame:
        ids = pd.DataFrame({"meter_id": list(meter_ids)})
        with self._lock:
            self._con.register("ids", ids)
            try:
                df = self._con.execute("""
                    SELECT r.* FROM readings r JOIN ids USING (meter_id)
                    QUALIFY row_number() OVER (PARTITION BY r.meter_id ORDER BY r.ts DESC) = 1""").df()
            finally:
                self._con.unregister("ids")
        return _to_utc(df, "ts")

    def reported_counters(self, meter_ids) -> dict[str, tuple[bool, bool]]:
        ids = pd.DataFrame({"meter_id": pd.Series(list(meter_ids), dtype=object)})
        with self._lock:
            self._con.register("ids", ids)
            try:
                rows = self._con.execute("""
                    SELECT r.meter_id, count(r.import_kwh) > 0, count(r.export_kwh) > 0
                    FROM readings r SEMI JOIN ids USING (meter_id) GROUP BY r.meter_id""").fetchall()
            finally:
                self._con.unregister("ids")
        got = {m: (bool(a), bool(b)) for m, a, b in rows}
        return {m: got.get(m, (False, False)) for m in meter_ids}

    def meter_ids(self) -> list[str]:
        with self._lock:
            return [r[0] for r in self._con.execute(
                "SELECT DISTINCT meter_id FROM readings ORDER BY 1").fetchall()]

    # -- derived intervals ------------------------------------------------------------------
    def replace_intervals(self, house_id, start, end, intervals) -> None:
        df = intervals.reindex(columns=INTERVAL_COLUMNS).assign(house_id=house_id)
        self.replace_intervals_many({house_id: (start, end)}, df)

    def _house_filter(self, house_ids) -> pd.DataFrame:
        return pd.DataFrame({"house_id": pd.Series(list(house_ids), dtype=object)})

    def read_intervals(self, start, end, house_ids=None) -> pd.DataFrame:
        params = {"s": _naive_utc(start), "e": _naive_utc(end)}
        if house_ids is None:
            return _to_utc(self._df("SELECT * FROM intervals WHERE start >= $s AND start < $e "
                                    "ORDER BY start, house_id", params), "start")
        with self._lock:
            self._con.register("wanted", self._house_filter(house_ids))
            try:
                df = self._con.execute("""
                    SELECT i.* FROM intervals i SEMI JOIN wanted w USING (house_id)
                    WHERE i.start >= $s AND i.start < $e ORDER BY i.start, i.house_id""", params).df()
            finally:
                self._con.unregister("wanted")
        return _to_utc(df, "start")

    def missing_intervals(self, start, end, spans, interval_s) -> pd.DataFrame:
        """(house_id, start) of every interval start in each house's [from, to) span (within
        [start, end)) that has no stored interval: an anti-join in DuckDB, so only the missing
        rows leave the database."""
        want = pd.DataFrame({"house_id": pd.Series(list(spans), dtype=object),
                             "first": [_naive_utc(a) for a, _ in spans.values()],
                             "last": [_naive_utc(b - pd.Timedelta(seconds=interval_s)) for _, b in spans.values()]})
        want["first"] = want["first"].astype("datetime64[us]")
        want["last"] = want["last"].astype("datetime64[us]")
        with self._lock:
            self._con.register("wanted", want)
            try:
                df = self._con.execute(f"""
                    WITH expected AS (
                        SELECT w.house_id, g.start FROM wanted w,
                               generate_series(w.first, w.last, INTERVAL {int(interval_s)} SECOND) AS g(start)),
                         present AS (
                        SELECT i.house_id, i.start FROM intervals i SEMI JOIN wanted w USING (house_id)
                        WHERE i.start >= $s AND i.start < $e)
                    SELECT house_id, start FROM expected ANTI JOIN present USING (house_id, start)
                    ORDER BY house_id, start""", {"s": _naive_utc(start), "e": _naive_utc(end)}).df()
            finally:
                self._con.unregister("wanted")
        return _to_utc(df, "start")

    def community_totals(self, start, end, house_ids) -> pd.DataFrame:
        with self._lock:
            self._con.register("wanted", self._house_filter(house_ids))
            try:
                df = self._con.execute("""
                    SELECT i.start, sum(i.delta_ei_kwh) AS total_consumption_kwh,
                           sum(i.delta_eo_kwh) AS total_production_kwh, count(*) AS houses
                    FROM intervals i SEMI JOIN wanted w USING (house_id)
                    WHERE i.start >= $s AND i.start < $e
                    GROUP BY i.start ORDER BY i.start""", {"s": _naive_utc(start), "e": _naive_utc(end)}).df()
            finally:
                self._con.unregister("wanted")
        return _to_utc(df, "start")

    def community_buckets(self, start, end, bucket_s, house_ids) -> pd.DataFrame:
        with self._lock:
            self._con.register("wanted", self._house_filter(house_ids))
            try:
                df = self._con.execute(f"""
                    SELECT time_bucket(INTERVAL {int(bucket_s)} SECOND, i.start) AS start,
                           sum(i.delta_ei_kwh) AS total_consumption_kwh, sum(i.delta_eo_kwh) AS total_production_kwh
                    FROM intervals i SEMI JOIN wanted w USING (house_id)
                    WHERE i.start >= $s AND i.start < $e GROUP BY 1 ORDER BY 1""",
                    {"s": _naive_utc(start), "e": _naive_utc(end)}).df()
            finally:
                self._con.unregister("wanted")
        return _to_utc(df, "start")

    def house_sums(self, start, end, house_ids, prices) -> pd.DataFrame:
        p = _to_naive(prices[["start", "p_con", "p_pv"]], "start")
        with self._lock:
            self._con.register("prices", p)
            self._con.register("wanted", self._house_filter(house_ids))
            try:
                return self._con.execute("""
                    SELECT i.house_id, sum(i.delta_ei_kwh) AS delta_ei_kwh, sum(i.delta_eo_kwh) AS delta_eo_kwh,
                           sum(i.delta_ei_kwh * p.p_con) AS value_consumption_ct,
                           sum(i.delta_eo_kwh * p.p_pv) AS value_pv_delivery_ct,
                           count(*) AS intervals, bit_or(i.flags) AS flags
                    FROM intervals i JOIN prices p USING (start) SEMI JOIN wanted w USING (house_id)
                    WHERE i.start >= $s AND i.start < $e
                    GROUP BY i.house_id ORDER BY i.house_id""",
                    {"s": _naive_utc(start), "e": _naive_utc(end)}).df()
            finally:
                self._con.unregister("prices")
                self._con.unregister("wanted")

    # -- quarantine --------------------------------------------------------------------------
    def replace_quarantine(self, meter_id, start, end, rows) -> None:
        df = rows.reindex(columns=QUARANTINE_COLUMNS).assign(meter_id=meter_id)
        self.replace_quarantine_many({meter_id: (start, end)}, df)

    def read_quarantine(self, meter_id=None) -> pd.DataFrame:
        sql = "SELECT * FROM quarantine" + (" WHERE meter_id = ?" if meter_id else "") + " ORDER BY meter_id, ts"
        return _to_utc(self._df(sql, [meter_id] if meter_id else []), "ts")
