"""InfluxDB outage during a live MQTT stream: a real mosquitto and a real influxd. InfluxDB is
stopped in the middle of the stream and started again a minute later; the app itself is restarted
while InfluxDB is down. Every reading must be present exactly once afterwards."""
import json
import threading
import time
from datetime import datetime, timezone

import paho.mqtt.client as mqtt
import pytest

from community import Community
from config import parse_config
from ingest.runtime import IngestRuntime
from peers import Influxd, Mosquitto, influxd_binary, mosquitto_binary

pytestmark = pytest.mark.skipif(influxd_binary() is None or mosquitto_binary() is None,
                                reason="needs influxd and mosquitto")
MAC = "AA-11-BB-22-CC-01"


def test_outage_of_a_minute_with_an_app_restart_loses_nothing(tmp_path):
    broker = Mosquitto(tmp_path / "broker").start()
    influx = Influxd(tmp_path / "influx").start()
    cfg = parse_config({
        "mqtt": {"broker": "127.0.0.1", "port": broker.port, "client_id": "leg-outage"},
        "influxdb": {"url": influx.url, "database": "energy"},
        "houses": {MAC: {"id": 2, "name": "House 2"}},
        "storage": {"data_dir": str(tmp_path / "data"), "backend": "influxdb"},
        "collector": {"interval": 1},
    }, source="test")
    cfg.data_dir.mkdir(parents=True)
    # the meter was last heard three days ago at uptime 0: each message is timed by its uptime
    (cfg.data_dir / "sensor_clock.json").write_text(
        json.dumps({MAC: [0, datetime.now(timezone.utc).timestamp() - 3 * 86400]}))

    published = []
    stop_publishing = threading.Event()

    def publish():
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="meter")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        k = 0
        while not stop_publishing.is_set():
            k += 1
            body = json.dumps({"SMid": "1", "Pi": 1.0, "Po": 0.0, "Ei": round(100 + 0.002 * k, 3),
                               "Eo": 0.0, "ts": 10 * k})
            pub.publish(f"{MAC}/SENSOR", body, qos=1).wait_for_publish(10)
            published.append(k)
            time.sleep(0.05)
        pub.disconnect()
        pub.loop_stop()

    def start_app():
        c = Community.open(cfg)
        return c, IngestRuntime(c).start()

    c, rt = start_app()
    publisher = threading.Thread(target=publish, daemon=True)
    try:
        assert rt.mqtt.connected.wait(30)               # the persistent session exists from here on
        time.sleep(0.3)
        publisher.start()
        time.sleep(5)
        influx.stop()                                   # InfluxDB goes down mid-stream
        time.sleep(15)
        rt.stop()                                       # the app stops while InfluxDB is down
        spooled = c.store.health()["spool_lines"]
        c.close()
        assert spooled > 0
        time.sleep(10)                                  # messages keep coming: the broker keeps them
        c, rt = start_app()                             # restart: spool from disk, backlog from the broker
        time.sleep(35)
        influx.start()                                  # a minute after it went down
        time.sleep(5)
        stop_publishing.set()
        publisher.join(30)
        time.sleep(1)                                   # the last messages reach the app
        rt.pipeline.flush()
        deadline = time.monotonic() + 60
        while c.store.health()["spool_batches"] and time.monotonic() < deadline:
            time.sleep(0.5)
        got = c.store.read_readings(MAC)
        accepted_total = len(got)
        missing = sorted(set(published) - {round((v - 100) / 0.002) for v in got["import_kwh"]})
        assert accepted_total == len(published), (accepted_total, len(published), missing[:20], rt.pipeline.status()[MAC])
        assert got["ts"].is_unique
        assert list(got["import_kwh"]) == [round(100 + 0.002 * k, 3) for k in published]
        assert c.store.health()["dead_batches"] == 0
    finally:
        stop_publishing.set()
        rt.stop()
        c.close()
        influx.stop()
        broker.stop()
