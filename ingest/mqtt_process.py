"""The MQTT source in a process of its own.

Receiving (paho's network loop) and parsing cost more CPU per message than validating and storing,
and threads of one Python process share one interpreter lock: on a 2-core machine the app could
not take 10,000 messages/s that way. Here a child process runs ``MqttSource`` with the parser and
the uptime clock; it sends batches of readings and rejections (at most 500, at least every 20 ms)
through a bounded queue to this process, where a feeder thread hands them to the pipeline.

Back-pressure holds across the two: when the pipeline's queue is full the feeder waits, the
batch queue fills, the child's ``on_message`` waits on it, paho stops acknowledging, and the broker
keeps the messages (QoS 1, persistent session). ``stop()`` disconnects, sends what the child holds,
saves the uptime anchors and returns when all of it is in the pipeline.
"""
from __future__ import annotations

import logging
import multiprocessing as mp
import queue
import threading
import time

log = logging.getLogger(__name__)

BATCH = 500
FLUSH_S = 0.02
_SENTINEL = "__end__"


class _BatchingSink:
    """In the child: what MqttSource needs of an intake (``message``) and of a pipeline
    (``reject``), collecting readings and rejections into batches for the parent."""

    def __init__(self, out, anchors_path):
        from ingest.sensor import SensorIntake
        self.out = out
        self._buf: list = []
        self._lock = threading.Lock()
        self._intake = SensorIntake(self, anchors_path)     # the parser and the uptime clock
        self.pipeline = self

    # SensorIntake calls these on its "pipeline"
    def submit_parse(self, parse, meter_id, received, source):
        try:
            item = ("r", parse(), source)
        except Exception as exc:
            item = ("x", meter_id, getattr(exc, "code", "unreadable"),
                    str(exc) if hasattr(exc, "code") else repr(exc), source, received)
        self._add(item)

    def reject(self, meter_id, code, message, source="", at=None):
        self._add(("x", meter_id, code, message, source, at))

    def message(self, mac, payload, received, source):
        self._intake.message(mac, payload, received, source)

    def _add(self, item):
        with self._lock:
            self._buf.append(item)
            full = len(self._buf) >= BATCH
        if full:
            self.flush()

    def flush(self):
        with self._lock:
            batch, self._buf = self._buf, []
        if batch:
            self.out.put(batch)          # blocks when the parent is behind: back-pressure

    def save(self):
        self._intake.save()


def _child(cfg_data: dict, anchors_path, out, stop, connected, connects, level: int) -> None:
    logging.basicConfig(level=level, format="%(asctime)s %(levelname)s %(name)s[mqtt]: %(message)s")
    from config import MqttConfig
    from ingest.mqtt import MqttSource
    sink = _BatchingSink(out, anchors_path)
    source = MqttSource(MqttConfig(**cfg_data), sink)
    seen = 0
    source.start()
    try:
        while not stop.is_set():
            time.sleep(FLUSH_S)
            sink.flush()
            if source.connected.is_set():
                connected.set()
            else:
                connected.clear()
            if source.connects != seen:
                seen = source.connects
                with connects.get_lock():
                    connects.value = seen
    finally:
        source.stop()
        sink.flush()
        sink.save()
        out.put(_SENTINEL)


class MqttProcessSource:
    def __init__(self, cfg, pipeline, anchors_path=None):
        self.cfg = cfg
        self.pipeline = pipeline
        self.anchors_path = anchors_path
        ctx = mp.get_context("spawn")        # a clean child: no inherited threads or store handles
        self._ctx = ctx
        self._out = ctx.Queue(maxsize=200)
        self._stop = ctx.Event()
        self.connected = ctx.Event()
        self._connects = ctx.Value("i", 0)
        self._proc = None
        self._feeder = None
        self.messages = 0

    @property
    def connects(self) -> int:
        return self._connects.value

    def start(self) -> "MqttProcessSource":
        self._spawn()
        self._feeder = threading.Thread(target=self._feed, name="mqtt-feeder", daemon=True)
        self._feeder.start()
        return self

    def _feed(self) -> None:
        while True:
            try:
                batch = self._out.get(timeout=1.0)
            except queue.Empty:
                if self._proc is not None and not self._proc.is_alive() and self._stop.is_set():
                    return
                if self._proc is not None and not self._proc.is_alive():
                    log.error("the MQTT process ended (exit code %s); restarting it", self._proc.exitcode)
                    self._spawn()
                continue
            if batch == _SENTINEL:
                return
            for item in batch:
                if item[0] == "r":
                    self.pipeline.submit(item[1], item[2])
                else:
                    self.pipeline.reject(*item[1:])
            self.messages += len(batch)

    def _spawn(self) -> None:
        self._proc = self._ctx.Process(
            target=_child, name="leg-mqtt",
            args=(self.cfg.model_dump(), str(self.anchors_path) if self.anchors_path else None, self._out,
                  self._stop, self.connected, self._connects, logging.getLogger().getEffectiveLevel()),
            daemon=True)
        self._proc.start()

    def stop(self) -> None:
        self._stop.set()
        if self._feeder is not None:
            self._feeder.join(30)
        if self._proc is not None:
            self._proc.join(10)
            if self._proc.is_alive():
                self._proc.terminate()
        self.connected.clear()
