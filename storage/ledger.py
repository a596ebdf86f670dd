"""The ledger: houses, meters, tariff versions, settlement periods and issued invoices (SQLite, WAL).

The schema is versioned: ``MIGRATIONS`` is append-only; each entry runs once, in order, inside a
transaction, and ``PRAGMA user_version`` records how far a file has come. Issued invoices are
immutable: triggers refuse any change to their figures and any deletion.
"""
from __future__ import annotations

import json
import sqlite3
import threading
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from pricing.tariffs import EPOCH, Tariff

MIGRATIONS: list[str] = [
    # 1: first release
    """
    CREATE TABLE community (
        id INTEGER PRIMARY KEY CHECK (id = 1),
        name TEXT NOT NULL,
        timezone TEXT NOT NULL
    );
    CREATE TABLE houses (
        house_id TEXT PRIMARY KEY,
        name TEXT NOT NULL,
        type TEXT NOT NULL,
        pv_kwp REAL,
        active_from TEXT,
        active INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE meters (
        meter_id TEXT PRIMARY KEY,
        house_id TEXT NOT NULL REFERENCES houses(house_id),
        connection TEXT NOT NULL DEFAULT 'mqtt',
        max_power_kw REAL NOT NULL DEFAULT 100,
        active INTEGER NOT NULL DEFAULT 1
    );
    CREATE TABLE tariff_versions (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        effective_from TEXT NOT NULL,
        mode TEXT NOT NULL,
        p_pv REAL NOT NULL,
        p_grid_del REAL NOT NULL,
        p_grid_con REAL NOT NULL,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL
    );
    CREATE TABLE settlement_periods (
        period_id TEXT PRIMARY KEY,
        start_utc TEXT NOT NULL,
        end_utc TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('open', 'closed')),
        closed_at TEXT,
        closed_by TEXT
    );
    CREATE TABLE invoice_sequences (
        year INTEGER PRIMARY KEY,
        last_number INTEGER NOT NULL
    );
    CREATE TABLE invoices (
        invoice_id TEXT PRIMARY KEY,
        period_id TEXT NOT NULL REFERENCES settlement_periods(period_id),
        house_id TEXT NOT NULL REFERENCES houses(house_id),
        period_start TEXT NOT NULL,
        period_end TEXT NOT NULL,
        energy_exported_kwh TEXT NOT NULL,
        energy_imported_kwh TEXT NOT NULL,
        export_revenue_ct TEXT NOT NULL,
        import_cost_ct TEXT NOT NULL,
        net_amount_ct TEXT NOT NULL,
        net_amount_chf TEXT NOT NULL,
        status TEXT NOT NULL,
        issued_at TEXT NOT NULL,
        details TEXT NOT NULL,
        UNIQUE (period_id, house_id)
    );
    CREATE TRIGGER invoices_figures_immutable
    BEFORE UPDATE OF invoice_id, period_id, house_id, period_start, period_end, energy_exported_kwh,
        energy_imported_kwh, export_revenue_ct, import_cost_ct, net_amount_ct, net_amount_chf,
        issued_at, details ON invoices
    BEGIN SELECT RAISE(ABORT, 'issued invoices are immutable'); END;
    CREATE TRIGGER invoices_never_deleted BEFORE DELETE ON invoices
    BEGIN SELECT RAISE(ABORT, 'issued invoices are never deleted'); END;
    """,
    # 2: when a house left the community (UTC): it is still settled for the time it belonged
    """
    ALTER TABLE houses ADD COLUMN active_until TEXT;
    """,
    # 3: where a house and a meter were registered: 'config' (config.yaml, applied at every
    # start) or 'web' (adopted in the browser; a start leaves them as they are)
    """
    ALTER TABLE houses ADD COLUMN origin TEXT NOT NULL DEFAULT 'config';
    ALTER TABLE meters ADD COLUMN origin TEXT NOT NULL DEFAULT 'config';
    ALTER TABLE meters ADD COLUMN created_at TEXT;
    ALTER TABLE meters ADD COLUMN created_by TEXT;
    """,
]


class LedgerError(Exception):
    pass


@dataclass(frozen=True)
class House:
    house_id: str
    name: str
    type: str
    pv_kwp: float | None
    active_from: str | None   # ISO date in the community time zone
    active: bool
    active_until: str | None = None   # ISO date-time (UTC) the house left the configuration


@dataclass(frozen=True)
class Meter:
    meter_id: str
    house_id: str
    connection: str
    max_power_kw: float
    active: bool


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


class Ledger:
    def __init__(self, path: str | Path):
        self.path = str(path)
        if self.path != ":memory:":
            Path(self.path).parent.mkdir(parents=True, exist_ok=True)
        self._lock = threading.RLock()
        # one connection, serialised by a lock; SQLite itself guards against other processes
        self._con = sqlite3.connect(self.path, check_same_thread=False, isolation_level=None,
                                    timeout=30)
        self._con.row_factory = sqlite3.Row
        self._con.execute("PRAGMA journal_mode=WAL")
        self._con.execute("PRAGMA foreign_keys=ON")
        self.migrate()

    def close(self) -> None:
        with self._lock:
            self._con.close()

    @contextmanager
    def transaction(self):
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
                self._con.execute("COMMIT")
            except BaseException:
                self._con.execute("ROLLBACK")
                raise

    def _rows(self, sql: str, params=()) -> list[sqlite3.Row]:
        with self._lock:
            return self._con.execute(sql, params).fetchall()

    @property
    def schema_version(self) -> int:
        return self._rows("PRAGMA user_version")[0][0]

    def migrate(self) -> None:
        current = self.schema_version
        if current > len(MIGRATIONS):
            raise LedgerError(f"{self.path}: schema version {current} is newer than this program "
                              f"knows ({len(MIGRATIONS)}); upgrade LEG-Invoicing")
        for version in range(current + 1, len(MIGRATIONS) + 1):
            with self.transaction() as con:
                for statement in _split_sql(MIGRATIONS[version - 1]):
                    con.execute(statement)
                con.execute(f"PRAGMA user_version = {version}")

    # -- community, houses, meters ------------------------------------------------------------
    def sync_from_config(self, cfg) -> None:
        """Make the ledger's community, houses and meters match the configuration; houses that
        left the configuration stay (they may have invoices) but become inactive. Seeds the first
        tariff version from ``tariffs`` and ``pricing.mode`` when there is none."""
        with self.transaction() as con:
            con.execute("INSERT INTO community (id, name, timezone) VALUES (1, ?, ?) "
                        "ON CONFLICT (id) DO UPDATE SET name = excluded.name, timezone = excluded.timezone",
                        (cfg.community.name, cfg.community.timezone))
            still = {str(h.id) for h in cfg.houses.values()}
            for (hid,) in con.execute("SELECT house_id FROM houses WHERE active = 1 AND origin = 'config'").fetchall():
                if hid not in still:
                    con.execute("UPDATE houses SET active_until = ? WHERE house_id = ?", (_now(), hid))
            con.execute("UPDATE houses SET active = 0 WHERE origin = 'config'")
            con.execute("UPDATE meters SET active = 0 WHERE origin = 'config'")
            for mac, h in cfg.houses.items():
                hid = str(h.id)
                con.execute(
                    "INSERT INTO houses (house_id, name, type, pv_kwp, active_from, active) "
                    "VALUES (?, ?, ?, ?, ?, 1) ON CONFLICT (house_id) DO UPDATE SET name = excluded.name, "
                    "type = excluded.type, pv_kwp = excluded.pv_kwp, active_from = excluded.active_from, active = 1, "
                    "active_until = NULL, origin = 'config'",
                    (hid, h.name, h.type, h.pv_kwp, h.active_from.isoformat() if h.active_from else None))
                con.execute(
                    "INSERT INTO meters (meter_id, house_id, max_power_kw, active) VALUES (?, ?, ?, 1) "
                    "ON CONFLICT (meter_id) DO UPDATE SET house_id = excluded.house_id, "
                    "max_power_kw = excluded.max_power_kw, active = 1, origin = 'config'",
                    (mac, hid, h.max_power_kw))
            if not con.execute("SELECT 1 FROM tariff_versions LIMIT 1").fetchone():
                t = cfg.tariffs
                con.execute(
                    "INSERT INTO tariff_versions (effective_from, mode, p_pv, p_grid_del, p_grid_con, "
                    "created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, 'config')",
                    (EPOCH.isoformat(), cfg.pricing.mode, t.p_pv, t.p_grid_del, t.p_grid_con, _now()))

    def adopt_meter(self, meter_id: str, house_id: str, name: str, created_by: str,
                    active_from: str | None = None) -> None:
        """Register a meter heard but unknown as a new house (origin 'web': kept across restarts;
        an entry for it in config.yaml takes over)."""
        with self.transaction() as con:
            if con.execute("SELECT 1 FROM meters WHERE meter_id = ?", (meter_id,)).fetchone():
                raise LedgerError(f"meter {meter_id} is already registered")
            if con.execute("SELECT 1 FROM houses WHERE house_id = ?", (house_id,)).fetchone():
                raise LedgerError(f"house id {house_id} is already taken")
            con.execute("INSERT INTO houses (house_id, name, type, pv_kwp, active_from, active, origin) "
                        "VALUES (?, ?, 'real', NULL, ?, 1, 'web')", (house_id, name, active_from))
            con.execute("INSERT INTO meters (meter_id, house_id, active, origin, created_at, created_by) "
                        "VALUES (?, ?, 1, 'web', ?, ?)", (meter_id, house_id, _now(), created_by))

    def houses(self, active_only: bool = True) -> list[House]:
        rows = self._rows("SELECT * FROM houses" + (" WHERE active = 1" if active_only else "")
                          + " ORDER BY CAST(house_id AS INTEGER), house_id")
        return [House(r["house_id"], r["name"], r["type"], r["pv_kwp"], r["active_from"], bool(r["active"]),
                      r["active_until"]) for r in rows]

    def meters(self, active_only: bool = True) -> list[Meter]:
        rows = self._rows("SELECT * FROM meters" + (" WHERE active = 1" if active_only else "")
                          + " ORDER BY meter_id")
        return [Meter(r["meter_id"], r["house_id"], r["connection"], r["max_power_kw"], bool(r["active"]))
                for r in rows]

    # -- tariffs ------------------------------------------------------------------------------
    def tariff_versions(self) -> list[Tariff]:
        rows = self._rows("SELECT * FROM tariff_versions ORDER BY effective_from, id")
        return [Tariff(r["p_pv"], r["p_grid_del"], r["p_grid_con"], r["mode"],
                       datetime.fromisoformat(r["effective_from"])) for r in rows]

    def add_tariff(self, tariff: Tariff, created_by: str) -> None:
        with self.transaction() as con:
            con.execute(
                "INSERT INTO tariff_versions (effective_from, mode, p_pv, p_grid_del, p_grid_con, "
                "created_at, created_by) VALUES (?, ?, ?, ?, ?, ?, ?)",
                (tariff.effective_from.isoformat(), tariff.mode, tariff.p_pv, tariff.p_grid_del,
                 tariff.p_grid_con, _now(), created_by))

    # -- periods and invoices -----------------------------------------------------------------
    def period(self, period_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM settlement_periods WHERE period_id = ?", (period_id,))
        return dict(rows[0]) if rows else None

    def closed_until(self) -> datetime | None:
        """End (UTC) of the latest closed period, or None."""
        rows = self._rows("SELECT max(end_utc) FROM settlement_periods WHERE status = 'closed'")
        return datetime.fromisoformat(rows[0][0]) if rows and rows[0][0] else None

    def periods(self) -> list[dict]:
        """Every period on record (closed ones), newest first."""
        return [dict(r) for r in self._rows("SELECT * FROM settlement_periods ORDER BY period_id DESC")]

    def issued_invoices(self, period_id: str) -> list[dict]:
        rows = self._rows("SELECT * FROM invoices WHERE period_id = ? ORDER BY invoice_id", (period_id,))
        return [_invoice(r) for r in rows]

    def invoice(self, invoice_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM invoices WHERE invoice_id = ?", (invoice_id,))
        return _invoice(rows[0]) if rows else None

    def close_period(self, period_id: str, start_utc: str, end_utc: str, invoices: list[dict],
                     issue_year: int, closed_by: str) -> list[dict]:
        """Issue ``invoices`` (dicts of invoice fields) with gapless numbers INV-<year>-NNN and
        close the period, all in one transaction. Returns the issued invoices."""
        issued_at = _now()
        with self.transaction() as con:
            row = con.execute("SELECT status FROM settlement_periods WHERE period_id = ?",
                              (period_id,)).fetchone()
            if row and row["status"] == "closed":
                raise LedgerError(f"period {period_id} is already closed")
            con.execute(
                "INSERT INTO settlement_periods (period_id, start_utc, end_utc, status, closed_at, closed_by) "
                "VALUES (?, ?, ?, 'closed', ?, ?) ON CONFLICT (period_id) DO UPDATE SET status = 'closed', "
                "closed_at = excluded.closed_at, closed_by = excluded.closed_by",
                (period_id, start_utc, end_utc, issued_at, closed_by))
            seq = con.execute("SELECT last_number FROM invoice_sequences WHERE year = ?", (issue_year,)).fetchone()
            number = seq["last_number"] if seq else 0
            for inv in invoices:
                number += 1
                inv["invoice_id"] = f"INV-{issue_year}-{number:03d}"
                inv["status"] = "issued"
                inv["issued_at"] = issued_at
                con.execute(
                    "INSERT INTO invoices (invoice_id, period_id, house_id, period_start, period_end, "
                    "energy_exported_kwh, energy_imported_kwh, export_revenue_ct, import_cost_ct, "
                    "net_amount_ct, net_amount_chf, status, issued_at, details) "
                    "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                    (inv["invoice_id"], period_id, inv["house_id"], inv["period_start"], inv["period_end"],
                     str(inv["energy_exported_kwh"]), str(inv["energy_imported_kwh"]),
                     str(inv["export_revenue_ct"]), str(inv["import_cost_ct"]), str(inv["net_amount_ct"]),
                     str(inv["net_amount_chf"]), "issued", issued_at, json.dumps(inv["details"])))
            con.execute("INSERT INTO invoice_sequences (year, last_number) VALUES (?, ?) "
                        "ON CONFLICT (year) DO UPDATE SET last_number = excluded.last_number",
                        (issue_year, number))
        return self.issued_invoices(period_id)


def _invoice(row: sqlite3.Row) -> dict:
    d = dict(row)
    d["details"] = json.loads(d["details"])
    return d


def _split_sql(script: str) -> list[str]:
    """Statements of a migration; triggers keep their inner semicolons."""
    out, buf = [], []
    for line in script.strip().splitlines():
        buf.append(line)
        joined = "\n".join(buf).strip()
        if joined.endswith(";") and sqlite3.complete_statement(joined):
            out.append(joined)
            buf = []
    if "\n".join(buf).strip():
        out.append("\n".join(buf))
    return out
