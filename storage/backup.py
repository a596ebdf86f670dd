"""Backups: a consistent snapshot of the ledger, the embedded time-series store and (a LEG's) the
grid operator's SDAT-CH values, taken while the app runs, and bringing one back.

The snapshot is taken inside the process that owns the stores (DuckDB allows one writing
process): the pipeline is flushed, interval computation paused, the ledger copied with SQLite's
online backup (so is ``sdat.sqlite``) and the time series with DuckDB's ``COPY FROM DATABASE``. ``manifest.json`` lists
every file with its SHA-256, the schema version and counts; ``restore`` checks them first.
A running app takes requests for a snapshot from ``python app.py backup`` through a local control
endpoint whose secret is in ``data_dir/control.json`` (mode 0600, removed at exit).
"""
from __future__ import annotations

import hashlib
import json
import os
import secrets
import shutil
import sqlite3
from datetime import datetime, timezone
from pathlib import Path

from storage.influx_store import SPOOL_FILE

SIDE_FILES = ("secret_key", "simulator_state.json", "sensor_clock.json")
SDAT_FILE = "sdat.sqlite"


class BackupError(Exception):
    pass


def _sha256(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def snapshot(community, dest: str | Path, pipeline=None) -> dict:
    """Write a snapshot into ``dest`` (created; must be empty) and return its manifest."""
    dest = Path(dest).resolve()
    if dest.exists() and any(dest.iterdir()):
        raise BackupError(f"{dest} is not empty; choose a new folder for the backup")
    dest.mkdir(parents=True, exist_ok=True)
    _private(dest, 0o700)
    if pipeline is not None:
        pipeline.flush()                              # what has arrived is in the store
    c = community
    with c._compute_lock:                             # no interval computation meanwhile
        c.ledger.backup_to(dest / "ledger.sqlite")
        c.store.snapshot_to(dest)
        if (Path(c.cfg.data_dir) / SDAT_FILE).exists():   # the grid operator's values (a LEG)
            c.sdat.backup_to(dest / SDAT_FILE)
    for name in SIDE_FILES:
        src = Path(c.cfg.data_dir) / name
        if src.exists():
            shutil.copy2(src, dest / name)
    con = sqlite3.connect(f"file:{dest / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        schema = con.execute("PRAGMA user_version").fetchone()[0]
        invoices = con.execute("SELECT count(*) FROM invoices").fetchone()[0]
    finally:
        con.close()
    files = {p.name: _sha256(p) for p in sorted(dest.iterdir()) if p.is_file()}
    manifest = {"created_at": datetime.now(timezone.utc).isoformat(), "backend": c.cfg.storage.backend,
                "ledger_schema": schema, "issued_invoices": invoices, "files": files}
    (dest / "manifest.json").write_text(json.dumps(manifest, indent=2))
    for p in dest.iterdir():
        _private(p, 0o600)
    return manifest


def _private(path: Path, mode: int) -> None:
    """A backup holds password hashes and billing data: its folder and files are the owner's only
    (whatever the modes of the files it was copied from)."""
    try:
        path.chmod(mode)
    except OSError:                          # not ours (a folder someone else made for us): leave it
        pass


def restore(src: str | Path, data_dir: str | Path, force: bool = False) -> dict:
    """Bring a snapshot back into ``data_dir`` (empty, or ``force``) after checking it."""
    src, data_dir = Path(src), Path(data_dir)
    try:
        manifest = json.loads((src / "manifest.json").read_text())
    except (OSError, ValueError) as exc:
        raise BackupError(f"{src}: no readable manifest.json ({exc}); is this a backup folder?") from None
    for name, digest in manifest["files"].items():
        path = src / name
        if not path.exists():
            raise BackupError(f"{src}: {name} is missing")
        if _sha256(path) != digest:
            raise BackupError(f"{src}: {name} does not match its checksum; the backup is damaged")
    if data_dir.exists() and any(data_dir.iterdir()) and not force:
        raise BackupError(f"{data_dir} is not empty; restore into an empty folder, or add --force to replace it")
    if not data_dir.exists():
        data_dir.mkdir(parents=True, mode=0o700)
        _private(data_dir, 0o700)
    for name in ("ledger.sqlite", "timeseries.duckdb", SPOOL_FILE, SDAT_FILE):     # and their logs
        for suffix in ("", "-wal", "-shm", ".wal"):
            (data_dir / (name + suffix)).unlink(missing_ok=True)
    for name in manifest["files"]:
        shutil.copy2(src / name, data_dir / name)
        _private(data_dir / name, 0o600)
    return manifest


def write_control(data_dir: Path, url: str, base: str | None = None, secret: str | None = None) -> str:
    """The running app's control endpoint and its secret (a new one unless given), readable by the
    app's user only: ``url`` takes backups, ``base`` is where the app's other control routes
    (``control/...``) are."""
    secret = secret or secrets.token_urlsafe(32)
    path = Path(data_dir) / "control.json"
    path.touch(mode=0o600, exist_ok=True)
    path.chmod(0o600)
    path.write_text(json.dumps({"url": url, "base": base, "secret": secret, "pid": os.getpid()}))
    return secret


def read_control(data_dir: Path) -> dict | None:
    try:
        control = json.loads((Path(data_dir) / "control.json").read_text())
    except (OSError, ValueError):
        return None
    return control if isinstance(control, dict) and isinstance(control.get("secret"), str) else None


def running_app(data_dir: Path) -> dict | None:
    """The control file of the app running on ``data_dir``; None when there is none, or when the
    process that wrote it is gone (killed: it had no chance to remove it)."""
    control = read_control(data_dir)
    if control is None:
        return None
    pid = control.get("pid")
    if isinstance(pid, int) and pid > 0:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return None
        except PermissionError:                # alive, another user's process
            pass
    return control


def remove_control(data_dir: Path) -> None:
    (Path(data_dir) / "control.json").unlink(missing_ok=True)
