"""The grid operator's quarter-hour values (SDAT-CH), kept in ``data_dir/sdat.sqlite``.

One row per metering point, product (total, LEG share, grid share) and quarter hour, with the
document it came from. DSOs send a file every day covering the last days again (estimated values
revised), so for each row the value of the document with the newest ``Creation`` wins, whatever
the order files are imported in (for equal creation times the greater document ID, so the outcome
never depends on the order); importing a file again changes nothing. A file of its own beside the
ledger: a year of a 25-house LEG is about 5 million rows, which the ledger (small, transactional)
should not carry; SQLite in WAL mode, safe for the app and a command line beside it.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from itertools import repeat
from pathlib import Path

import numpy as np
import pandas as pd

from ingest.sdat import SdatDocument

SCHEMA = """
CREATE TABLE IF NOT EXISTS sdat_documents (
    sha256 TEXT PRIMARY KEY,              -- the file's content: the same file imported again
    document_id TEXT NOT NULL,
    creation TEXT NOT NULL,
    file_name TEXT NOT NULL,
    imported_at TEXT NOT NULL,
    summary TEXT NOT NULL                 -- JSON: counts and refusals
);
CREATE TABLE IF NOT EXISTS sdat_values (
    metering_point TEXT NOT NULL,
    product TEXT NOT NULL,                -- total | leg | grid
    start TEXT NOT NULL,                  -- quarter-hour start, UTC, ISO
    direction TEXT NOT NULL,              -- consumption | production
    volume_kwh REAL NOT NULL,
    condition TEXT,                       -- the DSO's Condition code (e.g. 21: estimated), NULL if none
    document_id TEXT NOT NULL,
    creation TEXT NOT NULL,
    PRIMARY KEY (metering_point, product, start)
) WITHOUT ROWID;
CREATE TABLE IF NOT EXISTS sdat_points (    -- per known metering point: its last delivery (the Meters page)
    metering_point TEXT PRIMARY KEY,
    direction TEXT NOT NULL,
    last_start TEXT NOT NULL,             -- the latest quarter hour any document delivered, UTC, ISO
    document_id TEXT NOT NULL,            -- the newest document (by Creation) that delivered the point
    creation TEXT NOT NULL,
    file_name TEXT NOT NULL,
    imported_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sdat_unknown (
    metering_point TEXT PRIMARY KEY,
    values_seen INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    last_file TEXT NOT NULL
);
"""
# per import, in the connection's temporary database: the document's values before they are merged
STAGING = """
CREATE TEMP TABLE IF NOT EXISTS sdat_stage (metering_point TEXT, product TEXT, start TEXT, direction TEXT,
                                            volume_kwh REAL, condition TEXT);
"""
_ISO: dict[int, str] = {}                 # quarter hour since the epoch -> its start as stored (UTC, ISO)


def _iso_quarters(quarters: list[int]) -> list[str]:
    """The ISO starts of quarter hours (seconds since the epoch / 900), as datetime.isoformat() writes them."""
    iso = _ISO
    missing = [q for q in set(quarters) if q not in iso] if len(iso) < 2_000_000 else None
    if missing is None:
        iso.clear()
        missing = set(quarters)
    for q in missing:
        iso[q] = datetime.fromtimestamp(q * 900, timezone.utc).isoformat()
    return [iso[q] for q in quarters]


@dataclass
class ImportSummary:
    file_name: str
    document_id: str | None = None
    creation: str | None = None
    points: int = 0
    inserted: int = 0                      # quarter-hour values new to the store
    updated: int = 0                       # replaced by this newer document
    unchanged: int = 0                     # same or newer value already stored
    unknown_points: list[str] = field(default_factory=list)
    refused: list[str] = field(default_factory=list)
    error: str | None = None               # the whole file could not be used
    already_imported: bool = False

    @property
    def imported_anything(self) -> bool:
        return self.error is None and (self.inserted + self.updated + self.unchanged) > 0

    def line(self) -> str:
        if self.error:
            return f"{self.file_name}: refused: {self.error}"
        head = f"{self.file_name}: document {self.document_id} of {self.creation}"
        if self.already_imported:
            return f"{head}: imported before, nothing changed"
        parts = [f"{self.points} metering points", f"{self.inserted} quarter-hour values new",
                 f"{self.updated} revised", f"{self.unchanged} unchanged or older"]
        if self.unknown_points:
            parts.append(f"{len(self.unknown_points)} unknown metering points not billed: "
                         + ", ".join(self.unknown_points[:5]) + (" ..." if len(self.unknown_points) > 5 else ""))
        if self.refused:
            parts.append(f"{len(self.refused)} refused")
        return f"{head}: " + "; ".join(parts)


class SdatStore:
    def __init__(self, path: Path):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self._con = sqlite3.connect(self.path, timeout=30, isolation_level=None, check_same_thread=False)
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.executescript(SCHEMA)
        self._con.executescript(STAGING)
        self._fill_points()

    def _fill_points(self) -> None:
        """A store written before ``sdat_points`` existed: its points' last deliveries, once."""
        if self._con.execute("SELECT 1 FROM sdat_points LIMIT 1").fetchone() or \
                not self._con.execute("SELECT 1 FROM sdat_values LIMIT 1").fetchone():
            return
        with self._tx() as con:
            # the bare columns come from the row of max(creation) (SQLite's rule for one min/max)
            con.execute("INSERT OR IGNORE INTO sdat_points SELECT v.metering_point, v.direction, "
                        "(SELECT max(start) FROM sdat_values w WHERE w.metering_point = v.metering_point), "
                        "v.document_id, max(v.creation), coalesce(d.file_name, ''), coalesce(d.imported_at, '') "
                        "FROM sdat_values v LEFT JOIN sdat_documents d ON d.document_id = v.document_id "
                        "GROUP BY v.metering_point")

    def close(self) -> None:
        self._con.close()

    @contextmanager
    def _tx(self):
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    def import_document(self, doc: SdatDocument, raw: bytes, known_points: set[str]) -> ImportSummary:
        """Store the document's values (newest Creation wins per point, product and quarter hour);
        values of metering points no house lists are counted as unknown, never stored for billing.

        In bulk: the values go into a temporary staging table (one ``executemany`` per series),
        the counts come from one join with the stored rows and the store is changed by one
        ``INSERT ... ON CONFLICT DO UPDATE WHERE`` newer, all inside SQLite."""
        s = ImportSummary(doc.name, doc.document_id, doc.creation.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          refused=[str(r) for r in doc.refused])
        digest = hashlib.sha256(raw).hexdigest()
        creation = doc.creation.astimezone(timezone.utc).isoformat()
        now = datetime.now(timezone.utc).isoformat()
        known, unknown = [], {}
        for series in doc.series:
            if series.metering_point not in known_points:
                unknown[series.metering_point] = unknown.get(series.metering_point, 0) + len(series)
            else:
                known.append(series)
        staged = sum(len(series) for series in known)
        s.points = len({series.metering_point for series in known if len(series)})
        s.unknown_points = sorted(unknown)
        with self._tx() as con:
            if con.execute("SELECT 1 FROM sdat_documents WHERE sha256 = ?", (digest,)).fetchone():
                s.already_imported = True
                s.unchanged = staged
                return s
            if staged:
                self._merge(con, known, staged, doc.document_id, creation, s)
                self._delivered(con, known, doc, creation, now)
            for point, n in unknown.items():
                con.execute("INSERT INTO sdat_unknown VALUES (?, ?, ?, ?, ?) ON CONFLICT(metering_point) DO UPDATE "
                            "SET values_seen = values_seen + excluded.values_seen, last_seen = excluded.last_seen, "
                            "last_file = excluded.last_file", (point, n, now, now, doc.name[:200]))
            con.execute("INSERT INTO sdat_documents VALUES (?, ?, ?, ?, ?, ?)",
                        (digest, doc.document_id, creation, doc.name[:200], now,
                         json.dumps({"inserted": s.inserted, "updated": s.updated, "unchanged": s.unchanged,
                                     "unknown": s.unknown_points, "refused": s.refused[:100]})))
        return s

    @staticmethod
    def _delivered(con, series_list, doc: SdatDocument, creation: str, now: str) -> None:
        """Each point's last delivery: the latest quarter hour ever delivered, and the newest document."""
        last: dict[str, tuple[str, str]] = {}
        for x in series_list:
            if len(x):
                end = (x.start + timedelta(minutes=15 * int(x.offsets.max()))).astimezone(timezone.utc).isoformat()
                last[x.metering_point] = (x.direction, max(end, last.get(x.metering_point, ("", ""))[1]))
        for point, (direction, end) in last.items():
            con.execute("INSERT INTO sdat_points VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(metering_point) DO UPDATE "
                        "SET last_start = max(sdat_points.last_start, excluded.last_start)",
                        (point, direction, end, doc.document_id, creation, doc.name[:200], now))
            con.execute("UPDATE sdat_points SET direction = ?, document_id = ?, creation = ?, file_name = ?, "
                        "imported_at = ? WHERE metering_point = ? AND (creation, document_id) <= (?, ?)",
                        (direction, doc.document_id, creation, doc.name[:200], now, point, creation, doc.document_id))

    def points(self) -> list[dict]:
        """The known metering points' last deliveries: metering_point, direction, last_start (the
        latest quarter hour delivered), document_id and creation of the newest document,
        file_name, imported_at (UTC, ISO)."""
        keys = ("metering_point", "direction", "last_start", "document_id", "creation", "file_name", "imported_at")
        cur = self._con.execute(f"SELECT {', '.join(keys)} FROM sdat_points ORDER BY metering_point")
        return [dict(zip(keys, r)) for r in cur]

    @staticmethod
    def _merge(con, series_list, staged: int, document_id: str, creation: str, s: ImportSummary) -> None:
        seen: dict[tuple[str, str], set[int]] = {}            # a key twice in the document: the first counts
        try:
            for x in series_list:
                q0 = int(x.start.timestamp()) // 900
                mine = seen.setdefault((x.metering_point, x.product), set())
                by_code: dict[str, list[int]] = {}
                for off, code in x.conditions.items():
                    by_code.setdefault(code, []).append(off)
                if not mine and len(by_code) <= 8 and np.array_equal(x.offsets, np.arange(len(x))):
                    # one statement per series: SQLite reads the volumes from a JSON array (the float's
                    # shortest repr, read back to the same double) and the conditions by code
                    case = ("CASE " + " ".join("WHEN v.key IN (SELECT value FROM json_each(?)) THEN ?" for _ in by_code)
                            + " END") if by_code else "NULL"
                    args = [x.metering_point, x.product, q0, x.direction]
                    for code, offs in by_code.items():
                        args += [json.dumps(offs), code]
                    con.execute("INSERT INTO temp.sdat_stage SELECT ?, ?, strftime('%Y-%m-%dT%H:%M:%S+00:00', "
                                f"(? + v.key) * 900, 'unixepoch'), ?, v.value, {case} FROM json_each(?) v",
                                args + [json.dumps(x.volumes.tolist())])
                    mine.update(range(q0, q0 + len(x)))
                    continue
                quarters = (x.offsets + q0).tolist()
                volumes = x.volumes.tolist()
                conds = [x.conditions.get(o) for o in x.offsets.tolist()]
                if mine:
                    keep = [k for k, q in enumerate(quarters) if q not in mine]
                    quarters, volumes, conds = ([v[k] for k in keep] for v in (quarters, volumes, conds))
                mine.update(quarters)
                con.executemany("INSERT INTO temp.sdat_stage VALUES (?, ?, ?, ?, ?, ?)",
                                zip(repeat(x.metering_point), repeat(x.product), _iso_quarters(quarters),
                                    repeat(x.direction), volumes, conds))
            inserted, updated, newer = con.execute(
                "SELECT count(*) - count(v.metering_point), "
                "coalesce(sum((?, ?) > (v.creation, v.document_id) AND (v.volume_kwh IS NOT n.volume_kwh "
                "OR v.condition IS NOT n.condition)), 0), "
                "coalesce(sum((?, ?) > (v.creation, v.document_id)), 0) "
                "FROM temp.sdat_stage n LEFT JOIN sdat_values v ON v.metering_point = n.metering_point "
                "AND v.product = n.product AND v.start = n.start",
                (creation, document_id, creation, document_id)).fetchone()
            if inserted or newer:
                con.execute(
                    "INSERT INTO sdat_values SELECT metering_point, product, start, direction, volume_kwh, condition, "
                    "?, ? FROM temp.sdat_stage WHERE true ON CONFLICT (metering_point, product, start) DO UPDATE "
                    "SET direction = excluded.direction, volume_kwh = excluded.volume_kwh, "
                    "condition = excluded.condition, document_id = excluded.document_id, creation = excluded.creation "
                    "WHERE (excluded.creation, excluded.document_id) > (sdat_values.creation, sdat_values.document_id)",
                    (document_id, creation))
            s.inserted, s.updated = inserted, updated
            s.unchanged = staged - inserted - updated
        finally:
            con.execute("DELETE FROM temp.sdat_stage")

    def values(self, start: pd.Timestamp, end: pd.Timestamp, points: list[str] | None = None) -> pd.DataFrame:
        """Rows with start <= quarter hour < end: metering_point, product, start (UTC), direction,
        volume_kwh, condition."""
        q = ("SELECT metering_point, product, start, direction, volume_kwh, condition FROM sdat_values "
             "WHERE start >= ? AND start < ?")
        args: list = [pd.Timestamp(start).tz_convert("UTC").isoformat(), pd.Timestamp(end).tz_convert("UTC").isoformat()]
        if points is not None:
            if not points:
                return pd.DataFrame(columns=["metering_point", "product", "start", "direction", "volume_kwh", "condition"])
            q += f" AND metering_point IN ({','.join('?' * len(points))})"
            args += list(points)
        df = pd.read_sql_query(q, self._con, params=args)
        df["start"] = pd.to_datetime(df["start"], utc=True)
        return df

    def span(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        lo, hi = self._con.execute("SELECT min(start), max(start) FROM sdat_values").fetchone()
        return None if lo is None else (pd.Timestamp(lo), pd.Timestamp(hi))

    def unknown(self) -> list[dict]:
        cur = self._con.execute("SELECT metering_point, values_seen, first_seen, last_seen, last_file FROM sdat_unknown "
                                "ORDER BY last_seen DESC LIMIT 1000")
        return [dict(zip(("metering_point", "values", "first_seen", "last_seen", "file"), r)) for r in cur]

    def documents(self) -> int:
        return self._con.execute("SELECT count(*) FROM sdat_documents").fetchone()[0]
