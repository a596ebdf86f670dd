"""Parsing of smart-meter messages: topic ``{MAC}/SENSOR``, JSON payload of the LEG
specification's section 8.3::

    {"SMid": "60222760", "Pi": 1.047, "Po": 0.0, "Ei": 4619.712, "Eo": 14089.216, "ts": 12589, ...}

``Ei`` / ``Eo`` are cumulative kWh, ``Pi`` / ``Po`` instantaneous kW. ``ts`` is the device's
uptime in seconds, not a time of day: the receive time is the reading's time. Other keys
(currents, reactive energies) are ignored.
"""
from __future__ import annotations

import json
import math
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
    a late message is timed from the device uptime ``ts`` (see UptimeClock)."""
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
    when = clock.time_of(meter_id, obj.get("ts"), received_at) if clock is not None else received_at
    return Reading(meter_id, when, ei, eo, pi, po)


def sensor_payload(ei: float, eo: float, pi: float, po: float, smid: str, uptime_s: int) -> bytes:
    """A message in exactly the section 8.3 format (used by the simulator)."""
    amps = round(max(pi, po) * 1000 / (3 * 230), 3)     # per phase at 230 V, balanced
    return json.dumps({"SMid": smid, "Pi": round(pi, 3), "Po": round(po, 3), "I1": amps,
                       "I2": amps, "I3": amps, "Ei": round(ei, 3), "Eo": round(eo, 3), "Q5": 0.0, "Q6": 0.0,
                       "Q7": 0.0, "Q8": 0.0, "ts": int(uptime_s)}, separators=(",", ":")).encode()


class UptimeClock:
    """Reading times for messages that arrive late (the broker's backlog after a restart of the
    app, or a burst after a network outage).

    The payload's ``ts`` is the device's uptime in seconds. A message arriving live is timed by its
    receive time, and that pairs (uptime, receive time) as the meter's anchor. A message arriving
    later than its uptime says (more than ``LATE_S`` behind the anchor's clock) is timed by the
    anchor: ``anchor_time + (uptime - anchor_uptime)``, so a backlog keeps its real 10-second
    spacing instead of piling into the second it was delivered. A device restart (uptime going
    down) or an estimate in the future re-anchors at the receive time. Anchors can be saved and
    loaded so that a backlog after the app's own restart is timed too.
    """

    LATE_S = 30.0

    def __init__(self):
        self._anchors: dict[str, tuple[float, float]] = {}   # meter -> (uptime_s, epoch_s)

    def time_of(self, meter_id: str, uptime_s, received: datetime) -> datetime:
        r = received.timestamp()
        if isinstance(uptime_s, bool) or not isinstance(uptime_s, (int, float)) or not math.isfinite(uptime_s):
            return received
        anchor = self._anchors.get(meter_id)
        if anchor is not None and uptime_s > anchor[0]:
            est = anchor[1] + (uptime_s - anchor[0])
            if r - est >= self.LATE_S and est <= r:
                return datetime.fromtimestamp(est, tz=received.tzinfo)
        self._anchors[meter_id] = (float(uptime_s), r)
        return received

    def snapshot(self) -> dict[str, list[float]]:
        return {k: [u, t] for k, (u, t) in self._anchors.items()}

    def restore(self, data: dict) -> None:
        for k, v in (data or {}).items():
            if isinstance(v, list) and len(v) == 2 and all(isinstance(x, (int, float)) for x in v):
                self._anchors[str(k)] = (float(v[0]), float(v[1]))


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
            import os
            os.replace(tmp, self.anchors_path)
