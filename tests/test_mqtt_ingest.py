"""MQTT ingest against a real mosquitto broker started by the test on a free port."""
import json
import os
import signal
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import pandas as pd
import paho.mqtt.client as mqtt
import pytest

from community import Community
from config import parse_config
from ingest.runtime import IngestRuntime
from peers import Mosquitto, mosquitto_binary

pytestmark = pytest.mark.skipif(mosquitto_binary() is None, reason="mosquitto is not installed")

ROOT = Path(__file__).resolve().parent.parent
MAC1, MAC2 = "AA-11-BB-22-CC-01", "AA-11-BB-22-CC-02"


@pytest.fixture
def broker(tmp_path):
    b = Mosquitto(tmp_path / "broker").start()
    yield b
    b.stop()


def make_config(tmp_path, port, client_id="leg-test"):
    return parse_config({
        "mqtt": {"broker": "127.0.0.1", "port": port, "use_tls": False, "client_id": client_id},
        "houses": {MAC1: {"id": 2, "name": "House 2", "type": "simulated"},
                   MAC2: {"id": 3, "name": "House 3", "type": "simulated"}},
        "storage": {"data_dir": str(tmp_path / "data")},
        "collector": {"interval": 1},
    }, source="test")


def publisher(port):
    c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=f"pub-{time.monotonic_ns()}")
    c.connect("127.0.0.1", port)
    c.loop_start()
    return c


def payload(ei, eo=0.0, uptime=0, **extra):
    return json.dumps({"SMid": "60222760", "Pi": 1.0, "Po": 0.0, "Ei": ei, "Eo": eo, "ts": uptime, **extra})


def wait_until(cond, timeout=15.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if cond():
            return
        time.sleep(0.05)
    raise AssertionError(f"timed out waiting for {what}")


def publish_all(pub, items, qos=1):
    infos = [pub.publish(topic, body, qos=qos) for topic, body in items]
    for info in infos:
        info.wait_for_publish(10)


def seed_anchors(cfg, *macs, uptime=0, ago_s=3600):
    """The app heard these meters ``ago_s`` seconds ago at ``uptime``: messages published in a
    quick burst below are then timed by their uptime (10 s apart), as a real meter's would be."""
    cfg.data_dir.mkdir(parents=True, exist_ok=True)
    t = datetime.now(timezone.utc).timestamp() - ago_s
    (cfg.data_dir / "sensor_clock.json").write_text(json.dumps({m: [uptime, t] for m in macs}))


def stored(community, meter):
    return community.store.read_readings(meter)


def test_messages_are_stored_bad_ones_counted(tmp_path, broker):
    cfg = make_config(tmp_path, broker.port)
    seed_anchors(cfg, MAC1, MAC2)
    community = Community.open(cfg)
    rt = IngestRuntime(community).start()
    try:
        wait_until(rt.mqtt.connected.is_set, what="MQTT connection")
        pub = publisher(broker.port)
        publish_all(pub, [
            (f"{MAC1}/SENSOR", payload(100.0, 5.0, 10)),
            (f"{MAC1}/SENSOR", b"not json"),
            (f"{MAC1}/SENSOR", payload("100.1", 5.0, 15)),           # number as a string
            ("FF-FF-FF-FF-FF-FF/SENSOR", payload(1.0, 0.0, 3)),      # unknown meter
            (f"{MAC1}/SENSOR", payload(100.2, 5.1, 20)),
            (f"{MAC2}/SENSOR", payload(7.0, 0.0, 20)),
        ])
        pub.disconnect()
        wait_until(lambda: rt.pipeline.status()[MAC1].accepted == 2 and rt.pipeline.status()[MAC2].accepted == 1,
                   what="accepted readings")
        rt.pipeline.flush()
        r = stored(community, MAC1)
        assert list(r["import_kwh"]) == [100.0, 100.2] and list(r["export_kwh"]) == [5.0, 5.1]
        st = rt.pipeline.status()[MAC1]
        assert st.rejected == {"not_json": 1, "wrong_type": 1}
        assert "Ei: must be a JSON number of kWh, got a string" in (st.last_rejection or "")
        unknown = rt.pipeline.unknown_meters()
        assert list(unknown) == ["FF-FF-FF-FF-FF-FF"] and unknown["FF-FF-FF-FF-FF-FF"].messages == 1
        assert stored(community, "FF-FF-FF-FF-FF-FF").empty
    finally:
        rt.stop()
        community.close()


def test_broker_restart_reconnects_and_resubscribes(tmp_path, broker):
    cfg = make_config(tmp_path, broker.port)
    seed_anchors(cfg, MAC1)
    community = Community.open(cfg)
    rt = IngestRuntime(community).start()
    try:
        wait_until(rt.mqtt.connected.is_set, what="MQTT connection")
        pub = publisher(broker.port)
        publish_all(pub, [(f"{MAC1}/SENSOR", payload(100.0 + k / 1000, 0, 10 * k + 10)) for k in range(5)])
        pub.disconnect()
        wait_until(lambda: rt.pipeline.status()[MAC1].accepted == 5, what="first five")
        broker.stop()
        wait_until(lambda: not rt.mqtt.connected.is_set(), what="disconnect noticed")
        broker.start()
        wait_until(rt.mqtt.connected.is_set, timeout=70, what="reconnect")
        assert rt.mqtt.connects == 2
        pub = publisher(broker.port)
        publish_all(pub, [(f"{MAC1}/SENSOR", payload(101.0 + k / 1000, 0, 1000 + 10 * k)) for k in range(5)])
        pub.disconnect()
        wait_until(lambda: rt.pipeline.status()[MAC1].accepted == 10, what="five more after the restart")
        rt.pipeline.flush()
        assert len(stored(community, MAC1)) == 10
    finally:
        rt.stop()
        community.close()


def test_messages_published_while_the_app_is_stopped_arrive_and_keep_their_spacing(tmp_path, broker):
    cfg = make_config(tmp_path, broker.port, client_id="leg-persistent")
    community = Community.open(cfg)
    rt = IngestRuntime(community).start()        # first start: the broker records the session
    wait_until(rt.mqtt.connected.is_set, what="MQTT connection")
    rt.stop()
    community.close()

    # while the app is down, the meter publishes an hour of messages (uptime 10 s apart); the app
    # last heard from it an hour ago at uptime 50000 (its saved anchor)
    hour_ago = datetime.now(timezone.utc).timestamp() - 3600
    (cfg.data_dir / "sensor_clock.json").write_text(json.dumps({MAC1: [50000, hour_ago]}))
    n = 350
    pub = publisher(broker.port)
    publish_all(pub, [(f"{MAC1}/SENSOR", payload(round(200 + 0.01 * k, 3), 0, 50000 + 10 * k)) for k in range(1, n + 1)])
    pub.disconnect()

    community = Community.open(cfg)
    rt = IngestRuntime(community).start()
    try:
        wait_until(lambda: rt.pipeline.status()[MAC1].accepted == n, what="the backlog")
        rt.pipeline.flush()
        r = stored(community, MAC1)
        assert len(r) == n and rt.pipeline.status()[MAC1].rejected_total == 0
        gaps = r["ts"].diff().dropna().dt.total_seconds()
        assert gaps.min() == pytest.approx(10, abs=0.01) and gaps.max() == pytest.approx(10, abs=0.01)
        assert abs(r["ts"].iloc[0].timestamp() - (hour_ago + 10)) < 0.01
    finally:
        rt.stop()
        community.close()


def test_simulate_command_publishes_section_8_3_messages(tmp_path, broker):
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(f"""
mqtt: {{broker: 127.0.0.1, port: {broker.port}, use_tls: false}}
houses:
  "B0-81-84-25-22-5C": {{id: 1, name: House 1, type: real}}
  "{MAC1}": {{id: 2, name: House 2, type: simulated, pv_kwp: 10}}
  "{MAC2}": {{id: 3, name: House 3, type: simulated, pv_kwp: 20}}
storage: {{data_dir: "{tmp_path / 'sim'}"}}
""")
    got = []
    sub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="observer")
    sub.on_message = lambda c, u, m: got.append((m.topic, json.loads(m.payload)))
    sub.connect("127.0.0.1", broker.port)
    sub.subscribe("+/SENSOR", qos=1)
    sub.loop_start()
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "simulate", "--config", str(cfg_path),
                             "--interval", "0.2", "--seed", "7"], cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        wait_until(lambda: len(got) >= 6, timeout=30, what="simulator messages")
    finally:
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=20)
        sub.loop_stop()
    assert proc.returncode == 0, err
    topics = {t for t, _ in got}
    assert topics == {f"{MAC1}/SENSOR", f"{MAC2}/SENSOR"}          # house 1 is the real meter
    for _, body in got:
        assert set(body) == {"SMid", "Pi", "Po", "I1", "I2", "I3", "Ei", "Eo", "Q5", "Q6", "Q7", "Q8", "ts"}
        assert isinstance(body["ts"], int) and body["Ei"] > 0
    # counters carry on across a restart of the simulator: never backwards
    state = json.loads((tmp_path / "sim" / "simulator_state.json").read_text())
    assert state[MAC1]["import_kwh"] >= max(b["Ei"] for t, b in got if t.startswith(MAC1)) - 0.001


def test_simulate_stops_cleanly_on_sigterm_at_any_moment(tmp_path):
    """SIGTERM the moment the simulator says it publishes (its first wait, where a handler that set
    an Event could deadlock with the main thread's own wait on it, and where SIGTERM used to kill it
    before its handler was installed): every run exits with status 0 within 10 s and saves the
    counters. No broker is needed: port 1 refuses, the simulator keeps its messages queued."""
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(f"""
houses:
  "{MAC1}": {{id: 2, name: House 2, type: simulated}}
storage: {{data_dir: "{tmp_path / 'sim'}"}}
""")
    for run in range(6):
        state = tmp_path / "sim" / "simulator_state.json"
        state.unlink(missing_ok=True)
        proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "simulate", "--broker", "127.0.0.1:1",
                                 "--config", str(cfg_path)], cwd=tmp_path, stdout=subprocess.PIPE,
                                stderr=subprocess.STDOUT, text=True)
        lines = []
        for line in proc.stdout:
            lines.append(line)
            if line.startswith("publishing"):
                break
        proc.send_signal(signal.SIGTERM)
        started = time.monotonic()
        try:
            lines += proc.communicate(timeout=20)[0].splitlines(keepends=True)
        except subprocess.TimeoutExpired:
            proc.kill()
            raise AssertionError(f"run {run}: simulate still running 20 s after SIGTERM")
        assert proc.returncode == 0, f"run {run}: exit status {proc.returncode}\n{''.join(lines)}"
        assert time.monotonic() - started < 10
        assert MAC1 in json.loads(state.read_text()), f"run {run}: counters not saved"


def test_collect_command_stores_and_flushes_on_sigterm(tmp_path, broker):
    cfg = make_config(tmp_path, broker.port, client_id="leg-collector")
    seed_anchors(cfg, MAC1)
    cfg_path = tmp_path / "config.yaml"
    cfg_path.write_text(f"""
mqtt: {{broker: 127.0.0.1, port: {broker.port}, use_tls: false, client_id: leg-collector}}
houses:
  "{MAC1}": {{id: 2, name: House 2, type: simulated}}
storage: {{data_dir: "{cfg.data_dir}"}}
""")
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "collect", "--config", str(cfg_path)],
                            cwd=tmp_path, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        # wait for the subscription: the broker log shows the client's SUBSCRIBE
        wait_until(lambda: "leg-collector" in (broker.workdir / "mosquitto.log").read_text(), what="collector")
        time.sleep(0.5)
        pub = publisher(broker.port)
        publish_all(pub, [(f"{MAC1}/SENSOR", payload(round(300 + 0.01 * k, 3), 0, 60 * k)) for k in range(1, 51)])
        pub.disconnect()
        time.sleep(0.2)
    finally:
        proc.send_signal(signal.SIGTERM)      # at once: what is buffered must still be written
        out, err = proc.communicate(timeout=30)
    assert proc.returncode == 0, err
    assert "stopping: writing buffered readings" in out
    community = Community.open(cfg)
    try:
        r = community.store.read_readings(MAC1)
        assert len(r) == 50
        assert not community.store.read_intervals(r["ts"].iloc[0] - pd.Timedelta(hours=1),
                                                  r["ts"].iloc[-1]).empty
    finally:
        community.close()
