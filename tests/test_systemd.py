"""The systemd units in deploy/systemd/.

- ``systemd-analyze verify`` accepts each unit: a copy whose ExecStart, WorkingDirectory, User and
  Group point at this checkout and root (verify wants the binary to exist), everything else byte for
  byte; no unknown key, section or unparsable value.
- ``systemd-analyze security --offline`` rates each unit's hardening below a fixed exposure.
- The properties that matter: restarts, an unprivileged user, the configuration from
  ``$LEG_CONFIG``, secrets from an optional environment file, the state directory, the journal,
  SIGTERM to the main process only with time to flush, and each unit's command.
- leg-invoicing.service's ExecStart started as systemd starts it (its working directory, an
  environment built from the unit and a drop-in, stdin from /dev/null): /api/health answers, the
  manager's password comes from the environment file, SIGTERM stops it with status 0 within
  TimeoutStopSec, without an error and with no process left over; a second start (Restart=always)
  comes up on the same state.
- The InfluxDB pair (leg-invoicing-web.service and leg-invoicing-collector.service) started the same
  way against a real influxd and mosquitto: readings published over MQTT are in InfluxDB after the
  collector's SIGTERM, and both stop with status 0.
"""
from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
import uuid
from pathlib import Path

import pytest
import requests

from peers import Influxd, Mosquitto, free_port, influxd_binary, mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent
UNIT_DIR = ROOT / "deploy" / "systemd"
INSTALL_DIR = "/opt/leg-invoicing"
VENV_PYTHON = ROOT / ".venv" / "bin" / "python"
PYTHON = str(VENV_PYTHON) if VENV_PYTHON.exists() else sys.executable
SYSTEMD_ANALYZE = shutil.which("systemd-analyze") or next(
    (p for p in ("/usr/bin/systemd-analyze", "/bin/systemd-analyze") if Path(p).exists()), None)
needs_analyze = pytest.mark.skipif(SYSTEMD_ANALYZE is None,
                                   reason="systemd-analyze is not installed (Debian package systemd)")
# systemd's PATH for system services
SYSTEMD_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
REWRITTEN_KEYS = ("ExecStart", "WorkingDirectory", "User", "Group")

# each unit's command after "<venv python> app.py"
COMMANDS = {
    "leg-invoicing.service": ["run"],
    "leg-invoicing-web.service": ["run", "--no-ingest", "--threads", "16"],
    "leg-invoicing-collector.service": ["collect"],
}
UNITS = sorted(COMMANDS)
HOUSES = {"AA-11-BB-22-CC-01": {"id": 1, "name": "House 1", "type": "simulated", "pv_kwp": 10.0},
          "AA-11-BB-22-CC-02": {"id": 2, "name": "House 2", "type": "simulated"}}


# -- reading units ----------------------------------------------------------------------------------
def parse_unit(text: str) -> list[tuple[str, str, str]]:
    """(section, key, value) for every assignment in order (keys such as Environment= repeat)."""
    entries, section, pending = [], None, ""
    for raw in text.splitlines():
        line = pending + raw.strip()
        pending = ""
        if not line or line[0] in "#;":
            continue
        if line.endswith("\\"):                       # continued on the next line
            pending = line[:-1] + " "
            continue
        if line.startswith("[") and line.endswith("]"):
            section = line[1:-1]
            continue
        key, sep, value = line.partition("=")
        assert sep and section, f"not an assignment inside a section: {raw!r}"
        entries.append((section, key.strip(), value.strip()))
    return entries


def values(entries, section: str, key: str) -> list[str]:
    return [v for s, k, v in entries if s == section and k == key]


def one(entries, section: str, key: str) -> str:
    found = values(entries, section, key)
    assert len(found) == 1, f"[{section}] {key}= set {len(found)} times: {found}"
    return found[0]


def words(entries, section: str, key: str) -> list[str]:
    """A list-valued setting (After=, Wants=, ReadWritePaths=, ...) over all its assignments."""
    return [w for v in values(entries, section, key) for w in v.split()]


def seconds(span: str) -> float:
    """A systemd time span ("60", "60s", "1min 30s", "2m") in seconds."""
    units = {"": 1, "s": 1, "sec": 1, "m": 60, "min": 60, "ms": 0.001, "h": 3600}
    parts = re.findall(r"(\d+(?:\.\d+)?)\s*([a-z]*)", span)
    assert parts and "".join(n + u for n, u in parts) == span.replace(" ", ""), f"unexpected time span {span!r}"
    return sum(float(n) * units[u] for n, u in parts)


def environment_assignments(value: str) -> dict[str, str]:
    """Environment=A=1 "B=two words" as systemd splits it."""
    return dict(w.split("=", 1) for w in shlex.split(value))


def environment_file(path: Path) -> dict[str, str]:
    """An EnvironmentFile= (KEY=VALUE lines, # comments, optional quotes)."""
    env = {}
    for line in path.read_text().splitlines():
        line = line.strip()
        if not line or line[0] in "#;":
            continue
        key, _, value = line.partition("=")
        value = value.strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        env[key.strip()] = value
    return env


def rewrite_for_checkout(text: str) -> str:
    """The unit with ExecStart's interpreter and WorkingDirectory in this checkout, User and Group
    root; every other line unchanged."""
    out = []
    for line in text.splitlines(keepends=True):
        if line.startswith(f"ExecStart={INSTALL_DIR}/.venv/bin/python "):
            line = line.replace(f"{INSTALL_DIR}/.venv/bin/python", PYTHON, 1)
        elif line.startswith("WorkingDirectory="):
            line = f"WorkingDirectory={ROOT}\n"
        elif line.startswith(("User=", "Group=")):
            line = line.split("=", 1)[0] + "=root\n"
        out.append(line)
    return "".join(out)


def install_copy(name: str, dest: Path, dropin: str | None = None) -> Path:
    """The unit rewritten for this checkout in ``dest`` (with a drop-in in ``<unit>.d/``), after
    checking that the rewrite touched only the four lines it should."""
    original = (UNIT_DIR / name).read_text()
    text = rewrite_for_checkout(original)
    before, after = original.splitlines(), text.splitlines()
    assert len(before) == len(after)
    changed = [(a, b) for a, b in zip(before, after) if a != b]
    assert sorted(a.split("=", 1)[0] for a, _ in changed) == sorted(REWRITTEN_KEYS), changed
    assert original.endswith("\n") and text.endswith("\n")
    dest.mkdir(parents=True, exist_ok=True)
    path = dest / name
    path.write_text(text)
    if dropin:
        (dest / f"{name}.d").mkdir(exist_ok=True)
        (dest / f"{name}.d" / "test.conf").write_text(dropin)
    return path


def verify(path: Path) -> None:
    r = subprocess.run([SYSTEMD_ANALYZE, "verify", "--man=no", str(path)], capture_output=True, text=True,
                       timeout=60)
    # verify reports unknown keys, unknown sections and unparsable values on stderr but still exits 0
    problems = [line for line in r.stderr.splitlines()
                if path.name in line or re.search(r"Unknown|ignoring|Failed|Invalid|deprecated|not executable",
                                                  line, re.I)]
    assert r.returncode == 0 and not problems, f"systemd-analyze verify {path.name}: rc {r.returncode}\n{r.stderr}"


# -- the unit files -----------------------------------------------------------------------------------
def test_the_folder_holds_the_three_units_and_the_walk_through():
    assert sorted(p.name for p in UNIT_DIR.glob("*.service")) == UNITS
    readme = (UNIT_DIR / "README.md").read_text()
    for name in UNITS:
        assert name in readme
    for step in ("useradd --system --home /var/lib/leg-invoicing --shell /usr/sbin/nologin leg",
                 "systemctl daemon-reload", "systemctl enable --now leg-invoicing", "journalctl -u leg-invoicing -f",
                 "LEG_ADMIN_PASSWORD", "0640", "root:leg", "nginx-leg-invoicing.conf"):
        assert step in readme, step


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_systemd_analyze_verify_accepts_the_unit(name, tmp_path):
    verify(install_copy(name, tmp_path))


@needs_analyze
@pytest.mark.parametrize("name", UNITS)
def test_the_hardening_keeps_the_exposure_low(name):
    # the shipped file as it is (unprivileged user); 0-100, systemd calls below 40 "OK"
    r = subprocess.run([SYSTEMD_ANALYZE, "security", "--offline=yes", "--threshold=40", "--no-pager",
                        str(UNIT_DIR / name)], capture_output=True, text=True, timeout=60)
    assert r.returncode == 0, r.stdout[-3000:] + r.stderr
    assert "Overall exposure level" in r.stdout


@pytest.mark.parametrize("name", UNITS)
def test_unit_properties(name):
    u = parse_unit((UNIT_DIR / name).read_text())
    svc = "Service"
    assert one(u, svc, "Type") in ("simple", "exec")
    assert one(u, svc, "Restart") == "always" and seconds(one(u, svc, "RestartSec")) == 5
    # an unprivileged account, named
    for key in ("User", "Group"):
        assert one(u, svc, key) == "leg"
    assert "DynamicUser" not in {k for _, k, _ in u}
    # where it runs, what it runs
    workdir = one(u, svc, "WorkingDirectory")
    assert workdir == INSTALL_DIR
    argv = shlex.split(one(u, svc, "ExecStart"))
    assert argv == [f"{workdir}/.venv/bin/python", "app.py", *COMMANDS[name]], argv
    # configuration and secrets
    env = {}
    for v in values(u, svc, "Environment"):
        env |= environment_assignments(v)
    assert env["LEG_CONFIG"] == "/etc/leg-invoicing/config.yaml"
    assert env.get("PYTHONUNBUFFERED") == "1"           # printed lines reach the journal at once
    assert values(u, svc, "EnvironmentFile") == ["-/etc/leg-invoicing/env"]   # optional: "-"
    # state
    assert one(u, svc, "StateDirectory") == "leg-invoicing"
    assert "/var/lib/leg-invoicing" in words(u, svc, "ReadWritePaths")
    # the journal
    assert one(u, svc, "StandardOutput") == "journal" and one(u, svc, "StandardError") == "journal"
    assert one(u, svc, "SyslogIdentifier") == name.removesuffix(".service")
    # stopping: SIGTERM to the main process only (it stops its MQTT child itself), time to flush
    assert one(u, svc, "KillSignal") == "SIGTERM"
    assert one(u, svc, "KillMode") == "mixed"
    assert seconds(one(u, svc, "TimeoutStopSec")) >= 30
    # hardening
    for key, value in {"NoNewPrivileges": "yes", "ProtectSystem": "strict", "ProtectHome": "yes",
                       "PrivateTmp": "yes"}.items():
        assert one(u, svc, key) == value, key
    assert "MemoryDenyWriteExecute" not in {k for _, k, _ in u}
    # ordering
    after, wants = words(u, "Unit", "After"), words(u, "Unit", "Wants")
    assert "network-online.target" in after and "network-online.target" in wants
    assert one(u, "Install", "WantedBy") == "multi-user.target"
    if name == "leg-invoicing.service":                 # the embedded store: one writing process
        assert {"leg-invoicing-web.service", "leg-invoicing-collector.service"} <= set(words(u, "Unit", "Conflicts"))
    else:
        assert "leg-invoicing.service" in words(u, "Unit", "Conflicts")
        assert "influxdb.service" in after and "influxdb.service" in wants
    if name == "leg-invoicing-collector.service":
        assert "mosquitto.service" in after and "mosquitto.service" in wants


# -- starting the units' commands as systemd does -------------------------------------------------------
class Started:
    """A unit's ExecStart started as systemd starts it: argv as systemd splits it, in
    WorkingDirectory, with the environment of a system service (PATH, HOME, USER, LOGNAME, SHELL,
    INVOCATION_ID), Environment= in order, then each EnvironmentFile= (a missing optional one is
    skipped, later ones win), stdin from /dev/null, stdout and stderr to files (the journal), in a
    session of its own (its control group)."""

    def __init__(self, unit_path: Path, home: Path, logs: Path):
        entries = parse_unit(unit_path.read_text())
        dropins = sorted((unit_path.parent / f"{unit_path.name}.d").glob("*.conf"))
        for d in dropins:
            entries += parse_unit(d.read_text())
        self.entries = entries
        self.name = unit_path.name
        user = values(entries, "Service", "User")[-1]
        env = {"PATH": SYSTEMD_PATH, "HOME": str(home), "USER": user, "LOGNAME": user,
               "SHELL": "/usr/sbin/nologin", "INVOCATION_ID": uuid.uuid4().hex}
        for v in values(entries, "Service", "Environment"):
            env |= environment_assignments(v)
        for v in values(entries, "Service", "EnvironmentFile"):
            optional, path = v.startswith("-"), Path(v.lstrip("-"))
            if path.exists():
                env |= environment_file(path)
            else:
                assert optional, f"{path} is missing and not optional"
        self.env = env
        self.argv = shlex.split(values(entries, "Service", "ExecStart")[-1])
        self.cwd = values(entries, "Service", "WorkingDirectory")[-1]
        self.timeout_stop = seconds(values(entries, "Service", "TimeoutStopSec")[-1])
        self.stdout, self.stderr = logs / f"{self.name}.out", logs / f"{self.name}.err"
        with open(self.stdout, "ab") as out, open(self.stderr, "ab") as err:
            self.proc = subprocess.Popen(self.argv, cwd=self.cwd, env=env, stdin=subprocess.DEVNULL,
                                         stdout=out, stderr=err, start_new_session=True)

    def log(self) -> str:
        return self.stdout.read_text() + self.stderr.read_text()

    def wait_healthy(self, url: str, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                pytest.fail(f"{self.name} exited with {self.proc.returncode} before answering:\n{self.log()[-4000:]}")
            try:
                r = requests.get(url + "api/health", timeout=2)
                if r.status_code == 200:
                    return r.json()
            except requests.RequestException:
                pass
            time.sleep(0.2)
        pytest.fail(f"{self.name}: no 200 from {url}api/health after {timeout} s:\n{self.log()[-4000:]}")

    def leftovers(self) -> list[int]:
        """Processes of its session (what KillMode=mixed would SIGKILL after the main process)."""
        found = []
        for stat in Path("/proc").glob("[0-9]*/stat"):
            try:
                fields = stat.read_text().rsplit(")", 1)[1].split()
            except OSError:
                continue
            if int(fields[3]) == self.proc.pid and fields[0] != "Z":     # field 6: session id
                found.append(int(stat.parent.name))
        return found

    def stop(self) -> tuple[int, float]:
        """SIGTERM to the main process (KillSignal=, KillMode=mixed); its exit status and how long it
        took. After TimeoutStopSec, or afterwards for what is left, SIGKILL as systemd would."""
        t = time.monotonic()
        self.proc.send_signal(signal.SIGTERM)
        try:
            rc = self.proc.wait(self.timeout_stop)
        except subprocess.TimeoutExpired:
            rc = None
        took = time.monotonic() - t
        self.kill_leftovers()
        if rc is None:
            self.proc.wait()
            pytest.fail(f"{self.name} did not stop within TimeoutStopSec={self.timeout_stop:g} s:\n{self.log()[-4000:]}")
        return rc, took

    def kill_leftovers(self) -> list[int]:
        left = self.leftovers()
        for pid in left:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        return left

    def ensure_stopped(self) -> None:
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait()
        self.kill_leftovers()


def assert_clean_stop(unit: Started, rc: int, took: float) -> None:
    log = unit.log()
    assert rc == 0, f"{unit.name} exited with {rc} after SIGTERM:\n{log[-4000:]}"
    assert took < unit.timeout_stop
    assert "Traceback" not in log, log[-4000:]
    bad = [line for line in log.splitlines() if re.search(r" (ERROR|CRITICAL) ", line)]
    assert not bad, bad
    left = unit.kill_leftovers()
    assert not left, f"{unit.name} left processes {left} for SIGKILL"


def write_config(path: Path, data: dict) -> None:
    path.write_text(json.dumps(data, indent=2))          # JSON is YAML


def dropin(config: Path, env_file: Path) -> str:
    """The override an administrator would write with systemctl edit: another config, another
    secrets file."""
    return f"[Service]\nEnvironment=LEG_CONFIG={config}\nEnvironmentFile={env_file}\n"


def test_leg_invoicing_service_starts_answers_and_stops_cleanly_on_sigterm(tmp_path):
    state = tmp_path / "var-lib-leg-invoicing"           # StateDirectory=, created by systemd
    state.mkdir(mode=0o750)
    port = free_port()
    config, env_file = tmp_path / "config.yaml", tmp_path / "env"
    write_config(config, {
        "mqtt": {"enabled": False},
        "houses": HOUSES,
        "web": {"host": "127.0.0.1", "port": port},
        "storage": {"data_dir": str(state), "backend": "embedded"},
        "logging": {"level": "INFO", "file": None},
    })
    password = "from-the-env-file-" + uuid.uuid4().hex[:8]
    env_file.write_text(f"# secrets\nLEG_ADMIN_PASSWORD={password}\n")
    env_file.chmod(0o640)
    unit_path = install_copy("leg-invoicing.service", tmp_path / "units", dropin(config, env_file))
    if SYSTEMD_ANALYZE:
        verify(unit_path)                                 # the unit with its drop-in
    url = f"http://127.0.0.1:{port}/"

    for start in ("first", "second"):                     # the second: as after Restart=always
        unit = Started(unit_path, home=state, logs=tmp_path)
        try:
            assert unit.env["LEG_CONFIG"] == str(config) and unit.env["LEG_ADMIN_PASSWORD"] == password
            assert unit.argv[:2] == [PYTHON, "app.py"] and unit.cwd == str(ROOT)
            health = unit.wait_healthy(url)
            # "degraded" only warns (no reading yet from meters that nothing feeds here)
            assert health["status"] in ("ok", "degraded") and not health.get("problems"), health
            assert health["store"]["backend"] == "embedded", health
            # the manager from LEG_ADMIN_PASSWORD in the environment file; no password printed
            s = requests.Session()
            r = s.post(url + "login", data={"username": "admin", "password": password}, allow_redirects=False,
                       timeout=30)
            assert r.status_code == 303, (r.status_code, r.text[:300])
            assert s.get(url + "api/tariffs", timeout=30).status_code == 200
            rc, took = unit.stop()
        finally:
            unit.ensure_stopped()
        assert_clean_stop(unit, rc, took)
        log = unit.log()
        assert "first start: manager account" not in log and password not in log
        assert "Serving on http://127.0.0.1:%d" % port in log
    # everything it wrote is in the state directory
    assert {"ledger.sqlite", "secret_key"} <= {p.name for p in state.iterdir()}, sorted(os.listdir(state))


@pytest.mark.skipif(influxd_binary() is None or mosquitto_binary() is None, reason="needs influxd and mosquitto")
def test_the_influxdb_pair_web_and_collector(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    influx = Influxd(tmp_path / "influx").start()
    units = []
    try:
        state = tmp_path / "var-lib-leg-invoicing"
        state.mkdir(mode=0o750)
        port = free_port()
        config, env_file = tmp_path / "config.yaml", tmp_path / "env"
        write_config(config, {
            "mqtt": {"broker": "127.0.0.1", "port": broker.port, "client_id": "leg-collector-test",
                     "username": "leg", "password": "${LEG_MQTT_PASSWORD}"},
            "influxdb": {"url": influx.url, "database": "energy"},
            "houses": {mac: {**h, "type": "real"} for mac, h in HOUSES.items()},
            "web": {"host": "127.0.0.1", "port": port},
            "storage": {"data_dir": str(state), "backend": "influxdb"},
            "collector": {"interval": 1},
        })
        env_file.write_text("LEG_ADMIN_PASSWORD=pair-secret-123\nLEG_MQTT_PASSWORD='anything'\n")
        url = f"http://127.0.0.1:{port}/"
        paths = {name: install_copy(name, tmp_path / "units", dropin(config, env_file))
                 for name in ("leg-invoicing-web.service", "leg-invoicing-collector.service")}
        if SYSTEMD_ANALYZE:
            for p in paths.values():
                verify(p)
        web = Started(paths["leg-invoicing-web.service"], home=state, logs=tmp_path)
        units.append(web)
        health = web.wait_healthy(url)
        assert health["store"]["backend"] == "influxdb" and health["ingest"] is None, health
        collector = Started(paths["leg-invoicing-collector.service"], home=state, logs=tmp_path)
        units.append(collector)
        deadline = time.monotonic() + 60
        while "MQTT: connected" not in collector.log():
            assert collector.proc.poll() is None, collector.log()
            assert time.monotonic() < deadline, collector.log()
            time.sleep(0.1)

        import paho.mqtt.client as mqtt
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="meters")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        for k, mac in enumerate(HOUSES):
            body = json.dumps({"SMid": str(k), "Pi": 1.0, "Po": 0.0, "Ei": 100.0 + k, "Eo": 5.0, "ts": 10})
            pub.publish(f"{mac}/SENSOR", body, qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        time.sleep(0.5)

        rc, took = collector.stop()
        assert_clean_stop(collector, rc, took)
        assert "stopping: writing buffered readings" in collector.log()
        r = influx.query("SELECT count(import_kwh) FROM readings", "energy")
        assert r["results"][0]["series"][0]["values"][0][1] == len(HOUSES), r

        health = web.wait_healthy(url)                   # the web app without its collector
        assert health["status"] in ("ok", "degraded") and not health.get("problems"), health
        rc, took = web.stop()
        assert_clean_stop(web, rc, took)
    finally:
        for u in units:
            u.ensure_stopped()
        broker.stop()
        influx.stop()
