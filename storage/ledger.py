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
from dataclasses import dataclass, field
from datetime import datetime, timezone
from decimal import Decimal
from pathlib import Path

from pricing.tariffs import EPOCH, Tariff
from storage.sqlite_copy import copy_database

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
    # 4: invoice documents and lifecycle. The PDF of an issued invoice or credit note is stored
    # once and served exactly as stored; every status change is an event (who, when); cancelling
    # issues a credit note (own gapless number CN-YYYY-NNN) and never edits the invoice; mails
    # are recorded per invoice so that none is sent twice by accident.
    """
    CREATE TABLE documents (
        document_id TEXT PRIMARY KEY,
        pdf BLOB NOT NULL,
        sha256 TEXT NOT NULL,
        created_at TEXT NOT NULL
    );
    CREATE TRIGGER documents_immutable BEFORE UPDATE ON documents
    BEGIN SELECT RAISE(ABORT, 'issued documents are immutable'); END;
    CREATE TRIGGER documents_never_deleted BEFORE DELETE ON documents
    BEGIN SELECT RAISE(ABORT, 'issued documents are never deleted'); END;
    CREATE TABLE invoice_events (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        invoice_id TEXT NOT NULL REFERENCES invoices(invoice_id),
        status TEXT NOT NULL,
        at TEXT NOT NULL,
        by TEXT NOT NULL,
        note TEXT
    );
    CREATE TRIGGER invoice_events_append_only BEFORE UPDATE ON invoice_events
    BEGIN SELECT RAISE(ABORT, 'the invoice history is append-only'); END;
    CREATE TRIGGER invoice_events_never_deleted BEFORE DELETE ON invoice_events
    BEGIN SELECT RAISE(ABORT, 'the invoice history is append-only'); END;
    INSERT INTO invoice_events (invoice_id, status, at, by, note)
        SELECT i.invoice_id, 'issued', i.issued_at, coalesce(p.closed_by, 'unknown'), 'period closed'
        FROM invoices i LEFT JOIN settlement_periods p ON p.period_id = i.period_id;
    CREATE TABLE credit_notes (
        credit_note_id TEXT PRIMARY KEY,
        invoice_id TEXT NOT NULL UNIQUE REFERENCES invoices(invoice_id),
        issued_at TEXT NOT NULL,
        issued_by TEXT NOT NULL,
        reason TEXT NOT NULL,
        net_amount_ct TEXT NOT NULL,
        net_amount_chf TEXT NOT NULL
    );
    CREATE TRIGGER credit_notes_immutable BEFORE UPDATE ON credit_notes
    BEGIN SELECT RAISE(ABORT, 'credit notes are immutable'); END;
    CREATE TRIGGER credit_notes_never_deleted BEFORE DELETE ON credit_notes
    BEGIN SELECT RAISE(ABORT, 'credit notes are never deleted'); END;
    CREATE TABLE document_sequences (
        series TEXT NOT NULL,
        year INTEGER NOT NULL,
        last_number INTEGER NOT NULL,
        PRIMARY KEY (series, year)
    );
    CREATE TABLE invoice_mails (
        document_id TEXT PRIMARY KEY,
        recipient TEXT NOT NULL,
        status TEXT NOT NULL CHECK (status IN ('sending', 'sent', 'failed')),
        attempts INTEGER NOT NULL DEFAULT 0,
        at TEXT NOT NULL,
        by TEXT NOT NULL,
        error TEXT,
        message_id TEXT
    );
    """,
    # 5: accounts. Passwords and API tokens are stored hashed only; the audit log is append-only;
    # login failures are counted per account and per address (throttling survives a restart).
    """
    CREATE TABLE users (
        username TEXT PRIMARY KEY,
        password_hash TEXT NOT NULL,
        role TEXT NOT NULL CHECK (role IN ('manager', 'member')),
        houses TEXT NOT NULL DEFAULT '',
        active INTEGER NOT NULL DEFAULT 1,
        created_at TEXT NOT NULL,
        password_changed_at TEXT NOT NULL
    );
    CREATE TABLE api_tokens (
        token_id TEXT PRIMARY KEY,
        token_hash TEXT NOT NULL,
        scope TEXT NOT NULL CHECK (scope IN ('read', 'write')),
        label TEXT NOT NULL DEFAULT '',
        created_by TEXT NOT NULL,
        created_at TEXT NOT NULL,
        revoked_at TEXT,
        revoked_by TEXT,
        last_used_at TEXT
    );
    CREATE TABLE login_failures (
        key TEXT PRIMARY KEY,
        failures INTEGER NOT NULL,
        last_at REAL NOT NULL,
        locked_until REAL NOT NULL DEFAULT 0
    );
    CREATE TABLE audit_log (
        id INTEGER PRIMARY KEY AUTOINCREMENT,
        at TEXT NOT NULL,
        actor TEXT NOT NULL,
        action TEXT NOT NULL,
        detail TEXT NOT NULL DEFAULT '',
        address TEXT
    );
    CREATE TRIGGER audit_log_append_only BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    CREATE TRIGGER audit_log_never_deleted BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, 'the audit log is append-only'); END;
    """,
    # 6: the meter registry: a meter's name, type (apartment | total | solar), connection settings
    # (JSON), the span it counts for (active_from .. retired_at: a replaced meter keeps billing its
    # time), its successor, and a hashed token for pushed readings. A total meter bills no house
    # (house_id NULL), so the table is rebuilt without NOT NULL on house_id.
    """
    CREATE TABLE meters_v6 (
        meter_id TEXT PRIMARY KEY,
        house_id TEXT REFERENCES houses(house_id),
        connection TEXT NOT NULL DEFAULT 'mqtt',
        max_power_kw REAL NOT NULL DEFAULT 100,
        active INTEGER NOT NULL DEFAULT 1,
        origin TEXT NOT NULL DEFAULT 'config',
        created_at TEXT,
        created_by TEXT,
        name TEXT,
        type TEXT NOT NULL DEFAULT 'apartment' CHECK (type IN ('apartment', 'total', 'solar')),
        settings TEXT NOT NULL DEFAULT '{}',
        active_from TEXT,
        retired_at TEXT,
        replaced_by TEXT,
        push_token_hash TEXT
    );
    INSERT INTO meters_v6 (meter_id, house_id, connection, max_power_kw, active, origin, created_at, created_by)
        SELECT meter_id, house_id, connection, max_power_kw, active, origin, created_at, created_by FROM meters;
    UPDATE meters_v6 SET retired_at = (SELECT coalesce(h.active_until, datetime('now'))
        FROM houses h WHERE h.house_id = meters_v6.house_id) WHERE active = 0;
    DROP TABLE meters;
    ALTER TABLE meters_v6 RENAME TO meters;
    """,
    # 7: a suspect reading the ingest pipeline holds until the meter's next reading decides it.
    # Its message is acknowledged to the source meanwhile, so it is kept here, not only in memory:
    # after a crash the restarted pipeline holds it again.
    """
    CREATE TABLE held_readings (
        meter_id TEXT PRIMARY KEY,
        ts TEXT NOT NULL,
        import_kwh REAL,
        export_kwh REAL,
        power_in_kw REAL,
        power_out_kw REAL,
        held_at TEXT NOT NULL
    );
    """,
    # 8: several readings of a meter may wait at once (a burst of quickly sent values is decided
    # by the trend of the readings that follow it), so a held reading is keyed by meter and time.
    """
    CREATE TABLE held_readings_v8 (
        meter_id TEXT NOT NULL,
        ts TEXT NOT NULL,
        import_kwh REAL,
        export_kwh REAL,
        power_in_kw REAL,
        power_out_kw REAL,
        held_at TEXT NOT NULL,
        PRIMARY KEY (meter_id, ts)
    );
    INSERT INTO held_readings_v8 SELECT meter_id, ts, import_kwh, export_kwh, power_in_kw,
        power_out_kw, held_at FROM held_readings;
    DROP TABLE held_readings;
    ALTER TABLE held_readings_v8 RENAME TO held_readings;
    """,
    # 9: a user's session generation: a login stores it in the session cookie and every request
    # compares it; logging out and changing the password raise it, so copies of older cookies no
    # longer log anyone in.
    """
    ALTER TABLE users ADD COLUMN session_epoch INTEGER NOT NULL DEFAULT 0;
    """,
    # 10: one tariff version per effective_from. Where an older ledger has several, the pricing
    # engine has always used the last one added (highest id); that one stays, the earlier ones move
    # to tariff_versions_superseded (nothing is deleted: the audit log still lists them) and the
    # unique index refuses new duplicates.
    """
    CREATE TABLE tariff_versions_superseded (
        id INTEGER PRIMARY KEY,
        effective_from TEXT NOT NULL,
        mode TEXT NOT NULL,
        p_pv REAL NOT NULL,
        p_grid_del REAL NOT NULL,
        p_grid_con REAL NOT NULL,
        created_at TEXT NOT NULL,
        created_by TEXT NOT NULL,
        superseded_by INTEGER NOT NULL REFERENCES tariff_versions(id)
    );
    INSERT INTO tariff_versions_superseded
        SELECT t.id, t.effective_from, t.mode, t.p_pv, t.p_grid_del, t.p_grid_con, t.created_at, t.created_by,
               (SELECT max(l.id) FROM tariff_versions l WHERE l.effective_from = t.effective_from)
        FROM tariff_versions t
        WHERE t.id < (SELECT max(l.id) FROM tariff_versions l WHERE l.effective_from = t.effective_from);
    DELETE FROM tariff_versions WHERE id IN (SELECT id FROM tariff_versions_superseded);
    CREATE UNIQUE INDEX tariff_versions_one_per_time ON tariff_versions (effective_from);
    """,
    # 11: payments from bank files (camt.053/054): every transaction kept once (by its identity),
    # with what became of it: applied to an invoice, or listed for a manager (unmatched, a reversal,
    # a debit, a payment to a cancelled invoice)
    """
    CREATE TABLE bank_transactions (
        tx_id TEXT PRIMARY KEY,
        file_name TEXT NOT NULL,
        message TEXT NOT NULL,
        amount_chf TEXT NOT NULL,
        currency TEXT NOT NULL,
        credit INTEGER NOT NULL,
        reversal INTEGER NOT NULL,
        reference TEXT,
        booking_date TEXT,
        debtor TEXT,
        invoice_id TEXT REFERENCES invoices(invoice_id),
        state TEXT NOT NULL CHECK (state IN ('applied', 'unmatched', 'reversal', 'debit', 'cancelled_invoice')),
        imported_at TEXT NOT NULL
    );
    CREATE INDEX bank_transactions_invoice ON bank_transactions (invoice_id);
    """,
    # 12: several communities in one instance: a manager may be kept to some communities (empty:
    # all); a member's houses are then named <slug>:<house id>
    """
    ALTER TABLE users ADD COLUMN communities TEXT NOT NULL DEFAULT '';
    """,
    # 13: pricing.mode leg: what consumers pay for their LEG share (NULL: p_pv)
    """
    ALTER TABLE tariff_versions ADD COLUMN p_con REAL;
    """,
    # 14: the web app's language a user chose (NULL: the browser's, else the community's)
    """
    ALTER TABLE users ADD COLUMN language TEXT;
    """,
]

INVOICE_STATUSES = ("issued", "partially_paid", "paid", "cancelled")
_TRANSITIONS = {"issued": {"paid", "partially_paid", "cancelled"}, "partially_paid": {"paid", "cancelled"},
                "paid": {"cancelled"}, "cancelled": set()}


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
    house_id: str | None          # None: a total meter (the building's grid exchange, never billed)
    connection: str
    max_power_kw: float
    active: bool                  # ingest takes its readings
    name: str | None = None
    type: str = "apartment"       # apartment | total | solar
    settings: dict = field(default_factory=dict, compare=False, hash=False)
    active_from: str | None = None   # UTC ISO: it counts from then (a replacement's start reading)
    retired_at: str | None = None    # UTC ISO: its final reading; it counts until then
    replaced_by: str | None = None
    origin: str = "config"

    @property
    def label(self) -> str:
        return self.name or self.meter_id


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
        try:
            self.migrate()
        except BaseException:
            self._con.close()
            raise

    def close(self) -> None:
        with self._lock:
            self._con.close()

    def backup_to(self, path: str | Path) -> None:
        """A consistent copy of the ledger in one self-contained file (SQLite's online backup;
        writers wait meanwhile)."""
        with self._lock:
            copy_database(self._con, path)

    @contextmanager
    def transaction(self):
        with self._lock:
            self._con.execute("BEGIN IMMEDIATE")
            try:
                yield self._con
                self._con.execute("COMMIT")
            except BaseException:
                # SQLite rolls back by itself on some errors (a full disk): then there is nothing
                # to roll back, and the original error is the one to report
                if self._con.in_transaction:
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
            still_meters = set(cfg.houses) | {m.id for m in cfg.meters}
            for (mid,) in con.execute("SELECT meter_id FROM meters WHERE active = 1 AND origin = 'config' "
                                      "AND retired_at IS NULL").fetchall():
                if mid not in still_meters:          # it counted until now
                    con.execute("UPDATE meters SET retired_at = ? WHERE meter_id = ?", (_now(), mid))
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
            ids = {mac: str(h.id) for mac, h in cfg.houses.items()} | {str(h.id): str(h.id) for h in cfg.houses.values()}
            for m in cfg.meters:                     # declarative provisioning of the registry
                settings = m.settings().model_dump(by_alias=True) if m.settings() is not None else {}
                con.execute(
                    "INSERT INTO meters (meter_id, house_id, connection, max_power_kw, active, origin, name, type, "
                    "settings) VALUES (?, ?, ?, ?, ?, 'config', ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE SET "
                    "house_id = excluded.house_id, connection = excluded.connection, "
                    "max_power_kw = excluded.max_power_kw, active = excluded.active, origin = 'config', "
                    "name = excluded.name, type = excluded.type, settings = excluded.settings",
                    (m.id, ids.get(m.house) if m.house else None, m.connection, m.max_power_kw, int(m.active),
                     m.name, m.type, json.dumps(settings, sort_keys=True)))
            if not con.execute("SELECT 1 FROM tariff_versions LIMIT 1").fetchone():
                t = cfg.tariffs
                con.execute(
                    "INSERT INTO tariff_versions (effective_from, mode, p_pv, p_grid_del, p_grid_con, "
                    "created_at, created_by, p_con) VALUES (?, ?, ?, ?, ?, ?, 'config', ?)",
                    (EPOCH.isoformat(), cfg.pricing.mode, t.p_pv, t.p_grid_del, t.p_grid_con, _now(), t.p_con))

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
        return [_meter(r) for r in rows]

    def meter(self, meter_id: str) -> Meter | None:
        rows = self._rows("SELECT * FROM meters WHERE meter_id = ?", (meter_id,))
        return _meter(rows[0]) if rows else None

    def save_meter(self, m: Meter, by: str, origin: str = "web") -> None:
        """Add or change a meter (every field but the push token)."""
        with self.transaction() as con:
            con.execute(
                "INSERT INTO meters (meter_id, house_id, connection, max_power_kw, active, origin, created_at, "
                "created_by, name, type, settings, active_from, retired_at, replaced_by) "
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) ON CONFLICT (meter_id) DO UPDATE SET "
                "house_id = excluded.house_id, connection = excluded.connection, max_power_kw = excluded.max_power_kw, "
                "active = excluded.active, origin = excluded.origin, name = excluded.name, type = excluded.type, "
                "settings = excluded.settings, active_from = excluded.active_from, retired_at = excluded.retired_at, "
                "replaced_by = excluded.replaced_by",
                (m.meter_id, m.house_id, m.connection, m.max_power_kw, int(m.active), origin, _now(), by, m.name,
                 m.type, json.dumps(m.settings, sort_keys=True), m.active_from, m.retired_at, m.replaced_by))

    def set_push_token(self, meter_id: str, token_hash: str | None) -> None:
        with self.transaction() as con:
            con.execute("UPDATE meters SET push_token_hash = ? WHERE meter_id = ?", (token_hash, meter_id))

    def push_token_hash(self, meter_id: str) -> str | None:
        rows = self._rows("SELECT push_token_hash FROM meters WHERE meter_id = ? AND active = 1", (meter_id,))
        return rows[0][0] if rows else None

    # -- held readings (ingest) -----------------------------------------------------------------
    def hold_reading(self, r) -> None:
        """Keep a suspect reading (an ingest.readings.Reading) until it is decided; a meter may
        have several (keyed by meter and time, as ``release_held`` forgets them)."""
        with self.transaction() as con:
            con.execute("INSERT OR REPLACE INTO held_readings VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (r.meter_id, r.ts_utc.isoformat(), r.import_kwh, r.export_kwh, r.power_in_kw,
                         r.power_out_kw, _now()))

    def release_held(self, keys) -> None:
        """Forget decided held readings, given as (meter_id, ts as ISO text) pairs."""
        with self.transaction() as con:
            con.executemany("DELETE FROM held_readings WHERE meter_id = ? AND ts = ?", list(keys))

    def held_readings(self) -> list:
        """The undecided readings, as ingest.readings.Reading."""
        from ingest.readings import Reading
        return [Reading(r["meter_id"], datetime.fromisoformat(r["ts"]), r["import_kwh"], r["export_kwh"],
                        r["power_in_kw"], r["power_out_kw"])
                for r in self._rows("SELECT * FROM held_readings ORDER BY meter_id, ts")]

    # -- tariffs ------------------------------------------------------------------------------
    def tariff_versions(self) -> list[Tariff]:
        rows = self._rows("SELECT * FROM tariff_versions ORDER BY effective_from, id")
        return [Tariff(r["p_pv"], r["p_grid_del"], r["p_grid_con"], r["mode"],
                       datetime.fromisoformat(r["effective_from"]), r["p_con"]) for r in rows]

    def add_tariff(self, tariff: Tariff, created_by: str) -> None:
        with self.transaction() as con:
            con.execute(
                "INSERT INTO tariff_versions (effective_from, mode, p_pv, p_grid_del, p_grid_con, "
                "created_at, created_by, p_con) VALUES (?, ?, ?, ?, ?, ?, ?, ?)",
                (tariff.effective_from.isoformat(), tariff.mode, tariff.p_pv, tariff.p_grid_del,
                 tariff.p_grid_con, _now(), created_by, tariff.p_con))

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

    def invoices_of(self, house_ids: list[str]) -> list[dict]:
        """Every issued invoice of these houses, newest period first."""
        if not house_ids:
            return []
        rows = self._rows(f"SELECT * FROM invoices WHERE house_id IN ({','.join('?' * len(house_ids))}) "
                          "ORDER BY period_id DESC, invoice_id", list(house_ids))
        return [_invoice(r) for r in rows]

    def all_invoices(self) -> list[dict]:
        """Every issued invoice, oldest first."""
        return [_invoice(r) for r in self._rows("SELECT * FROM invoices ORDER BY issued_at, invoice_id")]

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
                con.execute("INSERT INTO invoice_events (invoice_id, status, at, by, note) "
                            "VALUES (?, 'issued', ?, ?, 'period closed')", (inv["invoice_id"], issued_at, closed_by))
            con.execute("INSERT INTO invoice_sequences (year, last_number) VALUES (?, ?) "
                        "ON CONFLICT (year) DO UPDATE SET last_number = excluded.last_number",
                        (issue_year, number))
        return self.issued_invoices(period_id)

    # -- documents and lifecycle ------------------------------------------------------------------
    def store_document(self, document_id: str, pdf: bytes) -> bytes:
        """Keep an issued document's bytes; the first stored version stays. Returns the stored bytes."""
        import hashlib
        with self.transaction() as con:
            con.execute("INSERT INTO documents (document_id, pdf, sha256, created_at) VALUES (?, ?, ?, ?) "
                        "ON CONFLICT (document_id) DO NOTHING",
                        (document_id, pdf, hashlib.sha256(pdf).hexdigest(), _now()))
            return bytes(con.execute("SELECT pdf FROM documents WHERE document_id = ?", (document_id,)).fetchone()[0])

    def document(self, document_id: str) -> bytes | None:
        rows = self._rows("SELECT pdf FROM documents WHERE document_id = ?", (document_id,))
        return bytes(rows[0][0]) if rows else None

    def stored_documents(self, document_ids: list[str]) -> set[str]:
        found = set()
        for i in range(0, len(document_ids), 500):
            chunk = document_ids[i:i + 500]
            found |= {r[0] for r in self._rows(
                f"SELECT document_id FROM documents WHERE document_id IN ({','.join('?' * len(chunk))})", chunk)}
        return found

    def set_status(self, invoice_id: str, status: str, by: str, note: str | None = None) -> None:
        """Mark an issued invoice paid (cancelling goes through ``cancel_invoice``)."""
        if status == "cancelled":
            raise LedgerError("cancel an invoice with a credit note (cancel_invoice)")
        with self.transaction() as con:
            self._transition(con, invoice_id, status, by, note)

    def _transition(self, con, invoice_id: str, status: str, by: str, note: str | None) -> dict:
        row = con.execute("SELECT * FROM invoices WHERE invoice_id = ?", (invoice_id,)).fetchone()
        if row is None:
            raise LedgerError(f"no issued invoice {invoice_id}")
        if status not in _TRANSITIONS.get(row["status"], set()):
            raise LedgerError(f"invoice {invoice_id} is {row['status']}; it cannot become {status}")
        con.execute("UPDATE invoices SET status = ? WHERE invoice_id = ?", (status, invoice_id))
        con.execute("INSERT INTO invoice_events (invoice_id, status, at, by, note) VALUES (?, ?, ?, ?, ?)",
                    (invoice_id, status, _now(), by, note))
        return dict(row)

    # -- payments from bank files -------------------------------------------------------------
    def record_bank_transactions(self, file_name: str, message: str, txs, references: dict[str, str],
                                 by: str) -> dict:
        """Keep a bank file's transactions (``billing.camt.BankTransaction``) and apply each credit
        whose reference names an issued invoice (``references``: reference -> invoice id): the
        invoice becomes ``partially_paid`` or, once the applied amounts reach its amount due,
        ``paid`` (an event each, with the bank file as its source). A transaction seen before
        (same identity) changes nothing. Returns counts per state and the invoices changed."""
        counts = {"known": 0, "applied": 0, "unmatched": 0, "reversal": 0, "debit": 0, "cancelled_invoice": 0}
        changed: dict[str, str] = {}
        now = _now()
        with self.transaction() as con:
            for t in txs:
                if con.execute("SELECT 1 FROM bank_transactions WHERE tx_id = ?", (t.tx_id,)).fetchone():
                    counts["known"] += 1
                    continue
                invoice_id = references.get(t.reference) if t.reference else None
                inv = con.execute("SELECT status, net_amount_chf FROM invoices WHERE invoice_id = ?",
                                  (invoice_id,)).fetchone() if invoice_id else None
                if t.reversal:
                    state = "reversal"
                elif not t.credit:
                    state = "debit"
                elif inv is None or not t.booked or t.currency != "CHF":
                    state, invoice_id = "unmatched", None
                elif inv["status"] == "cancelled":
                    state = "cancelled_invoice"
                else:
                    state = "applied"
                con.execute("INSERT INTO bank_transactions VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (t.tx_id, file_name[:200], message, str(t.amount_chf), t.currency, int(t.credit),
                             int(t.reversal), t.reference, t.booking_date.isoformat() if t.booking_date else None,
                             (t.debtor or "")[:140] or None, invoice_id if state != "unmatched" else None, state, now))
                counts[state] += 1
                if state == "applied":
                    changed[invoice_id] = self._apply_payment(con, invoice_id, inv, f"bank file {file_name[:120]}: "
                                                              f"transaction {t.tx_id} of CHF {t.amount_chf}", by)
        return {"counts": counts, "changed": changed}

    def _apply_payment(self, con, invoice_id: str, inv, source: str, by: str) -> str:
        """After an applied transaction was stored: the invoice's new status (paid once the applied
        amounts reach its amount due, partially paid below), recorded as an event naming ``source``."""
        due = -Decimal(inv["net_amount_chf"])
        paid = sum((Decimal(r[0]) for r in con.execute(
            "SELECT amount_chf FROM bank_transactions WHERE invoice_id = ? AND state = 'applied'",
            (invoice_id,))), Decimal("0"))
        new = "paid" if paid >= due else "partially_paid"
        note = f"{source}; paid CHF {paid} of CHF {due}" + (f" (overpaid by CHF {paid - due})" if paid > due else "")
        if new != inv["status"]:
            self._transition(con, invoice_id, new, by, note)
        else:
            con.execute("INSERT INTO invoice_events (invoice_id, status, at, by, note) VALUES (?, ?, ?, ?, ?)",
                        (invoice_id, new, _now(), by, note))
        return new

    def assign_bank_transaction(self, tx_id: str, invoice_id: str, by: str) -> str:
        """A manager's assignment of a listed credit (unmatched, or paid to a cancelled invoice) to
        an issued invoice: applied as if its reference had named it. Returns the invoice's new
        status; LedgerError when the transaction or the invoice cannot take it."""
        with self.transaction() as con:
            tx = con.execute("SELECT * FROM bank_transactions WHERE tx_id = ?", (tx_id,)).fetchone()
            if tx is None:
                raise LedgerError(f"no bank transaction {tx_id}")
            if tx["state"] not in ("unmatched", "cancelled_invoice"):
                raise LedgerError(f"bank transaction {tx_id} is {tx['state'].replace('_', ' ')}: only unmatched "
                                  "credits and payments to cancelled invoices can be assigned")
            if tx["currency"] != "CHF":
                raise LedgerError(f"bank transaction {tx_id} is in {tx['currency']}: invoices are in CHF")
            inv = con.execute("SELECT status, net_amount_chf FROM invoices WHERE invoice_id = ?",
                              (invoice_id,)).fetchone()
            if inv is None:
                raise LedgerError(f"no issued invoice {invoice_id}")
            if inv["status"] not in ("issued", "partially_paid", "paid") or Decimal(inv["net_amount_chf"]) >= 0:
                raise LedgerError(f"invoice {invoice_id} is {inv['status'].replace('_', ' ')}"
                                  + (" and asks for no payment" if Decimal(inv["net_amount_chf"]) >= 0 else "")
                                  + ": a payment cannot be assigned to it")
            con.execute("UPDATE bank_transactions SET state = 'applied', invoice_id = ? WHERE tx_id = ?",
                        (invoice_id, tx_id))
            return self._apply_payment(con, invoice_id, inv, f"assigned by hand: bank file {tx['file_name'][:120]}, "
                                       f"transaction {tx_id} of CHF {tx['amount_chf']}", by)

    def bank_transactions(self, states: tuple[str, ...] | None = None) -> list[dict]:
        q = "SELECT * FROM bank_transactions"
        args: tuple = ()
        if states:
            q += f" WHERE state IN ({','.join('?' * len(states))})"
            args = tuple(states)
        return [dict(r) for r in self._rows(q + " ORDER BY booking_date, tx_id", args)]

    def paid_amounts(self) -> dict[str, Decimal]:
        """Invoice id -> the sum of bank payments applied to it."""
        out: dict[str, Decimal] = {}
        for r in self._rows("SELECT invoice_id, amount_chf FROM bank_transactions WHERE state = 'applied'"):
            out[r["invoice_id"]] = out.get(r["invoice_id"], Decimal("0")) + Decimal(r["amount_chf"])
        return out

    def cancel_invoice(self, invoice_id: str, by: str, reason: str, issue_year: int) -> dict:
        """Cancel an issued invoice: a credit note CN-<year>-NNN (gapless per year) for its full
        amount, referring to it; the invoice itself keeps its figures. Returns the credit note."""
        if not reason.strip():
            raise LedgerError("give a reason for the cancellation")
        with self.transaction() as con:
            inv = self._transition(con, invoice_id, "cancelled", by, reason)
            seq = con.execute("SELECT last_number FROM document_sequences WHERE series = 'CN' AND year = ?",
                              (issue_year,)).fetchone()
            number = (seq["last_number"] if seq else 0) + 1
            cn_id = f"CN-{issue_year}-{number:03d}"
            net_ct = -Decimal(inv["net_amount_ct"])
            net_chf = -Decimal(inv["net_amount_chf"])
            con.execute("INSERT INTO credit_notes (credit_note_id, invoice_id, issued_at, issued_by, reason, "
                        "net_amount_ct, net_amount_chf) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (cn_id, invoice_id, _now(), by, reason.strip(), str(net_ct), str(net_chf)))
            con.execute("INSERT INTO document_sequences (series, year, last_number) VALUES ('CN', ?, ?) "
                        "ON CONFLICT (series, year) DO UPDATE SET last_number = excluded.last_number",
                        (issue_year, number))
        return self.credit_note(cn_id)

    def credit_note(self, credit_note_id: str) -> dict | None:
        rows = self._rows("SELECT * FROM credit_notes WHERE credit_note_id = ?", (credit_note_id,))
        return dict(rows[0]) if rows else None

    def credit_notes(self, period_id: str | None = None) -> list[dict]:
        sql = ("SELECT c.* FROM credit_notes c JOIN invoices i ON i.invoice_id = c.invoice_id"
               + (" WHERE i.period_id = ?" if period_id else "") + " ORDER BY c.credit_note_id")
        return [dict(r) for r in self._rows(sql, (period_id,) if period_id else ())]

    def events(self, invoice_id: str) -> list[dict]:
        return [dict(r) for r in self._rows("SELECT invoice_id, status, at, by, note FROM invoice_events "
                                            "WHERE invoice_id = ? ORDER BY id", (invoice_id,))]

    # -- mails: claimed before sending, so a document is never mailed twice by accident -------------
    def claim_mail(self, document_id: str, recipient: str, by: str) -> bool:
        """Claim a document for sending; False when it was sent already or a send is under way
        (or was interrupted: then its outcome is unknown and a person decides)."""
        with self.transaction() as con:
            row = con.execute("SELECT status FROM invoice_mails WHERE document_id = ?", (document_id,)).fetchone()
            if row and row["status"] in ("sent", "sending"):
                return False
            con.execute("INSERT INTO invoice_mails (document_id, recipient, status, attempts, at, by) "
                        "VALUES (?, ?, 'sending', 1, ?, ?) ON CONFLICT (document_id) DO UPDATE SET "
                        "recipient = excluded.recipient, status = 'sending', attempts = attempts + 1, "
                        "at = excluded.at, by = excluded.by, error = NULL",
                        (document_id, recipient, _now(), by))
            return True

    def finish_mail(self, document_id: str, ok: bool, error: str | None = None, message_id: str | None = None) -> None:
        with self.transaction() as con:
            con.execute("UPDATE invoice_mails SET status = ?, error = ?, message_id = ?, at = ? WHERE document_id = ?",
                        ("sent" if ok else "failed", error, message_id, _now(), document_id))

    def mails(self, document_ids: list[str] | None = None) -> dict[str, dict]:
        rows = self._rows("SELECT * FROM invoice_mails")
        out = {r["document_id"]: dict(r) for r in rows}
        return out if document_ids is None else {k: v for k, v in out.items() if k in set(document_ids)}


def _meter(r: sqlite3.Row) -> Meter:
    return Meter(r["meter_id"], r["house_id"], r["connection"], r["max_power_kw"], bool(r["active"]), r["name"],
                 r["type"], json.loads(r["settings"] or "{}"), r["active_from"], r["retired_at"], r["replaced_by"],
                 r["origin"])


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
