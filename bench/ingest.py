"""Ingest benchmark: MQTT messages through a real mosquitto into the store.

Measures, with the same broker and the same messages (``--meters`` meters, section 8.3 payloads,
QoS 1, persistent sessions):

* bare: a plain paho receive loop that only counts messages (the ceiling);
* app: LEG-Invoicing's MqttSource -> SensorIntake -> Pipeline -> DuckDB store, counted when stored;

each in two ways: *drain* (the messages wait in the broker, as after a restart of the app, and are
consumed as fast as possible) and *stream* (a separate publisher process publishes while the
consumer runs; published -> stored). Zero loss is checked: every message is stored exactly once
and nothing is rejected. Peak resident memory of the process is reported.

    .venv/bin/python bench/ingest.py                    # full size, writes BENCHMARKS.md
    .venv/bin/python bench/ingest.py --messages 20000 --no-write
"""
from __future__ import annotations

import argparse
import json
import multiprocessing as mp
import resource
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import paho.mqtt.client as mqtt  # noqa: E402

from benchfile import machine, write_section  # noqa: E402
from peers import Mosquitto  # noqa: E402


def macs(n: int) -> list[str]:
    return [f"BE-EC-00-{k // 65536:02X}-{k // 256 % 256:02X}-{k % 256:02X}" for k in range(n)]


def messages(n_msgs: int, meters: list[str]):
    """Round-robin over meters; uptime 10 s apart per meter; ~0.003 kWh per message."""
    per = {}
    for k in range(n_msgs):
        mac = meters[k % len(meters)]
        i = per.get(mac, 0) + 1
        per[mac] = i
        body = json.dumps({"SMid": "60222760", "Pi": 1.05, "Po": 0.0, "I1": 1.5, "I2": 0.1, "I3": 0.1,
                           "Ei": round(1000 + 0.003 * i, 3), "Eo": 500.0, "Q5": 1.0, "Q6": 1.0,
                           "Q7": 1.0, "Q8": 1.0, "ts": 10 * i})
        yield f"{mac}/SENSOR", body


def publish(port: int, n_msgs: int, n_meters: int, tag: str) -> float:
    """Publish at QoS 1 as fast as the broker acknowledges; returns the rate (msgs/s)."""
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"bench-pub-{tag}")
    c.max_inflight_messages_set(1000)
    c.max_queued_messages_set(0)
    c.connect("127.0.0.1", port)
    c.loop_start()
    t = time.perf_counter()
    last = None
    for k, (topic, body) in enumerate(messages(n_msgs, macs(n_meters))):
        if k % 20000 == 0 and last is not None:
            last.wait_for_publish(600)   # message ids wrap at 65,535: keep fewer outstanding
        last = c.publish(topic, body, qos=1)
    last.wait_for_publish(600)
    rate = n_msgs / (time.perf_counter() - t)
    c.disconnect()
    c.loop_stop()
    return rate


def _publisher_proc(port, n_msgs, n_meters, tag, out):
    out.put(publish(port, n_msgs, n_meters, tag))


def register_session(port: int, client_id: str) -> None:
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.connect("127.0.0.1", port)
    c.subscribe("+/SENSOR", qos=1)
    c.loop_start()
    time.sleep(0.5)
    c.disconnect()
    c.loop_stop()


def bare_receive(port: int, n_msgs: int, client_id: str, timeout: float) -> float:
    count = [0, 0.0, 0.0]
    done = mp.Event() if False else None  # noqa: F841 (kept simple: poll below)

    def on_message(c, u, m):
        if count[0] == 0:
            count[1] = time.perf_counter()
        count[0] += 1
        if count[0] == n_msgs:
            count[2] = time.perf_counter()

    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id, clean_session=False)
    c.max_inflight_messages_set(1000)
    c.on_connect = lambda cl, u, f, rc, p: cl.subscribe("+/SENSOR", qos=1)
    c.on_message = on_message
    c.connect("127.0.0.1", port)
    c.loop_start()
    deadline = time.perf_counter() + timeout
    while count[0] < n_msgs and time.perf_counter() < deadline:
        time.sleep(0.01)
    c.disconnect()
    c.loop_stop()
    if count[0] < n_msgs:
        raise RuntimeError(f"bare receiver got {count[0]} of {n_msgs}")
    return n_msgs / (count[2] - count[1])


def app_receive(port: int, n_msgs: int, n_meters: int, client_id: str, workdir: Path, timeout: float,
                publisher=None) -> dict:
    from community import Community
    from config import parse_config
    from ingest.runtime import IngestRuntime
    houses = {mac: {"id": k + 1, "name": f"House {k + 1}"} for k, mac in enumerate(macs(n_meters))}
    cfg = parse_config({"mqtt": {"broker": "127.0.0.1", "port": port, "client_id": client_id},
                        "houses": houses, "storage": {"data_dir": str(workdir)},
                        "collector": {"interval": 60}}, source="bench")
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    # the meters were last heard a day ago at uptime 0: messages are timed by their uptime
    t0 = datetime.now(timezone.utc).timestamp() - 86400
    (cfg.data_dir / "sensor_clock.json").write_text(json.dumps({m: [0, t0] for m in houses}))
    community = Community.open(cfg)
    # intervals are computed at the end (the bench measures the ingest path)
    rt = IngestRuntime(community, pipeline_options={"intervals_every_s": 3600})
    rt.start()
    deadline = time.perf_counter() + timeout
    while not rt.mqtt.connected.is_set() and time.perf_counter() < deadline:
        time.sleep(0.001)
    t_start = time.perf_counter()          # from the connection: start-up is not throughput
    if publisher is not None:
        publisher.start()
    while rt.pipeline.stored < n_msgs and time.perf_counter() < deadline:
        time.sleep(0.01)
    elapsed = time.perf_counter() - t_start
    st = rt.pipeline.status()
    rejected = sum(s.rejected_total for s in st.values())
    child_peak_mb = 0.0
    try:
        for line in open(f"/proc/{rt.mqtt._proc.pid}/status"):
            if line.startswith("VmHWM"):
                child_peak_mb = int(line.split()[1]) / 1024
    except OSError:
        pass
    rt.stop()
    stored_rows = len(community.store.read_readings())
    community.close()
    return {"rate": rt.pipeline.stored / elapsed, "stored": stored_rows, "rejected": rejected,
            "elapsed": elapsed, "child_mb": child_peak_mb}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--messages", type=int, default=100_000)
    ap.add_argument("--meters", type=int, default=2000)
    ap.add_argument("--no-write", action="store_true", help="do not update BENCHMARKS.md")
    args = ap.parse_args()
    n, m = args.messages, args.meters
    timeout = max(120.0, n / 500)
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        broker = Mosquitto(tmp / "broker").start()
        try:
            res = {}
            # drain: the backlog waits in the broker
            register_session(broker.port, "bench-bare-drain")
            publish(broker.port, n, m, "1")
            res["bare_drain"] = bare_receive(broker.port, n, "bench-bare-drain", timeout)
            register_session(broker.port, "bench-app-drain")
            res["publish_rate"] = publish(broker.port, n, m, "2")
            res["app_drain"] = app_receive(broker.port, n, m, "bench-app-drain", tmp / "drain", timeout)
            # stream: a publisher process publishes while the consumer runs
            register_session(broker.port, "bench-bare-stream")
            q = mp.Queue()
            p = mp.Process(target=_publisher_proc, args=(broker.port, n, m, "3", q))
            p.start()
            res["bare_stream"] = bare_receive(broker.port, n, "bench-bare-stream", timeout)
            p.join()
            register_session(broker.port, "bench-app-stream")
            p = mp.Process(target=_publisher_proc, args=(broker.port, n, m, "4", q))
            res["app_stream"] = app_receive(broker.port, n, m, "bench-app-stream", tmp / "stream", timeout, p)
            p.join()
        finally:
            broker.stop()
    rss_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    child_mb = max(res["app_drain"]["child_mb"], res["app_stream"]["child_mb"])
    ok_loss = all(res[k]["stored"] == n and res[k]["rejected"] == 0 for k in ("app_drain", "app_stream"))
    lines = [
        f"{n:,} messages from {m:,} meters, QoS 1, through mosquitto on localhost.",
        "",
        "| measurement | messages/s | target |",
        "|---|---:|---|",
        f"| bare paho receive loop, drain | {res['bare_drain']:,.0f} | ceiling |",
        f"| app: received -> validated -> stored, drain | {res['app_drain']['rate']:,.0f} | >= 10,000 |",
        f"| bare paho receive loop, stream (publisher running) | {res['bare_stream']:,.0f} | ceiling |",
        f"| app, stream: published -> stored | {res['app_stream']['rate']:,.0f} | >= 10,000 |",
        f"| publisher alone (QoS 1) | {res['publish_rate']:,.0f} | |",
        "",
        "- the stream rows are bounded by the publisher (one Python paho client, sharing the two cores "
        "with the broker and the consumer); the drain rows show what the consumer itself can take",
        f"- app / bare: drain {res['app_drain']['rate'] / res['bare_drain']:.0%}, stream "
        f"{res['app_stream']['rate'] / res['bare_stream']:.0%} (target >= 50 %)",
        f"- loss: stored {res['app_drain']['stored']:,} and {res['app_stream']['stored']:,} of {n:,}, "
        f"rejected {res['app_drain']['rejected']} and {res['app_stream']['rejected']}: "
        f"{'zero loss' if ok_loss else 'LOSS'}",
        f"- peak resident memory with {m:,} meters: the app's process {rss_mb:,.0f} MB and its MQTT process "
        f"{child_mb:,.0f} MB, together {rss_mb + child_mb:,.0f} MB (target <= 300 MB; the app's process "
        f"includes this benchmark's own data)",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("ingest", "Ingest: MQTT to store (`bench/ingest.py`)", machine() + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
