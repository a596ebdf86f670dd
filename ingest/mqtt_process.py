"""The MQTT source in a process of its own.

Receiving (paho's network loop) and parsing cost more CPU per message than validating and storing,
and threads of one Python process share one interpreter lock: on a 2-core machine the app could not
take 10,000 messages/s that way. So ``python -m ingest.mqtt_process`` runs ``MqttSource`` with the
parser and the uptime clock in a small child process (it imports paho and the parser, nothing of
pandas or the stores) and writes batches of readings and rejections (at most 500, at least every
100 ms) as length-prefixed pickles to its stdout; in the app a feeder thread reads them and hands
them to the pipeline.

No message is acknowledged before it is stored: the child acknowledges a batch's QoS 1 messages
only when the app writes ``ack <batch>`` to its stdin, which the pipeline does once the batch's
readings are in the store (``Pipeline.mark``). After a crash of either process the broker delivers
the unacknowledged messages again (the store ignores the ones it has).

Back-pressure holds across the two: when the pipeline's queue is full the feeder waits, the pipe
fills, the child's ``on_message`` waits on its write, paho stops acknowledging, and the broker keeps
the messages (QoS 1, persistent session). ``stop()`` tells the child to take no more messages and
hand over its last batch; once that is stored and acknowledged, the child disconnects, saves the
meters' boot times (also saved every ``SAVE_CLOCK_S`` while messages arrive) and exits (``stop`` → ``drain`` → ``bye``, see ``child_main``); messages that arrived
meanwhile stay unacknowledged at the broker for the next start. A child that dies is started again.
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
FLUSH_S = 0.1          # a batch at least this often: each is stored, then acknowledged
SAVE_CLOCK_S = 5.0     # the meters' boot times are saved this often while messages arrive
_HEADER = struct.Struct("!I")
ROOT = Path(__file__).resolve().parent.parent


# -- the child --------------------------------------------------------------------------------------
class _BatchingSink:
    """What MqttSource needs of an intake (``message``) and of a pipeline (``reject``, and the
    ``submit_parse`` SensorIntake calls): readings and rejections collected into batches."""

    def __init__(self, out, anchors_path):
        from ingest.sensor import SensorIntake
        self.out = out
        self.client = None                      # the paho client, for acknowledgements
        self._mids: list = []                   # (mid, qos) of the messages in _buf
        self._pending: dict[int, list] = {}     # batch -> its messages, until the app has stored it
        self._batches = 0
        self.closing = False                    # stopping: take no more messages
        self._buf: list = []
        self._lock = threading.Lock()
        self._write_lock = threading.Lock()
        self._intake = SensorIntake(self, anchors_path)
        self.pipeline = self
        self.seen = 0                           # messages taken (the clock changed when this did)

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
        self.seen += 1
        self._intake.message(mac, payload, received, source)

    def _add(self, item):
        with self._lock:
            if self.closing:                     # not handed over, not acknowledged: delivered again later
                return
            self._buf.append(item)
            full = len(self._buf) >= BATCH
        if full:
            self.flush()

    def track(self, mid: int, qos: int) -> None:
        with self._lock:
            if not self.closing:
                self._mids.append((mid, qos))

    def acked(self, batch: int) -> None:
        """The app has stored batch ``batch``: acknowledge its messages to the broker."""
        with self._lock:
            mids = self._pending.pop(batch, [])
        for mid, qos in mids:
            self.client.ack(mid, qos)

    def send(self, obj) -> None:
        data = pickle.dumps(obj, protocol=pickle.HIGHEST_PROTOCOL)
        with self._write_lock:                   # blocks while the app is behind: back-pressure
            self.out.write(_HEADER.pack(len(data)) + data)
            self.out.flush()

    def flush(self, force_last: bool = False):
        with self._lock:
            if self.closing and not force_last:
                return
            batch, self._buf = self._buf, []
            mids, self._mids = self._mids, []
            if batch or mids:
                self._batches += 1
                number = self._batches
                self._pending[number] = mids
        if batch or mids:
            self.send(("batch", batch, number))

    def save(self):
        self._intake.save()


def child_main() -> None:
    """Entry point of ``python -m ingest.mqtt_process``: settings as JSON on the first line of
    stdin, then commands: ``ack <batch>``; ``stop`` (take no more messages, hand over the last
    batch and say ``drain``); ``bye`` (everything handed over is stored and acknowledged:
    disconnect and end). The end of stdin without ``bye`` (the app died) ends it without
    acknowledging more: the broker keeps what was not acknowledged."""
    settings = json.loads(sys.stdin.readline())
    logging.basicConfig(level=settings["log_level"],
                        format="%(asctime)s %(levelname)s %(name)s[mqtt process]: %(message)s")
    from ingest.mqtt import MqttSource
    out = sys.stdout.buffer
    sys.stdout = sys.stderr                      # nothing else may write to the data stream
    sink = _BatchingSink(out, settings["anchors_path"])
    source = MqttSource(SimpleNamespace(**settings["mqtt"]), sink, manual_ack=True)
    sink.client = source.client
    stop = threading.Event()

    def commands():
        for line in sys.stdin:
            if line.startswith("ack "):
                sink.acked(int(line.split()[1]))
            elif line.strip() == "stop":
                with sink._lock:
                    sink.closing = True
                sink.flush(force_last=True)
                sink.send(("drain",))
            elif line.strip() == "bye":
                break
        stop.set()
    threading.Thread(target=commands, daemon=True).start()
    state = None
    saved_at, saved_seen = time.monotonic(), 0
    source.start()
    try:
        while not stop.is_set():
            time.sleep(FLUSH_S)
            sink.flush()
            if sink.seen != saved_seen and time.monotonic() - saved_at >= SAVE_CLOCK_S:
                # a kill -9 then costs at most this much of the clock's knowledge (the boot
                # times, which barely change); a backlog after it is still timed by the meter
                saved_at, saved_seen = time.monotonic(), sink.seen
                try:
                    sink.save()
                except OSError as exc:
                    log.warning("cannot save the meters' clock (%s); retrying", exc)
            now = (source.connected.is_set(), source.connects)
            if now != state:
                state = now
                sink.send(("status", *now))
    finally:
        source.stop()
        sink.save()
        try:
            sink.send(("end",))
        except (BrokenPipeError, OSError):       # the app is gone
            pass


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
        self._ack_lock = threading.Lock()
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
                proc = self._proc
                self.pipeline.mark(lambda n=msg[2], proc=proc: self._ack(proc, n))
            elif kind == "drain":                  # the child's last batch is in: once stored, it may go
                proc = self._proc
                self.pipeline.mark(lambda proc=proc: self._command(proc, "bye"))
            elif kind == "status":
                _, up, self.connects = msg
                self.connected.set() if up else self.connected.clear()
            elif kind == "end":
                self._proc.wait()
                return

    def _ack(self, proc, batch: int) -> None:
        """Batch ``batch`` is stored: tell the child that read it to acknowledge it (a child that has
        ended meanwhile cannot; the broker then delivers those messages again)."""
        self._command(proc, f"ack {batch}")

    def _command(self, proc, line: str) -> None:
        with self._ack_lock:
            try:
                proc.stdin.write(f"{line}\n".encode())
                proc.stdin.flush()
            except (OSError, ValueError):
                pass

    def stop(self) -> None:
        if self._proc is None:
            return
        self._stopping = True
        self._command(self._proc, "stop")          # the child hands over its last batch, then "bye"
        if self._feeder is not None:
            self._feeder.join(60)
        try:
            with self._ack_lock:
                self._proc.stdin.close()
        except OSError:
            pass
        try:
            self._proc.wait(10)
        except subprocess.TimeoutExpired:
            self._proc.kill()
        self.connected.clear()


if __name__ == "__main__":
    child_main()
