"""Time-series store on InfluxDB: the LEG specification's deployment store.

One code path for InfluxDB 1.x, 2.x and 3.x: line protocol over ``/write`` and InfluxQL over
``/query`` (served natively by 1.x and 3.x, and by 2.x through its v1-compatible API with token
auth and the bucket's DBRP mapping). Flux is not used (3.x dropped it).

Measurements (tags; fields):

* ``readings`` (meter_id, house_id, mac; import_kwh, export_kwh, power_in_kw, power_out_kw)
* ``house_energy`` (house_id, mac; delta_ei_kwh, delta_eo_kwh, flags, and once priced
  value_consumption_ct, value_pv_delivery_ct, tariff_p_con, tariff_p_pv): section 9.3
* ``community_energy`` (no tags; total_consumption_kwh, total_production_kwh, grid_import_kwh,
  grid_export_kwh, value_grid_import_ct, value_grid_export_ct, tariff_p_grid_con,
  tariff_p_grid_del): section 9.3
* ``quarantine`` (meter_id; import_kwh, export_kwh, reason)

A community of a file with ``communities:`` adds the tag ``community`` (its slug) to every point
of every measurement, and every query of its store selects that tag: several communities share one
database, and their house ids (1, 2, ... in each) or community rows never meet. A file of one
community writes the section 9.3 schema as it is, without the tag.

Writes are idempotent: a point is its measurement, tags and time, so writing it again replaces it
(a replay never doubles energy). Replacing intervals therefore overwrites; an interval that stops
being valid is not deleted (InfluxDB 2.x has no DELETE over the v1 API) but readings only ever add
information, so intervals are added or corrected, not withdrawn.

**Outages never lose data**: a write that fails (connection refused, timeout, 5xx) goes to a
durable spool (SQLite in the data directory) and every later write queues behind it, in order, until
a background thread has replayed the spool. A write InfluxDB refuses as malformed (4xx) is kept in
the spool's dead-letter table with the reason and counted in ``health()``.
"""
from __future__ import annotations

import logging
import math
import re
import sqlite3
import threading
import time
from pathlib import Path

import numpy as np
import pandas as pd
import requests

from storage.sqlite_copy import copy_database
from storage.timeseries import (INTERVAL_COLUMNS, QUARANTINE_COLUMNS, READING_COLUMNS, StoreUnavailable,
                                TimeSeriesStore, WriteResult, split_batch, empty_readings)

log = logging.getLogger(__name__)

LINES_PER_REQUEST = 5000
SPOOL_FILE = "influx_spool.sqlite"     # in the data folder
MARGIN = pd.Timedelta(days=2)


def _esc_tag(v: str) -> str:
    return re.sub(r"([,= ])", r"\\\1", str(v))


def _esc_str(v: str) -> str:
    return '"' + str(v).replace("\\", "\\\\").replace('"', '\\"') + '"'


INTEGER_FIELDS = frozenset({"flags"})   # every other number is a float field


def _fields(row: dict) -> str:
    """Line-protocol fields; a number's type is its field's, never its value's: InfluxDB fixes a
    field's type with its first point (per shard, for every series of the measurement) and
    refuses the other type afterwards, and a sum InfluxDB returns as 0 arrives here as an int."""
    parts = []
    for k, v in row.items():
        if v is None or (isinstance(v, float) and math.isnan(v)):
            continue
        if isinstance(v, str):
            parts.append(f"{k}={_esc_str(v)}")
        elif k in INTEGER_FIELDS:
            parts.append(f"{k}={int(v)}i")
        else:
            parts.append(f"{k}={float(v)!r}")
    return ",".join(parts)


def _us(ts) -> int:
    return int(pd.Timestamp(ts).tz_convert("UTC").value // 1000)


def _q_time(ts) -> str:
    return f"{_us(ts)}u"


def _quote(v: str) -> str:
    """An InfluxQL string literal."""
    return "'" + str(v).replace("\\", "\\\\").replace("'", "\\'") + "'"


def _regex(values) -> str:
    return "/^(" + "|".join(re.escape(str(v)).replace("/", r"\/") for v in values) + ")$/"


class Spool:
    """A durable FIFO of line-protocol bodies (SQLite, WAL)."""

    def __init__(self, path: Path):
        self._con = sqlite3.connect(str(path), check_same_thread=False, isolation_level=None, timeout=30)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("CREATE TABLE IF NOT EXISTS spool (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                          "body TEXT NOT NULL, lines INTEGER NOT NULL, created REAL NOT NULL)")
        self._con.execute("CREATE TABLE IF NOT EXISTS dead (id INTEGER PRIMARY KEY AUTOINCREMENT, "
                          "body TEXT NOT NULL, reason TEXT NOT NULL, created REAL NOT NULL)")
        self._lock = threading.Lock()

    def push(self, body: str) -> None:
        with self._lock:
            self._con.execute("INSERT INTO spool (body, lines, created) VALUES (?, ?, ?)",
                              (body, body.count("\n") + 1, time.time()))

    def head(self) -> tuple[int, str] | None:
        with self._lock:
            return self._con.execute("SELECT id, body FROM spool ORDER BY id LIMIT 1").fetchone()

    def pop(self, ident: int) -> None:
        with self._lock:
            self._con.execute("DELETE FROM spool WHERE id = ?", (ident,))

    def bury(self, ident: int | None, body: str, reason: str) -> None:
        """Keep a batch InfluxDB refused, with the reason (and take it off the spool if it was on it)."""
        with self._lock:
            self._con.execute("BEGIN")
            self._con.execute("INSERT INTO dead (body, reason, created) VALUES (?, ?, ?)", (body, reason, time.time()))
            if ident is not None:
                self._con.execute("DELETE FROM spool WHERE id = ?", (ident,))
            self._con.execute("COMMIT")

    def stats(self) -> dict:
        with self._lock:
            n, lines, oldest = self._con.execute("SELECT count(*), coalesce(sum(lines), 0), min(created) FROM spool").fetchone()
            dead = self._con.execute("SELECT count(*) FROM dead").fetchone()[0]
        return {"spool_batches": n, "spool_lines": lines,
                "spool_age_s": round(time.time() - oldest, 1) if oldest else 0.0, "dead_batches": dead}

    def backup_to(self, path: Path) -> None:
        """A consistent copy in one file (SQLite's online backup: what is still in the write-ahead
        log is included, which a plain file copy would miss)."""
        with self._lock:
            copy_database(self._con, path)

    def close(self) -> None:
        with self._lock:
            self._con.close()


class InfluxStore(TimeSeriesStore):
    stores_priced_intervals = True

    def __init__(self, cfg, data_dir: Path, timeout_s: float = 10.0, replay_every_s: float = 2.0,
                 community: str | None = None):
        self.cfg = cfg                       # config.InfluxConfig
        self.community = community           # the slug: the ``community`` tag of every point, or None
        self._ctag = f",community={_esc_tag(community)}" if community else ""
        self._cwhere = f"community = {_quote(community)} AND " if community else ""
        self.read_only = cfg.mode == "read_only"
        if self.read_only:
            self.stores_priced_intervals = False
        self.url = cfg.url.rstrip("/")
        self.db = cfg.database or cfg.bucket
        self.timeout_s = timeout_s
        self._http = requests.Session()
        self._params = {"db": self.db}
        if cfg.token:
            self._http.headers["Authorization"] = f"Token {cfg.token}"
        elif cfg.username:
            self._params.update({"u": cfg.username, "p": cfg.password or ""})
        self._house_of: dict[str, str] = {}
        data_dir = Path(data_dir)
        data_dir.mkdir(parents=True, exist_ok=True)
        self.spool = Spool(data_dir / SPOOL_FILE)
        self._write_lock = threading.Lock()
        self._stop = threading.Event()
        self._down_logged = False
        self.replay_every_s = replay_every_s
        self._replayer = threading.Thread(target=self._replay_loop, name="influx-spool", daemon=True)
        self._ensure_database()
        self._replayer.start()

    # -- plumbing -------------------------------------------------------------------------------
    def set_registry(self, house_of_meter: dict[str, str]) -> None:
        """Meter -> house, for the tags of readings."""
        self._house_of = dict(house_of_meter)

    def _ensure_database(self) -> None:
        if self.cfg.token or self.read_only:          # 2.x: the bucket exists with its DBRP mapping; 3.x: created on write
            return
        try:
            self._query(f'CREATE DATABASE "{self.db}"')
        except StoreUnavailable as exc:
            log.warning("InfluxDB: cannot create database %s now (%s); writes are spooled", self.db, exc)

    def _query(self, q: str, chunked: bool = False) -> list[dict]:
        if not self.read_only and self.spool.head() is not None:
            # what is still in the spool is not in InfluxDB yet: a read now would see a hole
            self.replay()
            if self.spool.head() is not None:
                raise StoreUnavailable(f"InfluxDB at {self.url}: {self.spool.stats()['spool_lines']} lines "
                                       f"still to replay")
        try:
            r = self._http.post(f"{self.url}/query", params={**self._params, "epoch": "u"},
                                data={"q": q}, timeout=self.timeout_s)
        except requests.RequestException as exc:
            raise StoreUnavailable(f"InfluxDB at {self.url} does not answer: {exc.__class__.__name__}") from None
        if r.status_code >= 500:
            raise StoreUnavailable(f"InfluxDB at {self.url} answered {r.status_code}")
        if r.status_code >= 400:
            raise ValueError(f"InfluxDB refused the query ({r.status_code}): {r.text[:300]}")
        results = r.json().get("results", [])
        for res in results:
            if "error" in res:
                if "shutdown" in res["error"]:
                    raise StoreUnavailable(f"InfluxDB at {self.url} is shutting down")
                raise ValueError(f"InfluxDB query error: {res['error']} in {q[:200]}")
        return results

    def _frames(self, q: str) -> list[pd.DataFrame]:
        """One DataFrame per statement of ``q`` (';'-separated); tags of GROUP BY become columns."""
        out = []
        for res in self._query(q):
            frames = []
            for s in res.get("series", []):
                df = pd.DataFrame(s["values"], columns=s["columns"])
                for k, v in (s.get("tags") or {}).items():
                    df[k] = v
                frames.append(df)
            out.append(pd.concat(frames, ignore_index=True) if frames else pd.DataFrame())
        return out

    def _write_lines(self, lines: list[str]) -> None:
        """Write in batches of LINES_PER_REQUEST; spool on failure and behind an existing spool."""
        if self.read_only:
            if lines:
                raise PermissionError("influxdb.mode is read_only: LEG-Invoicing does not write to InfluxDB")
            return
        with self._write_lock:
            for i in range(0, len(lines), LINES_PER_REQUEST):
                body = "\n".join(lines[i:i + LINES_PER_REQUEST])
                if self.spool.head() is not None or not self._post(body):
                    self.spool.push(body)

    def _post(self, body: str, spooled_id: int | None = None) -> bool:
        try:
            r = self._http.post(f"{self.url}/write", params={**self._params, "precision": "u"},
                                data=body.encode(), timeout=self.timeout_s)
        except requests.RequestException as exc:
            self._note_down(f"{exc.__class__.__name__}")
            return False
        if r.status_code >= 500 or r.status_code in (404, 408, 429):
            self._note_down(f"HTTP {r.status_code}")
            return False
        if r.status_code >= 400:
            reason = f"InfluxDB refused a write ({r.status_code}): {r.text[:300]}"
            log.error("%s; the batch is kept in the spool's dead letters", reason)
            self.spool.bury(spooled_id, body, reason)
            return True
        if self._down_logged:
            log.warning("InfluxDB at %s answers again", self.url)
            self._down_logged = False
        return True

    def _note_down(self, why: str) -> None:
        if not self._down_logged:
            log.error("InfluxDB at %s unavailable (%s): writes go to the spool and are replayed in order",
                      self.url, why)
            self._down_logged = True

    def _replay_loop(self) -> None:
        while not self._stop.wait(self.replay_every_s):
            try:
                self.replay()
            except Exception:
                log.exception("spool replay failed (will retry)")

    def replay(self) -> int:
        """Send spooled batches, oldest first, until the spool is empty or InfluxDB fails."""
        sent = 0
        with self._write_lock:
            while True:
                head = self.spool.head()
                if head is None:
                    return sent
                ident, body = head
                if not self._post(body, spooled_id=ident):
                    return sent
                if self.spool.head() and self.spool.head()[0] == ident:
                    self.spool.pop(ident)
                sent += 1

    def health(self) -> dict:
        return {"backend": "influxdb", "url": self.url, "database": self.db, **self.spool.stats()}

    def snapshot_to(self, folder: Path) -> None:
        """The spool of writes InfluxDB has not taken yet (the readings themselves: ``influxd backup``)."""
        self.spool.backup_to(Path(folder) / SPOOL_FILE)

    def close(self) -> None:
        self._stop.set()
        self._replayer.join(10)
        self.spool.close()
        self._http.close()

    # -- raw readings -----------------------------------------------------------------------------
    def _reading_lines(self, df: pd.DataFrame) -> list[str]:
        lines = []
        for r in df.itertuples(index=False):
            house = self._house_of.get(r.meter_id, "")
            tags = f"meter_id={_esc_tag(r.meter_id)},mac={_esc_tag(r.meter_id)}" + \
                (f",house_id={_esc_tag(house)}" if house else "")
            fields = _fields({"import_kwh": r.import_kwh, "export_kwh": r.export_kwh,
                              "power_in_kw": r.power_in_kw, "power_out_kw": r.power_out_kw})
            lines.append(f"readings,{tags}{self._ctag} {fields} {_us(r.ts)}")
        return lines

    def write_readings(self, readings: pd.DataFrame) -> WriteResult:
        if readings.empty:
            return WriteResult()
        df = readings.reindex(columns=READING_COLUMNS).copy()
        df, dup_count, clashing = split_batch(df)
        conflicts = [clashing]
        # what is stored already (InfluxDB would silently replace it): compare, when it answers
        try:
            stored = self._existing(df)
        except StoreUnavailable:
            stored = None
        if stored is not None and len(stored):
            m = df.merge(stored, on=["meter_id", "ts"], how="left", suffixes=("", "_s"), indicator=True)
            known = (m["_merge"] == "both").to_numpy()
            same = known & _eq(m["import_kwh"], m["import_kwh_s"]) & _eq(m["export_kwh"], m["export_kwh_s"])
            dup_count += int(same.sum())
            conflicts.append(df[known & ~same])
            df = df[~known]
        self._write_lines(self._reading_lines(df))
        conflicts_df = pd.concat([c for c in conflicts if len(c)], ignore_index=True) \
            if any(len(c) for c in conflicts) else pd.DataFrame(columns=READING_COLUMNS)
        return WriteResult(inserted=len(df), duplicates=dup_count, conflicts=conflicts_df)

    def _existing(self, df: pd.DataFrame) -> pd.DataFrame:
        if df.empty:
            return df
        lo, hi = df["ts"].min(), df["ts"].max()
        got = self.read_readings_between(sorted(df["meter_id"].unique()), lo, hi, inclusive=True)
        return got[["meter_id", "ts", "import_kwh", "export_kwh"]] if len(got) else got

    def _readings_frame(self, df: pd.DataFrame) -> pd.DataFrame:
        if df.empty:
            return empty_readings()
        df = df.rename(columns={"time": "ts"})
        df["ts"] = pd.to_datetime(df["ts"], unit="us", utc=True).astype("datetime64[us, UTC]")
        for c in READING_COLUMNS[2:]:
            df[c] = pd.to_numeric(df[c], errors="coerce").astype("float64") if c in df else np.nan
        return df[READING_COLUMNS].sort_values(["meter_id", "ts"]).reset_index(drop=True)

    def read_readings_between(self, meter_ids, start, end, inclusive=False) -> pd.DataFrame:
        where = [f"time >= {_q_time(start)}", f"time {'<=' if inclusive else '<'} {_q_time(end)}"]
        if self.community:
            where.append(f"community = {_quote(self.community)}")
        if meter_ids is not None:
            where.append(f"meter_id =~ {_regex(meter_ids)}")
        q = ("SELECT import_kwh, export_kwh, power_in_kw, power_out_kw FROM readings WHERE "
             + " AND ".join(where) + " GROUP BY meter_id")
        return self._readings_frame(self._frames(q)[0])

    def read_readings(self, meter_id=None, start=None, end=None) -> pd.DataFrame:
        start = start if start is not None else pd.Timestamp("1970-01-01", tz="UTC")
        end = end if end is not None else pd.Timestamp("2200-01-01", tz="UTC")
        return self.read_readings_between([meter_id] if meter_id else None, start, end)

    def reading_window(self, meter_id, start, end, context=3) -> pd.DataFrame:
        return self.reading_windows({meter_id: (start, end)}, context)[meter_id]

    def reading_windows(self, spans, context=3, look_after=True) -> dict[str, pd.DataFrame]:
        if not spans:
            return {}
        stmts = []
        cols = "SELECT import_kwh, export_kwh, power_in_kw, power_out_kw FROM readings"
        for m, (lo, hi) in spans.items():
            tag = f"{self._cwhere}meter_id = {_quote(m)}"
            stmts.append(f"{cols} WHERE {tag} AND time < {_q_time(lo)} GROUP BY meter_id "
                         f"ORDER BY time DESC LIMIT {int(context)}")
            stmts.append(f"{cols} WHERE {tag} AND time >= {_q_time(lo)} AND time <= {_q_time(hi)} GROUP BY meter_id")
            if look_after:
                stmts.append(f"{cols} WHERE {tag} AND time > {_q_time(hi)} GROUP BY meter_id "
                             f"ORDER BY time ASC LIMIT {int(context)}")
        frames = []
        for i in range(0, len(stmts), 300):              # keep each request reasonable
            frames += self._frames(";".join(stmts[i:i + 300]))
        out, k = {}, 0
        for m in spans:
            n = 3 if look_after else 2
            parts = [f for f in frames[k:k + n] if len(f)]
            k += n
            df = pd.concat(parts, ignore_index=True) if parts else pd.DataFrame()
            if len(df) and "meter_id" not in df:
                df["meter_id"] = m
            out[m] = self._readings_frame(df)
        return out

    def neighbour_times(self, spans, look_after=True):
        w = self.reading_windows(spans, context=2, look_after=look_after)
        out = {}
        for m, (lo, hi) in spans.items():
            ts = w[m]["ts"]
            before, after = ts[ts < lo], ts[ts > hi]
            out[m] = (before.iloc[0] if len(before) else None, after.iloc[0] if len(after) else None)
        return out

    def last_readings(self, meter_ids) -> pd.DataFrame:
        if not meter_ids:
            return empty_readings()
        q = (f"SELECT import_kwh, export_kwh, power_in_kw, power_out_kw FROM readings "
             f"WHERE {self._cwhere}meter_id =~ {_regex(meter_ids)} GROUP BY meter_id ORDER BY time DESC LIMIT 1")
        return self._readings_frame(self._frames(q)[0])

    def reported_counters(self, meter_ids) -> dict[str, tuple[bool, bool]]:
        if not meter_ids:
            return {}
        df = self._frames(f"SELECT count(import_kwh), count(export_kwh) FROM readings "
                          f"WHERE {self._cwhere}meter_id =~ {_regex(meter_ids)} GROUP BY meter_id")[0]
        got = {}
        for r in df.to_dict("records"):
            got[r["meter_id"]] = (bool(r.get("count") or 0), bool(r.get("count_1") or 0))
        return {m: got.get(m, (False, False)) for m in meter_ids}

    def meter_ids(self) -> list[str]:
        scope = f" WHERE community = {_quote(self.community)}" if self.community else ""
        res = self._query(f"SHOW TAG VALUES FROM readings WITH KEY = meter_id{scope}")
        vals = [v[1] for s in res[0].get("series", []) for v in s["values"]]
        return sorted(vals)

    # -- derived intervals --------------------------------------------------------------------------
    def _house_tags(self) -> dict[str, str]:
        """house_id -> the tags of its house_energy points (house_id, and the MAC of its meter)."""
        macs: dict[str, str] = {}
        for m, h in self._house_of.items():
            macs.setdefault(h, m)
        return {h: f"house_id={_esc_tag(h)},mac={_esc_tag(m)}{self._ctag}" for h, m in macs.items()}

    def _house_tag(self, house_tags: dict[str, str], house_id) -> str:
        return house_tags.get(house_id, f"house_id={_esc_tag(house_id)}{self._ctag}")

    def _interval_lines(self, df: pd.DataFrame) -> list[str]:
        """house_energy points of the intervals (``_fields``' types; a row with a missing energy
        goes through ``_fields``, which leaves it out)."""
        house_tags = self._house_tags()
        tags = {h: self._house_tag(house_tags, h) for h in pd.unique(df["house_id"])}
        ei = df["delta_ei_kwh"].to_numpy(dtype=float)
        eo = df["delta_eo_kwh"].to_numpy(dtype=float)
        us = (pd.to_datetime(df["start"], utc=True).dt.as_unit("ns").astype("int64") // 1000).tolist()
        flags = df["flags"].fillna(0).astype(int).tolist()
        lines = []
        for h, a, b, f, u, whole in zip(df["house_id"].tolist(), ei.tolist(), eo.tolist(), flags, us,
                                        (~(np.isnan(ei) | np.isnan(eo))).tolist()):
            fields = (f"delta_ei_kwh={a!r},delta_eo_kwh={b!r},flags={f}i" if whole else
                      _fields({"delta_ei_kwh": a, "delta_eo_kwh": b, "flags": f}))
            lines.append(f"house_energy,{tags[h]} {fields} {u}")
        return lines

    def replace_intervals(self, house_id, start, end, intervals) -> None:
        df = intervals.reindex(columns=INTERVAL_COLUMNS).copy()
        df["house_id"] = house_id
        self._write_lines(self._interval_lines(df))

    def replace_intervals_many(self, spans, intervals) -> None:
        self._write_lines(self._interval_lines(intervals.reindex(columns=INTERVAL_COLUMNS)))

    def read_intervals(self, start, end, house_ids=None) -> pd.DataFrame:
        where = f"{self._cwhere}time >= {_q_time(start)} AND time < {_q_time(end)}"
        if house_ids is not None:
            if not len(house_ids):
                return pd.DataFrame(columns=INTERVAL_COLUMNS)
            where += f" AND house_id =~ {_regex(house_ids)}"
        if self.read_only:
            # another collector's deltas, at any cadence: summed into quarter hours
            df = self._frames(f"SELECT sum(delta_ei_kwh) AS delta_ei_kwh, sum(delta_eo_kwh) AS delta_eo_kwh "
                              f"FROM house_energy WHERE {where} GROUP BY time(15m), house_id fill(none)")[0]
            if len(df):
                df["flags"] = 0
        else:
            df = self._frames(f"SELECT delta_ei_kwh, delta_eo_kwh, flags FROM house_energy WHERE {where} "
                              f"GROUP BY house_id")[0]
        if df.empty:
            out = pd.DataFrame({c: pd.Series(dtype="float64") for c in INTERVAL_COLUMNS})
            out["house_id"] = out["house_id"].astype(object)
            out["start"] = pd.Series(dtype="datetime64[us, UTC]")
            out["flags"] = out["flags"].astype("uint8")
            return out
        df = df.rename(columns={"time": "start"})
        df["start"] = pd.to_datetime(df["start"], unit="us", utc=True).astype("datetime64[us, UTC]")
        df["flags"] = df["flags"].fillna(0).astype("uint8")
        df = df.dropna(subset=["delta_ei_kwh", "delta_eo_kwh"])
        return df[INTERVAL_COLUMNS].sort_values(["start", "house_id"]).reset_index(drop=True)

    def community_totals(self, start, end, house_ids) -> pd.DataFrame:
        cols = ["start", "total_consumption_kwh", "total_production_kwh", "houses"]
        if not len(house_ids):
            return pd.DataFrame(columns=cols)
        if self.read_only:
            iv = self.read_intervals(start, end, house_ids)
            g = iv.groupby("start")
            return pd.DataFrame({"total_consumption_kwh": g["delta_ei_kwh"].sum(),
                                 "total_production_kwh": g["delta_eo_kwh"].sum(),
                                 "houses": g.size().astype("int64")}).reset_index()[cols]
        q = (f"SELECT sum(delta_ei_kwh), sum(delta_eo_kwh), count(delta_ei_kwh) FROM house_energy "
             f"WHERE {self._cwhere}time >= {_q_time(start)} AND time < {_q_time(end)} "
             f"AND house_id =~ {_regex(house_ids)} "
             f"GROUP BY time(15m) fill(none)")
        df = self._frames(q)[0]
        if df.empty:
            out = pd.DataFrame({"start": pd.Series(dtype="datetime64[us, UTC]"),
                                "total_consumption_kwh": pd.Series(dtype="float64"),
                                "total_production_kwh": pd.Series(dtype="float64"),
                                "houses": pd.Series(dtype="int64")})
            return out
        df.columns = cols
        df["start"] = pd.to_datetime(df["start"], unit="us", utc=True).astype("datetime64[us, UTC]")
        df["houses"] = df["houses"].astype("int64")
        return df

    def community_buckets(self, start, end, bucket_s, house_ids) -> pd.DataFrame:
        if self.read_only or not len(house_ids):
            return super().community_buckets(start, end, bucket_s, house_ids)
        df = self._frames(
            f"SELECT sum(delta_ei_kwh), sum(delta_eo_kwh) FROM house_energy WHERE {self._cwhere}"
            f"time >= {_q_time(start)} "
            f"AND time < {_q_time(end)} AND house_id =~ {_regex(house_ids)} "
            f"GROUP BY time({int(bucket_s)}s) fill(none)")[0]
        cols = ["start", "total_consumption_kwh", "total_production_kwh"]
        if df.empty:
            return pd.DataFrame({c: pd.Series(dtype="float64") for c in cols}).astype(
                {"start": "datetime64[us, UTC]"})
        df.columns = cols
        df["start"] = pd.to_datetime(df["start"], unit="us", utc=True).astype("datetime64[us, UTC]")
        return df

    def house_sums(self, start, end, house_ids, prices) -> pd.DataFrame:
        return self._sums(self.read_intervals(start, end, house_ids), prices)

    def house_sums_at(self, start, end, house_ids, price_sets) -> list[pd.DataFrame]:
        iv = self.read_intervals(start, end, house_ids)        # a month of 25 houses: 0.6 s of InfluxDB's
        return [self._sums(iv, prices) for prices in price_sets]

    @staticmethod
    def _sums(iv: pd.DataFrame, prices: pd.DataFrame) -> pd.DataFrame:
        cols = ["house_id", "delta_ei_kwh", "delta_eo_kwh", "value_consumption_ct", "value_pv_delivery_ct",
                "intervals", "flags"]
        if iv.empty:
            return pd.DataFrame(columns=cols)
        m = iv.merge(prices[["start", "p_con", "p_pv"]], on="start", how="inner")
        m["value_consumption_ct"] = m["delta_ei_kwh"] * m["p_con"]
        m["value_pv_delivery_ct"] = m["delta_eo_kwh"] * m["p_pv"]
        g = m.groupby("house_id")
        out = pd.DataFrame({
            "delta_ei_kwh": g["delta_ei_kwh"].sum(), "delta_eo_kwh": g["delta_eo_kwh"].sum(),
            "value_consumption_ct": g["value_consumption_ct"].sum(),
            "value_pv_delivery_ct": g["value_pv_delivery_ct"].sum(),
            "intervals": g.size(), "flags": g["flags"].agg(lambda f: int(np.bitwise_or.reduce(f.to_numpy()))),
        }).reset_index()
        return out[cols].sort_values("house_id").reset_index(drop=True)

    def write_priced(self, house_values: pd.DataFrame, community: pd.DataFrame) -> None:
        """The section 9.3 value and tariff fields, for Grafana: house rows (house_id, start,
        value_consumption_ct, value_pv_delivery_ct, tariff_p_con, tariff_p_pv) and community rows."""
        house_tags = self._house_tags()
        lines = []
        for r in house_values.itertuples(index=False):
            tags = self._house_tag(house_tags, r.house_id)
            lines.append(f"house_energy,{tags} " + _fields({
                "value_consumption_ct": r.value_consumption_ct, "value_pv_delivery_ct": r.value_pv_delivery_ct,
                "tariff_p_con": r.tariff_p_con, "tariff_p_pv": r.tariff_p_pv}) + f" {_us(r.start)}")
        for r in community.itertuples(index=False):
            lines.append(f"community_energy{self._ctag} " + _fields({
                "total_consumption_kwh": r.total_consumption_kwh, "total_production_kwh": r.total_production_kwh,
                "grid_import_kwh": r.grid_import_kwh, "grid_export_kwh": r.grid_export_kwh,
                "value_grid_import_ct": r.value_grid_import_ct, "value_grid_export_ct": r.value_grid_export_ct,
                "tariff_p_grid_con": r.tariff_p_grid_con, "tariff_p_grid_del": r.tariff_p_grid_del})
                + f" {_us(r.start)}")
        self._write_lines(lines)

    # -- quarantine ----------------------------------------------------------------------------------
    def replace_quarantine(self, meter_id, start, end, rows) -> None:
        self.replace_quarantine_many({meter_id: (start, end)}, rows.assign(meter_id=meter_id))

    def replace_quarantine_many(self, spans, rows) -> None:
        lines = [f"quarantine,meter_id={_esc_tag(r.meter_id)}{self._ctag} "
                 + _fields({"import_kwh": r.import_kwh, "export_kwh": r.export_kwh, "reason": r.reason})
                 + f" {_us(r.ts)}" for r in rows.reindex(columns=QUARANTINE_COLUMNS).itertuples(index=False)]
        self._write_lines(lines)

    def read_quarantine(self, meter_id=None) -> pd.DataFrame:
        conds = ([f"community = {_quote(self.community)}"] if self.community else []) + \
            ([f"meter_id = {_quote(meter_id)}"] if meter_id else [])
        where = " WHERE " + " AND ".join(conds) if conds else ""
        df = self._frames(f"SELECT import_kwh, export_kwh, reason FROM quarantine{where} GROUP BY meter_id")[0]
        if df.empty:
            return pd.DataFrame(columns=QUARANTINE_COLUMNS)
        df = df.rename(columns={"time": "ts"})
        df["ts"] = pd.to_datetime(df["ts"], unit="us", utc=True).astype("datetime64[us, UTC]")
        return df[QUARANTINE_COLUMNS].sort_values(["meter_id", "ts"]).reset_index(drop=True)


def _eq(a: pd.Series, b: pd.Series) -> np.ndarray:
    a, b = a.to_numpy(dtype=float, na_value=np.nan), b.to_numpy(dtype=float, na_value=np.nan)
    return (a == b) | (np.isnan(a) & np.isnan(b))
