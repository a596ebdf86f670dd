"""Backups: a snapshot taken while readings stream in restores to the same settlement figures and
the same issued PDFs; `python app.py backup` asks the running app for the snapshot; `restore`
checks the backup and refuses to overwrite data without --force."""
import json
import os
import subprocess
import sys
import threading
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pandas as pd
import pytest
import requests
import yaml

from billing import lifecycle
from community import Community
from config import parse_config
from ingest.readings import Reading
from peers import free_port, influxd_binary, wait_port
from simulator.profiles import profiles_for, simulate_counters
from storage.backup import BackupError, restore, snapshot

ROOT = Path(__file__).resolve().parent.parent
HOUSES = {"M1": {"id": 1, "name": "One"}, "M2": {"id": 2, "name": "Two", "pv_kwp": 12}}


def config(data_dir, **extra):
    return parse_config({"houses": HOUSES, "storage": {"data_dir": str(data_dir)}, "mqtt": {"enabled": False},
                         **extra}, source="test")


def test_a_snapshot_while_ingesting_restores_to_the_same_figures(tmp_path):
    from ingest.pipeline import Pipeline
    c = Community.open(config(tmp_path / "live"), clock=lambda: datetime(2026, 4, 2, tzinfo=timezone.utc))
    c.store_readings(simulate_counters(profiles_for(c.cfg.houses), pd.Timestamp("2026-02-27T00:00Z"),
                                       pd.Timestamp("2026-04-01T06:00Z"), 900, c.tz))
    closed = lifecycle.close_period(c, "2026-03", "test", workers=1)
    p = Pipeline(c).start()
    stop = threading.Event()

    def stream():                                   # live readings keep arriving during the snapshot
        t, v = datetime.now(timezone.utc) - timedelta(hours=2), 5000.0
        while not stop.is_set():
            t, v = t + timedelta(seconds=10), v + 0.001
            p.submit(Reading("M1", t, v, 0.0), "mqtt")
            time.sleep(0.0005)
    th = threading.Thread(target=stream)
    th.start()
    try:
        time.sleep(0.5)
        manifest = snapshot(c, tmp_path / "backup", p)
        stored_at_snapshot = len(c.store.read_readings("M1"))
        time.sleep(0.3)
    finally:
        stop.set()
        th.join()
        p.stop()
    assert manifest["issued_invoices"] == 2 and {"ledger.sqlite", "timeseries.duckdb"} <= set(manifest["files"])
    live_feb = c.settle("2026-02", allow_incomplete=True).invoices
    c.close()
    with pytest.raises(BackupError, match="not empty"):
        snapshot(c, tmp_path / "backup")
    restored_dir = tmp_path / "restored"
    restore(tmp_path / "backup", restored_dir)
    r = Community.open(config(restored_dir), clock=lambda: datetime(2026, 4, 2, tzinfo=timezone.utc))
    try:
        assert r.settle("2026-02", allow_incomplete=True).invoices == live_feb
        issued = r.settle("2026-03")
        assert [i["net_amount_chf"] for i in issued.invoices] == [str(i["net_amount_chf"]) for i in closed.invoices]
        assert r.ledger.document("INV-2026-001") is not None
        n = len(r.store.read_readings("M1"))
        history = len(pd.date_range("2026-02-27", "2026-04-01T06:00", freq="15min"))
        assert history < n <= stored_at_snapshot          # a moment of the stream: history and what had arrived
    finally:
        r.close()
    # an occupied data folder needs --force; a damaged backup is refused
    with pytest.raises(BackupError, match="not empty"):
        restore(tmp_path / "backup", restored_dir)
    with open(tmp_path / "backup" / "ledger.sqlite", "ab") as fh:
        fh.write(b"damage")
    with pytest.raises(BackupError, match="checksum"):
        restore(tmp_path / "backup", tmp_path / "elsewhere")


def test_backup_command_asks_the_running_app(tmp_path):
    port = free_port()
    cfg_file = tmp_path / "config.yaml"
    cfg_file.write_text(yaml.safe_dump({"houses": HOUSES, "storage": {"data_dir": str(tmp_path / "data")},
                                        "mqtt": {"enabled": False}, "web": {"port": port, "host": "127.0.0.1"}}))
    env = {**os.environ, "LEG_ADMIN_PASSWORD": "admin-password-1"}
    app = subprocess.Popen([sys.executable, "app.py", "run", "--config", str(cfg_file)], cwd=ROOT, env=env,
                           stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, timeout=60)
        control = json.loads((tmp_path / "data" / "control.json").read_text())
        assert oct((tmp_path / "data" / "control.json").stat().st_mode & 0o777) == "0o600"
        # without the secret nobody gets a backup
        r = requests.post(control["url"], json={"dir": str(tmp_path / "x")}, timeout=30)
        assert r.status_code == 403
        out = subprocess.run([sys.executable, "app.py", "backup", str(tmp_path / "bk"), "--config", str(cfg_file)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode == 0, out.stderr
        assert "backup in" in out.stdout and (tmp_path / "bk" / "manifest.json").exists()
        out = subprocess.run([sys.executable, "app.py", "restore", str(tmp_path / "bk"), "--config", str(cfg_file)],
                             cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
        assert out.returncode != 0 and "stop it first" in out.stderr
    finally:
        app.terminate()
        assert app.wait(60) == 0
    assert not (tmp_path / "data" / "control.json").exists()
    out = subprocess.run([sys.executable, "app.py", "restore", str(tmp_path / "bk"), "--config", str(cfg_file)],
                         cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "--force" in out.stderr
    out = subprocess.run([sys.executable, "app.py", "restore", str(tmp_path / "bk"), "--force", "--config",
                          str(cfg_file)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0 and "restored" in out.stdout
    c = Community.open(parse_config(yaml.safe_load(cfg_file.read_text()), source="t"))
    try:
        assert [h.house_id for h in c.houses()] == ["1", "2"]
    finally:
        c.close()


@pytest.mark.skipif(influxd_binary() is None, reason="needs influxd (Debian's influxdb package)")
def test_a_snapshot_keeps_the_influx_spool_with_what_is_still_in_its_write_ahead_log(tmp_path):
    """A real influxd, stopped: the readings written meanwhile wait in the spool (SQLite, WAL mode).
    The snapshot copies the spool with SQLite's backup, so the batches still in the write-ahead log
    are in it (a plain copy of the file misses them); restored, they reach InfluxDB when it is back."""
    from peers import Influxd
    influx = Influxd(tmp_path / "influx").start()
    cfg = config(tmp_path / "live", influxdb={"url": influx.url, "database": "energy"},
                 storage={"data_dir": str(tmp_path / "live"), "backend": "influxdb"})
    c = Community.open(cfg)
    restored = None
    try:
        influx.stop()
        ts = pd.date_range("2026-03-02T00:00Z", periods=30, freq="10s").astype("datetime64[us, UTC]")
        for k in range(0, 30, 10):                   # three batches, each spooled
            c.store.write_readings(pd.DataFrame({"meter_id": "M1", "ts": ts[k:k + 10],
                                                 "import_kwh": 100 + 0.01 * pd.RangeIndex(k, k + 10),
                                                 "export_kwh": 0.0, "power_in_kw": 1.0, "power_out_kw": 0.0}))
        spooled = c.store.health()["spool_lines"]
        assert spooled == 30
        live_spool = tmp_path / "live" / "influx_spool.sqlite"
        assert Path(f"{live_spool}-wal").stat().st_size > 0      # the batches are still in the log
        manifest = snapshot(c, tmp_path / "backup")
        assert "influx_spool.sqlite" in manifest["files"]
        assert not (tmp_path / "backup" / "influx_spool.sqlite-wal").exists()
    finally:
        c.close()
    restore(tmp_path / "backup", tmp_path / "restored")
    influx.start()
    try:
        restored = Community.open(config(tmp_path / "restored", influxdb={"url": influx.url, "database": "energy"},
                                         storage={"data_dir": str(tmp_path / "restored"), "backend": "influxdb"}))
        deadline = time.monotonic() + 30
        while restored.store.health()["spool_lines"] and time.monotonic() < deadline:
            time.sleep(0.2)
        assert restored.store.health()["spool_lines"] == 0
        got = restored.store.read_readings("M1")
        assert len(got) == 30 and got["import_kwh"].round(2).tolist() == [round(100 + 0.01 * k, 2) for k in range(30)]
    finally:
        if restored is not None:
            restored.close()
        influx.stop()


def test_a_snapshot_keeps_the_grid_operators_sdat_values(tmp_path):
    """A LEG's quarter hours come from the DSO's files, kept in sdat.sqlite (WAL): the snapshot
    copies them with SQLite's backup, the write-ahead log included, and restore brings them back."""
    sys.path.insert(0, str(ROOT / "tests"))
    from sdat_files import leg_document, local_day
    point = "CH1007901234500000000000000000001"
    leg_config = lambda data_dir: parse_config({"houses": {"h1": {"id": 1, "name": "One", "metering_points": [point]}},
                                                "pricing": {"mode": "leg"}, "storage": {"data_dir": str(data_dir)},
                                                "mqtt": {"enabled": False}}, source="test")
    cfg = leg_config(tmp_path / "live")
    start, end = local_day(2026, 3, 1)
    data = leg_document("DOC-1", datetime(2026, 3, 2, 6, tzinfo=timezone.utc), start, end,
                        {point: ("consumption", [0.25] * 96, [0.5] * 96)})
    c = Community.open(cfg)
    try:
        assert c.import_sdat_file("a.xml", data).inserted == 288
        assert Path(f"{tmp_path / 'live' / 'sdat.sqlite'}-wal").stat().st_size > 0     # still in the log
        manifest = snapshot(c, tmp_path / "backup")
        assert "sdat.sqlite" in manifest["files"]
    finally:
        c.close()
    restore(tmp_path / "backup", tmp_path / "restored")
    restored = Community.open(leg_config(tmp_path / "restored"))
    try:
        v = restored.sdat.values(pd.Timestamp(start), pd.Timestamp(end))
        assert len(v) == 288 and restored.sdat.documents() == 1
        assert restored.import_sdat_file("a.xml", data).already_imported
    finally:
        restored.close()
