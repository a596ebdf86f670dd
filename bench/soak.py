"""Soak benchmark: a day of a 200-house community compressed into 15 minutes, against the running app.

At the seed's rate every house publishes ``{MAC}/SENSOR`` every 10 s (200 x 8,640 = 1.73 M
messages a day). Here the same day is published in ``--minutes`` (default 15: one message per house
every 0.104 s, about 1,920 messages/s) to a mosquitto broker started on a free port, while the real
app runs as a subprocess (``python app.py run``: the web app, ingest, MQTT in its child process
``python -m ingest.mqtt_process``, the embedded store).

* Publisher: the app's own simulator (``python app.py simulate --all-houses --interval 0.1``) is
  measured first (``--simulator-check`` seconds, before the app runs); computing 200 profiles per
  tick keeps it far below the target rate, so the soak publishes from a process of this script
  with paho at QoS 1, the simulator's profiles (``simulator.profiles.house_power_kw``, one day at
  10-second steps) and payloads (``ingest.sensor.sensor_payload``). Counters advance with the
  power over the real time between two messages, as the simulator does. A reading is timed when
  it is received, so the counters' 0.001 kWh steps between messages 0.1 s apart imply tens of kW:
  the houses' plausibility limit (``max_power_kw``) is the default 100 kW scaled by the compression
  (``--max-power-kw``; with 100 kW, readings received less than 36 ms after the previous one of the
  same meter are held, then accepted as a counter reset or rejected).
  ``--publisher simulator`` runs the soak with ``app.py simulate`` instead.
* Every ``--sample`` seconds: resident memory (VmRSS) of the app, its MQTT process and the broker,
  their CPU time, messages published (acknowledged by the broker) and received by the broker
  (``$SYS``), readings accepted and rejected (``GET /api/meters`` with a read token), the ingest
  queue (``GET /api/health``).
* Then: the publisher stops, the app is given time to catch up (queue empty, counts stable), gets
  SIGTERM (exit code 0 expected), and the store is opened to count the readings: every published
  message must be stored once (per meter too). The app's output is searched for ERROR, CRITICAL and
  Traceback lines.
* Memory is "flat" when the linear fit of the RSS over the second half of the run grows by less
  than 5 % over that half (app and MQTT process together; each is also reported alone).

    .venv/bin/python bench/soak.py                        # 15 minutes, writes its BENCHMARKS.md section
    .venv/bin/python bench/soak.py --minutes 2            # a quick check; leaves BENCHMARKS.md alone
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import os
import re
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.request
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import paho.mqtt.client as mqtt  # noqa: E402
import yaml  # noqa: E402

from benchfile import counting_publisher, machine, write_section  # noqa: E402
from peers import Mosquitto, free_port  # noqa: E402

PY = sys.executable
STEPS = 8640                       # 10-second steps in a day
SEED_INTERVAL_S = 10.0
FLAT_LIMIT = 0.05                  # growth of the fitted RSS over the second half
WARMUP_S = 60.0
TICK = os.sysconf("SC_CLK_TCK")


# -- /proc ------------------------------------------------------------------------------------------
def rss_mib(pid: int | None) -> float | None:
    if not pid:
        return None
    try:
        for line in open(f"/proc/{pid}/status"):
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def _stat(pid: int) -> list[str] | None:
    try:
        s = open(f"/proc/{pid}/stat").read()
    except OSError:
        return None
    return s[s.rfind(")") + 2:].split()


def cpu_s(pid: int | None) -> float | None:
    f = _stat(pid) if pid else None
    return (int(f[11]) + int(f[12])) / TICK if f else None


def machine_cpu() -> tuple[float, float]:
    """(busy, total) CPU seconds of the whole machine since boot."""
    f = [int(x) for x in open("/proc/stat").readline().split()[1:9]]
    total = sum(f) / TICK
    return total - (f[3] + f[4]) / TICK, total


def store_mib(data_dir: Path) -> float:
    """Size of the embedded store's files (DuckDB file and its write-ahead log)."""
    return sum(f.stat().st_size for f in data_dir.glob("timeseries.duckdb*") if f.is_file()) / 2**20


def source_times() -> dict[str, float]:
    """Modification times of the app's Python sources (the app loads them when it starts)."""
    out = {}
    for d, dirs, files in os.walk(ROOT):
        rel = Path(d).relative_to(ROOT)
        dirs[:] = [x for x in dirs if not x.startswith(".") and x not in ("bench", "tests", "docs", "data",
                                                                            "node_modules", "__pycache__")]
        for f in files:
            if f.endswith(".py"):
                out[str(rel / f)] = (Path(d) / f).stat().st_mtime
    return out


def mqtt_child(app_pid: int) -> int | None:
    """The app's MQTT process (``python -m ingest.mqtt_process``, a child of the app)."""
    for d in Path("/proc").iterdir():
        if not d.name.isdigit():
            continue
        f = _stat(int(d.name))
        if f and int(f[1]) == app_pid:
            try:
                if b"ingest.mqtt_process" in (d / "cmdline").read_bytes():
                    return int(d.name)
            except OSError:
                pass
    return None


# -- the broker's own counters -------------------------------------------------------------------------
class BrokerStats:
    """The broker's ``$SYS`` topics (published every second: ``sys_interval 1``)."""

    def __init__(self, port: int):
        self.values: dict[str, str] = {}
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="leg-soak-sys")
        self.client.on_connect = lambda c, u, f, rc, p: c.subscribe("$SYS/broker/#")
        self.client.on_message = lambda c, u, m: self.values.__setitem__(m.topic[12:], m.payload.decode())
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()

    def num(self, key: str) -> int | None:
        v = self.values.get(key)
        try:
            return int(float(v)) if v is not None else None
        except ValueError:
            return None

    def received(self) -> int | None:
        return self.num("publish/messages/received")

    def fresh_received(self, timeout: float = 5.0) -> int | None:
        """The received count after the broker has published it once more."""
        self.values.pop("uptime", None)
        deadline = time.monotonic() + timeout
        while "uptime" not in self.values and time.monotonic() < deadline:
            time.sleep(0.05)
        self.values.pop("uptime", None)
        while "uptime" not in self.values and time.monotonic() < deadline:
            time.sleep(0.05)
        return self.received()

    def stop(self) -> None:
        self.client.disconnect()
        self.client.loop_stop()


# -- the publisher (a process of its own) ------------------------------------------------------------
def publisher_main(cfg_path: str, port: int, interval: float, ready, stop, sent_v, acked_v, out) -> None:
    sys.path[:0] = [str(ROOT)]
    import pandas as pd

    from config import load_config
    from ingest.sensor import sensor_payload
    from simulator.profiles import base_counters, house_power_kw, profiles_for
    cfg = load_config(cfg_path)
    profiles = profiles_for(cfg.houses)
    day0 = (pd.Timestamp.now(tz=cfg.tz).normalize() - pd.Timedelta(days=1)).tz_convert("UTC")
    ts = pd.date_range(day0, periods=STEPS, freq=f"{SEED_INTERVAL_S:g}s")
    net = np.empty((len(profiles), STEPS))
    for i, p in enumerate(profiles):
        load, pv = house_power_kw(p, ts, cfg.tz)
        net[i] = load - pv
    n = len(profiles)
    topics = [f"{p.meter_id}/SENSOR" for p in profiles]
    smids = [f"6022{p.index:04d}" for p in profiles]
    start = np.array([base_counters(p) for p in profiles], dtype=float)
    ei, eo = start[:, 0].copy(), start[:, 1].copy()
    boot_offset = [3600 * (1 + p.index % 200) for p in profiles]      # devices booted at different times

    client, acked = counting_publisher(port, "leg-soak-publisher")
    sent = ticks = 0
    max_lag = 0.0
    waited_for_acks = 0.0
    boot = time.time()
    ready.set()
    t0 = last = time.monotonic()
    while not stop.is_set():
        target = t0 + ticks * interval
        now = time.monotonic()
        if now < target:
            time.sleep(min(target - now, 0.05))
            continue
        max_lag = max(max_lag, now - target)
        if sent - acked[0] > 20_000:                    # message ids wrap at 65,535
            w = time.monotonic()
            while sent - acked[0] > 20_000 and not stop.is_set():
                time.sleep(0.001)
            waited_for_acks += time.monotonic() - w
        dt = now - last
        last = now
        step = net[:, ticks % STEPS]
        pi, po = np.clip(step, 0, None), np.clip(-step, 0, None)
        ei += pi * dt / 3600
        eo += po * dt / 3600
        uptime = int(time.time() - boot)
        for h in range(n):
            client.publish(topics[h], sensor_payload(float(ei[h]), float(eo[h]), float(pi[h]), float(po[h]),
                                                     smids[h], uptime + boot_offset[h]), qos=1)
        sent += n
        ticks += 1
        sent_v.value = sent
        acked_v.value = acked[0]
    t_end = time.monotonic()
    deadline = t_end + 120
    while acked[0] < sent and time.monotonic() < deadline:
        time.sleep(0.01)
    acked_v.value = acked[0]
    client.disconnect()
    client.loop_stop()
    out.put({"sent": sent, "acked": acked[0], "ticks": ticks, "houses": n, "elapsed": t_end - t0,
             "max_lag": max_lag, "waited_for_acks": waited_for_acks})


# -- the app ----------------------------------------------------------------------------------------
def get_json(url: str, token: str | None = None, timeout: float = 20.0):
    req = urllib.request.Request(url, headers={"Authorization": f"Bearer {token}"} if token else {})
    with urllib.request.urlopen(req, timeout=timeout) as r:
        return json.loads(r.read())


def write_config(path: Path, n_houses: int, mqtt_port: int, web_port: int, data_dir: Path,
                 max_power_kw: float, memory_limit_mb: int = 512) -> list[str]:
    macs = [f"SOAK-{k:03d}" for k in range(n_houses)]
    houses = {mac: {"id": k + 1, "name": f"House {k + 1}", "type": "simulated", "max_power_kw": max_power_kw,
                    **({"pv_kwp": float(5 + 5 * (k % 4))} if k % 3 == 0 else {})}
              for k, mac in enumerate(macs)}
    cfg = {"mqtt": {"broker": "127.0.0.1", "port": mqtt_port, "use_tls": False, "client_id": "leg-soak"},
           "houses": houses,
           "collector": {"interval": 60},
           "web": {"host": "127.0.0.1", "port": web_port, "trusted_proxy": None},
           "logging": {"level": "INFO", "file": None},
           "storage": {"data_dir": str(data_dir), "backend": "embedded", "memory_limit_mb": memory_limit_mb}}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))
    return macs


def create_token(cfg_path: Path, env: dict) -> str:
    r = subprocess.run([PY, "app.py", "token", "create", "--scope", "read", "--label", "soak",
                        "--config", str(cfg_path)], cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    if r.returncode != 0:
        raise RuntimeError(f"token create failed: {r.stderr or r.stdout}")
    return r.stdout.strip().splitlines()[-1].strip()


def simulator_check(cfg_path: Path, port: int, env: dict, stats: BrokerStats, seconds: float, log: Path) -> dict:
    """The app's simulator at --interval 0.1 for ``seconds`` (after its first message), before the
    app runs: nobody subscribes yet, the broker only counts."""
    before = stats.fresh_received() or 0
    with open(log, "wb") as fh:
        proc = subprocess.Popen([PY, "app.py", "simulate", "--config", str(cfg_path), "--broker",
                                 f"127.0.0.1:{port}", "--all-houses", "--interval", "0.1"],
                                cwd=ROOT, env=env, stdout=fh, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 120
    while (stats.received() or 0) <= before and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.1)
    first = stats.received() or 0
    t = time.monotonic()
    time.sleep(seconds)
    last = stats.received() or 0
    elapsed = time.monotonic() - t
    proc.send_signal(signal.SIGTERM)
    try:
        code = proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        code = proc.wait()
    return {"rate": (last - first) / elapsed, "seconds": elapsed, "messages": last - first, "exit": code}


def start_simulator(cfg_path: Path, port: int, env: dict, interval: float, log: Path) -> subprocess.Popen:
    fh = open(log, "ab")
    return subprocess.Popen([PY, "app.py", "simulate", "--config", str(cfg_path), "--broker", f"127.0.0.1:{port}",
                             "--all-houses", "--interval", f"{interval:g}"], cwd=ROOT, env=env, stdout=fh,
                            stderr=subprocess.STDOUT)


# -- analysis -------------------------------------------------------------------------------------------
def fit(ts: list[float], ys: list[float]) -> tuple[float, float]:
    """(slope per second, intercept) of a least-squares line."""
    if len(ts) < 2:
        return 0.0, (ys[0] if ys else 0.0)
    a, b = np.polyfit(np.array(ts), np.array(ys), 1)
    return float(a), float(b)


def memory_verdict(samples: list[dict], key: str, t_end: float) -> dict:
    pts = [(s["t"], s[key]) for s in samples if s.get(key) is not None and s["t"] <= t_end + 1]
    if not pts:
        return {}
    warm = [p for p in pts if p[0] >= min(WARMUP_S, t_end / 2)] or pts
    half = [p for p in pts if p[0] >= t_end / 2]
    slope, icpt = fit([p[0] for p in half], [p[1] for p in half])
    t_mid, t_last = half[0][0], half[-1][0]
    y_mid, y_last = slope * t_mid + icpt, slope * t_last + icpt
    growth = (y_last - y_mid) / y_mid if y_mid else 0.0
    return {"start": warm[0][1], "start_t": warm[0][0], "end": pts[-1][1], "max": max(p[1] for p in pts),
            "slope_mib_h": slope * 3600, "growth": growth, "flat": growth < FLAT_LIMIT,
            "half_from": t_mid, "half_to": t_last}


def grep_log(path: Path) -> tuple[list[str], int, dict, dict]:
    """ERROR/CRITICAL/Traceback lines, the number of WARNING lines, their kinds, and how many
    readings the log says were rejected or started a new series (counter reset)."""
    bad, warnings, kinds, readings = [], 0, {}, {"rejected": 0, "reset": 0}
    pat = re.compile(r"\b(ERROR|CRITICAL)\b|Traceback")
    for line in path.read_text(errors="replace").splitlines():
        if pat.search(line):
            bad.append(line)
        elif " WARNING " in line:
            warnings += 1
            key = re.sub(r"\d+", "N", line.split(" WARNING ", 1)[1])[:90]
            kinds[key] = kinds.get(key, 0) + 1
            if "counter reset or exchange" in line:
                readings["reset"] += 1
            elif ": rejected: " in line:
                more = re.search(r"\((\d+) more rejections", line)
                readings["rejected"] += 1 + (int(more.group(1)) if more else 0)
    return bad, warnings, kinds, readings


def count_store(cfg_path: Path) -> dict:
    """Readings in the store, opened with the app's own code after the app has exited."""
    from community import Community
    from config import load_config
    community = Community.open(load_config(cfg_path))
    try:
        df = community.store.read_readings()
        per = df.groupby("meter_id").size()
        q = community.store.read_quarantine()
        ts = df["ts"]
        return {"rows": len(df), "meters": int(per.size), "per_min": int(per.min()) if len(per) else 0,
                "per_max": int(per.max()) if len(per) else 0, "per": per.to_dict(),
                "dupe_keys": int(df.duplicated(["meter_id", "ts"]).sum()), "quarantine": len(q),
                "first": ts.min(), "last": ts.max()}
    finally:
        community.close()


# -- main -------------------------------------------------------------------------------------------
def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--minutes", type=float, default=15.0, help="how long to publish")
    ap.add_argument("--houses", type=int, default=200)
    ap.add_argument("--interval", type=float, default=900.0 / STEPS,
                    help="seconds between two messages of a house (default: a day of 10-s messages in 15 minutes)")
    ap.add_argument("--max-power-kw", type=float, default=None,
                    help="the houses' plausibility limit (default: 100 kW scaled by the compression, see above)")
    ap.add_argument("--sample", type=float, default=10.0, help="seconds between samples")
    ap.add_argument("--publisher", choices=("paho", "simulator"), default="paho")
    ap.add_argument("--simulator-check", type=float, default=30.0,
                    help="seconds to measure the rate of app.py simulate first (0: skip)")
    ap.add_argument("--catchup-timeout", type=float, default=600.0)
    ap.add_argument("--write", action="store_true", help="write BENCHMARKS.md even for a short run")
    ap.add_argument("--no-write", action="store_true", help="never write BENCHMARKS.md")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folder")
    ap.add_argument("--memory-limit-mb", type=int, default=512, help="storage.memory_limit_mb of the app")
    args = ap.parse_args()
    write = (args.write or args.minutes >= 15) and not args.no_write
    if args.max_power_kw is None:
        args.max_power_kw = round(100.0 * SEED_INTERVAL_S / args.interval, -1)
    t_wall = time.monotonic()
    target_rate = args.houses / args.interval
    tmp = Path(tempfile.mkdtemp(prefix="leg-soak-"))
    print(f"soak: {args.houses} houses, a message each every {args.interval:.4f} s ({target_rate:,.0f} msg/s) "
          f"for {args.minutes:g} min; working in {tmp}", flush=True)
    broker = Mosquitto(tmp / "broker")
    with open(broker.conf, "a") as fh:
        fh.write("sys_interval 1\n")
    broker.start()
    cfg_path = tmp / "config.yaml"
    write_config(cfg_path, args.houses, broker.port, free_port(), tmp / "data", args.max_power_kw,
                 args.memory_limit_mb)
    web_port = yaml.safe_load(cfg_path.read_text())["web"]["port"]
    base = f"http://127.0.0.1:{web_port}"
    env = dict(os.environ, LEG_ADMIN_PASSWORD=secrets.token_urlsafe(16), PYTHONUNBUFFERED="1")
    env.pop("LEG_CONFIG", None)
    app_log = tmp / "app.log"
    stats = BrokerStats(broker.port)
    app = pub = sim = None
    ctx = mp.get_context("spawn")
    samples: list[dict] = []
    res: dict = {"exit": None}
    try:
        token = create_token(cfg_path, env)
        if args.simulator_check > 0:
            res["simcheck"] = simulator_check(cfg_path, broker.port, env, stats, args.simulator_check,
                                              tmp / "simulator-check.log")
            print(f"app.py simulate --interval 0.1: {res['simcheck']['rate']:,.0f} msg/s over "
                  f"{res['simcheck']['seconds']:.0f} s", flush=True)
        # the app
        res["sources"] = source_times()
        with open(app_log, "wb") as fh:
            app = subprocess.Popen([PY, "app.py", "run", "--config", str(cfg_path)], cwd=ROOT, env=env,
                                   stdout=fh, stderr=subprocess.STDOUT)
        deadline = time.monotonic() + 180
        health = None
        while time.monotonic() < deadline and app.poll() is None:
            try:
                health = get_json(f"{base}/api/health", timeout=5)
                if health.get("ingest") and health["ingest"].get("mqtt_connected"):
                    break
            except OSError:
                pass
            time.sleep(0.5)
        else:
            raise RuntimeError(f"the app did not come up (exit {app.poll()}): {app_log.read_text()[-3000:]}")
        res["startup_s"] = time.monotonic() - t_wall
        child = mqtt_child(app.pid)
        res["child_pids"] = [child]
        print(f"app up (pid {app.pid}, MQTT process {child}), web on {base}", flush=True)

        # the publisher
        received0 = stats.fresh_received() or 0
        stop, ready = ctx.Event(), ctx.Event()
        sent_v, acked_v = ctx.Value("q", 0, lock=False), ctx.Value("q", 0, lock=False)
        out = ctx.Queue()
        if args.publisher == "paho":
            pub = ctx.Process(target=publisher_main, args=(str(cfg_path), broker.port, args.interval, ready,
                                                           stop, sent_v, acked_v, out), daemon=True)
            pub.start()
            if not ready.wait(120):
                raise RuntimeError("the publisher did not start")
        else:
            sim = start_simulator(cfg_path, broker.port, env, 0.1, tmp / "simulator.log")
        pub_pid = pub.pid if pub else sim.pid
        pids = {"app": app.pid, "mqtt": child, "broker": broker.proc.pid, "publisher": pub_pid,
                "script": os.getpid()}
        t0 = time.monotonic()
        duration = args.minutes * 60
        mach0 = machine_cpu()
        ours0 = {k: cpu_s(p) or 0.0 for k, p in pids.items()}
        prev_t, prev_pub, prev_mach, prev_ours = t0, 0, mach0, dict(ours0)
        next_sample = t0 + args.sample
        while True:
            now = time.monotonic()
            if now < next_sample:
                time.sleep(min(0.2, next_sample - now))
                continue
            next_sample += args.sample
            if app.poll() is not None:
                raise RuntimeError(f"the app exited with {app.returncode} during the soak")
            c = mqtt_child(app.pid)
            if c and c != pids["mqtt"]:
                res["child_pids"].append(c)
                pids["mqtt"] = c
            recv = (stats.received() or received0) - received0
            published = acked_v.value if pub else recv
            s = {"t": now - t0, "app": rss_mib(app.pid), "mqtt": rss_mib(pids["mqtt"]),
                 "broker": rss_mib(broker.proc.pid), "published": published, "sent": sent_v.value,
                 "broker_received": recv, "broker_stored": stats.num("store/messages/count"),
                 "dropped": stats.num("publish/messages/dropped"), "store_mib": store_mib(tmp / "data")}
            try:
                h = get_json(f"{base}/api/health")
                s["queued"] = h["ingest"]["queued"]
                s["connected"] = h["ingest"]["mqtt_connected"]
                s["store_cache"] = h["store"].get("memory_bytes", 0) / 2 ** 20
                s["store_reopens"] = h["store"].get("reopens")
            except (OSError, KeyError, TypeError, ValueError) as exc:
                s["queued"], s["health_error"] = None, repr(exc)
            try:
                meters = get_json(f"{base}/api/meters", token)
                s["accepted"] = sum(m["accepted"] for m in meters)
                s["rejected"] = sum(sum(m["rejected"].values()) for m in meters)
            except (OSError, KeyError, TypeError, ValueError) as exc:
                s["accepted"] = s["rejected"] = None
                s["meters_error"] = repr(exc)
            mach = machine_cpu()
            ours = {k: cpu_s(p) or prev_ours.get(k, 0.0) for k, p in pids.items()}
            dt = now - prev_t
            s["rate"] = (published - prev_pub) / dt if dt else 0.0
            for k in ("app", "mqtt", "broker", "publisher"):
                s[f"cpu_{k}"] = (ours[k] - prev_ours[k]) / dt
            busy = mach[0] - prev_mach[0]
            total = mach[1] - prev_mach[1]
            s["cpu_machine"] = busy / total if total else 0.0
            s["cpu_others"] = max(0.0, busy - sum(ours[k] - prev_ours[k] for k in ours)) / total if total else 0.0
            prev_t, prev_pub, prev_mach, prev_ours = now, published, mach, ours
            samples.append(s)
            print(f"{s['t']:6.0f} s  published {published:>9,} ({s['rate']:,.0f}/s)  accepted "
                  f"{s['accepted'] if s['accepted'] is not None else '?':>9}  rejected {s['rejected']}  "
                  f"queue {s['queued']}  RSS app {s['app']:.0f} MiB, mqtt {s['mqtt'] or 0:.0f} MiB, "
                  f"broker {s['broker'] or 0:.0f} MiB  CPU app {s['cpu_app']:.0%} mqtt {s['cpu_mqtt']:.0%} "
                  f"broker {s['cpu_broker']:.0%} pub {s['cpu_publisher']:.0%} others {s['cpu_others']:.0%} "
                  f"of the machine {s['cpu_machine']:.0%}", flush=True)
            if s["t"] >= duration - 0.5:
                break
        res["cpu_total"] = {k: ((cpu_s(p) or prev_ours[k]) - ours0[k]) / (time.monotonic() - t0)
                            for k, p in pids.items()}
        mach1 = machine_cpu()
        res["cpu_machine"] = (mach1[0] - mach0[0]) / (mach1[1] - mach0[1])
        res["cpu_others"] = max(0.0, (mach1[0] - mach0[0]) - sum(
            (cpu_s(p) or prev_ours[k]) - ours0[k] for k, p in pids.items())) / (mach1[1] - mach0[1])
        # stop publishing
        t_stop = time.monotonic()
        stop.set()
        if pub:
            res["pub"] = out.get(timeout=180)
            pub.join(30)
        else:
            sim.send_signal(signal.SIGTERM)
            res["sim_exit"] = sim.wait(60)
        res["publish_s"] = (res["pub"]["elapsed"] if pub else t_stop - t0)
        res["broker_received"] = (stats.fresh_received() or received0) - received0
        res["published"] = res["pub"]["acked"] if pub else res["broker_received"]
        print(f"publisher stopped: {res['published']:,} messages in {res['publish_s']:.0f} s "
              f"({res['published'] / res['publish_s']:,.0f}/s); waiting for the app to catch up", flush=True)
        # catch up: queue empty and the counts stable for 5 s
        t_c = time.monotonic()
        meters: list = []
        stable, last_total, res["caught_up"] = 0, None, False
        while time.monotonic() - t_c < args.catchup_timeout:
            try:
                q = get_json(f"{base}/api/health")["ingest"]["queued"]
                meters = get_json(f"{base}/api/meters", token)
                total = sum(m["accepted"] + sum(m["rejected"].values()) for m in meters)
            except (OSError, KeyError, TypeError, ValueError):
                q, total = None, None
            stable = stable + 1 if (q == 0 and total is not None and total == last_total) else 0
            last_total = total
            if stable >= 5 and total >= res["published"] or stable >= 30:
                res["caught_up"] = True
                break
            time.sleep(1)
        res["catchup_s"] = time.monotonic() - t_c
        res["accepted"] = sum(m["accepted"] for m in meters)
        res["rejected"] = sum(sum(m["rejected"].values()) for m in meters)
        reasons: dict[str, int] = {}
        for m in meters:
            for k, v in m["rejected"].items():
                reasons[k] = reasons.get(k, 0) + v
        res["reasons"] = reasons
        res["broker_stored_end"] = stats.num("store/messages/count")
        res["dropped"] = stats.num("publish/messages/dropped")
        res["rss_before_stop"] = {"app": rss_mib(app.pid), "mqtt": rss_mib(pids["mqtt"]),
                                  "broker": rss_mib(broker.proc.pid)}
        print(f"caught up after {res['catchup_s']:.0f} s: accepted {res['accepted']:,}, rejected "
              f"{res['rejected']:,} {reasons or ''}; stopping the app", flush=True)
        t_term = time.monotonic()
        app.send_signal(signal.SIGTERM)
        try:
            res["exit"] = app.wait(180)
        except subprocess.TimeoutExpired:
            res["exit"] = "did not exit within 180 s (killed)"
            app.kill()
            app.wait()
        res["stop_s"] = time.monotonic() - t_term
        res["child_left"] = pids["mqtt"] is not None and _stat(pids["mqtt"]) is not None
    finally:
        if pub and pub.is_alive():
            stop.set()
            pub.join(10)
            if pub.is_alive():
                pub.terminate()
        if sim and sim.poll() is None:
            sim.kill()
        if app and app.poll() is None:
            app.kill()
            app.wait()
        stats.stop()
        broker.stop()
    now_sources = source_times()
    res["sources_changed"] = sorted(f for f, t in now_sources.items() if res.get("sources", {}).get(f) != t)
    store = count_store(cfg_path)
    bad, n_warn, warn_kinds, logged = grep_log(app_log)
    res["wall_s"] = time.monotonic() - t_wall

    # -- verdicts ----------------------------------------------------------------------------------
    t_end = samples[-1]["t"] if samples else 0.0
    for s in samples:
        s["both"] = (s["app"] or 0) + (s["mqtt"] or 0)
    mem = {k: memory_verdict(samples, k, t_end) for k in ("both", "app", "mqtt", "broker")}
    published = res["published"]
    expected_per = res["pub"]["ticks"] if "pub" in res else None
    per_ok = expected_per is None or (store["per_min"] == store["per_max"] == expected_per
                                      and store["meters"] == args.houses)
    checks = {
        "all published readings stored": store["rows"] == published and per_ok,
        "nothing rejected, no counter reset": res.get("rejected") == 0 and not any(logged.values()),
        "app exit code 0": res["exit"] == 0,
        "no ERROR/Traceback in the log": not bad,
        "memory flat (app + MQTT process, second half < 5 %)": bool(mem["both"]) and mem["both"]["flat"],
        "message rate reached (>= 95 % of the target)": published / res["publish_s"] >= 0.95 * target_rate,
        "caught up after the publisher stopped": res["caught_up"],
    }
    print("\n".join(f"{'ok  ' if v else 'FAIL'} {k}" for k, v in checks.items()))
    short = {m: n for m, n in store["per"].items() if expected_per is not None and n != expected_per}
    res["short"] = short
    res["logged"] = logged
    print(f"stored {store['rows']:,} of {published:,} published (difference {published - store['rows']:+,}); "
          f"per meter {store['per_min']:,}-{store['per_max']:,} (expected {expected_per}); "
          f"quarantine {store['quarantine']}; meters off: {short or 'none'}; in the log: {logged['rejected']} "
          f"rejected, {logged['reset']} counter resets; broker received {res['broker_received']:,}, "
          f"dropped {res.get('dropped')}, held at the end {res.get('broker_stored_end')}; publisher "
          f"{res.get('pub')}")
    for k, v in mem.items():
        if v:
            print(f"RSS {k}: start {v['start']:.1f} MiB (at {v['start_t']:.0f} s), end {v['end']:.1f}, max "
                  f"{v['max']:.1f}, second half {v['slope_mib_h']:+.1f} MiB/h ({v['growth']:+.1%})")
    if bad:
        print(f"{len(bad)} ERROR/Traceback lines, first: " + "\n".join(bad[:20]))
    if res["sources_changed"]:
        print(f"app sources changed while the app ran: {', '.join(res['sources_changed'])}")
    (tmp / "samples.json").write_text(json.dumps({"res": res, "samples": samples, "memory": mem}, default=str,
                                                 indent=1))
    text = report(args, res, samples, mem, store, checks, bad, n_warn, warn_kinds, target_rate, expected_per)
    (tmp / "report.md").write_text(text)
    if write:
        write_section("soak", "Soak: a compressed day against the running app (`bench/soak.py`)", text)
        print("BENCHMARKS.md: section 'soak' written")
    else:
        print(text)
    if args.keep:
        print(f"kept {tmp}")
    else:
        shutil.rmtree(tmp, ignore_errors=True)
    return 0 if all(checks.values()) else 1


def report(args, res, samples, mem, store, checks, bad, n_warn, warn_kinds, target_rate, expected_per) -> str:
    published = res["published"]
    rate = published / res["publish_s"]
    rates = [s["rate"] for s in samples]
    queued = [s["queued"] for s in samples if s["queued"] is not None]
    reopens = max((s["store_reopens"] for s in samples if s.get("store_reopens") is not None), default="?")
    cmd = ".venv/bin/python bench/soak.py" + (f" --minutes {args.minutes:g}" if args.minutes != 15 else "")
    sc = res.get("simcheck")
    pub_text = ("a process of this script publishing with paho (QoS 1) the simulator's profiles and payloads"
                if args.publisher == "paho" else "`python app.py simulate --all-houses --interval 0.1`")
    src = res.get("sources") or {}
    newest = max(src, key=src.get) if src else None
    lines = [
        f"{machine()}",
        "",
        (f"App sources as they were when the app started (newest: `{newest}`, changed "
         f"{datetime.fromtimestamp(src[newest], timezone.utc):%Y-%m-%d %H:%M:%S} UTC)" if newest else "App sources: ?")
        + (f"; changed on disk while it ran (not part of this measurement): "
           f"{', '.join(f'`{f}`' for f in res['sources_changed'])}." if res.get("sources_changed") else "."),
        "",
        f"`{cmd}` ({args.minutes:g} min of publishing; the whole script took {res['wall_s'] / 60:.1f} min). "
        f"{args.houses} houses (`SOAK-000`...), embedded store, mosquitto on localhost (QoS 1, persistent "
        f"session, `max_queued_messages 0`), the real app as a subprocess (`python app.py run`: web app, "
        f"ingest, MQTT in its child process). One message per house every {args.interval:.4f} s "
        f"(the seed's 10 s compressed {SEED_INTERVAL_S / args.interval:.0f}x: a day of 8,640 messages per house "
        f"in 15 minutes), target {target_rate:,.0f} messages/s. The houses' plausibility limit is "
        f"`max_power_kw: {args.max_power_kw:g}` (the default 100 kW scaled by the compression: a reading is timed "
        f"when it is received, and the counters' 0.001 kWh resolution between messages 0.1 s apart would "
        f"otherwise imply over 100 kW whenever two arrive less than 36 ms apart).",
        "",
        f"Publisher: {pub_text}."
        + (f" The app's simulator itself (`app.py simulate --all-houses --interval 0.1`, 200 houses) was measured "
           f"first: **{sc['rate']:,.0f} messages/s** over {sc['seconds']:.0f} s ({sc['rate'] / target_rate:.0%} "
           f"of the target; computing the profiles of 200 houses takes about 0.4 s per tick), so it cannot "
           f"drive this soak." if sc else ""),
        "",
        "| measurement | result |",
        "|---|---:|",
        f"| achieved message rate (published and acknowledged by the broker / publishing time) | "
        f"**{rate:,.0f} messages/s** ({rate / target_rate:.1%} of {target_rate:,.0f}); per 10-s sample "
        f"{min(rates):,.0f}-{max(rates):,.0f}"
        + (f"; the publisher's largest lag behind its schedule {res['pub']['max_lag']:.2f} s" if "pub" in res else "")
        + " |",
        f"| messages published (acknowledged by the broker) | {published:,} |",
        f"| received by the broker (`$SYS/broker/publish/messages/received`) | {res['broker_received']:,} |",
        f"| accepted by the app's pipeline (`/api/meters`) / rejected | {res['accepted']:,} / {res['rejected']:,}"
        + (f" ({', '.join(f'{k} {v}' for k, v in res['reasons'].items())})" if res["reasons"] else "") + " |",
        f"| readings in the store after the app exited | **{store['rows']:,}** (difference to published "
        f"{store['rows'] - published:+,}); {store['meters']} meters, {store['per_min']:,}-{store['per_max']:,} "
        f"each" + (f" (expected {expected_per:,})" if expected_per is not None else "")
        + (f", off: {', '.join(f'{m} {n:,}' for m, n in list(res['short'].items())[:10])}" if res["short"] else "")
        + f"; duplicate keys {store['dupe_keys']}; quarantine rows {store['quarantine']} |",
        f"| readings the log reports rejected / starting a new series (counter reset) | "
        f"{res['logged']['rejected']} / {res['logged']['reset']} |",
        f"| ingest queue (`/api/health`) during the run | max {max(queued) if queued else '?':,}, "
        f"median {int(np.median(queued)) if queued else '?':,} |",
        f"| catching up after the publisher stopped | {res['catchup_s']:.0f} s (queue empty, counts stable "
        f"for 5 s{'' if res['caught_up'] else '; NOT reached'}) |",
        f"| broker: messages dropped / in its store at the end (its own retained `$SYS` messages included) | "
        f"{res.get('dropped')} / {res.get('broker_stored_end')} |",
        f"| embedded store reopened to give back its write memory (`storage.reopen_every_rows`, "
        f"`/api/health`) | {reopens} times |",
        f"| SIGTERM to exit | exit code {res['exit']} after {res['stop_s']:.1f} s |",
        f"| MQTT process restarts | {len(res['child_pids']) - 1} |",
        f"| CPU over the run (1.0 = one core) | app {res['cpu_total']['app']:.2f}, MQTT process "
        f"{res['cpu_total']['mqtt']:.2f}, broker {res['cpu_total']['broker']:.2f}, publisher "
        f"{res['cpu_total']['publisher']:.2f}; the machine {res['cpu_machine']:.0%} busy, other processes "
        f"{res['cpu_others']:.0%} of it |",
        f"| ERROR / CRITICAL / Traceback lines in the app's output | {len(bad)} |",
        f"| WARNING lines | {n_warn}" + (f" ({'; '.join(f'{v}x {k}' for k, v in list(warn_kinds.items())[:5])})"
                                         if warn_kinds else "") + " |",
        "",
        "Resident memory (VmRSS, MiB) during the run:",
        "",
        "| time | published | accepted | store files (MiB) | app | of it the store's cache | MQTT process | app + MQTT | broker | queue |",
        "|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    t_end = samples[-1]["t"]
    marks = sorted({WARMUP_S} | {m * 60 for m in range(2, int(t_end // 60) + 1, max(1, int(t_end // 60) // 7))}
                   | {t_end})
    shown = []
    for m in marks:
        s = min(samples, key=lambda x: abs(x["t"] - m))
        if s not in shown:
            shown.append(s)
    for s in shown:
        acc = f"{s['accepted']:,}" if s.get("accepted") is not None else "?"
        cache = f"{s['store_cache']:.1f}" if s.get("store_cache") is not None else "?"
        lines.append(f"| {s['t'] / 60:.1f} min | {s['published']:,} | {acc} | {s['store_mib']:.0f} | {s['app']:.1f} | {cache} | "
                     f"{s['mqtt'] or 0:.1f} | {s['both']:.1f} | {s['broker'] or 0:.1f} | {s['queued']} |")
    lines += ["", "| process | after warm-up | end | max | slope over the second half | growth over the second half |",
              "|---|---:|---:|---:|---:|---:|"]
    for k, name in (("both", "app + MQTT process"), ("app", "app"), ("mqtt", "MQTT process"), ("broker", "broker")):
        v = mem.get(k)
        if v:
            lines.append(f"| {name} | {v['start']:.1f} (at {v['start_t'] / 60:.1f} min) | {v['end']:.1f} | "
                         f"{v['max']:.1f} | {v['slope_mib_h']:+.1f} MiB/h | {v['growth']:+.1%} |")
    # the store gives back its write memory at each reopen: the RSS right after one is the baseline
    # that a leak would raise from one reopen to the next
    floors = [(b["t"], b["both"]) for a, b in zip(samples, samples[1:])
              if a.get("store_reopens") is not None and b.get("store_reopens") is not None
              and b["store_reopens"] > a["store_reopens"] and b.get("both")]
    if floors:
        lines += ["", "App + MQTT process at the first sample after each store reopen (MiB): "
                  + ", ".join(f"{v:.0f} ({t / 60:.1f} min)" for t, v in floors) + "."]
    lines += ["", "Checks: " + "; ".join(f"{k}: {'**met**' if v else '**NOT met**'}" for k, v in checks.items())
              + ". (Memory: the linear fit of app + MQTT process RSS over the second half of the run; "
              "flat = it grows by less than 5 % over that half.)"]
    if bad:
        lines += ["", "Error lines in the app's output (first 10):", "", "```", *bad[:10], "```"]
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
