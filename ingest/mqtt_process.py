"""The MQTT source in a process of its own.

Receiving (paho's network loop) and parsing cost more CPU per message than validating and storing,
and threads of one Python process share one interpreter lock: on a 2-core machine the app could not
take 10,000 messages/s that way. So ``python -m ingest.mqtt_process`` runs ``MqttSource`` with the
parser and the uptime clock in a small child process (it imports paho and the parser, nothing of
pandas or the stores) and writes batches of readings and rejections (at most 500, at least every
20 ms) as length-prefixed pickles to its stdout; in the app a feeder thread reads them and hands
them to the pipeline.

Back-pressure holds across the two: when the pipeline's queue is full the feeder waits, the pipe
fills, the child's ``on_message`` waits on its write, paho stops acknowledging, and the broker keeps
the messages (QoS 1, persistent session). ``stop()`` closes the child's stdin; the child disconnects,
writes what it holds, saves the uptime anchors and exits; ``stop()`` returns when all of it is in
the pipeline. A child that dies is started again.
"""
from __future__ import annotations

import json
import logging
import os
import pickle
import struct
import subprocess
import sys
import threading
import time
from pathlib import Path
from types import SimpleNamespace

log = logging.getLogger(__name__)

BATCH = 500
FLUSH_S = 0.02
_HEADER = struct.Struct("!I")
ROOT = Path(__file__).resolve().parent.parent


# -- the child --------------------------------------------------------------------------------------
class _BatchingSink:
    """What MqttSource needs of an intake (``message``) and of a pipeline (``reject``, and the
    ``submit_parse`` SensorIntake calls): readings and rejections collected into batches."""

    def __init__(self, out, anchors_path):
        from ingest.sensor import SensorIntake
        self.out = out
        self._buf: list = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._intake = SensorIntake(self, anchors_path)
        self.pipeline = self

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

    def send(self, obj) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        with self._write_lock:                   # blocks while the app is behind: back-pressure
            self.out.write(_HEADER.pack(len(data)) + data)
            self.out.flush()

    def flush(self):
        with self._lock:
            batch, self._buf = self._buf, []
        if batch:
            self.send(("batch", batch))

    def save(self):
        self._intake.save()


def child_main() -> None:
    """Entry point of ``python -m ingest.mqtt_process``: settings as JSON on the first line of
    stdin; stdin closing means stop."""
    settings = json.loads(sys.stdin.readline())
    logging.basicConfig(level=settings["log_level"],
                        format="%(asctime)s %(levelname)s %(name)s[mqtt process]: %(message)s")
    from ingest.mqtt import MqttSource
    out = sys.stdout.buffer
    sys.stdout = sys.stderr                      # nothing else may write to the data stream
    sink = _BatchingSink(out, settings["anchors_path"])
    source = MqttSource(SimpleNamespace(**settings["mqtt"]), sink)
    stop = threading.Event()
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    state = None
    source.start()
    try:
        while not stop.is_set():
            time.sleep(FLUSH_S)
            sink.flush()
            now = (source.connected.is_set(), source.connects)
            if now != state:
                state = now
                sink.send(("status", *now))
    finally:
        source.stop()
        sink.flush()
        sink.save()
        sink.send(("end",))


# -- the app's side -----------------------------------------------------------------------------------
class MqttProcessSource:
    def __init__(self, cfg, pipeline, anchors_path=None):
        self.cfg = cfg                     # config.MqttConfig
        self.pipeline = pipeline
        self.anchors_path = anchors_path
        self.connected = threading.Event()
        self.connects = 0
        self.messages = 0
        self.restarts = 0
        self._proc: subprocess.Popen | None = None
        self._feeder: threading.Thread | None = None
        self._stopping = False

    def start(self) -> "MqttProcessSource":
        self._spawn()
        self._feeder = threading.Thread(target=self._feed, name="mqtt-feeder", daemon=True)
        self._feeder.start()
        return self

    def _spawn(self) -> None:
        env = dict(os.environ, PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
        self._proc = subprocess.Popen([sys.executable, "-m", "ingest.mqtt_process"], cwd=str(ROOT), env=env,
                                      stdin=subprocess.PIPE, stdout=subprocess.PIPE, bufsize=0)
        settings = {"mqtt": self.cfg.model_dump(), "log_level": logging.getLogger().getEffectiveLevel(),
                    "anchors_path": str(self.anchors_path) if self.anchors_path else None}
        self._proc.stdin.write((json.dumps(settings) + "\n").encode())
        self._proc.stdin.flush()

    def _read(self, n: int) -> bytes | None:
        buf = b""
        while len(buf) < n:
            chunk = self._proc.stdout.read(n - len(buf))
            if not chunk:
                return None
            buf += chunk
        return buf

    def _feed(self) -> None:
        while True:
            head = self._read(_HEADER.size)
            msg = pickle.loads(self._read(_HEADER.unpack(head)[0])) if head else None
            if msg is None:                        # the child ended without saying so
                self._proc.wait()
                if self._stopping:
                    return
                log.error("the MQTT process ended (exit code %s); starting it again", self._proc.returncode)
                self.connected.clear()
                self.restarts += 1
                time.sleep(1)
                if self._stopping:                 # a stop began meanwhile (e.g. SIGTERM to the whole group)
                    return
                self._spawn()
                continue
            kind = msg[0]
            if kind == "batch":
                for item in msg[1]:
                    if item[0] == "r":
                        self.pipeline.submit(item[1], item[2])
                    else:
                        self.pipeline.reject(*item[1:])
                self.messages += len(msg[1])
            elif kind == "status":
                _, up, self.connects = msg
                self.connected.set() if up else self.connected.clear()
            elif kind == "end":
                self._proc.wait()
                return

    def stop(self) -> None:
        if self._proc is None:
            return
        self._stopping = True
        try:
            self._proc.stdin.close()               # the child's signal to stop
        except OSError:
            pass
        if self._feeder is not None:
            self._feeder.join(60)
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self.connected.clear()


if __name__ == "__main__":
    child_main()
