"""The grid operator's quarter-hour values (SDAT-CH), kept in ``data_dir/sdat.sqlite``.

A row of ``sdat_days`` holds one metering point's product (total, LEG share, grid share) over one
UTC day: its 96 volumes, the source document of each and their conditions. DSOs send a file every
day covering the last days again (estimated values revised), so for each quarter hour the value
of the document with the newest ``Creation`` wins, whatever the order files are imported in (for
equal creation times the greater document ID, so the outcome never depends on the order);
importing a file again changes nothing. A day row per point and product keeps a year of a
200-point LEG at 219,000 rows instead of 21 million, and an import reads and writes some 3,600 of
them. A file of its own beside the ledger (small, transactional); SQLite in WAL mode, safe for
the app and a command line beside it. A store of an earlier version (a row per quarter hour) is
moved to day rows when opened.
"""
from __future__ import annotations

import hashlib
import json
import sqlite3
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta, timezone
from pathlib import Path

import numpy as np
import pandas as pd

from ingest.sdat import SdatDocument

SLOTS = 96                                # quarter hours of a UTC day: a row of sdat_days
SCHEMA = """
CREATE TABLE IF NOT EXISTS sdat_documents (
    sha256 TEXT PRIMARY KEY,              -- the file's content: the same file imported again
    document_id TEXT NOT NULL,
    creation TEXT NOT NULL,
    file_name TEXT NOT NULL,
    imported_at TEXT NOT NULL,
    summary TEXT NOT NULL                 -- JSON: counts and refusals
);
CREATE TABLE IF NOT EXISTS sdat_sources (   -- what a value came from: the newest (creation, document_id) wins
    id INTEGER PRIMARY KEY,
    document_id TEXT NOT NULL,
    creation TEXT NOT NULL,               -- UTC, ISO
    UNIQUE (document_id, creation)
);
CREATE TABLE IF NOT EXISTS sdat_days (      -- a metering point's product over one UTC day: 96 quarter hours
    metering_point TEXT NOT NULL,
    product TEXT NOT NULL,                -- total | leg | grid
    day INTEGER NOT NULL,                 -- days since 1970-01-01 UTC: quarter hour (s since the epoch / 900) // 96
    direction TEXT NOT NULL,              -- consumption | production (of the newest document)
    volumes BLOB NOT NULL,                -- 96 float64 (little-endian), kWh; NaN where no value
    sources BLOB NOT NULL,                -- 96 int32 (little-endian): sdat_sources.id of each value, 0 where none
    conditions TEXT,                      -- the DSO's Condition code per quarter hour joined by '|' ('' where none),
                                          -- NULL when none is set that day
    PRIMARY KEY (metering_point, product, day)
) WITHOUT ROWID;
CREATE INDEX IF NOT EXISTS sdat_days_by_day ON sdat_days (day, product);
CREATE TABLE IF NOT EXISTS sdat_points (    -- per known metering point: its last delivery (the Meters page)
    metering_point TEXT PRIMARY KEY,
    direction TEXT NOT NULL,
    last_start TEXT NOT NULL,             -- the latest quarter hour any document delivered, UTC, ISO
    document_id TEXT NOT NULL,            -- the newest document (by Creation) that delivered the point
    creation TEXT NOT NULL,
    file_name TEXT NOT NULL,
    imported_at TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sdat_pending (   -- quarter hours whose houses' intervals are still to be derived
    id INTEGER PRIMARY KEY,
    first INTEGER NOT NULL,               -- quarter hours (s since the epoch / 900), [first, end)
    end INTEGER NOT NULL,
    houses TEXT                           -- JSON list of house ids; NULL: every house billed from SDAT data
);
CREATE TABLE IF NOT EXISTS sdat_billing (   -- the houses' metering points when their intervals were last derived
    metering_point TEXT PRIMARY KEY,
    house_id TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS sdat_unknown (
    metering_point TEXT PRIMARY KEY,
    values_seen INTEGER NOT NULL,
    first_seen TEXT NOT NULL,
    last_seen TEXT NOT NULL,
    last_file TEXT NOT NULL
);
"""
_F8, _I4 = np.dtype("<f8"), np.dtype("<i4")
_BILLING_RECORDED = 1                     # PRAGMA user_version from which sdat_billing is kept
_VALUE_COLUMNS = ["metering_point", "product", "start", "direction", "volume_kwh", "condition"]


def content_digest(raw: bytes) -> str:
    """A file's identity: the SHA-256 of its content (the same file imported again changes nothing)."""
    return hashlib.sha256(raw).hexdigest()


def _iso(quarter: int) -> str:
    """A quarter hour (seconds since the epoch / 900) as stored in sdat_points (UTC, ISO)."""
    return datetime.fromtimestamp(int(quarter) * 900, timezone.utc).isoformat()


class _Codes:
    """Condition codes as small integers within one read or import (0: none), so that a day's
    codes are compared and copied as numbers; a day's text is split, and joined, once per
    distinct text (a day is usually all estimated or not at all)."""

    def __init__(self):
        self.names: list[str | None] = [None]
        self._ids: dict[str, int] = {}
        self._parsed: dict[str, np.ndarray] = {}
        self._texts: dict[bytes, str] = {}

    def id(self, code: str) -> int:
        i = self._ids.get(code)
        if i is None:
            i = self._ids[code] = len(self.names)
            self.names.append(code)
        return i

    def ids(self, codes: list[str]) -> list[int]:
        known = {c: self.id(c) for c in set(codes)}
        return list(map(known.__getitem__, codes))

    def parse(self, text: str) -> np.ndarray:
        """A day's stored text (codes joined by '|', '' where none) as 96 ids."""
        got = self._parsed.get(text)
        if got is None:
            got = self._parsed[text] = np.array([self.id(c) if c else 0 for c in text.split("|")], np.uint16)
        return got

    def text(self, day: np.ndarray) -> str | None:
        """96 ids as stored: None when no quarter hour has a code."""
        if not day.any():
            return None
        key = day.tobytes()
        got = self._texts.get(key)
        if got is None:
            got = self._texts[key] = "|".join(self.names[i] or "" for i in day.tolist())
        return got

    def objects(self, ids: np.ndarray) -> np.ndarray:
        """ids as an object array of the codes (None where none)."""
        return np.array(self.names, dtype=object)[ids]


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
    changed: tuple[datetime, datetime] | None = None   # [first, end) of the quarter hours new or revised, UTC
    pending_id: int | None = None          # the span recorded as still to be derived (import_document's derive)

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
        # 16 KiB pages: a day row (about 1.2 KB) then stays in its B-tree page; in 4 KiB pages
        # SQLite moves a row of a WITHOUT ROWID table over 1,000 bytes to overflow pages, and a
        # 600-series file took 0.22 s to store and derive instead of 0.16 s. Set when the file is
        # created (a store created with smaller pages keeps them).
        self._con.execute("PRAGMA page_size=16384")
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA synchronous=NORMAL")
        self._con.execute("PRAGMA cache_size=-65536")         # 64 MiB: an import's day rows stay in memory
        self._con.execute("PRAGMA wal_autocheckpoint=4096")   # pages (64 MiB): an import's rows rewritten by the next
        self._con.executescript(SCHEMA)
        self._upgrade_rows()
        self._fill_points()

    def close(self) -> None:
        self._con.close()

    def backup_to(self, path: str | Path) -> None:
        """A consistent copy in one self-contained file (SQLite's online backup, the write-ahead
        log included); an import meanwhile waits for it (one connection, serialized by SQLite)."""
        from storage.sqlite_copy import copy_database
        copy_database(self._con, path)

    @contextmanager
    def _tx(self):
        self._con.execute("BEGIN IMMEDIATE")
        try:
            yield self._con
        except BaseException:
            self._con.execute("ROLLBACK")
            raise
        self._con.execute("COMMIT")

    # -- import ------------------------------------------------------------------------------------
    def import_document(self, doc: SdatDocument, digest: str, known_points: set[str],
                        derive: bool = False) -> ImportSummary:
        """Store the document's values (``digest``: the file's SHA-256, ``content_digest``) (newest
        Creation wins per point, product and quarter hour). Values of metering points no house
        lists are stored too but counted apart, as unknown: never billed, and derived once a house
        lists the point (``sync_billing``). With ``derive`` the quarter hours that changed for the
        known points are recorded as pending in the same transaction (``pending``), so that an
        import interrupted before the intervals were derived is derived later.

        A row of ``sdat_days`` holds a point's product over a UTC day (96 quarter hours, DST never
        changes it) with the source of every value: a file of 600 series touches some 3,600 rows,
        read once, merged with numpy and written back in one transaction."""
        s = ImportSummary(doc.name, doc.document_id, doc.creation.strftime("%Y-%m-%dT%H:%M:%SZ"),
                          refused=[str(r) for r in doc.refused])
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
            if staged or unknown:
                self._merge(con, doc.series, doc.document_id, creation, s, known_points)
            if staged:
                self._delivered(con, known, doc, creation, now)
            if derive and s.changed:
                s.pending_id = con.execute("INSERT INTO sdat_pending (first, end) VALUES (?, ?)",
                                           (int(s.changed[0].timestamp()) // 900,
                                            int(s.changed[1].timestamp()) // 900)).lastrowid
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
    def _source(con, document_id: str, creation: str) -> tuple[int, np.ndarray]:
        """The id of the document's source, and every source's rank by (creation, document_id)
        (index: source id; the greater rank is the newer document)."""
        con.execute("INSERT OR IGNORE INTO sdat_sources (document_id, creation) VALUES (?, ?)", (document_id, creation))
        rows = con.execute("SELECT id, creation, document_id FROM sdat_sources").fetchall()
        rank = np.zeros(max(r[0] for r in rows) + 1, dtype=np.int64)       # 0: no value
        for k, (sid, *_) in enumerate(sorted(rows, key=lambda r: (r[1], r[2])), start=1):
            rank[sid] = k
        mine = con.execute("SELECT id FROM sdat_sources WHERE document_id = ? AND creation = ?",
                           (document_id, creation)).fetchone()[0]
        return mine, rank

    def _merge(self, con, series_list, document_id: str, creation: str, s: ImportSummary, counted: set[str]) -> None:
        """All series of the document at once on a grid of cells: one per (point, product) and
        quarter hour of the UTC days the document touches, filled from the stored day rows. The
        summary's counts and changed quarter hours are those of the ``counted`` points."""
        series_list = [x for x in series_list if len(x)]
        if not series_list:
            return
        source, rank = self._source(con, document_id, creation)
        groups: dict[tuple[str, str], int] = {}
        for x in series_list:
            groups.setdefault((x.metering_point, x.product), len(groups))
        quarters = [(int(x.start.timestamp()) // 900) + x.offsets for x in series_list]
        lo = min(int(q.min()) for q in quarters) // SLOTS
        hi = max(int(q.max()) for q in quarters) // SLOTS
        days = hi - lo + 1
        width = days * SLOTS                                    # cells of a group
        vol = np.full(len(groups) * width, np.nan, dtype=_F8)
        src = np.zeros(len(groups) * width, dtype=_I4)
        table = _Codes()
        codes = np.zeros(len(groups) * width, dtype=np.uint16)
        found_g, found_d, vol_blobs, src_blobs = [], [], [], []
        for point, product, day, v, sr, cond in con.execute(
                "SELECT metering_point, product, day, volumes, sources, conditions FROM sdat_days "
                "WHERE day BETWEEN ? AND ?", (lo, hi)):
            g = groups.get((point, product))
            if g is not None:
                found_g.append(g)
                found_d.append(day - lo)
                vol_blobs.append(v)
                src_blobs.append(sr)
                if cond:
                    at = g * width + (day - lo) * SLOTS
                    codes[at:at + SLOTS] = table.parse(cond)
        if found_g:
            cells = (np.array(found_g) * width + np.array(found_d) * SLOTS)[:, None] + np.arange(SLOTS)
            vol[cells] = np.frombuffer(b"".join(vol_blobs), _F8).reshape(-1, SLOTS)
            src[cells] = np.frombuffer(b"".join(src_blobs), _I4).reshape(-1, SLOTS)
        # the document's values on that grid, in document order
        keys = np.concatenate([groups[(x.metering_point, x.product)] * width + (q - lo * SLOTS)
                               for x, q in zip(series_list, quarters)])
        vols = np.concatenate([x.volumes for x in series_list])
        cond = np.zeros(len(keys), dtype=np.uint16)
        at = 0
        for x in series_list:
            if x.conditions:
                if int(x.offsets[0]) == 0 and int(x.offsets[-1]) == len(x) - 1:        # offsets 0, 1, ... n-1
                    cond[at + np.fromiter(x.conditions, np.int64, len(x.conditions))] = table.ids(list(x.conditions.values()))
                else:
                    pos = {int(o): k for k, o in enumerate(x.offsets.tolist())}
                    for o, code in x.conditions.items():
                        cond[at + pos[o]] = table.id(code)
            at += len(x)
        mine = np.concatenate([np.full(len(x), x.metering_point in counted) for x in series_list])
        if np.bincount(keys, minlength=len(vol)).max() > 1:    # a key twice in the document: the first counts
            _, first = np.unique(keys, return_index=True)
            keys, vols, cond, mine = keys[first], vols[first], cond[first], mine[first]
        was = src[keys]
        new = was == 0
        newer = ~new & (rank[was] < rank[source])
        changed = newer & ((vol[keys] != vols) | (codes[keys] != cond))
        write = new | newer
        w = keys[write]
        vol[w], src[w], codes[w] = vols[write], source, cond[write]
        differs = keys[(new | changed) & mine]
        s.inserted, s.updated = int(np.count_nonzero(new & mine)), int(np.count_nonzero(changed & mine))
        s.unchanged = sum(len(x) for x in series_list if x.metering_point in counted) - s.inserted - s.updated
        if len(differs):
            q = differs % width + lo * SLOTS
            s.changed = (datetime.fromtimestamp(int(q.min()) * 900, timezone.utc),
                         datetime.fromtimestamp((int(q.max()) + 1) * 900, timezone.utc))
        # the day rows written: every (group, day) with a value written
        rows_at = np.flatnonzero(np.bincount(w // SLOTS, minlength=len(groups) * days))    # group * days + day
        direction = {groups[(x.metering_point, x.product)]: x.direction for x in series_list}
        names = {g: key for key, g in groups.items()}
        codes2 = codes.reshape(-1, SLOTS)[rows_at]
        vol_bytes, src_bytes = vol.reshape(-1, SLOTS)[rows_at].tobytes(), src.reshape(-1, SLOTS)[rows_at].tobytes()
        nv, ns = SLOTS * _F8.itemsize, SLOTS * _I4.itemsize
        rows = []
        for i, (r, coded) in enumerate(zip(rows_at.tolist(), codes2.any(axis=1).tolist())):
            g, d = divmod(r, days)
            rows.append((*names[g], lo + d, direction[g], vol_bytes[i * nv:(i + 1) * nv], src_bytes[i * ns:(i + 1) * ns],
                         table.text(codes2[i]) if coded else None))
        con.executemany("INSERT INTO sdat_days VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT (metering_point, product, day) "
                        "DO UPDATE SET direction = excluded.direction, volumes = excluded.volumes, "
                        "sources = excluded.sources, conditions = excluded.conditions", rows)

    @staticmethod
    def _delivered(con, series_list, doc: SdatDocument, creation: str, now: str) -> None:
        """Each point's last delivery: the latest quarter hour ever delivered, and the newest document."""
        last: dict[str, tuple[str, str]] = {}
        for x in series_list:
            if len(x):
                end = (x.start + timedelta(minutes=15 * int(x.offsets.max()))).astimezone(timezone.utc).isoformat()
                last[x.metering_point] = (x.direction, max(end, last.get(x.metering_point, ("", ""))[1]))
        con.executemany("INSERT INTO sdat_points VALUES (?, ?, ?, ?, ?, ?, ?) ON CONFLICT(metering_point) DO UPDATE "
                        "SET last_start = max(sdat_points.last_start, excluded.last_start)",
                        [(point, direction, end, doc.document_id, creation, doc.name[:200], now)
                         for point, (direction, end) in last.items()])
        con.executemany("UPDATE sdat_points SET direction = ?, document_id = ?, creation = ?, file_name = ?, "
                        "imported_at = ? WHERE metering_point = ? AND (creation, document_id) <= (?, ?)",
                        [(direction, doc.document_id, creation, doc.name[:200], now, point, creation, doc.document_id)
                         for point, (direction, _) in last.items()])

    # -- deriving ----------------------------------------------------------------------------------
    def pending(self) -> list[tuple[int, datetime, datetime, list[str] | None]]:
        """Spans whose intervals are still to be derived: (id, start, end, houses or None for all)."""
        return [(i, datetime.fromtimestamp(a * 900, timezone.utc), datetime.fromtimestamp(b * 900, timezone.utc),
                 json.loads(h) if h else None)
                for i, a, b, h in self._con.execute("SELECT id, first, end, houses FROM sdat_pending ORDER BY id")]

    def forget_pending(self, pending_id: int) -> None:
        self._con.execute("DELETE FROM sdat_pending WHERE id = ?", (pending_id,))

    def sync_billing(self, point_houses: dict[str, str]) -> int:
        """Compare the houses' metering points with those of the last derivation: for every point
        added, removed or moved to another house, its houses (before and after) are recorded as
        pending over the point's stored values. The number of points that changed. A store that
        has never recorded them (a new store, or one of an earlier version, whose intervals were
        derived for the points of its time) only records them."""
        with self._tx() as con:
            first_time = con.execute("PRAGMA user_version").fetchone()[0] < _BILLING_RECORDED
            before = dict(con.execute("SELECT metering_point, house_id FROM sdat_billing"))
            moved = {p for p in before.keys() | point_houses.keys() if before.get(p) != point_houses.get(p)}
            if first_time:
                con.execute(f"PRAGMA user_version = {_BILLING_RECORDED}")
            if not moved:
                return 0
            con.execute("DELETE FROM sdat_billing")
            con.executemany("INSERT INTO sdat_billing VALUES (?, ?)", sorted(point_houses.items()))
            if first_time:
                return 0
            span = con.execute(f"SELECT min(day), max(day) FROM sdat_days WHERE metering_point IN "
                               f"({','.join('?' * len(moved))})", sorted(moved)).fetchone()
            if span[0] is None:
                return len(moved)                             # no values of those points yet
            houses = sorted({h for p in moved for h in (before.get(p), point_houses.get(p)) if h is not None})
            con.execute("INSERT INTO sdat_pending (first, end, houses) VALUES (?, ?, ?)",
                        (span[0] * SLOTS, (span[1] + 1) * SLOTS, json.dumps(houses)))
            return len(moved)

    # -- reading -----------------------------------------------------------------------------------
    def _days(self, lo: int, hi: int, points: list[str] | None, product: str | None = None):
        q = ("SELECT metering_point, product, day, direction, volumes, sources, conditions FROM sdat_days "
             "WHERE day BETWEEN ? AND ?")
        args: list = [lo, hi]
        if product is not None:
            q += " AND product = ?"
            args.append(product)
        if points is not None:
            q += f" AND metering_point IN ({','.join('?' * len(points))})"
            args += list(points)
        return self._con.execute(q, args).fetchall()

    def values(self, start: pd.Timestamp, end: pd.Timestamp, points: list[str] | None = None,
               product: str | None = None) -> pd.DataFrame:
        """Rows with start <= quarter hour < end: metering_point, product, start (UTC), direction,
        volume_kwh, condition (of one ``product`` only, if given)."""
        q0 = int(pd.Timestamp(start).timestamp()) // 900
        q1 = -(-int(pd.Timestamp(end).timestamp()) // 900)
        if points is not None and not points:
            return pd.DataFrame(columns=_VALUE_COLUMNS)
        rows = self._days(q0 // SLOTS, (q1 - 1) // SLOTS, points, product)
        if not rows:
            return pd.DataFrame(columns=_VALUE_COLUMNS)
        n = len(rows)
        vol = np.frombuffer(b"".join(r[4] for r in rows), _F8).reshape(n, SLOTS)
        src = np.frombuffer(b"".join(r[5] for r in rows), _I4).reshape(n, SLOTS)
        quarter = np.array([r[2] for r in rows], np.int64)[:, None] * SLOTS + np.arange(SLOTS)
        keep = (src != 0) & (quarter >= q0) & (quarter < q1)
        row_of, slot = np.nonzero(keep)
        table = _Codes()
        codes = np.zeros((n, SLOTS), dtype=np.uint16)
        for k, r in enumerate(rows):
            if r[6]:
                codes[k] = table.parse(r[6])
        cond = table.objects(codes[row_of, slot])
        pick = lambda j: np.array([r[j] for r in rows], dtype=object)[row_of]
        return pd.DataFrame({"metering_point": pick(0), "product": pick(1),
                             "start": pd.to_datetime(quarter[row_of, slot] * 900, unit="s", utc=True),
                             "direction": pick(3), "volume_kwh": vol[row_of, slot], "condition": cond})

    def span(self) -> tuple[pd.Timestamp, pd.Timestamp] | None:
        """The first and the last quarter hour with a value, or None."""
        lo, hi = self._con.execute("SELECT min(day), max(day) FROM sdat_days").fetchone()
        if lo is None:
            return None

        def slots(day: int) -> np.ndarray:
            src = [np.frombuffer(r[0], _I4) for r in self._con.execute("SELECT sources FROM sdat_days WHERE day = ?",
                                                                       (day,))]
            return np.flatnonzero(np.any(np.stack(src) != 0, axis=0))
        first, last = lo * SLOTS + int(slots(lo).min()), hi * SLOTS + int(slots(hi).max())
        return pd.Timestamp(first * 900, unit="s", tz="UTC"), pd.Timestamp(last * 900, unit="s", tz="UTC")

    def points(self) -> list[dict]:
        """The known metering points' last deliveries: metering_point, direction, last_start (the
        latest quarter hour delivered), document_id and creation of the newest document,
        file_name, imported_at (UTC, ISO)."""
        keys = ("metering_point", "direction", "last_start", "document_id", "creation", "file_name", "imported_at")
        cur = self._con.execute(f"SELECT {', '.join(keys)} FROM sdat_points ORDER BY metering_point")
        return [dict(zip(keys, r)) for r in cur]

    def unknown(self) -> list[dict]:
        cur = self._con.execute("SELECT metering_point, values_seen, first_seen, last_seen, last_file FROM sdat_unknown "
                                "ORDER BY last_seen DESC LIMIT 1000")
        return [dict(zip(("metering_point", "values", "first_seen", "last_seen", "file"), r)) for r in cur]

    def documents(self) -> int:
        return self._con.execute("SELECT count(*) FROM sdat_documents").fetchone()[0]

    def value_count(self) -> int:
        """Quarter-hour values stored (every point and product)."""
        return sum(int(np.count_nonzero(np.frombuffer(r[0], _I4)))
                   for r in self._con.execute("SELECT sources FROM sdat_days"))

    # -- stores of earlier versions --------------------------------------------------------------
    def _upgrade_rows(self) -> None:
        """A store of an earlier version kept a row per quarter hour (``sdat_values``): its values
        move into ``sdat_days`` once, with their documents, and the old table is dropped."""
        if not self._con.execute("SELECT 1 FROM sqlite_master WHERE name = 'sdat_values'").fetchone():
            return
        with self._tx() as con:
            for document_id, creation in con.execute("SELECT DISTINCT document_id, creation FROM sdat_values").fetchall():
                con.execute("INSERT OR IGNORE INTO sdat_sources (document_id, creation) VALUES (?, ?)",
                            (document_id, creation))
            ids = {(d, c): i for i, d, c in con.execute("SELECT id, document_id, creation FROM sdat_sources")}
            key, acc = None, None
            rows = []
            table = _Codes()

            def flush():
                if key is not None:
                    vol, src, codes, direction = acc
                    rows.append((*key, direction, vol.astype(_F8).tobytes(), src.astype(_I4).tobytes(), table.text(codes)))
            for point, product, start, direction, volume, condition, document_id, creation in con.execute(
                    "SELECT metering_point, product, start, direction, volume_kwh, condition, document_id, creation "
                    "FROM sdat_values ORDER BY metering_point, product, start").fetchall():
                q = int(datetime.fromisoformat(start).timestamp()) // 900
                k = (point, product, q // SLOTS)
                if k != key:
                    flush()
                    key, acc = k, [np.full(SLOTS, np.nan), np.zeros(SLOTS, np.int32),
                                   np.zeros(SLOTS, np.uint16), direction]
                acc[0][q % SLOTS], acc[1][q % SLOTS] = volume, ids[(document_id, creation)]
                acc[2][q % SLOTS] = table.id(condition) if condition else 0
                acc[3] = direction
                if len(rows) >= 10_000:
                    con.executemany("INSERT OR REPLACE INTO sdat_days VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
                    rows.clear()
            flush()
            con.executemany("INSERT OR REPLACE INTO sdat_days VALUES (?, ?, ?, ?, ?, ?, ?)", rows)
            con.execute("DROP TABLE sdat_values")

    def _fill_points(self) -> None:
        """A store written before ``sdat_points`` existed: its points' last deliveries, once."""
        if self._con.execute("SELECT 1 FROM sdat_points LIMIT 1").fetchone() or \
                not self._con.execute("SELECT 1 FROM sdat_days LIMIT 1").fetchone():
            return
        sources = {i: (c, d) for i, d, c in self._con.execute("SELECT id, document_id, creation FROM sdat_sources")}
        files = {d: (f, t) for d, f, t in self._con.execute(
            "SELECT document_id, file_name, imported_at FROM sdat_documents ORDER BY imported_at")}
        best: dict[str, list] = {}                        # point -> [direction, last quarter, newest source]
        for point, day, direction, src in self._con.execute(
                "SELECT metering_point, day, direction, sources FROM sdat_days"):
            ids = np.frombuffer(src, _I4)
            slots = np.flatnonzero(ids)
            if not len(slots):
                continue
            newest = max((sources[int(i)] for i in np.unique(ids[slots])))
            b = best.setdefault(point, [direction, -1, ("", "")])
            b[1] = max(b[1], day * SLOTS + int(slots.max()))
            if newest >= b[2]:
                b[0], b[2] = direction, newest
        with self._tx() as con:
            for point, (direction, last, (creation, document_id)) in best.items():
                file_name, imported_at = files.get(document_id, ("", ""))
                con.execute("INSERT OR IGNORE INTO sdat_points VALUES (?, ?, ?, ?, ?, ?, ?)",
                            (point, direction, _iso(last), document_id, creation, file_name, imported_at))
