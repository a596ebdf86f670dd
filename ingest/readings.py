"""The Reading and the checks every source applies to a single value (one place for the rule)."""
from __future__ import annotations

import math
from datetime import datetime
from typing import NamedTuple


class Reading(NamedTuple):
    """One meter sample: cumulative counters in kWh (either may be None), power in kW, UTC time.
    (A NamedTuple: immutable and cheap to make, thousands arrive per second.)"""

    meter_id: str
    ts_utc: datetime
    import_kwh: float | None
    export_kwh: float | None
    power_in_kw: float | None = None
    power_out_kw: float | None = None


MAX_METER_ID_CHARS = 64     # a meter id from outside (an MQTT topic level) longer than this is refused


class ReadingError(ValueError):
    """A value that cannot be a reading; the message says which field and why."""


def check_counter(name: str, value) -> float | None:
    """A cumulative counter (kWh): a finite number >= 0, or None when not reported."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise ReadingError(f"{name}: must be a number of kWh, got {value!r}")
    if isinstance(value, str):
        text = value.strip()
        if text == "":
            return None
        try:
            value = float(text)
        except ValueError:
            raise ReadingError(f"{name}: must be a number of kWh, got {value!r}") from None
    if not isinstance(value, (int, float)):
        raise ReadingError(f"{name}: must be a number of kWh, got {value!r}")
    value = float(value)
    if not math.isfinite(value):
        raise ReadingError(f"{name}: must be a finite number, got {value!r}")
    if value < 0:
        raise ReadingError(f"{name}: a counter cannot be negative, got {value}")
    return value


check_power = check_counter  # instantaneous power (kW): the same rule, finite and >= 0
