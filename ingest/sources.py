"""What every meter connection beyond MQTT shares: one read gives a ``Sample`` or raises a
``SourceError`` that says exactly what happened; polling sources run ``read_once`` on an interval
in their own thread with back-off after failures; every sample goes to the one ingest pipeline.

A connection that delivers a single number (Loxone HTTP, UDP, HTTP push) delivers the counter the
meter's type names: an apartment meter's consumption (import), a solar meter's production (export),
a total meter's grid draw (import). Modbus meters name their import and export registers.
"""
from __future__ import annotations

import logging
import math
import threading
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Callable

log = logging.getLogger(__name__)

FIELDS = ("power_kwh", "power", "value", "kwh", "energy")   # searched in this order when none is named


class SourceError(Exception):
    """A read that failed; the message is what the manager sees ("HTTP 401 from 192.168.1.100",
    "timed out after 10 s", "ILLEGAL DATA ADDRESS at holding register 0")."""

    def __init__(self, message: str, code: str = "source_error"):
        super().__init__(message)
        self.code = code


@dataclass(frozen=True)
class Sample:
    """One read: cumulative counters in kWh (either may be None) at a UTC time."""
    import_kwh: float | None
    export_kwh: float | None
    ts_utc: datetime

    @classmethod
    def single(cls, value_kwh: float, meter_type: str, ts_utc: datetime | None = None) -> "Sample":
        """A single number, as the meter's type defines it."""
        ts = ts_utc or datetime.now(timezone.utc)
        return cls(None, value_kwh, ts) if meter_type == "solar" else cls(value_kwh, None, ts)


def number(value, what: str) -> float:
    """A finite number ≥ 0 from a JSON value or text ("1234.56", "1234.56 kWh", "1'234.5")."""
    if isinstance(value, bool) or value is None:
        raise SourceError(f"{what}: {value!r} is not a number", "not_a_number")
    if isinstance(value, (int, float)):
        x = float(value)
    else:
        text = str(value).strip().replace("'", "").replace("’", "")
        for unit in ("kWh", "kwh", "KWH", "Wh"):
            if text.endswith(unit):
                text = text[: -len(unit)].strip()
                break
        try:
            x = float(text)
        except ValueError:
            raise SourceError(f"{what}: {value!r} is not a number", "not_a_number") from None
    if not math.isfinite(x) or x < 0:
        raise SourceError(f"{what}: {x} is not a counter value (finite, 0 or more)", "bad_value")
    return x


class PollingSource:
    """Calls ``read()`` every ``interval_s`` in a thread of its own and hands each sample to
    ``emit``; a failure is reported to ``failed`` and retried after a back-off (2 s doubling up to
    the interval), never ending the thread."""

    def __init__(self, name: str, interval_s: float, read: Callable[[], Sample],
                 emit: Callable[[Sample], None], failed: Callable[[SourceError], None]):
        self.name, self.interval_s = name, interval_s
        self._read, self._emit, self._failed = read, emit, failed
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def start(self) -> "PollingSource":
        if self._thread is not None:
            raise RuntimeError(f"{self.name} already started")
        self._thread = threading.Thread(target=self._run, name=f"poll-{self.name}", daemon=True)
        self._thread.start()
        return self

    def stop(self, timeout: float = 10.0) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        backoff = 2.0
        while not self._stop.is_set():
            try:
                sample = self._read()
            except SourceError as exc:
                self._failed(exc)
                wait = min(backoff, self.interval_s)
                backoff = min(backoff * 2, self.interval_s)
            except Exception as exc:          # a bug in a reader must not end polling
                log.exception("%s: unexpected error", self.name)
                self._failed(SourceError(f"internal error: {type(exc).__name__}: {exc}", "internal"))
                wait = self.interval_s
            else:
                try:
                    self._emit(sample)
                except Exception:             # nor may the receiving side
                    log.exception("%s: handing over a sample failed", self.name)
                backoff, wait = 2.0, self.interval_s
            self._stop.wait(wait)
