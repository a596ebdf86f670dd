"""Upgrades: a data folder written by an older release (tests/fixtures/release-05951a2, made by
tests/fixtures/make_release_fixture.py with that release's own commands) opens with this code, its
ledger is migrated once, and its issued invoices stay exactly as they were issued."""
import os
import shutil
import sqlite3
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pytest

from billing import lifecycle
from billing.exports import invoices_csv
from community import Community
from config import load_config
from storage.ledger import MIGRATIONS, Ledger, LedgerError

ROOT = Path(__file__).resolve().parent.parent
FIXTURE = ROOT / "tests" / "fixtures" / "release-05951a2"
CLOSED, OPEN = "2016-06", "2016-07"
OLD_SCHEMA = 2
SEED_COLUMNS = ["invoice_id", "house_id", "period_start", "period_end", "energy_exported_kwh",
                "energy_imported_kwh", "export_revenue_ct", "import_cost_ct", "net_amount_ct", "status"]


@pytest.fixture
def release(tmp_path) -> Path:
    """A copy of the fixture folder (the fixture itself is never opened)."""
    assert sorted(p.name for p in (FIXTURE / "data").iterdir()) == ["ledger.sqlite", "timeseries.duckdb"], \
        "the fixture must hold the two stores only (no write-ahead log files)"
    dest = tmp_path / "release"
    shutil.copytree(FIXTURE, dest)
    return dest


def config_of(folder: Path):
    cfg = load_config(folder / "config.yaml")
    assert cfg.storage.data_dir == "data"              # relative, as the old release ran it
    cfg.storage.data_dir = str(folder / "data")
    return cfg


def rows(folder: Path, sql: str) -> list[dict]:
    con = sqlite3.connect(folder / "data" / "ledger.sqlite")
    con.row_factory = sqlite3.Row
    try:
        return [dict(r) for r in con.execute(sql)]
    finally:
        con.close()


def pragma(folder: Path, name: str) -> int:
    return rows(folder, f"PRAGMA {name}")[0][name]


def schema(path: Path) -> list[tuple]:
    con = sqlite3.connect(path)
    try:
        return con.execute("SELECT type, name, tbl_name, sql FROM sqlite_master "
                           "WHERE name NOT LIKE 'sqlite_%' ORDER BY type, name").fetchall()
    finally:
        con.close()


def app(folder: Path, *args: str) -> subprocess.CompletedProcess:
    """The command line of this code, run in the copied folder (its config's relative data_dir)."""
    env = {k: v for k, v in os.environ.items() if k != "LEG_CONFIG"}
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args, "--config", "config.yaml"],
                          cwd=folder, env=env, capture_output=True, text=True, timeout=240)


INVOICES = "SELECT * FROM invoices ORDER BY invoice_id"
TARIFFS = "SELECT * FROM tariff_versions ORDER BY id"
HOUSES = "SELECT house_id, name, type, pv_kwp, active_from, active, active_until FROM houses ORDER BY house_id"
METERS = "SELECT meter_id, house_id, connection, max_power_kw, active FROM meters ORDER BY meter_id"


def test_the_ledger_is_migrated_from_the_old_schema_once(release, tmp_path):
    assert pragma(release, "user_version") == OLD_SCHEMA
    cfg = config_of(release)
    c = Community.open(cfg)
    try:
        assert c.ledger.schema_version == len(MIGRATIONS)
    finally:
        c.close()
    # the migrated schema is exactly the one a new ledger gets
    Ledger(tmp_path / "fresh.sqlite").close()
    assert schema(release / "data" / "ledger.sqlite") == schema(tmp_path / "fresh.sqlite")

    # a second open migrates nothing: the schema (and its change counter) stays as it is
    before = (schema(release / "data" / "ledger.sqlite"), pragma(release, "schema_version"))
    c = Community.open(cfg)
    try:
        assert c.ledger.schema_version == len(MIGRATIONS)
    finally:
        c.close()
    assert (schema(release / "data" / "ledger.sqlite"), pragma(release, "schema_version")) == before
    assert pragma(release, "user_version") == len(MIGRATIONS)


def test_issued_invoices_are_unchanged_byte_for_byte(release, tmp_path):
    before = rows(release, INVOICES)
    assert [r["invoice_id"].rsplit("-", 1)[1] for r in before] == ["001", "002", "003"]
    out = tmp_path / "out"
    proc = app(release, "settle", "--period", CLOSED, "--out", str(out))
    assert proc.returncode == 0, proc.stderr
    assert pragma(release, "user_version") == len(MIGRATIONS)
    expected = (release / "expected-invoices.csv").read_bytes()
    # the old release's columns keep their place and every value; columns added since (such as
    # payment_reference) come after them
    assert same_old_columns((out / "invoices.csv").read_bytes(), expected)
    assert expected.decode().splitlines()[0].split(",")[:len(SEED_COLUMNS)] == SEED_COLUMNS
    # every column of every issued invoice, as the old release stored it
    assert rows(release, INVOICES) == before
    # the PDFs of the issued invoices are made once, on first use, and stored as issued
    assert sorted(p.name for p in out.glob("*.pdf")) == [f"{r['invoice_id']}.pdf" for r in before]
    stored = rows(release, "SELECT document_id, pdf FROM documents ORDER BY document_id")
    assert [(d["document_id"], d["pdf"]) for d in stored] == \
        [(r["invoice_id"], (out / f"{r['invoice_id']}.pdf").read_bytes()) for r in before]
    # migration 4 gave each invoice of the old release its 'issued' event
    events = rows(release, "SELECT invoice_id, status, at, by FROM invoice_events ORDER BY id")
    assert events == [{"invoice_id": r["invoice_id"], "status": "issued", "at": r["issued_at"], "by": "cli"}
                      for r in before]
    # a second settle of the closed period gives the same file again
    proc = app(release, "settle", "--period", CLOSED, "--out", str(tmp_path / "again"))
    assert proc.returncode == 0, proc.stderr
    assert (tmp_path / "again" / "invoices.csv").read_bytes() == (out / "invoices.csv").read_bytes()
    assert same_old_columns((tmp_path / "again" / "invoices.csv").read_bytes(), expected)
    assert rows(release, INVOICES) == before


def same_old_columns(new: bytes, old: bytes) -> bool:
    """Each line of ``new`` starts with the fields of the same line of ``old``."""
    import csv
    import io
    a = list(csv.reader(io.StringIO(new.decode())))
    b = list(csv.reader(io.StringIO(old.decode())))
    return len(a) == len(b) and all(x[:len(y)] == y for x, y in zip(a, b))


def test_after_the_upgrade_invoices_stay_immutable_and_the_next_period_closes(release):
    invoices, tariffs = rows(release, INVOICES), rows(release, TARIFFS)
    houses, meters = rows(release, HOUSES), rows(release, METERS)
    seq = rows(release, "SELECT year, last_number FROM invoice_sequences")
    assert len(tariffs) == 2 and len(houses) == 3 and seq == [{"year": seq[0]["year"], "last_number": 3}]
    cfg = config_of(release)
    year = seq[0]["year"]
    # closing issues numbers of the year it happens in: pinned to the fixture's year
    c = Community.open(cfg, clock=lambda: datetime(year, 6, 30, 12, tzinfo=timezone.utc))
    try:
        after = rows(release, TARIFFS)                    # migration 13 adds p_con (NULL: p_pv)
        assert [{k: r[k] for k in t} for r, t in zip(after, tariffs)] == tariffs and len(after) == len(tariffs)
        assert all(r["p_con"] is None for r in after)
        assert rows(release, HOUSES) == houses
        assert rows(release, METERS) == meters
        assert [(h.house_id, h.name, h.active) for h in c.houses()] == \
            [(h["house_id"], h["name"], True) for h in houses]
        assert [t.effective_from.isoformat() for t in c.ledger.tariff_versions()] == \
            [t["effective_from"] for t in tariffs]

        con = sqlite3.connect(release / "data" / "ledger.sqlite")
        try:
            with pytest.raises(sqlite3.IntegrityError, match="issued invoices are immutable"):
                con.execute("UPDATE invoices SET net_amount_ct = '0.00' WHERE invoice_id = ?",
                            (invoices[0]["invoice_id"],))
            with pytest.raises(sqlite3.IntegrityError, match="issued invoices are never deleted"):
                con.execute("DELETE FROM invoices WHERE invoice_id = ?", (invoices[0]["invoice_id"],))
        finally:
            con.close()
        assert rows(release, INVOICES) == invoices

        # the old release's closed period is still closed with its invoices, as issued
        s = c.settle(CLOSED)
        assert s.status == "closed"
        assert same_old_columns(invoices_csv(s.invoices), (release / "expected-invoices.csv").read_bytes())

        # the next period (both tariff versions apply in it) settles complete and closes
        draft = c.settle(OPEN)
        assert draft.status != "closed" and not draft.missing and len(draft.invoices) == 3
        closed = lifecycle.close_period(c, OPEN, "test", workers=1)
        assert closed.status == "closed"
        assert [i["invoice_id"] for i in closed.invoices] == [f"INV-{year}-{n:03d}" for n in (4, 5, 6)]
        fields = [k for k in SEED_COLUMNS + ["net_amount_chf"] if k not in ("invoice_id", "status")]
        assert [{k: str(i[k]) for k in fields} for i in closed.invoices] == \
            [{k: str(i[k]) for k in fields} for i in draft.invoices]
        assert c.ledger.stored_documents([i["invoice_id"] for i in closed.invoices]) == \
            {i["invoice_id"] for i in closed.invoices}
        assert c.ledger.period(OPEN)["status"] == "closed"
    finally:
        c.close()
    assert rows(release, "SELECT year, last_number FROM invoice_sequences") == [{"year": year, "last_number": 6}]
    assert rows(release, INVOICES)[:3] == invoices


def test_a_ledger_newer_than_the_code_is_refused(release):
    path = release / "data" / "ledger.sqlite"
    con = sqlite3.connect(path)
    con.execute(f"PRAGMA user_version = {len(MIGRATIONS) + 1}")
    con.close()
    invoices = rows(release, INVOICES)
    with pytest.raises(LedgerError, match=rf"schema version {len(MIGRATIONS) + 1} is newer than this "
                                          rf"program knows \({len(MIGRATIONS)}\); upgrade LEG-Invoicing"):
        Community.open(config_of(release))
    proc = app(release, "settle", "--period", CLOSED, "--out", str(release / "out"))
    assert proc.returncode != 0
    assert "is newer than this program knows" in proc.stderr
    assert not (release / "out").exists()
    # nothing was changed
    assert pragma(release, "user_version") == len(MIGRATIONS) + 1
    assert rows(release, INVOICES) == invoices
