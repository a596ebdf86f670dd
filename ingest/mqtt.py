"""MQTT source (paho-mqtt 2.x): smart meters publishing ``{MAC}/SENSOR``.

* QoS 1 subscription with a persistent session (``clean_session=False`` and a fixed client id):
  messages published while the app is stopped are kept by the broker and arrive at the next start.
* Subscribes in ``on_connect``, so every reconnect resubscribes; reconnects with backoff
  (1 s doubling to 60 s) and logs the loss and the recovery once each.
* TLS with username/password (public port 8883) or anonymous plain (VPN port 1883).
* ``on_message`` never blocks on the store: it hands the message to an intake (in the app: the
  batching sink of ``ingest.mqtt_process``, in a process of its own), which may wait when the
  pipeline is full; paho then stops acknowledging and the broker keeps the messages.
"""
from __future__ import annotations

import logging
import ssl
import threading
from datetime import datetime, timezone

import paho.mqtt.client as mqtt

from ingest.readings import MAX_METER_ID_CHARS
from ingest.sensor import mac_from_topic

log = logging.getLogger(__name__)


class MqttSource:
    def __init__(self, cfg, intake, *, client_id: str | None = None, manual_ack: bool = False):
        self.cfg = cfg              # config.MqttConfig
        self.intake = intake        # ingest.sensor.SensorIntake
        self.pipeline = intake.pipeline
        self.connected = threading.Event()
        self.messages = 0
        self.connects = 0
        self.last_error: str | None = None
        self._was_connected = False
        self._stopping = False
        # manual_ack: a QoS 1 message is acknowledged only when the intake says it is stored
        # (``intake.track(mid, qos)`` now, ``client.ack`` later); until then the broker keeps it
        self.manual_ack = manual_ack
        self.client = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id=client_id or cfg.client_id,
                                  clean_session=False, protocol=mqtt.MQTTv311, manual_ack=manual_ack)
        self.client.max_inflight_messages_set(1000)
        self.client.max_queued_messages_set(0)
        if cfg.username:
            self.client.username_pw_set(cfg.username, cfg.password)
        if cfg.use_tls:
            self.client.tls_set(cert_reqs=ssl.CERT_REQUIRED)
        self.client.reconnect_delay_set(min_delay=1, max_delay=60)
        self.client.on_connect = self._on_connect
        self.client.on_disconnect = self._on_disconnect
        self.client.on_message = self._on_message

    def start(self) -> "MqttSource":
        log.info("MQTT: connecting to %s:%d (%s)", self.cfg.broker, self.cfg.port,
                 "TLS" if self.cfg.use_tls else "plain")
        self.client.connect_async(self.cfg.broker, self.cfg.port, keepalive=30)
        self.client.loop_start()
        return self

    def stop(self) -> None:
        self._stopping = True
        self.client.disconnect()
        self.client.loop_stop()

    # -- callbacks (paho's network thread) ------------------------------------------------------
    def _on_connect(self, client, userdata, flags, reason_code, properties):
        if reason_code.is_failure:
            self.last_error = f"connection refused: {reason_code}"
            log.error("MQTT: %s", self.last_error)
            return
        self.connects += 1
        client.subscribe(self.cfg.topic, qos=1)
        self.connected.set()
        self.last_error = None
        if self._was_connected:
            log.warning("MQTT: reconnected to %s:%d and resubscribed to %s", self.cfg.broker,
                        self.cfg.port, self.cfg.topic)
        else:
            log.info("MQTT: connected; subscribed to %s (QoS 1, persistent session)", self.cfg.topic)
        self._was_connected = True

    def _on_disconnect(self, client, userdata, flags, reason_code, properties):
        if self.connected.is_set() and not self._stopping:
            self.last_error = f"disconnected: {reason_code}"
            log.warning("MQTT: %s; reconnecting with backoff", self.last_error)
        self.connected.clear()

    def _on_message(self, client, userdata, msg):
        self.messages += 1
        received = datetime.now(timezone.utc)
        mac = mac_from_topic(msg.topic, self.cfg.topic)
        if mac is None:
            self.pipeline.reject(None, "unknown_topic", f"topic {msg.topic[:100]!r} does not match {self.cfg.topic}",
                                 "mqtt", received)
        elif len(mac) > MAX_METER_ID_CHARS:
            self.pipeline.reject(None, "meter_id_too_long", f"topic level {mac[:20]!r}... has {len(mac)} "
                                 f"characters: a meter id has at most {MAX_METER_ID_CHARS}", "mqtt", received)
        else:
            self.intake.message(mac, msg.payload, received, "mqtt")
        if self.manual_ack and msg.qos > 0:
            self.intake.track(msg.mid, msg.qos)
