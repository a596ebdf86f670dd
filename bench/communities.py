"""Many communities in one instance: N communities x H houses publishing through ONE MQTT
subscription, as ``python app.py run`` starts them (``app._run_many``).

Every house has one smart meter that publishes ``{MAC}/SENSOR`` (section 8.3 payload, QoS 1) every
10 s of simulated time; 200 communities x 25 houses are 5,000 meters, 500 readings/s in real time.
The simulated time is compressed: a publisher process (paho, QoS 1) publishes the rounds one after
another as fast as the broker takes them, with the meters' uptime ``ts`` advancing 10 s a round,
so the readings are timed by the meters (``UptimeClock``; the meters' boot time is given in
``sensor_clock.json``, as a restarted app has it) and cover ``--rounds`` x 10 s of the recent past.

The measuring process is the app's process: the configuration file (``communities:``, the shared
sections at the top) is loaded with ``app._all_configs``, each community is opened with
``app._open`` and gets ``IngestRuntime(mqtt=False).start()``, and one ``MqttProcessSource`` feeds a
``instance.PipelineRouter`` (exactly the ingest part of ``_run_many``; the web app is not started).
A run per store backend, each in a fresh child process of this script:

* ``embedded``: a DuckDB file per community in ``storage.data_dir/<slug>``;
* ``influxdb``: ``storage.backend: influxdb``, the Debian influxd 1.x (``tests/peers.py``), the
  shared ``influxdb:`` section (one database for every community).

Measured:

* start: time to open every community and start its runtime; memory, threads and open files then;
* ingest: readings stored per second (``Pipeline.stored`` summed over the communities) from the
  first publish until every reading is stored, and while the publisher runs, against the 500/s
  that N x H meters need in real time; zero loss (stored = published);
* interval lag: the 15-minute intervals completed by the run (each house's interval is complete
  once the meter's first reading at or after its end is stored): the time from the publishing of
  that reading to the interval being written to the store (``replace_intervals_many``, observed
  by wrapping the store's method), p50/p95/max over every house and interval;
* settlement: a month (the last full calendar month) of synthetic 15-minute intervals is written
  into every community's store (``replace_intervals_many``; not timed as settlement), then
  ``Community.settle(month)`` of every community (``--settle-budget`` seconds at most per backend;
  the rest is reported as not reached), each checked against the generated data (one invoice per
  house, the energies of every invoice);
* memory: resident memory of the app's process (after start, after ingest, after settlement, and
  its peak ``VmHWM``) and of its MQTT process; the CPU the idle instance uses between two phases.

    .venv/bin/python bench/communities.py                     # 200 x 25, both backends, writes BENCHMARKS.md
    .venv/bin/python bench/communities.py --communities 5 --houses 5 --rounds 100 --no-write
    .venv/bin/python bench/communities.py --backends embedded --communities 50
"""
from __future__ import annotations

import argparse
import json
import logging
import multiprocessing as mp
import os
import resource
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import traceback
from collections import Counter
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import yaml  # noqa: E402

from benchfile import counting_publisher, machine, write_section  # noqa: E402
from peers import Influxd, Mosquitto  # noqa: E402
from soak import cpu_s, rss_mib  # noqa: E402

SEND_EVERY_S = 10.0                 # a meter's message every 10 s (simulated time)
INTERVAL_S = 900
FIRST_BEFORE_BOUNDARY_S = 45        # the first reading lies this far before a quarter hour
DEFAULTS = {"communities": 200, "houses": 25, "rounds": 100}


def mac(c: int, h: int) -> str:
    return f"BE-EC-{c // 256:02X}-{c % 256:02X}-{h // 256:02X}-{h % 256:02X}"


def slug(c: int) -> str:
    return f"c{c:03d}"


def proc_status(pid: int | str = "self") -> dict[str, int]:
    out = {}
    try:
        for line in open(f"/proc/{pid}/status"):
            k, _, v = line.partition(":")
            if k in ("VmRSS", "VmHWM", "Threads"):
                out[k] = int(v.split()[0])
    except OSError:
        pass
    return out


def task_names() -> dict[str, int]:
    """The process's threads by their OS name (/proc/self/task/*/comm), Python's and native ones."""
    names = Counter()
    for t in os.listdir("/proc/self/task"):
        try:
            names[Path(f"/proc/self/task/{t}/comm").read_text().strip()] += 1
        except OSError:
            pass
    return dict(names.most_common())


def open_files() -> int:
    return len(os.listdir("/proc/self/fd"))


def pct(values, q) -> float | None:
    return float(np.percentile(values, q)) if len(values) else None


# -- the configuration file ---------------------------------------------------------------------------
def write_config(path: Path, n: int, houses: int, mqtt_port: int, data_dir: Path, backend: str,
                 influx_url: str | None) -> None:
    communities = {}
    for c in range(n):
        communities[slug(c)] = {
            "community": {"name": f"LEG {c:03d}"},
            # house ids 1..H in every community, as the example configuration numbers them
            "houses": {mac(c, h): {"id": h + 1, "name": f"House {h + 1}",
                                   **({"pv_kwp": float(5 + 5 * (h % 3))} if h % 3 == 0 else {})}
                       for h in range(houses)}}
    cfg = {"mqtt": {"broker": "127.0.0.1", "port": mqtt_port, "client_id": "leg-bench-communities"},
           "storage": {"data_dir": str(data_dir), "backend": backend},
           "collector": {"interval": 60},
           "logging": {"level": "WARNING", "file": None},
           "communities": communities}
    if backend == "influxdb":
        cfg["influxdb"] = {"url": influx_url, "database": "leg"}
    path.write_text(yaml.safe_dump(cfg, sort_keys=False))


# -- the publisher (a process of its own) ---------------------------------------------------------------
def publisher_main(port: int, n: int, houses: int, rounds: int, deciding: list[int], go, stop, sent_v,
                   out) -> None:
    from ingest.sensor import sensor_payload
    rng = np.random.default_rng(7)
    meters = [(c, h) for c in range(n) for h in range(houses)]
    order = rng.permutation(len(meters))                 # the meters of all communities interleaved
    topics = [f"{mac(*meters[i])}/SENSOR" for i in order]
    smids = [f"6022{i:04d}" for i in range(len(order))]
    m = len(order)
    base_kw = rng.uniform(0.2, 2.5, m)
    pv_kw = np.where(rng.random(m) < 0.33, rng.uniform(0.5, 4.0, m), 0.0)
    ei = rng.uniform(1000, 20000, m)
    eo = np.where(pv_kw > 0, rng.uniform(500, 9000, m), 0.0)
    client, acked = counting_publisher(port, "leg-bench-publisher")
    go.wait()
    deciding = set(deciding)
    round_times, published_at = [], {}
    sent = 0
    waited = 0.0
    t_start = time.time()
    for k in range(1, rounds + 1):
        if stop.is_set():                                 # the ingest budget is spent
            break
        net = base_kw * rng.uniform(0.6, 1.4, m) - pv_kw * rng.uniform(0.0, 1.0, m)
        pi, po = np.clip(net, 0, None), np.clip(-net, 0, None)
        ei += pi * SEND_EVERY_S / 3600
        eo += po * SEND_EVERY_S / 3600
        uptime = int(SEND_EVERY_S * k)
        t_round = time.time()
        times = np.empty(m) if k in deciding else None
        for j in range(m):
            if sent - acked[0] > 20_000:                  # message ids wrap at 65,535
                w = time.time()
                while sent - acked[0] > 20_000:
                    time.sleep(0.001)
                waited += time.time() - w
            client.publish(topics[j], sensor_payload(float(ei[j]), float(eo[j]), float(pi[j]), float(po[j]),
                                                     smids[j], uptime), qos=1)
            sent += 1
            if times is not None:
                times[j] = time.time()
        sent_v.value = sent
        round_times.append((t_round, time.time()))
        if times is not None:                             # in the order of (community, house)
            back = np.empty(m)
            back[order] = times
            published_at[k] = back.tolist()
    t_end = time.time()
    deadline = time.time() + 300
    while acked[0] < sent and time.time() < deadline:
        time.sleep(0.01)
    client.disconnect()
    client.loop_stop()
    out.put({"sent": sent, "acked": acked[0], "t_start": t_start, "t_end": t_end, "t_acked": time.time(),
             "round_times": round_times, "published_at": published_at, "waited_for_acks": waited,
             "rounds": len(round_times)})


# -- one backend, in a child process ----------------------------------------------------------------------
def queues(runtimes: dict) -> list:
    """The queues behind the pipelines: the group's one (items tagged with their pipeline) or each
    pipeline's own."""
    out = {}
    for rt in runtimes.values():
        g = rt.pipeline.group
        out[id(g or rt.pipeline)] = g._q if g is not None else rt.pipeline._q
    return list(out.values())


def queued(runtimes: dict) -> int:
    return sum(q_.qsize() for q_ in queues(runtimes))


class Sampler:
    """Every second: stored readings, the app's and its MQTT process's memory, the app's CPU time."""

    def __init__(self, runtimes: dict, mqtt_source, sent_v):
        self.runtimes, self.mqtt, self.sent_v = runtimes, mqtt_source, sent_v
        self.samples: list[dict] = []
        self._stop = threading.Event()
        self.child_peak = 0.0
        self.thread = threading.Thread(target=self._run, daemon=True, name="bench-sampler")

    def stored(self) -> int:
        return sum(rt.pipeline.stored for rt in self.runtimes.values())

    def take(self) -> dict:
        child = rss_mib(self.mqtt._proc.pid) if self.mqtt and self.mqtt._proc else None
        if child:
            self.child_peak = max(self.child_peak, child)
        s = {"t": time.time(), "stored": self.stored(), "sent": self.sent_v.value if self.sent_v else 0,
             "rss": rss_mib(os.getpid()), "child": child, "cpu": cpu_s(os.getpid()),
             "queued": queued(self.runtimes)}
        self.samples.append(s)
        return s

    def _run(self):
        k = 0
        while not self._stop.wait(1.0):
            s = self.take()
            k += 1
            if k % 15 == 0:
                print(f"  {time.strftime('%H:%M:%S')} published {s['sent']:,} stored {s['stored']:,} queued "
                      f"{s['queued']:,} RSS {s['rss'] or 0:,.0f} MiB", flush=True)

    def start(self):
        self.thread.start()
        return self

    def stop(self):
        self._stop.set()
        self.thread.join(5)


def discard_backlog(runtimes: dict, mqtt_src) -> dict:
    """Empty every pipeline's queue: readings thrown away, acknowledgement marks answered (their
    readings were not stored: the broker, a temporary one, gets the acknowledgements anyway), while
    the MQTT process is stopped (it hands over what it holds, then ends)."""
    import queue as queue_mod
    counts = {"readings": 0, "marks": 0, "other": 0}
    done = threading.Event()

    def drain_once() -> int:
        got = 0
        for q_ in queues(runtimes):
            keep = []
            while True:
                try:
                    got_item = q_.get_nowait()
                except queue_mod.Empty:
                    break
                got += 1
                item = got_item[1] if isinstance(got_item, tuple) and len(got_item) == 2 and \
                    hasattr(got_item[0], "_handle") else got_item
                if isinstance(item, tuple) and item[0] in ("reading", "parse", "reject"):
                    counts["readings"] += 1
                elif isinstance(item, tuple) and item[0] == "mark":
                    counts["marks"] += 1
                    try:
                        item[1]()
                    except Exception:
                        pass
                else:
                    keep.append(got_item)
            for item in keep:
                counts["other"] += 1
                q_.put(item)                          # as it was (tagged, in a group's queue)
        return got

    def drainer():
        while not done.is_set():
            if not drain_once():
                time.sleep(0.05)
    t = time.perf_counter()
    th = threading.Thread(target=drainer, daemon=True, name="bench-drainer")
    th.start()
    mqtt_src.stop()                                   # waits for the feeder (at most 60 s)
    done.set()
    th.join(30)
    drain_once()
    counts["s"] = time.perf_counter() - t
    return counts


class LogCount(logging.Handler):
    """The app's WARNING and ERROR records during the run: counted, the first few kept."""

    def __init__(self):
        super().__init__(logging.WARNING)
        self.counts: Counter = Counter()
        self.first: list[str] = []

    def emit(self, record):
        self.counts[record.levelname] += 1
        if len(self.first) < 5:
            self.first.append(f"{record.levelname} {record.name}: {record.getMessage()[:240]}")


def idle_cpu(seconds: float) -> float:
    """Cores the app's process uses over ``seconds`` while nothing arrives."""
    c0, t0 = cpu_s(os.getpid()), time.monotonic()
    time.sleep(seconds)
    return (cpu_s(os.getpid()) - c0) / (time.monotonic() - t0)


def run_backend(args, backend: str, out_path: Path) -> None:
    import pandas as pd

    import app as app_module
    from billing.settlement import parse_period, recent_periods
    from ingest.mqtt_process import MqttProcessSource
    from ingest.runtime import IngestRuntime
    from instance import PipelineRouter, instance_dir, pipeline_group
    from settle import Spec, generate, house_params, time_features

    res: dict = {"backend": backend, "communities": args.communities, "houses": args.houses,
                 "rounds": args.rounds, "errors": []}

    def save():
        out_path.write_text(json.dumps(res, default=str))

    rss0 = proc_status()
    res["rss_imports_mib"] = rss0.get("VmRSS", 0) / 1024
    tmp = Path(tempfile.mkdtemp(prefix=f"leg-bench-communities-{backend}-"))
    broker = Mosquitto(tmp / "broker").start()
    influxd = Influxd(tmp / "influxd").start() if backend == "influxdb" else None
    communities, runtimes, mqtt_src, sampler, logged = {}, {}, None, None, None
    n, hh, rounds = args.communities, args.houses, args.rounds
    try:
        cfg_path = tmp / "config.yaml"
        write_config(cfg_path, n, hh, broker.port, tmp / "data", backend, influxd.url if influxd else None)
        t = time.perf_counter()
        configs = app_module._all_configs(str(cfg_path))
        res["config_s"] = time.perf_counter() - t
        first = next(iter(configs.values()))
        # the meters' boot time: the run's first reading lies FIRST_BEFORE_BOUNDARY_S before a
        # quarter hour and its last one at least a minute before now
        now = time.time()
        boundary = (int(now - rounds * SEND_EVERY_S - 120) // INTERVAL_S) * INTERVAL_S
        t0 = boundary - FIRST_BEFORE_BOUNDARY_S - SEND_EVERY_S
        anchors = {mac(c, h): [0, t0] for c in range(n) for h in range(hh)}
        (instance_dir(configs) / "sensor_clock.json").write_text(json.dumps(anchors))
        fds0, threads0 = open_files(), proc_status().get("Threads", 0)

        # -- start, as _run_many does ---------------------------------------------------------------
        logged = LogCount()
        logging.getLogger().addHandler(logged)
        t = time.perf_counter()
        group = pipeline_group()
        try:
            for k, (s, cfg) in enumerate(configs.items()):
                communities[s] = app_module._open(str(cfg_path), cfg, what="starting it again")
                runtimes[s] = IngestRuntime(communities[s], mqtt=False, pipeline_options={"group": group}).start()
        except BaseException as exc:             # a limit (memory, files, threads): say which and where
            res["start_failed"] = {"after": len(runtimes), "error": f"{type(exc).__name__}: {exc}"[:500],
                                   "open_files": open_files(), "threads": proc_status().get("Threads"),
                                   "rss_mib": proc_status().get("VmRSS", 0) / 1024}
            save()
            raise
        res["open_s"] = time.perf_counter() - t
        router = PipelineRouter(runtimes).start()
        handed = {"readings": 0, "marks": 0}         # what the MQTT process's feeder hands the router
        submit0, mark0 = router.submit, router.mark

        def submit(reading, source, submit0=submit0):
            handed["readings"] += 1
            submit0(reading, source)

        def mark(callback, mark0=mark0):
            handed["marks"] += 1
            mark0(callback)
        router.submit, router.mark = submit, mark
        mqtt_src = MqttProcessSource(first.mqtt, router, anchors_path=instance_dir(configs) / "sensor_clock.json").start()
        for rt in runtimes.values():
            rt.mqtt = mqtt_src
        deadline = time.monotonic() + 60
        while not mqtt_src.connected.is_set() and time.monotonic() < deadline:
            time.sleep(0.01)
        if not mqtt_src.connected.is_set():
            raise RuntimeError("the MQTT process did not connect")
        res["start_s"] = time.perf_counter() - t
        st = proc_status()
        res["after_start"] = {"rss_mib": st.get("VmRSS", 0) / 1024, "threads": st.get("Threads"),
                              "threads_per_community": (st.get("Threads", 0) - threads0) / n,
                              "open_files": open_files(), "files_per_community": (open_files() - fds0) / n,
                              "child_rss_mib": rss_mib(mqtt_src._proc.pid),
                              # Python's threads by name; the rest of Threads are native (DuckDB's)
                              "python_threads": dict(Counter(th.name.split("-")[0] if th.name.startswith("Thread-")
                                                             else th.name for th in threading.enumerate())),
                              "os_threads": task_names()}
        res["idle_cpu_after_start"] = idle_cpu(args.idle_s)
        save()
        print(f"[{backend}] {n} communities started in {res['start_s']:.1f} s, "
              f"RSS {res['after_start']['rss_mib']:.0f} MiB, {st.get('Threads')} threads, "
              f"{open_files()} open files; idle CPU {res['idle_cpu_after_start']:.2f} cores", flush=True)

        # -- the intervals each house completes, and when they are written ---------------------------
        first_ts = t0 + SEND_EVERY_S                      # round k's readings are at t0 + 10 k
        last_ts = t0 + SEND_EVERY_S * rounds
        ends = [e for e in range(boundary, int(last_ts) + 1, INTERVAL_S) if e - INTERVAL_S >= first_ts]
        deciding = {e: int(np.ceil((e - t0) / SEND_EVERY_S)) for e in ends}   # round of the first reading >= end
        written: dict[tuple, float] = {}
        hooked = [True]
        for s, c in communities.items():
            orig = c.store.replace_intervals_many

            def wrapped(spans, intervals, orig=orig, s=s):
                orig(spans, intervals)
                if hooked[0] and len(intervals):
                    now_ = time.time()
                    starts = pd.DatetimeIndex(intervals["start"]).as_unit("s").asi8
                    for h, st_ in zip(intervals["house_id"].tolist(), starts.tolist()):
                        written.setdefault((s, h, st_), now_)
            c.store.replace_intervals_many = wrapped

        # -- ingest -----------------------------------------------------------------------------------
        ctx = mp.get_context("spawn")
        go, pub_stop, sent_v, q = ctx.Event(), ctx.Event(), ctx.Value("q", 0), ctx.Queue()
        pub = ctx.Process(target=publisher_main,
                          args=(broker.port, n, hh, rounds, sorted(set(deciding.values())), go, pub_stop, sent_v, q))
        pub.start()
        sampler = Sampler(runtimes, mqtt_src, sent_v)
        sampler.take()
        sampler.start()
        go.set()
        total = n * hh * rounds
        pub_res = None
        last_change, last_stored = time.monotonic(), 0
        t_go = time.monotonic()
        budget_spent = False
        while True:
            time.sleep(0.2)
            if pub_res is None:
                try:
                    pub_res = q.get_nowait()
                except Exception:
                    pass
            stored = sampler.stored()
            if stored != last_stored:
                last_stored, last_change = stored, time.monotonic()
            if stored >= total and pub_res is not None:
                break
            if time.monotonic() - last_change > args.stall_s:
                res["errors"].append(f"ingest stalled: {stored:,} of {total:,} readings stored, none for "
                                     f"{args.stall_s:.0f} s")
                break
            if time.monotonic() - t_go > args.ingest_budget:
                budget_spent = True
                break
        t_stored = time.time()
        stored_at_end = sampler.stored()
        discarded = None
        if budget_spent:
            # not stored within the budget: publish no more, then throw the backlog away (the
            # broker keeps those messages unacknowledged) so that the phases after ingest
            # measure an instance that is not still working through it
            pub_stop.set()
            print(f"[{backend}] ingest budget of {args.ingest_budget:.0f} s spent: {stored_at_end:,} of "
                  f"{total:,} stored; discarding the backlog", flush=True)
            discarded = discard_backlog(runtimes, mqtt_src)
        if pub_res is None:
            pub_res = q.get(timeout=330)
        pub.join(30)
        # the intervals the run completed: wait for the last ones (computed every intervals_every_s)
        expected = [(s, str(h + 1), e - INTERVAL_S) for s in communities for h in range(hh) for e in ends]
        deadline = time.monotonic() + (0 if budget_spent else args.lag_wait_s)
        while time.monotonic() < deadline and not all(k in written for k in expected):
            time.sleep(0.2)
        hooked[0] = False
        sampler.take()
        samples = sampler.samples
        def s_at(t):                                   # stored readings at time t, between two samples
            pts = sorted((x["t"], x["stored"]) for x in samples)
            ts, vs = [p[0] for p in pts], [p[1] for p in pts]
            return float(np.interp(t, ts, vs)) if samples else 0.0
        lags, missing = [], 0
        idx = {s: k for k, s in enumerate(communities)}
        for s, h, st_ in expected:
            w = written.get((s, h, st_))
            if w is None:
                missing += 1
                continue
            k = deciding[st_ + INTERVAL_S]
            if k not in pub_res["published_at"]:           # written before its deciding reading existed
                missing += 1
                continue
            lags.append(w - pub_res["published_at"][k][idx[s] * hh + int(h) - 1])
        early = [x for x in lags if x < 0]
        st = proc_status()
        stored = sampler.stored()
        t_pub0, t_pub1 = pub_res["t_start"], pub_res["t_end"]
        statuses = [m for rt in runtimes.values() for m in rt.pipeline.status().values()]
        rejected = sum(m.rejected_total for m in statuses)
        reasons = Counter()
        for m in statuses:
            reasons.update(m.rejected)
        accepted = [m.accepted for m in statuses]
        newest = [m.last_seen.timestamp() for m in statuses if m.last_seen is not None]
        per_community = [rt.pipeline.stored for rt in runtimes.values()]
        cpu_ingest = [x for x in samples if t_pub0 - 1 <= x["t"] <= t_stored + 1]
        res["ingest"] = {
            "readings": total, "published": pub_res["sent"], "acked": pub_res["acked"], "stored": stored,
            "rejected": rejected, "rejected_by_reason": dict(reasons),
            "duplicates": sum(m.duplicates for m in statuses),
            # how evenly the meters and communities got on: readings accepted per meter, the round
            # of each meter's newest accepted reading, readings stored per community
            "accepted_per_meter": [min(accepted, default=0), pct(accepted, 50), max(accepted, default=0)],
            "newest_round": [round((min(newest) - t0) / SEND_EVERY_S), round((max(newest) - t0) / SEND_EVERY_S)]
                            if newest else None,
            "stored_per_community": [min(per_community), pct(per_community, 50), max(per_community)],
            "publish_s": t_pub1 - t_pub0, "publish_rate": pub_res["sent"] / (t_pub1 - t_pub0),
            "stored_s": t_stored - t_pub0, "rate": stored_at_end / (t_stored - t_pub0),
            "finished": stored_at_end >= total, "budget_s": args.ingest_budget if budget_spent else None,
            "stored_in_budget": stored_at_end, "discarded": discarded, "rounds_published": pub_res["rounds"],
            "rate_while_publishing": s_at(t_pub1) / (t_pub1 - t_pub0),
            "max_backlog": max((x["sent"] - x["stored"] for x in samples), default=0),
            "max_queued": max((x["queued"] for x in samples), default=0),
            "cpu_cores": ((cpu_ingest[-1]["cpu"] - cpu_ingest[0]["cpu"]) / (cpu_ingest[-1]["t"] - cpu_ingest[0]["t"])
                          if len(cpu_ingest) > 1 else None),
            "simulated_s": rounds * SEND_EVERY_S, "waited_for_acks_s": pub_res["waited_for_acks"],
            "writes": sum(rt.pipeline.stats.writes for rt in runtimes.values()),
            "write_s": sum(rt.pipeline.stats.write_seconds_sum for rt in runtimes.values()),
            "write_max_s": max(rt.pipeline.stats.write_seconds_max for rt in runtimes.values()),
            "handed_readings": handed["readings"], "handed_batches": handed["marks"],
            "mqtt_messages": mqtt_src.messages, "mqtt_connects": mqtt_src.connects,
            "mqtt_restarts": mqtt_src.restarts,
            "interval_runs": sum(rt.pipeline.stats.interval_runs for rt in runtimes.values()),
            "intervals_s": sum(rt.pipeline.stats.intervals_seconds_sum for rt in runtimes.values()),
            "write_rounds": group.rounds, "round_writes": group.round_writes,
            "round_s": group.round_seconds, "journaled": group.journaled,
            "journal_commits": group.journal.commits if group.journal is not None else 0,
        }
        res["lag"] = {"intervals": len(expected), "measured": len(lags), "missing": missing, "early": len(early),
                      "p50": pct(lags, 50), "p95": pct(lags, 95), "max": max(lags) if lags else None,
                      "min": min(lags) if lags else None, "boundaries": len(ends),
                      "intervals_every_s": next(iter(runtimes.values())).pipeline.intervals_every_s}
        res["after_ingest"] = {"rss_mib": st.get("VmRSS", 0) / 1024, "threads": st.get("Threads"),
                               "open_files": open_files(), "child_rss_mib": rss_mib(mqtt_src._proc.pid),
                               "child_peak_mib": sampler.child_peak}
        save()
        i = res["ingest"]
        print(f"[{backend}] ingest: {i['stored']:,} of {i['readings']:,} stored in {i['stored_s']:.1f} s "
              f"({i['rate']:,.0f}/s; publisher {i['publish_rate']:,.0f}/s); interval lag p50 "
              f"{res['lag']['p50'] or float('nan'):.1f} s p95 {res['lag']['p95'] or float('nan'):.1f} s "
              f"({len(lags):,} of {len(expected):,}); RSS {res['after_ingest']['rss_mib']:.0f} MiB", flush=True)
        sampler.stop()
        sampler = None

        # -- settlement of a month ------------------------------------------------------------------------
        tz = first.tz
        period_id = recent_periods(pd.Timestamp.now(tz="UTC"), tz, "month", 2)[1]
        period = parse_period(period_id, tz)
        starts = pd.date_range(period.start, period.end, freq=f"{INTERVAL_S}s", inclusive="left")
        starts_us = starts.astype("datetime64[us, UTC]")
        spec0 = Spec(houses=hh, days=31, year=period.start.year, tz=str(tz), seed=1, pv_share=0.33)
        feats = time_features(spec0, starts)
        truth: dict[str, tuple] = {}
        t = time.perf_counter()
        for k, (s, c) in enumerate(communities.items()):
            spec = Spec(houses=hh, days=31, year=period.start.year, tz=str(tz), seed=100 + k, pv_share=0.33)
            ei, eo, flags = generate(feats, house_params(spec), 0, hh, np.random.default_rng(200 + k))
            ids = [str(h + 1) for h in range(hh)]
            df = pd.DataFrame({"house_id": np.repeat(ids, len(starts)), "start": np.tile(starts_us, hh),
                               "delta_ei_kwh": ei.ravel(), "delta_eo_kwh": eo.ravel(), "flags": flags.ravel()})
            df["start"] = pd.to_datetime(df["start"], utc=True).astype("datetime64[us, UTC]")
            df = df.sort_values(["start", "house_id"], kind="stable")        # time order, as ingest stores them
            with c._compute_lock:
                c.store.replace_intervals_many({h: (period.start, period.end) for h in ids}, df)
            truth[s] = (ei.sum(axis=1), eo.sum(axis=1))
            if time.perf_counter() - t > args.fill_budget:
                res["errors"].append(f"writing the month stopped after {k + 1} communities ({args.fill_budget:.0f} s)")
                break
        res["month_fill_s"] = time.perf_counter() - t
        res["month_filled"] = len(truth)
        res["idle_cpu_after_ingest"] = idle_cpu(args.idle_s)
        per, bad, t = [], [], time.perf_counter()
        reached = 0
        for s, c in communities.items():
            if s not in truth:
                break
            if time.perf_counter() - t > args.settle_budget:
                break
            t1 = time.perf_counter()
            try:
                settlement = c.settle(period_id)
            except Exception as exc:
                per.append(time.perf_counter() - t1)
                bad.append(f"{s}: {type(exc).__name__}: {str(exc)[:200]}")
                reached += 1
                continue
            per.append(time.perf_counter() - t1)
            reached += 1
            inv = {i["house_id"]: i for i in settlement.invoices}
            ei_t, eo_t = truth[s]
            if len(inv) != hh:
                bad.append(f"{s}: {len(inv)} invoices for {hh} houses")
                continue
            d = max(max(abs(float(inv[str(h + 1)]["energy_imported_kwh"]) - ei_t[h]),
                        abs(float(inv[str(h + 1)]["energy_exported_kwh"]) - eo_t[h])) for h in range(hh))
            if d > 0.01:
                h = int(np.argmax([abs(float(inv[str(h + 1)]["energy_imported_kwh"]) - ei_t[h]) for h in range(hh)]))
                bad.append(f"{s}: invoice energy off by up to {d:,.1f} kWh (house {h + 1}: imported "
                           f"{float(inv[str(h + 1)]['energy_imported_kwh']):,.1f} kWh, generated {ei_t[h]:,.1f} kWh)")
        st = proc_status()
        res["settle"] = {"period": period_id, "settled": reached, "of": len(communities),
                         "total_s": time.perf_counter() - t, "per_p50": pct(per, 50), "per_p95": pct(per, 95),
                         "per_max": max(per) if per else None, "failed": len(bad), "failures": bad[:5],
                         "intervals_per_community": hh * len(starts)}
        res["after_settle"] = {"rss_mib": st.get("VmRSS", 0) / 1024}
        save()
        se = res["settle"]
        print(f"[{backend}] settlement of {period_id}: {se['settled']} of {se['of']} communities in "
              f"{se['total_s']:.1f} s (p50 {se['per_p50'] or 0:.3f} s each); {se['failed']} failed checks", flush=True)
    except Exception:
        res["errors"].append(traceback.format_exc()[-1500:])
        print(traceback.format_exc(), file=sys.stderr, flush=True)
    finally:
        if sampler is not None:
            sampler.stop()
        t = time.perf_counter()
        try:                                          # as _run_many's finally
            if mqtt_src:
                mqtt_src.stop()
            for rt in runtimes.values():
                rt.mqtt = None
                rt.stop()
            for c in communities.values():
                c.close()
        except Exception:
            res["errors"].append("stopping: " + traceback.format_exc()[-800:])
        res["stop_s"] = time.perf_counter() - t
        if logged is not None:
            res["log"] = {"counts": dict(logged.counts), "first": logged.first}
        res["peak_rss_mib"] = proc_status().get("VmHWM", 0) / 1024
        res["ru_maxrss_mib"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        if influxd is not None:
            res["influx_series"] = _influx_series(influxd)
            res["influxd_rss_mib"] = rss_mib(influxd.proc.pid) if influxd.proc else None
            influxd.stop()
        res["broker_rss_mib"] = rss_mib(broker.proc.pid) if broker.proc else None
        broker.stop()
        save()
        if not args.keep:
            shutil.rmtree(tmp, ignore_errors=True)


def _influx_series(server) -> dict:
    """How InfluxDB holds the communities: databases, and the series per measurement."""
    out = {}
    try:
        dbs = server.query("SHOW DATABASES")["results"][0]["series"][0]["values"]
        out["databases"] = [d[0] for d in dbs if d[0] != "_internal"]
        for m in ("readings", "house_energy", "community_energy"):
            r = server.query(f'SHOW SERIES FROM "{m}"', db="leg")["results"][0]
            out[m] = len(r["series"][0]["values"]) if r.get("series") else 0
        r = server.query("SHOW TAG KEYS FROM house_energy", db="leg")["results"][0]
        out["house_energy_tags"] = [v[0] for v in r["series"][0]["values"]] if r.get("series") else []
    except Exception as exc:
        out["error"] = str(exc)[:200]
    return out


# -- the report -------------------------------------------------------------------------------------------
def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout.strip()


def loadavg() -> str:
    return " ".join(Path("/proc/loadavg").read_text().split()[:3])


def f(x, fmt=",.0f", none="-") -> str:
    return none if x is None else format(x, fmt)


def render(args, results: dict[str, dict], wall_s: float, command: str) -> str:
    n, hh = args.communities, args.houses
    need = n * hh / SEND_EVERY_S
    cpu = next((ln.split(":", 1)[1].strip() for ln in Path("/proc/cpuinfo").read_text().splitlines()
                if ln.startswith("model name")), "?")
    lines = [
        f"{n} communities x {hh} houses = {n * hh:,} meters in one instance, each meter publishing every "
        f"10 s ({need:,.0f} readings/s in real time), {args.rounds} rounds ({args.rounds * 10 / 60:.1f} minutes "
        f"of simulated time) published as fast as the broker takes them, through one MQTT subscription "
        f"(`MqttProcessSource` -> `PipelineRouter` -> a pipeline per community, all handled by one "
        f"thread, `PipelineGroup`, that acknowledges them in rounds from one journal and writes each "
        f"community's store in larger writes, as `python app.py run` starts them; the web app not started). `bench/communities.py`.",
        "",
        f"- **Machine and date**: {machine()}",
        f"- **Command**: `{command}`; wall time of the whole script {wall_s / 60:.1f} min; code: commit "
        f"{sh('git -C ' + str(ROOT) + ' log -1 --format=%h')} ({sh('git -C ' + str(ROOT) + ' log -1 --format=%cs')})",
        f"- **Load**: load average before the run {args.load_before}, after it {loadavg()} "
        "(the machine is shared); `free -m` before the run:",
        "",
        "```",
        *args.free_before.splitlines(),
        "```",
        "",
    ]
    cols = [b for b in ("embedded", "influxdb") if b in results]
    head = {"embedded": "embedded (a DuckDB file per community)", "influxdb": "InfluxDB 1.x (shared database)"}
    lines += ["| measurement | " + " | ".join(head[b] for b in cols) + " |",
              "|---|" + "---:|" * len(cols)]

    def row(label, fn):
        vals = []
        for b in cols:
            try:
                vals.append(fn(results[b]))
            except (KeyError, TypeError, ZeroDivisionError):
                vals.append("-")
        lines.append(f"| {label} | " + " | ".join(vals) + " |")

    row("start: open every community and start its runtime", lambda r: f"{r['start_s']:.1f} s")
    row("open files / threads after start (per community)",
        lambda r: f"{r['after_start']['open_files']:,} / {r['after_start']['threads']:,} "
                  f"({r['after_start']['files_per_community']:.1f} / {r['after_start']['threads_per_community']:.1f})")
    def not_finished(i):
        return "" if i.get("finished", True) else \
            f", **not finished**: {i['stored_in_budget']:,} of {i['readings']:,} stored when the {i['budget_s']:.0f}-s budget ended"
    row(f"**ingest rate**: readings stored per s, first publish to last stored (need {need:,.0f}/s)",
        lambda r: f"**{r['ingest']['rate']:,.0f}/s** ({r['ingest']['rate'] / need:.2f}x{not_finished(r['ingest'])})")
    row("stored per s while the publisher ran / publisher's own rate",
        lambda r: f"{r['ingest']['rate_while_publishing']:,.0f} / {r['ingest']['publish_rate']:,.0f}")
    row("readings published / stored / rejected (loss)",
        lambda r: f"{r['ingest']['published']:,} / {r['ingest']['stored']:,} / {r['ingest']['rejected']:,} "
                  + ("(zero loss)" if r['ingest']['stored'] == r['ingest']['published'] else
                     f"({r['ingest']['published'] - r['ingest']['stored']:,} not stored"
                     + (f": the backlog discarded after the budget, {r['ingest']['discarded']['readings']:,} readings "
                        "in the pipelines' queues, the rest still at the broker or in the MQTT process)"
                        if r['ingest'].get('discarded') else ")")))
    row("time to store them (simulated time covered)",
        lambda r: (f"{r['ingest']['stored_s']:.0f} s" if r['ingest'].get('finished', True) else
                   f"> {r['ingest']['budget_s']:.0f} s") + f" ({r['ingest']['simulated_s']:.0f} s)")
    row("largest backlog (published, not stored)", lambda r: f"{r['ingest']['max_backlog']:,}")
    row("app process CPU while ingesting (cores)", lambda r: f"{r['ingest']['cpu_cores']:.2f}")
    row("store writes (all communities) / readings per write",
        lambda r: f"{r['ingest']['writes']:,} / {r['ingest']['stored'] / max(1, r['ingest']['writes']):.1f}")
    row("rounds of the pipeline group (a round acknowledges every community with readings waiting: one "
        "journal commit, or their store writes when few) / time in rounds / in interval computations",
        lambda r: f"{r['ingest']['write_rounds']:,} / {r['ingest']['round_s']:,.0f} s / {r['ingest']['intervals_s']:,.0f} s")
    row("readings acknowledged from the journal (stored later, in larger writes) / journal commits",
        lambda r: f"{r['ingest']['journaled']:,} / {r['ingest']['journal_commits']:,}")
    row("MQTT batches handed to the router / store writes per batch",
        lambda r: f"{r['ingest']['handed_batches']:,} / {r['ingest']['writes'] / max(1, r['ingest']['handed_batches']):.1f}")
    row("time in store writes, summed over the pipelines / per write (mean, max)",
        lambda r: f"{r['ingest']['write_s']:,.0f} s / {r['ingest']['write_s'] / max(1, r['ingest']['writes']):.3f} s, "
                  f"{r['ingest']['write_max_s']:.2f} s")
    row("**interval lag** p50 / p95 / max: meter's first reading after the quarter hour published -> "
        "the house's interval written",
        lambda r: f"**{r['lag']['p50']:.1f} / {r['lag']['p95']:.1f}** / {r['lag']['max']:.1f} s "
                  f"({r['lag']['measured']:,} intervals)")
    row("intervals completed by the run that were not written", lambda r: f"{r['lag']['missing']:,} of {r['lag']['intervals']:,}")
    row("**settlement** of one month, every community: total", lambda r: (
        f"**{r['settle']['total_s']:.1f} s**" + ("" if r['settle']['settled'] == r['settle']['of'] else
                                                f" for {r['settle']['settled']} of {r['settle']['of']} (budget reached)")))
    row("settlement per community p50 / p95 / max",
        lambda r: f"{r['settle']['per_p50']:.3f} / {r['settle']['per_p95']:.3f} / {r['settle']['per_max']:.3f} s")
    row("settlement checks (invoices = houses, energies = generated)",
        lambda r: "all passed" if not r['settle']['failed'] else f"**{r['settle']['failed']} FAILED**")
    row("writing the month's intervals first (not settlement)",
        lambda r: f"{r['month_fill_s']:.0f} s ({r['month_filled']} x {r['settle']['intervals_per_community']:,} rows)")
    row("**RSS** of the app's process: after imports / after start / after ingest / after settlement",
        lambda r: f"{r['rss_imports_mib']:,.0f} / {r['after_start']['rss_mib']:,.0f} / "
                  f"{r['after_ingest']['rss_mib']:,.0f} / {r['after_settle']['rss_mib']:,.0f} MiB")
    row("**peak RSS** of the app's process (VmHWM) / its MQTT process",
        lambda r: f"**{r['peak_rss_mib']:,.0f} MiB** / {r['after_ingest']['child_peak_mib']:,.0f} MiB")
    row("idle CPU of the app's process (nothing arriving): after start / after ingest",
        lambda r: f"{r['idle_cpu_after_start']:.2f} / {r['idle_cpu_after_ingest']:.2f} cores")
    row("broker / influxd RSS at the end",
        lambda r: f"{f(r.get('broker_rss_mib'))} / {f(r.get('influxd_rss_mib'))} MiB")
    row("stop (write what is buffered, close every community)", lambda r: f"{r['stop_s']:.1f} s")
    lines.append("")
    for b in cols:
        r = results[b]
        for e in r.get("errors", []):
            lines.append(f"- {b}: error: `{e.strip().splitlines()[-1][:300]}`")
        if r.get("start_failed"):
            sf = r["start_failed"]
            lines.append(f"- {b}: **start failed after {sf['after']} communities**: `{sf['error'][:300]}` "
                         f"(open files {sf['open_files']}, threads {sf['threads']}, RSS {sf['rss_mib']:.0f} MiB)")
        for fl in r.get("settle", {}).get("failures", []):
            lines.append(f"- {b}: settlement check failed: {fl}")
        if r.get("lag", {}).get("early"):
            lines.append(f"- {b}: {r['lag']['early']} intervals were written before the reading that completes "
                         "them was published (partial intervals written early)")
        lg = r.get("log") or {}
        if lg.get("counts"):
            lines.append(f"- {b}: the app logged " + ", ".join(f"{v:,} {k}" for k, v in sorted(lg["counts"].items()))
                         + " records; the first: " + "; ".join(f"`{x[:200]}`" for x in lg["first"][:2]))
        if "influx_series" in r:
            s = r["influx_series"]
            lines.append(f"- InfluxDB layout found: databases {s.get('databases')}; series: readings "
                         f"{s.get('readings')}, house_energy {s.get('house_energy')} (tags "
                         f"{s.get('house_energy_tags')}), community_energy {s.get('community_energy')}")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--communities", type=int, default=DEFAULTS["communities"])
    ap.add_argument("--houses", type=int, default=DEFAULTS["houses"], help="houses (meters) per community")
    ap.add_argument("--rounds", type=int, default=DEFAULTS["rounds"],
                    help="rounds of messages (one per meter, 10 s of simulated time each)")
    ap.add_argument("--backends", default="embedded,influxdb")
    ap.add_argument("--settle-budget", type=float, default=120.0, help="seconds of settling per backend at most")
    ap.add_argument("--fill-budget", type=float, default=240.0,
                    help="seconds of writing the month's intervals per backend at most")
    ap.add_argument("--ingest-budget", type=float, default=900.0,
                    help="seconds from the first publish to wait for every reading to be stored; then the "
                         "publisher stops, the backlog is discarded and the rate so far is reported")
    ap.add_argument("--stall-s", type=float, default=90.0, help="give up when nothing is stored for this long")
    ap.add_argument("--lag-wait-s", type=float, default=150.0, help="wait this long for the last intervals")
    ap.add_argument("--idle-s", type=float, default=10.0, help="seconds of measuring the idle CPU")
    ap.add_argument("--write", action="store_true", help="write BENCHMARKS.md even for a smaller run")
    ap.add_argument("--no-write", action="store_true")
    ap.add_argument("--keep", action="store_true", help="keep the temporary folders")
    ap.add_argument("--save-json", help="also write every backend's raw results to this file")
    ap.add_argument("--child", help=argparse.SUPPRESS)
    ap.add_argument("--out", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        run_backend(args, args.child, Path(args.out))
        return 0
    full = all(getattr(args, k) == v for k, v in DEFAULTS.items())
    write = (args.write or full) and not args.no_write
    args.free_before = sh("free -m")
    args.load_before = loadavg()
    command = " ".join([".venv/bin/python", "bench/communities.py", *sys.argv[1:]])
    t = time.monotonic()
    results = {}
    with tempfile.TemporaryDirectory() as tmp:
        for b in args.backends.split(","):
            out = Path(tmp) / f"{b}.json"
            child = [sys.executable, __file__, "--child", b, "--out", str(out)] + \
                [a for a in sys.argv[1:] if a not in ("--write", "--no-write")]
            if "--save-json" in child:                    # the parent writes it
                i = child.index("--save-json")
                del child[i:i + 2]
            subprocess.run(child, cwd=ROOT)
            if out.exists():
                results[b] = json.loads(out.read_text())
    if args.save_json:
        Path(args.save_json).write_text(json.dumps(results, indent=1, default=str))
    text = render(args, results, time.monotonic() - t, command)
    print(text)
    if write:
        write_section("communities", "Many communities: `bench/communities.py`", text)
    return 0


if __name__ == "__main__":
    sys.exit(main())
