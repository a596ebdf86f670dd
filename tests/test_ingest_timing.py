"""Readings timed by the meter's own clock, bursts that lose nothing, and a flood of unknown meters.

The clock's rules are tested on ``UptimeClock`` directly; the losses they prevent with real peers:
``python app.py collect`` against a real mosquitto broker (killed with SIGKILL for 25 s, then the
broker stopped for 30 s, while five meters publish every 2 s), one meter publishing 50 messages a
second, and UDP datagrams sent close together to the app's UDP listener.
"""
from __future__ import annotations

import json
import logging
import os
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from pathlib import Path

import duckdb
import numpy as np
import paho.mqtt.client as mqtt
import pytest

from billing.intervals import ACCEPT, BREAK, OPEN, REJECT, RESET, judge_counter
from community import Community
from config import parse_config
from ingest.pipeline import MAX_UNKNOWN, Pipeline
from ingest.readings import Reading
from ingest.runtime import IngestRuntime
from ingest.sensor import UptimeClock
from peers import Mosquitto, free_port, mosquitto_binary

ROOT = Path(__file__).resolve().parent.parent
needs_mosquitto = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")
T0 = datetime(2026, 6, 1, 12, 0, tzinfo=timezone.utc)


def at(s: float) -> datetime:
    return T0 + timedelta(seconds=s)


def wait_until(cond, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


# -- the clock -------------------------------------------------------------------------------------

def test_every_message_is_timed_by_its_uptime_not_by_its_delivery_jitter():
    c = UptimeClock()
    jitter = [0.0, 0.4, 0.1, 0.9, 0.2, 0.0, 0.7]
    times = [c.time_of("M", 1000 + 10 * k, at(10 * k + j)) for k, j in enumerate(jitter)]
    gaps = [(b - a).total_seconds() for a, b in zip(times, times[1:])]
    assert gaps == pytest.approx([10.0] * 6, abs=1e-6)
    assert all(t <= at(10 * k + j) for k, (t, j) in enumerate(zip(times, jitter)))   # never after receipt


def test_a_late_first_anchor_is_corrected_by_an_earlier_arrival():
    c = UptimeClock()
    assert c.time_of("M", 100, at(5)) == at(5)          # delivered 5 s late: the clock cannot know yet
    assert c.time_of("M", 110, at(10)) == at(10)        # on time: boot time moves 5 s earlier
    assert c.time_of("M", 120, at(20.3)) == at(20)


def test_a_backlog_keeps_its_spacing_short_or_long():
    for late_s in (25.0, 3600.0):
        c = UptimeClock()
        c.time_of("M", 500, at(0))
        # the app (or the broker) was away for late_s: what the meter sent meanwhile (every 2 s)
        # arrives within milliseconds
        n = min(int(late_s // 2), 100)
        got = [c.time_of("M", 500 + 2 * k, at(late_s + 0.001 * k)) for k in range(1, n + 1)]
        assert got == [at(2 * k) for k in range(1, n + 1)], late_s
        nxt = 2 * (n + 1)                                   # then live again
        assert c.time_of("M", 500 + nxt, at(nxt + 0.2)) == at(nxt)


def test_a_device_restart_re_anchors_and_an_old_copy_keeps_its_time():
    c = UptimeClock()
    first = [c.time_of("M", 10_000 + 10 * k, at(10 * k)) for k in range(5)]
    assert c.time_of("M", 10_020, at(300)) == first[2]                   # an old copy, delivered again
    assert c.time_of("M", 3, at(400)) == at(400)                         # uptime 3 s: it restarted
    assert c.time_of("M", 13, at(410.2)) == at(410)


def test_a_drifting_clock_re_anchors_once_the_drift_exceeds_the_bound():
    c = UptimeClock()
    c.time_of("M", 0, at(0))
    # the device's second is 1 % long: its uptime falls behind, 0.1 s per 10 s
    got = [c.time_of("M", 10 * k, at(10.1 * k)) for k in range(1, 400)]
    lag = [(at(10.1 * k) - t).total_seconds() for k, t in zip(range(1, 400), got)]
    assert max(lag) <= UptimeClock.DRIFT_S + 0.2
    assert min(lag[300:]) < 5                                             # re-anchored on the way


def test_a_backlog_after_a_restart_arriving_one_send_interval_later_keeps_the_meters_times():
    """A backlog (messages every 10 s of uptime, delivered within milliseconds) is taken, the app
    stops (its boot times saved) and starts again 10 s after the last message it took: one send
    interval of the meter, so the rest of the backlog's first message looks paced live. It must not
    re-anchor the clock (that squeezed the rest of the burst into milliseconds, 1 ms apart)."""
    boot = at(-2 * 86400)                               # the meter was last heard two days ago
    before = UptimeClock()
    before.restore({"M": [0, boot.timestamp()]})
    first = [before.time_of("M", 10 * k, at(0.001 * k)) for k in range(1, 101)]
    assert first == [boot + timedelta(seconds=10 * k) for k in range(1, 101)]
    c = UptimeClock()
    c.restore(before.snapshot())
    got = [c.time_of("M", 10 * k, at(10.1 + 0.001 * k)) for k in range(101, 201)]
    assert got == [boot + timedelta(seconds=10 * k) for k in range(101, 201)]
    # a live meter whose clock drifted is still re-anchored, from its second message after the restart
    d = UptimeClock()
    d.restore(before.snapshot())
    d.time_of("M", 1010, at(10.1))
    assert d.time_of("M", 1020, at(20.1)) == at(20.1)


def test_several_messages_in_one_second_get_distinct_increasing_times_and_copies_repeat_them():
    c = UptimeClock()
    got = [c.time_of("M", 7, at(0.02 * k), (100.0 + k, 0.0)) for k in range(50)]
    assert all(b > a for a, b in zip(got, got[1:]))
    assert (got[-1] - got[0]).total_seconds() == pytest.approx(0.049, abs=1e-5)
    assert c.time_of("M", 7, at(5), (100.0 + 10, 0.0)) == got[10]         # a copy: the same time
    assert c.time_of("M", 7, at(5), (100.0 + 49, 0.0)) == got[49]


@pytest.mark.parametrize("ts", [None, "12", True, float("nan"), -5, 1e300])
def test_a_message_without_a_usable_uptime_is_timed_by_its_arrival(ts):
    c = UptimeClock()
    c.time_of("M", 100, at(0))
    assert c.time_of("M", ts, at(3.5)) == at(3.5)


def test_saved_boot_times_survive_and_the_older_anchor_format_is_read():
    c = UptimeClock()
    c.time_of("M", 1000, at(0))
    c.time_of("M", 1010, at(10))
    d = UptimeClock()
    d.restore(json.loads(json.dumps(c.snapshot())))
    assert d.time_of("M", 1500, at(2000)) == at(500)                      # a backlog after a restart
    old = UptimeClock()
    old.restore({"M": [1000, at(0).timestamp()], "bad": ["x", 1], "short": [1]})
    assert old.time_of("M", 1100, at(900)) == at(100)
    assert old.snapshot().keys() == {"M"}


# -- the plausibility rule ---------------------------------------------------------------------------

def verdicts(values, times=None, final=True):
    t = np.array(times if times is not None else [10.0 * k for k in range(len(values))])
    return judge_counter(t, np.array(values, dtype=float), 100.0, "Ei", final=final)[0].tolist()


def test_a_burst_on_the_way_to_the_next_normal_reading_is_accepted():
    # four values sent within 3 ms (timed by arrival), then the trend goes on
    times = [0.0, 10.0, 10.001, 10.002, 10.003, 20.0]
    assert verdicts([100.0, 100.01, 100.02, 100.03, 100.04, 100.05], times) == [ACCEPT] * 6


def test_two_far_higher_readings_are_not_a_new_level():
    v = [100.0, 100.01, 9000.0, 9000.01, 100.04]
    assert verdicts(v) == [ACCEPT, ACCEPT, REJECT, REJECT, ACCEPT]
    assert verdicts(v[:4], final=False) == [ACCEPT, ACCEPT, OPEN, OPEN]
    assert verdicts(v[:4], final=True) == [ACCEPT, ACCEPT, REJECT, REJECT]


def test_a_new_level_needs_three_readings_and_a_minute():
    quick = [100.0, 100.01] + [9000.0 + 0.01 * k for k in range(5)]      # 40 s of the new level
    assert verdicts(quick, final=False) == [ACCEPT, ACCEPT] + [OPEN] * 5
    held = quick + [9000.05, 9000.06]                                     # 60 s
    assert verdicts(held, final=False) == [ACCEPT, ACCEPT, BREAK] + [ACCEPT] * 6
    slow = [100.0, 100.01, 9000.0, 9000.5, 9001.0]                        # 60 s apart: a minute, 3 readings
    assert verdicts(slow, [0, 60, 120, 180, 240], final=False) == [ACCEPT, ACCEPT, BREAK, ACCEPT, ACCEPT]


def test_a_dip_alone_is_a_reset_only_when_nothing_more_can_come():
    assert verdicts([100.0, 100.01, 50.0], final=False) == [ACCEPT, ACCEPT, OPEN]
    assert verdicts([100.0, 100.01, 50.0], final=True) == [ACCEPT, ACCEPT, BREAK]


# -- the pipeline ------------------------------------------------------------------------------------

@pytest.fixture
def community(tmp_path):
    cfg = parse_config({"houses": {"M1": {"id": 1, "name": "House 1"}},
                        "community": {"name": "Test", "timezone": "Europe/Zurich"},
                        "storage": {"data_dir": str(tmp_path / "data")}}, source="test")
    c = Community.open(cfg)
    yield c
    c.close()


def test_a_burst_timed_by_arrival_is_stored_whole_without_rejections_or_resets(community):
    p = Pipeline(community, hold_timeout_s=1e9).start()
    try:
        now = datetime.now(timezone.utc)
        base = now.replace(minute=now.minute // 15 * 15, second=0, microsecond=0) - timedelta(hours=1)
        rs = [Reading("M1", base, 100.0, 0.0)]
        # 30 values that a Loxone sent 10 s apart but that arrived within 30 ms, then live again
        rs += [Reading("M1", base + timedelta(seconds=300, milliseconds=k), 100.0 + 0.01 * (k + 1), 0.0)
               for k in range(30)]
        rs += [Reading("M1", base + timedelta(seconds=310 + 10 * k), 100.31 + 0.01 * k, 0.0) for k in range(150)]
        for r in rs:
            p.submit(r, "udp")
        p.flush()
        st = p.status()["M1"]
        assert (st.accepted, st.rejected_total, st.resets, st.held) == (181, 0, 0, 0)
        assert len(community.store.read_readings("M1")) == 181
        iv = community.store.read_intervals(base, base + timedelta(minutes=30))
        assert len(iv) == 2 and not (iv["flags"] & RESET).any()
        assert iv["delta_ei_kwh"].sum() == pytest.approx(101.80 - 100.0)
    finally:
        p.stop()


def test_two_readings_with_a_far_higher_counter_are_not_a_reset(community):
    p = Pipeline(community, hold_timeout_s=0.5).start()
    try:
        base = datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=30)
        for k, v in enumerate([100.0, 100.01, 9000.0, 9000.01]):
            p.submit(Reading("M1", base + timedelta(seconds=5 * k), v, 0.0))
        p.flush()
        assert p.status()["M1"].held == 2 and p.status()["M1"].resets == 0
        wait_until(lambda: p.status()["M1"].held == 0, 5, "the hold timeout")
        st = p.status()["M1"]
        assert st.resets == 0 and st.rejected == Counter({"implausible_power": 2})
        assert community.ledger.held_readings() == []
    finally:
        p.stop()


def test_a_flood_of_unknown_meters_is_capped_counted_and_warned_about_sparingly(community, caplog):
    caplog.set_level(logging.WARNING, logger="ingest.pipeline")
    p = Pipeline(community, log_every_s=60).start()
    try:
        now = datetime.now(timezone.utc)
        for k in range(20_000):
            p.submit(Reading(f"AA-{k:06d}", now, 1.0, 0.0), "mqtt")
        p.reject("X" * 5000, "not_json", "payload is not JSON", "mqtt", now)
        p.flush()
        unknown = p.unknown_meters()
        assert len(unknown) == MAX_UNKNOWN
        assert p.unknown_dropped == 20_001 - MAX_UNKNOWN
        assert f"AA-{19_999:06d}" in unknown and "AA-000000" not in unknown      # the newest kept
        assert max(len(k) for k in unknown) <= 64
        warnings = [r for r in caplog.records if "unknown meter" in r.getMessage()]
        assert len(warnings) == 1
    finally:
        p.stop()


@needs_mosquitto
def test_a_topic_level_longer_than_64_characters_is_refused(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    cfg = parse_config({"mqtt": {"broker": "127.0.0.1", "port": broker.port, "use_tls": False,
                                 "client_id": "leg-long-topic"},
                        "houses": {"AA-11-BB-22-CC-01": {"id": 1, "name": "House 1"}},
                        "storage": {"data_dir": str(tmp_path / "data")}}, source="test")
    c = Community.open(cfg)
    rt = IngestRuntime(c).start()
    try:
        wait_until(rt.mqtt.connected.is_set, 15, "the MQTT connection")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="long-topic")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        pub.publish("Z" * 5000 + "/SENSOR", b'{"Ei": 1.0, "ts": 1}', qos=1).wait_for_publish(10)
        pub.disconnect()
        pub.loop_stop()
        wait_until(lambda: rt.pipeline.unattributed["meter_id_too_long"] == 1, 15, "the refusal")
        assert rt.pipeline.unknown_meters() == {}
    finally:
        rt.stop()
        c.close()
        broker.stop()


# -- real peers: outages ------------------------------------------------------------------------------

METERS = [f"AA-11-BB-22-CC-{k:02d}" for k in range(1, 6)]
PERIOD_S = 2


class Meter(threading.Thread):
    """A smart meter: publishes its counters every ``PERIOD_S`` seconds (uptime ``ts`` advancing by
    as much), QoS 1; while the broker is away its client keeps the messages and sends them once it
    is connected again (as a meter with a send buffer does)."""

    def __init__(self, mac: str, port: int, index: int):
        super().__init__(daemon=True, name=f"meter-{mac}")
        self.mac, self.index = mac, index
        self.stop_event = threading.Event()
        self.sent: list[tuple[int, float]] = []            # (uptime, Ei)
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"meter-{mac}")
        self.client.max_queued_messages_set(0)
        self.client.reconnect_delay_set(1, 2)
        self.client.connect("127.0.0.1", port, keepalive=5)
        self.acked: set[int] = set()
        self.client.on_publish = lambda client, userdata, mid, rc, props: self.acked.add(mid)
        self.client.loop_start()
        self.mids: list[int] = []

    def run(self) -> None:
        t0 = time.monotonic()
        k = 0
        while not self.stop_event.is_set():
            uptime = 50_000 + PERIOD_S * k
            ei = round(1000.0 * (self.index + 1) + 0.002 * k, 3)          # 3.6 kW
            body = json.dumps({"SMid": self.mac, "Pi": 3.6, "Po": 0.0, "Ei": ei, "Eo": 0.0, "ts": uptime})
            # while disconnected paho answers "not connected" but keeps the message and sends it
            # after the reconnect; the broker's PUBACK (on_publish) says it arrived
            self.mids.append(self.client.publish(f"{self.mac}/SENSOR", body, qos=1).mid)
            self.sent.append((uptime, ei))
            k += 1
            self.stop_event.wait(max(0.0, t0 + PERIOD_S * k - time.monotonic()))

    def finish(self) -> None:
        self.stop_event.set()
        self.join(10)
        wait_until(lambda: self.acked.issuperset(self.mids), 60,
                   f"meter {self.mac}: the broker's acknowledgement of all {len(self.mids)} messages")
        self.client.disconnect()
        self.client.loop_stop()


def start_app(tmp_path: Path, config: Path, run: int) -> subprocess.Popen:
    env = {k: v for k, v in os.environ.items() if k != "LEG_CONFIG"}
    out = open(tmp_path / f"collector-{run}.log", "w")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "collect", "--config", str(config)],
                            cwd=tmp_path, env=env, stdout=out, stderr=subprocess.STDOUT)
    out.close()
    return proc


def stored_by_meter(data: Path) -> dict[str, list[tuple[datetime, float]]]:
    con = duckdb.connect(str(data / "timeseries.duckdb"), read_only=True)
    try:
        rows = con.execute("SELECT meter_id, ts, import_kwh FROM readings ORDER BY meter_id, ts").fetchall()
        resets = con.execute("SELECT count(*) FROM intervals WHERE flags & 2 > 0").fetchone()[0]
    finally:
        con.close()
    out: dict[str, list] = {}
    for m, ts, ei in rows:
        out.setdefault(m, []).append((ts, ei))
    return out, resets


@needs_mosquitto
def test_an_app_kill_9_and_a_broker_outage_lose_no_reading_and_keep_the_spacing(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    data = tmp_path / "data"
    config = tmp_path / "config.yaml"
    houses = "\n".join(f'  "{m}": {{id: {n}, name: House {n}, type: real}}' for n, m in enumerate(METERS, 1))
    config.write_text(f"""
mqtt: {{broker: 127.0.0.1, port: {broker.port}, use_tls: false, client_id: leg-outage}}
houses:
{houses}
storage: {{data_dir: "{data}"}}
collector: {{interval: 1}}
""")
    meters = []
    proc = start_app(tmp_path, config, 1)
    try:
        wait_until(lambda: (data / "ledger.sqlite").exists(), 30, "the app")
        time.sleep(3)                                             # subscribed with its persistent session
        meters = [Meter(m, broker.port, i) for i, m in enumerate(METERS)]
        for m in meters:
            m.start()
        time.sleep(8)
        proc.kill()                                               # kill -9: no goodbye, nothing saved at exit
        proc.wait(10)
        time.sleep(25)                                            # the broker keeps the meters' messages
        proc = start_app(tmp_path, config, 2)
        time.sleep(10)
        broker.stop()                                             # 30 s without a broker
        time.sleep(30)
        broker.start()
        time.sleep(10)
        for m in meters:
            m.finish()
        published = sum(len(m.sent) for m in meters)
        wait_until(lambda: sum(len(v) for v in stored_by_meter_safe(data).values()) >= published, 60,
                   f"{published} readings stored")
        proc.send_signal(signal.SIGTERM)
        proc.wait(60)
    finally:
        for m in meters:
            m.stop_event.set()
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        broker.stop()
    log_text = "".join(p.read_text() for p in sorted(tmp_path.glob("collector-*.log")))
    got, resets = stored_by_meter(data)
    for m in meters:
        rows = got.get(m.mac, [])
        assert [ei for _, ei in rows] == [ei for _, ei in m.sent], f"{m.mac}: {len(rows)} of {len(m.sent)} stored"
        # the meter's spacing, to the few milliseconds by which deliveries differ
        gaps = [(b[0] - a[0]).total_seconds() for a, b in zip(rows, rows[1:])]
        assert min(gaps) >= PERIOD_S - 0.005 and max(gaps) <= PERIOD_S + 0.005, f"{m.mac}: spacing {sorted(set(gaps))}"
    assert resets == 0
    assert "counter reset" not in log_text and "rejected" not in log_text, log_text[-3000:]


def stored_by_meter_safe(data: Path) -> dict:
    """The stored readings while the app may hold the store: read from a copy of the file."""
    import shutil
    snap = data.parent / "snapshot.duckdb"
    try:
        shutil.copy(data / "timeseries.duckdb", snap)
        wal = data / "timeseries.duckdb.wal"
        if wal.exists():
            shutil.copy(wal, data.parent / "snapshot.duckdb.wal")
        con = duckdb.connect(str(snap), read_only=True)
        try:
            rows = con.execute("SELECT meter_id, count(*) FROM readings GROUP BY meter_id").fetchall()
        finally:
            con.close()
    except (duckdb.Error, OSError):
        return {}
    finally:
        for f in (snap, data.parent / "snapshot.duckdb.wal"):
            f.unlink(missing_ok=True)
    return {m: [None] * n for m, n in rows}


@needs_mosquitto
def test_three_thousand_messages_at_50_per_second_from_one_meter_are_all_stored(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    mac = METERS[0]
    cfg = parse_config({"mqtt": {"broker": "127.0.0.1", "port": broker.port, "use_tls": False,
                                 "client_id": "leg-fast"},
                        "houses": {mac: {"id": 1, "name": "House 1"}},
                        "storage": {"data_dir": str(tmp_path / "data")}, "collector": {"interval": 1}},
                       source="test")
    c = Community.open(cfg)
    rt = IngestRuntime(c).start()
    n, rate = 3000, 50.0
    try:
        wait_until(rt.mqtt.connected.is_set, 15, "the MQTT connection")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="fast-meter")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        t0 = time.monotonic()
        infos, values = [], []
        for k in range(n):
            elapsed = k / rate
            # 10 kW; six decimals, so that every message carries a value of its own (at Wh
            # resolution most messages of a second would be copies of each other: one reading)
            ei = round(500.0 + 10.0 * elapsed / 3600, 6)
            values.append(ei)
            body = json.dumps({"Pi": 10.0, "Po": 0.0, "Ei": ei, "Eo": 0.0, "ts": 7000 + int(elapsed)})
            infos.append(pub.publish(f"{mac}/SENSOR", body, qos=1))
            time.sleep(max(0.0, t0 + (k + 1) / rate - time.monotonic()))
        for info in infos:
            info.wait_for_publish(30)
        pub.disconnect()
        pub.loop_stop()
        wait_until(lambda: rt.pipeline.status()[mac].accepted + rt.pipeline.status()[mac].rejected_total
                   + rt.pipeline.status()[mac].held >= n, 60, f"every message judged ({rt.mqtt.messages} received)")
        rt.pipeline.flush()
        st = rt.pipeline.status()[mac]
        assert (st.accepted, st.rejected_total, st.resets, st.duplicates) == (n, 0, 0, 0)
        df = c.store.read_readings(mac)
        assert len(df) == n and df["import_kwh"].tolist() == values
        assert df["ts"].is_monotonic_increasing and df["ts"].is_unique
    finally:
        rt.stop()
        c.close()
        broker.stop()


def test_udp_values_sent_close_together_are_all_stored(tmp_path):
    port = free_port()
    cfg = parse_config({
        "houses": {"H1": {"id": 1, "name": "House 1"}}, "mqtt": {"enabled": False},
        "storage": {"data_dir": str(tmp_path / "data")},
        "meters": [{"id": "loxone-1", "name": "Apartment 1", "type": "apartment", "house": "H1",
                    "connection": "udp", "udp": {"port": port, "format": "raw", "host": "127.0.0.1"}}]},
        source="test")
    c = Community.open(cfg)
    rt = IngestRuntime(c, mqtt=False).start()
    try:
        time.sleep(0.5)
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        send = lambda v: s.sendto(f"{v:.3f}".encode(), ("127.0.0.1", port))
        send(100.0)
        time.sleep(1.5)
        values = [round(100.0 + 0.001 * k, 3) for k in range(1, 21)]
        for v in values:                                   # 20 values within a few milliseconds
            send(v)
        time.sleep(1.5)
        send(100.021)                                      # the trend goes on
        s.close()
        wait_until(lambda: len(c.store.read_readings("loxone-1")) >= 22, 15, "22 readings stored")
        rt.pipeline.flush()
        st = rt.pipeline.status()["loxone-1"]
        assert (st.accepted, st.rejected_total, st.resets, st.held) == (22, 0, 0, 0)
        assert c.store.read_readings("loxone-1")["import_kwh"].tolist() == [100.0] + values + [100.021]
    finally:
        rt.stop()
        c.close()
