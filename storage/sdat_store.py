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
from datetime import datetime, timezone
from pathlib import Path

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
CREATE TABLE IF NOT EXISTS sdat_unknown (
    metering_point TEXT PRIMARY KEY,
    values_seen INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    last_file TEXT NOT NULL
);
"""


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
        values of metering points no house lists are counted as unknown, never stored for billing."""
        s = ImportSummary(doc.name, doc.document_id, doc.creation.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          refused=[str(r) for r in doc.refused])
        digest = hashlib.sha256(raw).hexdigest()
        creation = doc.creation.astimezone(timezone.utc).isoformat()
        now = datetime.now(timezone.utc).isoformat()
        rows, unknown = [], {}
        for series in doc.series:
            if series.metering_point not in known_points:
                unknown[series.metering_point] = unknown.get(series.metering_point, 0) + len(series.values)
                continue
            for at, (vol, cond) in series.values.items():
                rows.append((series.metering_point, series.product, at.isoformat(), series.direction,
                             float(vol), cond, doc.document_id, creation))
        s.points = len({r[0] for r in rows})
        s.unknown_points = sorted(unknown)
        with self._tx() as con:
            if con.execute("SELECT 1 FROM sdat_documents WHERE sha256 = ?", (digest,)).fetchone():
                s.already_imported = True
                s.unchanged = len(rows)
                return s
            for r in rows:
                old = con.execute("SELECT volume_kwh, condition, document_id, creation FROM sdat_values "
                                  "WHERE metering_point = ? AND product = ? AND start = ?", r[:3]).fetchone()
                if old is None:
                    con.execute("INSERT INTO sdat_values VALUES (?, ?, ?, ?, ?, ?, ?, ?)", r)
                    s.inserted += 1
                elif (r[7], r[6]) > (old[3], old[2]):
                    con.execute("UPDATE sdat_values SET direction = ?, volume_kwh = ?, condition = ?, "
                                "document_id = ?, creation = ? WHERE metering_point = ? AND product = ? "
                                "AND start = ?", (r[3], r[4], r[5], r[6], r[7], r[0], r[1], r[2]))
                    s.updated += 1 if (old[0], old[1]) != (r[4], r[5]) else 0
                    s.unchanged += 0 if (old[0], old[1]) != (r[4], r[5]) else 1
                else:
                    s.unchanged += 1
            for point, n in unknown.items():
                con.execute("INSERT INTO sdat_unknown VALUES (?, ?, ?, ?, ?) ON CONFLICT(metering_point) DO UPDATE "
                            "SET values_seen = values_seen + excluded.values_seen, last_seen = excluded.last_seen, "
                            "last_file = excluded.last_file", (point, n, now, now, doc.name[:200]))
            con.execute("INSERT INTO sdat_documents VALUES (?, ?, ?, ?, ?, ?)",
                        (digest, doc.document_id, creation, doc.name[:200], now,
                         json.dumps({"inserted": s.inserted, "updated": s.updated, "unchanged": s.unchanged,
                                     "unknown": s.unknown_points, "refused": s.refused[:100]})))
        return s

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
