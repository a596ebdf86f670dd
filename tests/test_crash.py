"""Crashes and shutdown of the collector, with real processes: ``python app.py collect`` against a
real mosquitto broker (QoS 1, persistent session), stopped with SIGTERM or killed with SIGKILL while
meters publish as fast as the broker takes their messages, then started again.

What the broker delivered and the collector acknowledged must end up in the store, and what it did
not acknowledge the broker keeps and delivers after the restart: in the end every published
reading is stored exactly once.
"""
import json
import os
import re
import signal
import sqlite3
import subprocess
import sys
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import duckdb
import paho.mqtt.client as mqtt
import pytest

from peers import Mosquitto, mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")

ROOT = Path(__file__).resolve().parent.parent
CLIENT_ID = "leg-crash"
METERS = ["AA-11-BB-22-CC-01", "AA-11-BB-22-CC-02", "AA-11-BB-22-CC-03"]
N = 3000                 # messages, round robin over the meters
STEP_S = 10              # device uptime between two messages of a meter


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker")
    # every PUBACK is logged: the test sees what the collector acknowledged
    b.conf.write_text(b.conf.read_text() + "log_type all\n")
    b.start()
    yield b
    b.stop()


def wait_until(cond, timeout, what):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.02)
    raise AssertionError(f"timed out after {timeout} s waiting for {what}")


def broker_log(b) -> str:
    return (b.workdir / "mosquitto.log").read_text(errors="replace")


def acked(b) -> int:
    """Messages the collector acknowledged (each at most once: the broker drops it then)."""
    return broker_log(b).count(f"Received PUBACK from {CLIENT_ID} ")


def subscribed(b) -> int:
    return broker_log(b).count(f"Received SUBSCRIBE from {CLIENT_ID}")


def ended(b) -> int:
    """The collector's connections the broker has closed (after the PUBACKs that came before)."""
    return len(re.findall(rf"(Client {CLIENT_ID} (disconnected|closed its connection)|"
                          rf"Socket error on client {CLIENT_ID},)", broker_log(b)))


def wait_disconnected(b) -> None:
    """The broker has handled everything the collector sent before its connection ended."""
    wait_until(lambda: ended(b) >= subscribed(b), 15, "the broker to close the collector's connection")


def reading(i: int) -> tuple[str, int, float, float]:
    """Message ``i``: (meter, k, Ei, Eo); each meter's k-th message, counters rising 3.6 and 1.8 kW."""
    meter, k = METERS[i % len(METERS)], i // len(METERS)
    return meter, k, round(100.0 + 1000 * (i % len(METERS)) + 0.01 * k, 2), round(50.0 + 0.005 * k, 3)


def payload(i: int) -> bytes:
    _, k, ei, eo = reading(i)
    return json.dumps({"SMid": "60222760", "Pi": 3.6, "Po": 1.8, "Ei": ei, "Eo": eo,
                       "ts": STEP_S * (k + 1)}).encode()


class Setup:
    """Config, uptime anchors and the broker session of a collector that has run before."""

    def __init__(self, tmp_path, broker):
        self.tmp, self.broker = tmp_path, broker
        self.data = tmp_path / "data"
        self.data.mkdir()
        self.config = tmp_path / "config.yaml"
        houses = "\n".join(f'  "{m}": {{id: {n}, name: House {n}, type: real}}' for n, m in enumerate(METERS, 1))
        self.config.write_text(f"""
mqtt: {{broker: 127.0.0.1, port: {broker.port}, use_tls: false, client_id: {CLIENT_ID}}}
houses:
{houses}
storage: {{data_dir: "{self.data}"}}
collector: {{interval: 1}}
""")
        # the collector last heard every meter two days ago at uptime 0: a burst of messages is
        # then timed by the devices' uptime (10 s apart), whenever it is delivered
        anchor = datetime.now(timezone.utc).timestamp() - 2 * 86400
        (self.data / "sensor_clock.json").write_text(json.dumps({m: [0, anchor] for m in METERS}))
        # the broker knows the collector's persistent session from before
        c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=CLIENT_ID, clean_session=False)
        c.connect("127.0.0.1", broker.port)
        c.loop_start()
        c.subscribe("+/SENSOR", qos=1)
        wait_until(lambda: subscribed(broker) >= 1, 10, "the session's subscription")
        c.disconnect()
        c.loop_stop()
        self.runs = 0

    def start_collector(self) -> subprocess.Popen:
        self.runs += 1
        before = subscribed(self.broker)
        env = {k: v for k, v in os.environ.items() if k != "LEG_CONFIG"}
        out = open(self.tmp / f"collector-{self.runs}.out", "w")
        err = open(self.tmp / f"collector-{self.runs}.err", "w")
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "collect", "--config", str(self.config)],
                                cwd=self.tmp, env=env, stdout=out, stderr=err)
        out.close()
        err.close()
        try:
            wait_until(lambda: subscribed(self.broker) > before or proc.poll() is not None, 30,
                       "the collector's subscription")
        except AssertionError:
            proc.kill()
            proc.wait()
            raise
        assert proc.poll() is None, self.output(self.runs)
        return proc

    def output(self, run: int) -> str:
        return ((self.tmp / f"collector-{run}.out").read_text()
                + (self.tmp / f"collector-{run}.err").read_text())

    def stop(self, proc: subprocess.Popen) -> None:
        proc.send_signal(signal.SIGTERM)
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
            raise AssertionError(f"the collector did not stop within 30 s of SIGTERM:\n{self.output(self.runs)}")
        assert proc.returncode == 0, self.output(self.runs)
        assert "stopping: writing buffered readings" in self.output(self.runs)
        wait_disconnected(self.broker)

    def finish(self, total: int) -> None:
        """Start the collector again, wait until it acknowledged every message, stop it."""
        proc = self.start_collector()
        try:
            wait_until(lambda: acked(self.broker) >= total, 40, f"{total} acknowledged messages "
                       f"(acknowledged: {acked(self.broker)})")
        finally:
            self.stop(proc)
        assert acked(self.broker) == total
        # redelivered copies are recognised as such, never refused as out of order
        assert "rejected" not in self.output(self.runs), self.output(self.runs)


class Publisher:
    """N QoS 1 messages, sent as fast as the broker acknowledges them (all queued at once), or
    ``rate`` messages a second from a thread of their own."""

    def __init__(self, port: int):
        self.done = 0
        self._lock = threading.Lock()
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"meters-{time.monotonic_ns()}")
        self.client.on_publish = self._on_publish
        self.client.connect("127.0.0.1", port)
        self.client.loop_start()
        self.infos = []
        self._thread = None

    def _on_publish(self, *args):
        with self._lock:
            self.done += 1

    def _publish(self, i: int):
        return self.client.publish(f"{reading(i)[0]}/SENSOR", payload(i), qos=1)

    def publish_all(self, rate: float | None = None) -> None:
        if rate is None:
            self.infos = [self._publish(i) for i in range(N)]
            return

        def paced():
            t0 = time.monotonic()
            for i in range(N):
                self.infos.append(self._publish(i))
                time.sleep(max(0.0, t0 + (i + 1) / rate - time.monotonic()))
        self._thread = threading.Thread(target=paced, name="meters", daemon=True)
        self._thread.start()

    def wait(self) -> None:
        if self._thread is not None:
            self._thread.join(N / 100)
        assert len(self.infos) == N
        for info in self.infos:
            info.wait_for_publish(30)
        assert all(info.is_published() for info in self.infos)
        self.client.disconnect()
        self.client.loop_stop()


def children_of(pid: int) -> list[int]:
    out = []
    for d in Path("/proc").iterdir():
        if d.name.isdigit():
            try:
                if int((d / "stat").read_text().rsplit(")", 1)[1].split()[1]) == pid:
                    out.append(int(d.name))
            except (OSError, IndexError, ValueError):
                pass
    return out


def alive(pid: int) -> bool:
    try:
        state = (Path("/proc") / str(pid) / "stat").read_text().rsplit(")", 1)[1].split()[0]
    except OSError:
        return False
    return state != "Z"


def stored_readings(data: Path) -> list[tuple]:
    con = duckdb.connect(str(data / "timeseries.duckdb"), read_only=True)
    try:
        return con.execute("SELECT meter_id, ts, import_kwh, export_kwh FROM readings ORDER BY meter_id, ts").fetchall()
    finally:
        con.close()


def check_exactly_once(data: Path, note: str = "") -> None:
    got = stored_readings(data)
    published = {(m, ei, eo) for m, _, ei, eo in map(reading, range(N))}
    values = [(m, round(ei, 2), round(eo, 3)) for m, _, ei, eo in got]
    missing = published - set(values)
    if missing:
        by_meter = {}
        for m, ei, _ in sorted(missing):
            by_meter.setdefault(m, []).append(round((ei - 100.0 - 1000 * METERS.index(m)) / 0.01))
        where = "; ".join(f"{m}: {len(ks)} readings, k {_ranges(ks)}" for m, ks in by_meter.items())
        raise AssertionError(f"{len(missing)} of {N} published readings are not in the store ({where}){note}")
    assert len(values) == len(set(values)) == N, f"{len(values)} stored rows for {N} readings{note}"
    assert set(values) == published
    # each meter's readings keep their devices' spacing (timed by uptime, not by delivery)
    for m in METERS:
        ts = [t for mm, t, _, _ in got if mm == m]
        gaps = [(b - a).total_seconds() for a, b in zip(ts, ts[1:])]
        assert min(gaps) == pytest.approx(STEP_S, abs=1e-3) and max(gaps) == pytest.approx(STEP_S, abs=1e-3)


def _ranges(ks: list[int]) -> str:
    ks = sorted(ks)
    spans, start = [], ks[0]
    for a, b in zip(ks, ks[1:] + [None]):
        if b != a + 1:
            spans.append(f"{start}..{a}" if a != start else f"{a}")
            start = b
    return ", ".join(spans)


def check_stores_open(data: Path) -> None:
    con = sqlite3.connect(data / "ledger.sqlite")
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
        assert con.execute("SELECT count(*) FROM houses").fetchone()[0] == len(METERS)
    finally:
        con.close()
    con = duckdb.connect(str(data / "timeseries.duckdb"), read_only=True)
    try:
        assert con.execute("SELECT count(*) FROM readings").fetchone()[0] > 0
        assert con.execute("SELECT count(*) FROM intervals").fetchone()[0] > 0
    finally:
        con.close()


def test_sigterm_during_a_stream_loses_nothing(tmp_path, broker):
    s = Setup(tmp_path, broker)
    proc = s.start_collector()
    pub = Publisher(broker.port)
    try:
        pub.publish_all()
        wait_until(lambda: pub.done >= N // 3 and acked(broker) > 0, 20, "a third of the stream")
        proc.send_signal(signal.SIGTERM)       # the meters keep publishing while it stops
        at_signal = pub.done
        s.stop(proc)
        first = acked(broker)
        pub.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert at_signal < N, "the stream was over before the collector stopped"
    assert first < N, "the collector took every message before it stopped"
    # everything acknowledged before the stop is stored (and perhaps a few more: messages taken
    # while the connection was closing are acknowledged too late, then delivered again)
    assert len(stored_readings(s.data)) >= first
    s.finish(N)
    check_exactly_once(s.data, f" (acknowledged before SIGTERM: {first})")


def wal_size(data: Path) -> int:
    try:
        return (data / "timeseries.duckdb.wal").stat().st_size
    except FileNotFoundError:
        return 0


def test_kill_9_and_restart_loses_nothing_the_broker_did_not_hand_over(tmp_path, broker):
    s = Setup(tmp_path, broker)
    proc = s.start_collector()
    written_at_start = wal_size(s.data)
    pub = Publisher(broker.port)
    try:
        # a steady stream (3 s), so that the kill finds the collector writing batches
        pub.publish_all(rate=N / 3)
        wait_until(lambda: pub.done >= N // 3 and wal_size(s.data) > written_at_start, 20,
                   "a third of the stream and a batch in the store")
        mqtt_process = children_of(proc.pid)
        proc.kill()                            # SIGKILL: no chance to write what it holds
        proc.wait(10)
        # the MQTT process notices that its parent is gone and ends by itself
        wait_until(lambda: not any(alive(p) for p in mqtt_process), 15, "the MQTT process to end")
        wait_disconnected(broker)
        first = acked(broker)
        pub.wait()
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    assert proc.returncode == -signal.SIGKILL
    assert 0 < first < N, "the kill did not come mid-stream"
    # the crashed stores open (the ledger as it is; DuckDB replays its write-ahead log)
    con = sqlite3.connect(f"file:{s.data / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        assert con.execute("PRAGMA integrity_check").fetchall() == [("ok",)]
    finally:
        con.close()
    at_kill = len(stored_readings(s.data))
    assert at_kill > 0

    s.finish(N)
    check_stores_open(s.data)
    # the broker hands the messages it has no acknowledgement for to the restarted collector,
    # in order: the acknowledged ones are the first ``first`` messages
    values = {(m, round(ei, 2), round(eo, 3)) for m, _, ei, eo in stored_readings(s.data)}
    not_acked = {(m, ei, eo) for m, _, ei, eo in map(reading, range(first, N))}
    assert not_acked <= values, f"{len(not_acked - values)} readings the broker still held are missing"
    check_exactly_once(s.data, f" (acknowledged to the broker before the kill: {first}, in the store "
                               f"right after the kill: {at_kill})")


def test_a_held_reading_acknowledged_before_a_kill_9_is_decided_after_the_restart(tmp_path, broker):
    """A meter exchanged (its counter starts again low) sends a reading the collector holds until
    the next one decides it; its message is acknowledged meanwhile. Killed then, the collector
    finds it again at the restart, and the readings after it make it the first of the new series
    once the new level has held for a minute (seven more readings, 10 s apart)."""
    s = Setup(tmp_path, broker)
    meter = METERS[0]
    values = [(100.0, 50.0), (100.01, 50.005), (100.02, 50.01)] + \
        [(round(3.0 + 0.01 * k, 2), round(1.0 + 0.005 * k, 3)) for k in range(8)]

    def send(client, k):
        ei, eo = values[k]
        client.publish(f"{meter}/SENSOR", json.dumps({"Pi": 3.6, "Po": 1.8, "Ei": ei, "Eo": eo,
                                                       "ts": STEP_S * (k + 1)}).encode(), qos=1).wait_for_publish(10)

    client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="meter-exchange")
    client.connect("127.0.0.1", broker.port)
    client.loop_start()
    proc = s.start_collector()
    try:
        for k in range(4):
            send(client, k)
        # acknowledged once the pipeline has passed it: the fourth is held by then
        wait_until(lambda: acked(broker) >= 4, 20, "the four messages acknowledged")
        proc.kill()
        proc.wait(10)
        wait_disconnected(broker)
        assert (meter, 3.0) not in {(m, ei) for m, _, ei, _ in stored_readings(s.data)}

        proc = s.start_collector()
        for k in range(4, len(values)):
            send(client, k)
        wait_until(lambda: acked(broker) >= len(values), 20, "every message acknowledged")
        s.stop(proc)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
        client.disconnect()
        client.loop_stop()
    got = [(ei, eo) for m, _, ei, eo in stored_readings(s.data) if m == meter]
    assert got == values, s.output(2)
    assert "counter reset or exchange" in s.output(2)
    con = sqlite3.connect(f"file:{s.data / 'ledger.sqlite'}?mode=ro", uri=True)
    try:
        assert con.execute("SELECT count(*) FROM held_readings").fetchone()[0] == 0
    finally:
        con.close()
