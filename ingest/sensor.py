"""Parsing of smart-meter messages: topic ``{MAC}/SENSOR``, JSON payload of the LEG
specification's section 8.3::

    {"SMid": "60222760", "Pi": 1.047, "Po": 0.0, "Ei": 4619.712, "Eo": 14089.216, "ts": 12589, ...}

``Ei`` / ``Eo`` are cumulative kWh, ``Pi`` / ``Po`` instantaneous kW. ``ts`` is the device's
uptime in seconds, not a time of day: ``UptimeClock`` maps it to UTC, so each reading is timed
by the meter (its spacing kept however late it arrives); without ``ts`` the receive time counts. Other keys
(currents, reactive energies) are ignored.
"""
from __future__ import annotations

import json
import math
import os
import threading
from datetime import datetime

from ingest.readings import Reading, ReadingError

MAX_PAYLOAD_BYTES = 64 * 1024


class MessageError(ReadingError):
    """A message that is not a reading; ``code`` is a short reason key for counting."""

    def __init__(self, code: str, message: str):
        self.code = code
        super().__init__(message)


def _reject_constant(name: str):
    raise MessageError("not_finite", f"payload contains {name}, which is not a number")


_DECODER = json.JSONDecoder(parse_constant=_reject_constant)   # built once: json.loads(**kw) builds one per call
_MAX = 1e15                                                      # larger values take the checked path


def mac_from_topic(topic: str, pattern: str = "+/SENSOR") -> str | None:
    """The MAC in ``topic`` for a pattern with one ``+`` level (default ``+/SENSOR``), else None."""
    t_parts, p_parts = topic.split("/"), pattern.split("/")
    if len(t_parts) != len(p_parts):
        return None
    mac = None
    for t, p in zip(t_parts, p_parts):
        if p == "+":
            mac = t
        elif p != t:
            return None
    return mac or None


def _number(obj: dict, key: str, unit: str, required: bool) -> float | None:
    v = obj.get(key)
    # fast path for the usual value (type(), not isinstance(): a bool is not a number here)
    if type(v) is float and 0.0 <= v <= _MAX:
        return v
    if type(v) is int and 0 <= v <= _MAX:
        return float(v)
    if key not in obj or obj[key] is None:
        if required:
            raise MessageError("missing_field", f"{key}: missing (cumulative {unit})")
        return None
    v = obj[key]
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        kind = "a string" if isinstance(v, str) else type(v).__name__
        raise MessageError("wrong_type", f"{key}: must be a JSON number of {unit}, got {kind} {v!r:.40}")
    try:
        v = float(v)
    except OverflowError:
        raise MessageError("not_finite", f"{key}: {str(v)[:20]}... is too large") from None
    if not math.isfinite(v):
        raise MessageError("not_finite", f"{key}: must be finite, got {v}")
    if v < 0:
        raise MessageError("negative", f"{key}: cannot be negative, got {v}")
    return v


def parse_sensor_payload(meter_id: str, payload: bytes, received_at: datetime,
                         clock: "UptimeClock | None" = None) -> Reading:
    """A Reading from one message, or MessageError saying exactly what is wrong. With ``clock``,
    the message is timed from the device uptime ``ts`` (see UptimeClock)."""
    if len(payload) > MAX_PAYLOAD_BYTES:
        raise MessageError("too_large", f"payload of {len(payload)} bytes exceeds {MAX_PAYLOAD_BYTES}")
    try:
        text = payload.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise MessageError("not_utf8", f"payload is not UTF-8 (byte {exc.start})") from None
    try:
        obj = _DECODER.decode(text)
    except MessageError:
        raise
    except (ValueError, RecursionError) as exc:       # JSONDecodeError, or an integer too long
        where = f" at character {exc.pos}" if isinstance(exc, json.JSONDecodeError) else ""
        raise MessageError("not_json", f"payload is not JSON{where}: {text[:60]!r}") from None
    if not isinstance(obj, dict):
        raise MessageError("not_object", f"payload must be a JSON object, got {type(obj).__name__}")
    ei = _number(obj, "Ei", "kWh", required=False)
    eo = _number(obj, "Eo", "kWh", required=False)
    if ei is None and eo is None:
        raise MessageError("missing_field", "Ei and Eo: both missing (cumulative kWh)")
    pi = _number(obj, "Pi", "kW", required=False)
    po = _number(obj, "Po", "kW", required=False)
    when = clock.time_of(meter_id, obj.get("ts"), received_at, (ei, eo)) if clock is not None else received_at
    return Reading(meter_id, when, ei, eo, pi, po)


def sensor_payload(ei: float, eo: float, pi: float, po: float, smid: str, uptime_s: int) -> bytes:
    """A message in exactly the section 8.3 format (used by the simulator)."""
    amps = round(max(pi, po) * 1000 / (3 * 230), 3)     # per phase at 230 V, balanced
    return json.dumps({"SMid": smid, "Pi": round(pi, 3), "Po": round(po, 3), "I1": amps,
                       "I2": amps, "I3": amps, "Ei": round(ei, 3), "Eo": round(eo, 3), "Q5": 0.0, "Q6": 0.0,
                       "Q7": 0.0, "Q8": 0.0, "ts": int(uptime_s)}, separators=(",", ":")).encode()


class UptimeClock:
    """Reading times from the meter's own clock: the payload's ``ts`` (the device's uptime in
    seconds) gives every message its spacing, whenever it arrives.

    Per meter the clock keeps the device's boot time ``B`` (UTC seconds): a message with uptime
    ``ts`` was sent at ``B + ts``. The first message anchors ``B = received - ts``. Afterwards:

    * a message can only arrive after it was sent, so one that arrives *earlier* than ``B + ts``
      says the boot time is earlier (the anchor was itself delayed): ``B`` moves down to it, so ``B``
      is the boot time of the least delayed message (reading times a few milliseconds early at
      most, spacing exact to the millisecond once that message has been seen);
    * one that arrives more than ``DRIFT_S`` later than ``B + ts`` is either a backlog (messages the
      broker held while the app or the broker was down: they arrive in a burst, far faster than
      their uptimes advance; timed by ``B``) or a device clock that drifted (messages paced live, as
      their uptimes advance: re-anchored at the receive time). The pace is judged between two
      messages this process received: the first after a restart (boot times from ``restore``)
      may head a backlog that merely arrives one send interval after the last message before;
    * ``ts`` going down is an old message delivered again when it lies within the uptimes seen since
      the device last started (timed by ``B`` as when it first came), else a device restart:
      re-anchored at the receive time;
    * a message's time is never later than its receive time, and two messages of one meter never
      share a time (``ts`` has whole seconds, a meter may send several a second): the second
      gets the first one's time plus a millisecond. A copy of a message (same ``ts``, same
      counters: the broker delivering it again) gets the time the message got the first time.

    A missing or invalid ``ts`` times the message by its arrival. Boot times are saved (``snapshot``)
    and loaded, so a backlog after the app's own restart is timed by the meter too.
    """

    DRIFT_S = 30.0                 # later than B + ts by more than this, while paced live: re-anchor
    JITTER_S = 1.0                 # delivery jitter tolerated when telling live pace from a backlog
    TICK_S = 0.001
    MEMO = 64                      # per meter: messages whose time is not boot + ts, for their copies

    def __init__(self):
        # meter -> [boot epoch s, last uptime s, last receive epoch s, last reading epoch s,
        #           first uptime seen since the device started]
        self._state: dict[str, list[float]] = {}
        self._lock = threading.Lock()      # time_of runs in the network thread, snapshot in another
        self._last: dict[str, tuple] = {}          # meter -> (ts, key, time) of its last message
        self._memo: dict[str, dict] = {}           # meter -> {(ts, key): time} of bumped messages
        # meters whose last receive time comes from a snapshot (the app ran before): the gap to
        # their first message now says nothing about the pace they are sent at
        self._restored: set[str] = set()

    def time_of(self, meter_id: str, uptime_s, received: datetime, key=None) -> datetime:
        """The reading time of a message with uptime ``uptime_s`` received at ``received``; ``key``
        (the message's counters) tells a copy of a message from a new one sent in the same second."""
        est = self._time_of(meter_id, uptime_s, received, key)
        return received if est is None else datetime.fromtimestamp(est, tz=received.tzinfo)

    def _time_of(self, meter_id: str, uptime_s, received: datetime, key) -> float | None:
        r = received.timestamp()
        if isinstance(uptime_s, bool) or not isinstance(uptime_s, (int, float)) or not math.isfinite(uptime_s) \
                or not 0 <= uptime_s < 1e11:
            return None
        ts = float(uptime_s)
        with self._lock:
            st = self._state.get(meter_id)
            if st is None:
                self._state[meter_id] = [r - ts, ts, r, r, ts]
                self._last[meter_id] = (ts, key, r)
                return r
            last = self._last.get(meter_id)
            if last is not None and last[0] == ts and last[1] == key:
                return last[2]                                           # a copy of the last message
            memo = self._memo.get(meter_id)
            if memo and (ts, key) in memo:
                return memo[(ts, key)]
            boot, last_ts, last_r, last_est, first_ts = st
            if ts < last_ts:
                if ts >= first_ts:                                       # an old copy
                    return min(boot + ts, r)
                st[:] = [r - ts, ts, r, r, ts]                           # the device restarted
                self._last[meter_id] = (ts, key, r)
                return r
            candidate = r - ts
            if candidate < boot:
                boot = candidate             # it arrived sooner than any before: the earliest boot time fits
            elif candidate > boot + self.DRIFT_S and meter_id not in self._restored:
                gap_sent, gap_received = ts - last_ts, r - last_r
                if abs(gap_received - gap_sent) <= max(self.JITTER_S, 0.25 * gap_sent):
                    boot = candidate                                     # paced live: the clock drifted
            self._restored.discard(meter_id)
            if ts == last_ts:                                            # the same second as the last one
                est = last_est + self.TICK_S
            else:
                est = max(min(boot + ts, r), last_est + self.TICK_S)
            st[:] = [boot, ts, r, est, first_ts]
            self._last[meter_id] = (ts, key, est)
            if est != min(boot + ts, r):                                 # its copies cannot recompute it
                memo = self._memo.setdefault(meter_id, {})
                memo[(ts, key)] = est
                if len(memo) > self.MEMO:
                    del memo[next(iter(memo))]
            return est

    def snapshot(self) -> dict[str, list[float]]:
        with self._lock:
            return {k: list(v) for k, v in self._state.items()}

    def restore(self, data: dict) -> None:
        """Load a ``snapshot``; the older format ``[uptime, epoch]`` (an anchor pair) is taken as the
        boot time ``epoch - uptime``. Entries of another shape are ignored (that meter's next
        message anchors it again)."""
        with self._lock:
            for k, v in (data or {}).items():
                if not isinstance(v, list) or not all(isinstance(x, (int, float)) and not isinstance(x, bool)
                                                      and math.isfinite(x) for x in v):
                    continue
                if len(v) == 5:
                    self._state[str(k)] = [float(x) for x in v]
                elif len(v) == 2:
                    u, t = float(v[0]), float(v[1])
                    self._state[str(k)] = [t - u, u, t, t, u]
                else:
                    continue
                # the first message after the restart may be the head of a backlog that happens to
                # arrive one send interval after the last one before it: not a sign of live pace
                self._restored.add(str(k))


class SensorIntake:
    """The one path from a section 8.3 message to the pipeline, for MQTT and the in-process
    simulator alike: parse, time (UptimeClock), then submit, or count the rejection."""

    def __init__(self, pipeline, anchors_path=None):
        self.pipeline = pipeline
        self.clock = UptimeClock()
        self.anchors_path = anchors_path
        if anchors_path is not None:
            try:
                self.clock.restore(json.loads(open(anchors_path, encoding="utf-8").read()))
            except FileNotFoundError:
                pass
            except (OSError, ValueError):
                pass          # a damaged anchor file only costs the timing of a backlog

    def message(self, mac: str, payload: bytes, received: datetime, source: str) -> None:
        """Hand a message over; it is parsed in the pipeline's worker, so the source's thread
        (paho's network loop) only queues it and goes back to acknowledging the broker."""
        self.pipeline.submit_parse(lambda: parse_sensor_payload(mac, payload, received, self.clock),
                                   mac, received, source)

    def save(self) -> None:
        if self.anchors_path is not None:
            tmp = f"{self.anchors_path}.tmp"
            with open(tmp, "w", encoding="utf-8") as fh:
                json.dump(self.clock.snapshot(), fh)
            os.replace(tmp, self.anchors_path)
