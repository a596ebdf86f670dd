"""Faults an operator meets, with the commands run as an operator runs them (subprocesses of
``python app.py``): commands beside the running app, ``--config`` on every command, configuration
files that cannot be used, the modes of the data files, and a store that cannot write (a full
disk) in /api/health.

Bad input must get one clear line (what, where, why) and a non-zero exit status, never a traceback.
"""
from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
import time
from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest
import requests
import yaml

from peers import free_port, wait_port

ROOT = Path(__file__).resolve().parent.parent
HOUSES = {"AA-11-BB-22-CC-01": {"id": 1, "name": "House 1", "type": "simulated"},
          "AA-11-BB-22-CC-02": {"id": 2, "name": "House 2", "type": "real"}}


def write_config(folder: Path, port: int | None = None, **extra) -> Path:
    data = {"houses": HOUSES, "storage": {"data_dir": str(folder / "data")}, "mqtt": {"enabled": False},
            "web": {"port": port or free_port(), "host": "127.0.0.1"}, **extra}
    path = folder / "config.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def _loose_umask():
    os.umask(0o022)                 # what a login shell usually has: the app sets its own


def cli(*args, input=None, timeout=120):
    return subprocess.run([sys.executable, "app.py", *map(str, args)], cwd=ROOT, input=input, capture_output=True,
                          text=True, timeout=timeout, env={**os.environ, "LEG_CONFIG": ""},
                          preexec_fn=_loose_umask)


def assert_one_line_error(out, *fragments):
    """Exit status 1, no traceback, one error (``Error: ...``) on standard error naming ``fragments``."""
    text = out.stdout + out.stderr
    assert out.returncode == 1, text
    assert "Traceback" not in text, text
    assert out.stderr.startswith("Error: "), text
    for f in fragments:
        assert f in out.stderr, (f, out.stderr)


class App:
    """``python app.py --config FILE`` (no command: the app runs as ``python app.py`` does)."""

    def __init__(self, folder: Path):
        self.port = free_port()
        self.config = write_config(folder, self.port)
        self.data = folder / "data"
        self.proc = subprocess.Popen([sys.executable, "app.py", "--config", str(self.config)], cwd=ROOT,
                                     env={**os.environ, "LEG_ADMIN_PASSWORD": "admin-password-1", "LEG_CONFIG": ""},
                                     stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True,
                                     preexec_fn=_loose_umask)
        self.url = f"http://127.0.0.1:{self.port}/"
        try:
            wait_port(self.port, timeout=90)
        except TimeoutError:
            self.proc.kill()
            raise AssertionError(self.proc.communicate()[0])
        self.pid = json.loads((self.data / "control.json").read_text())["pid"]

    def stop(self) -> str:
        if self.proc.poll() is None:
            self.proc.terminate()
        out = self.proc.communicate(timeout=60)[0]
        assert self.proc.returncode == 0, out
        return out


@pytest.fixture
def app(tmp_path):
    a = App(tmp_path)
    yield a
    if a.proc.poll() is None:
        a.proc.kill()
        a.proc.wait()


# -- 1. commands beside the running app -----------------------------------------------------------

def test_account_token_and_export_commands_work_while_the_app_runs(app, tmp_path):
    cfg = app.config
    # tokens: created and revoked beside the app, seen by the app at once
    out = cli("token", "create", "--scope", "read", "--label", "monitor", "--config", cfg)
    assert out.returncode == 0, out.stderr
    token = out.stdout.strip().splitlines()[-1]
    bearer = {"Authorization": f"Bearer {token}"}
    assert requests.get(app.url + "api/houses", headers=bearer, timeout=30).status_code == 200
    out = cli("token", "revoke", token, "--config", cfg)
    assert out.returncode == 0 and "revoked" in out.stdout, out.stderr
    assert requests.get(app.url + "api/houses", headers=bearer, timeout=30).status_code == 401
    # accounts: added, password changed, listed; the app logs the user in with the new password
    out = cli("user", "add", "bob", "--role", "member", "--house", "1", "--password-stdin", "--config", cfg,
              input="first-password-1\n")
    assert out.returncode == 0 and "user bob (member) added" in out.stdout, out.stderr
    out = cli("user", "passwd", "bob", "--password-stdin", "--config", cfg, input="second-password-2\n")
    assert out.returncode == 0 and "password of bob changed" in out.stdout, out.stderr
    out = cli("user", "list", "--config", cfg)
    assert out.returncode == 0 and "bob" in out.stdout and "admin" in out.stdout, out.stderr
    login = lambda pw: requests.post(app.url + "login", data={"username": "bob", "password": pw},
                                     allow_redirects=False, timeout=30).status_code
    assert login("second-password-2") == 303
    assert login("first-password-1") != 303

    # simulate --backfill: the history goes to the store through the running app
    sim = subprocess.Popen([sys.executable, "app.py", "simulate", "--backfill", "1", "--broker", "127.0.0.1:1",
                            "--config", str(cfg)], cwd=ROOT, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                           text=True)
    lines = []
    try:
        for line in sim.stdout:
            lines.append(line)
            if line.startswith("publishing"):
                break
    finally:
        sim.terminate()
        lines += sim.communicate(timeout=30)[0].splitlines(keepends=True)
    text = "".join(lines)
    assert "through the running app" in text and "Traceback" not in text, text
    backfilled = int(text.split("backfilled ")[1].split()[0])
    assert backfilled >= 1440

    # export-readings through the running app: to a file and to standard output alike
    out = cli("export-readings", "--out", tmp_path / "live.csv", "--config", cfg)
    assert out.returncode == 0 and f"{backfilled} readings" in out.stderr, out.stderr
    live = (tmp_path / "live.csv").read_text()
    assert live.count("\n") == backfilled + 1 and live.startswith("meter_id,timestamp,import_kwh,export_kwh\n")
    out = cli("export-readings", "--config", cfg)
    assert out.returncode == 0 and out.stdout == live
    out = cli("export-readings", "--meter", "AA-11-BB-22-CC-02", "--config", cfg)
    assert out.returncode == 0 and out.stdout == "meter_id,timestamp,import_kwh,export_kwh\n"
    out = cli("export-readings", "--start", "yesterday", "--config", cfg)
    assert_one_line_error(out, "--start/--end")

    # commands that need the store itself answer with the reason, in one line
    for args in (["settle", "--period", "2026-01"], ["import-readings", tmp_path / "live.csv"], ["run"]):
        assert_one_line_error(cli(*args, "--config", cfg), f"the app is running (pid {app.pid})", "stop it")

    log = app.stop()
    assert "Traceback" not in log, log
    # the app is gone: the same export, from the store itself
    out = cli("export-readings", "--config", cfg)
    assert out.returncode == 0 and out.stdout == live


def test_a_process_holding_the_store_gets_a_one_line_reason(tmp_path):
    """A process other than the app (the collector, or anything else) holds the DuckDB file: the
    commands that need it say who holds it; the ledger commands go on."""
    cfg = write_config(tmp_path)
    assert cli("user", "list", "--config", cfg).returncode == 0          # makes the data folder
    holder = subprocess.Popen([sys.executable, "-c", "import duckdb, sys, time\n"
                               f"c = duckdb.connect({str(tmp_path / 'data' / 'timeseries.duckdb')!r})\n"
                               "print('ready', flush=True)\ntime.sleep(600)\n"],
                              stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "ready"
        assert_one_line_error(cli("export-readings", "--config", cfg),
                              f"another process (pid {holder.pid}) holds the store", "stop it before exporting")
        assert_one_line_error(cli("simulate", "--backfill", "1", "--config", cfg), f"(pid {holder.pid})")
        out = cli("token", "create", "--scope", "write", "--config", cfg)
        assert out.returncode == 0 and out.stdout.strip().splitlines()[-1].startswith("leg_"), out.stderr
    finally:
        holder.kill()
        holder.wait()


def test_a_control_file_left_by_a_killed_app_does_not_block_the_commands(tmp_path):
    cfg = write_config(tmp_path)
    gone = subprocess.Popen([sys.executable, "-c", "pass"])
    gone.wait()
    (tmp_path / "data").mkdir(mode=0o700)
    (tmp_path / "data" / "control.json").write_text(json.dumps(
        {"url": "http://127.0.0.1:1/api/backup", "base": "http://127.0.0.1:1/", "secret": "x", "pid": gone.pid}))
    out = cli("export-readings", "--config", cfg)
    assert out.returncode == 0 and out.stdout.startswith("meter_id,"), out.stderr
    out = cli("backup", tmp_path / "bk", "--config", cfg)
    assert out.returncode == 0 and "backup in" in out.stdout, out.stderr


# -- 2. --config on every command -----------------------------------------------------------------

def _commands(group, path=()):
    import click
    yield path, group
    if isinstance(group, click.Group):
        for name, cmd in group.commands.items():
            yield from _commands(cmd, (*path, name))


def test_every_command_takes_config():
    from click.testing import CliRunner

    import app as cli_app
    paths = list(_commands(cli_app.cli))
    assert len(paths) >= 20
    for path, _ in paths:
        r = CliRunner().invoke(cli_app.cli, [*path, "--help"])
        assert r.exit_code == 0, (path, r.output)
        assert "--config FILE" in r.output, (path, r.output)


def test_config_is_taken_before_or_after_the_command(tmp_path):
    cfg = write_config(tmp_path)
    for args in (["--config", cfg, "token", "create", "--scope", "read"],
                 ["token", "--config", cfg, "create", "--scope", "read"],
                 ["token", "create", "--scope", "read", "--config", cfg]):
        out = cli(*args)
        assert out.returncode == 0 and out.stdout.strip().splitlines()[-1].startswith("leg_"), (args, out.stderr)
    (tmp_path / "broken.yaml").write_text("tariffs: {p_pv: abc}\n")
    out = cli("--config", tmp_path / "broken.yaml", "user", "list", "--config", cfg)     # the nearer one wins
    assert out.returncode == 0, out.stderr
    assert_one_line_error(cli("user", "--config", tmp_path / "broken.yaml", "list"), "tariffs.p_pv")


def test_config_without_a_command_runs_the_app(app):
    assert requests.get(app.url + "api/health", timeout=30).status_code in (200, 503)
    out = app.stop()
    assert "web app on" in out and "Period " in out, out


# -- 3. configuration faults ----------------------------------------------------------------------

def _deep(n: int) -> str:
    return "houses: " + "[" * n + "]" * n + "\n"


def _laughs(levels: int = 9) -> str:
    lines = ['a0: &a0 ["lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol", "lol"]']
    for i in range(1, levels):
        lines.append(f"a{i}: &a{i} [" + ", ".join([f"*a{i - 1}"] * 9) + "]")
    return "\n".join(lines) + "\n"


CONFIG_FAULTS = {
    "empty": ("", "(top level): the file is empty"),
    "only-comments": ("# to do\n", "(top level): the file is empty"),
    "a-list": ("- houses\n- tariffs\n", "(top level): must be a mapping of sections"),
    "a-sentence": ("hello world\n", "(top level): must be a mapping of sections"),
    "self-alias-mapping": ("houses: &h\n  x: *h\n", "line 2, column 6: not valid YAML (the alias *h stands inside"),
    "self-alias-list": ("tariffs: &t [1, *t]\n", "not valid YAML (the alias *t stands inside the value &t"),
    "deep-lists": (_deep(20000), "not valid YAML (nested more than 50 levels deep)"),
    "deep-mappings": ("houses: " + "{a: " * 3000 + "1" + "}" * 3000 + "\n", "nested more than 50 levels deep"),
    "alias-bomb": (_laughs(), "(top level): its aliases expand to"),
    "binary": ("\x00\x01\x02 not yaml\n", "not valid YAML"),
}


@pytest.mark.parametrize("name", list(CONFIG_FAULTS))
def test_a_configuration_that_cannot_be_used_is_one_clear_error(tmp_path, name):
    text, expected = CONFIG_FAULTS[name]
    path = tmp_path / "config.yaml"
    path.write_text(text)
    t0 = time.monotonic()
    for args in (["user", "list"], []):                  # a command, and the app itself
        out = cli(*args, "--config", path)
        assert_one_line_error(out, f"invalid configuration in {path}:", expected)
        assert len(out.stderr.strip().splitlines()) == 2, out.stderr     # the heading and one reason
    assert time.monotonic() - t0 < 30
    assert not (tmp_path / "data").exists() and not (ROOT / "data" / "ledger.sqlite").exists()


def test_the_bounds_of_a_configuration_file_leave_real_ones_alone(tmp_path):
    """Anchors and merge keys as people write them load as before."""
    from config import load_config
    path = tmp_path / "config.yaml"
    path.write_text("""
houses:
  AA-11-BB-22-CC-01: &house {id: 1, name: House 1, type: real, owner: {name: Anna, street: Dorf, number: "1"}}
  AA-11-BB-22-CC-02: {<<: *house, id: 2, name: House 2}
""")
    cfg = load_config(path)
    assert [h.owner.name for h in cfg.houses.values()] == ["Anna", "Anna"]
    assert [h.name for h in cfg.houses.values()] == ["House 1", "House 2"]


def _read_only_folder(tmp_path) -> Path | None:
    """A folder this process cannot write to: a read-only tmpfs as root (root writes anywhere
    else), a folder without write permission otherwise."""
    folder = tmp_path / "readonly"
    folder.mkdir()
    if os.geteuid() != 0:
        folder.chmod(0o500)
        return folder
    r = subprocess.run(["mount", "-t", "tmpfs", "-o", "ro,size=1m", "tmpfs", str(folder)], capture_output=True)
    return folder if r.returncode == 0 else None


@pytest.mark.parametrize("kind", ["a-file", "below-a-file", "not-writable"])
def test_an_unusable_data_dir_is_a_configuration_error(tmp_path, kind):
    (tmp_path / "a-file").write_text("not a folder")
    folder = None
    if kind == "a-file":
        data_dir, expected = tmp_path / "a-file", "is a file, not a folder"
    elif kind == "below-a-file":
        data_dir, expected = tmp_path / "a-file" / "data", f"cannot be created: '{tmp_path / 'a-file'}' is a file"
    else:
        folder = _read_only_folder(tmp_path)
        if folder is None:
            pytest.skip("no read-only folder here: running as root and tmpfs cannot be mounted")
        data_dir, expected = folder, "is not writable ("
    path = tmp_path / "config.yaml"
    path.write_text(yaml.safe_dump({"houses": HOUSES, "storage": {"data_dir": str(data_dir)}}))
    try:
        for args in (["token", "create", "--scope", "read"], ["export-readings"], []):
            assert_one_line_error(cli(*args, "--config", path), f"invalid configuration in {path}:",
                                  f"storage.data_dir: '{data_dir}' {expected}")
    finally:
        if folder is not None and os.geteuid() == 0:
            subprocess.run(["umount", str(folder)], check=False)


# -- 4. file permissions --------------------------------------------------------------------------

def _mode(p: Path) -> int:
    return stat.S_IMODE(p.stat().st_mode)


def test_data_files_are_the_owners_only(app, tmp_path):
    """Started from a shell with umask 022, the app and the commands create folders 0700 and files
    0600: the ledger and its WAL and SHM, the store and its WAL, backups, exports, invoices."""
    control = json.loads((app.data / "control.json").read_text())
    r = requests.post(f"{control['base']}control/backfill", json={"days": 0.2, "seed": 1, "offset_months": 0,
                                                                  "all_houses": False},
                      headers={"X-Control-Secret": control["secret"]}, timeout=120)
    assert r.status_code == 201 and r.json()["readings"] > 0, r.text
    assert _mode(app.data) == 0o700
    names = {p.name for p in app.data.iterdir()}
    assert {"ledger.sqlite", "ledger.sqlite-wal", "ledger.sqlite-shm", "timeseries.duckdb",
            "timeseries.duckdb.wal", "control.json", "secret_key"} <= names, names
    for p in app.data.rglob("*"):
        assert _mode(p) == (0o700 if p.is_dir() else 0o600), (p, oct(_mode(p)))
    out = cli("backup", tmp_path / "bk", "--config", app.config)
    assert out.returncode == 0, out.stderr
    out = cli("export-readings", "--out", tmp_path / "readings.csv", "--config", app.config)
    assert out.returncode == 0, out.stderr
    app.stop()
    out = cli("settle", "--period", "2026-01", "--allow-incomplete", "--out", tmp_path / "invoices", "--config",
              app.config)
    assert out.returncode == 0, out.stderr
    assert _mode(tmp_path / "bk") == 0o700 and _mode(tmp_path / "invoices") == 0o700
    files = [*(tmp_path / "bk").iterdir(), *(tmp_path / "invoices").iterdir(), tmp_path / "readings.csv"]
    assert {"manifest.json", "ledger.sqlite", "timeseries.duckdb"} <= {p.name for p in files}
    assert {"invoices.csv", "DRAFT-2026-01-1.pdf"} <= {p.name for p in files}
    assert [(p.name, oct(_mode(p))) for p in files if _mode(p) != 0o600] == []
    # restored, the files stay the owner's
    out = cli("restore", tmp_path / "bk", "--force", "--config", app.config)
    assert out.returncode == 0, out.stderr
    assert [(p.name, oct(_mode(p))) for p in app.data.iterdir() if _mode(p) != 0o600] == []


# -- 5. a store that cannot write in /api/health -----------------------------------------------------

def _health(c, pipeline):
    import monitoring
    from web import Services
    runtime = SimpleNamespace(pipeline=pipeline, mqtt=None, simulator=None,
                              connections=SimpleNamespace(alive=lambda: {}, errors={}))
    return monitoring.health(Services(c, runtime), pd.Timestamp.now(tz="UTC"))


def _community(data_dir: Path):
    from community import Community
    from config import parse_config
    return Community.open(parse_config({"houses": {"M1": {"id": 1, "name": "House 1"}},
                                        "storage": {"data_dir": str(data_dir)}}, source="test"))


def _feed(pipeline, first: int, n: int, base: datetime) -> None:
    from ingest.readings import Reading
    for k in range(first, first + n):
        pipeline.submit(Reading("M1", base + timedelta(seconds=10 * k), 1000 + 0.01 * k, 0.0))


def _wait(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(0.05)


def test_health_names_a_store_that_cannot_write(tmp_path):
    """A full disk simulated by the store raising ENOSPC on write (a real full disk needs a mount:
    the next test, as root). Health answers 503 naming it, and 200 again once writes succeed."""
    from ingest.pipeline import Pipeline
    c = _community(tmp_path / "d")
    p = Pipeline(c).start()
    base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=1)
    try:
        _feed(p, 0, 10, base)
        p.flush()
        body, status = _health(c, p)
        assert status == 200 and body["problems"] == [] and body["ingest"]["write_failures"] == 0
        write = c.store.write_readings

        def full(df):
            raise OSError(errno.ENOSPC, "No space left on device")
        c.store.write_readings = full
        _feed(p, 10, 10, base)
        _wait(lambda: p.write_failures > 0, 10, "a failed write")
        body, status = _health(c, p)
        assert status == 503 and body["status"] == "failing"
        [problem] = body["problems"]
        assert problem.startswith("store cannot write: the data disk is full ([Errno 28] No space left on device)")
        assert body["ingest"]["last_write_error"].startswith("the data disk is full")
        c.store.write_readings = write
        _wait(lambda: p.write_failures == 0, 10, "the writes to recover")
        p.flush()
        body, status = _health(c, p)
        assert status == 200 and body["problems"] == [] and body["ingest"]["last_write_error"] is None
        assert len(c.store.read_readings("M1")) == 20                 # nothing was lost meanwhile
    finally:
        p.stop()
        c.close()


def _can_mount_tmpfs(where: Path) -> bool:
    if os.geteuid() != 0 or shutil.which("mount") is None:
        return False
    where.mkdir(parents=True, exist_ok=True)
    return subprocess.run(["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(where)],
                          capture_output=True).returncode == 0


def test_health_on_a_real_full_disk(tmp_path):
    """The data folder on a 4 MB tmpfs that is then filled: the store's write fails (DuckDB may
    report the failed commit as a failed rollback, so health looks at the free space too) and
    health names the full disk; once space is freed the kept readings are written."""
    from ingest.pipeline import Pipeline
    disk = tmp_path / "disk"
    if not _can_mount_tmpfs(disk):
        pytest.skip("needs root and tmpfs mounts (a real full disk)")
    c = p = None
    try:
        c = _community(disk / "d")
        p = Pipeline(c).start()
        base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(days=2)
        _feed(p, 0, 100, base)
        p.flush()
        assert _health(c, p)[1] == 200
        with open(disk / "filler", "wb") as fh:
            with pytest.raises(OSError) as info:
                while True:
                    fh.write(b"\0" * 65536)
                    fh.flush()
        assert info.value.errno == errno.ENOSPC
        _feed(p, 100, 3000, base)
        _wait(lambda: p.write_failures > 0, 30, "a write to fail on the full disk")
        body, status = _health(c, p)
        assert status == 503 and body["store"]["disk_free_mb"] < 1
        [problem] = body["problems"]
        assert problem.startswith("store cannot write: the data disk is full ("), problem
        (disk / "filler").unlink()
        _wait(lambda: p.write_failures == 0, 30, "the writes to recover")
        p.flush()
        assert _health(c, p)[1] == 200
        assert len(c.store.read_readings("M1")) == 3100
    finally:
        if p is not None:
            p.stop()
        if c is not None:
            c.close()
        subprocess.run(["umount", str(disk)], check=False)
