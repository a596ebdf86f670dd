"""The time-series store interface.

Two kinds of data live here:

* raw readings, as received: ``meter_id``, ``ts`` (UTC), cumulative ``import_kwh`` /
  ``export_kwh`` counters (either may be missing) and optional ``power_in_kw`` / ``power_out_kw``;
* derived intervals, one row per house and interval start (UTC): ``delta_ei_kwh``,
  ``delta_eo_kwh`` and ``flags`` (see ``billing.intervals``), plus quarantined readings with reasons.

Timestamps cross this interface as pandas ``datetime64[us, UTC]`` columns. Aggregates are time
bucketed so that a server store (InfluxDB: ``GROUP BY time(...)``) can answer them natively.
"""
from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

READING_COLUMNS = ["meter_id", "ts", "import_kwh", "export_kwh", "power_in_kw", "power_out_kw"]
INTERVAL_COLUMNS = ["house_id", "start", "delta_ei_kwh", "delta_eo_kwh", "flags"]
QUARANTINE_COLUMNS = ["meter_id", "ts", "import_kwh", "export_kwh", "reason"]


class StoreUnavailable(Exception):
    """The store cannot answer now (its server is down); writes are kept (spooled) meanwhile."""


@dataclass
class WriteResult:
    """What a write of readings did: ``inserted`` new rows, ``duplicates`` identical to stored
    ones (ignored), and ``conflicts``: rows whose timestamp is stored with other values (rejected)."""

    inserted: int = 0
    duplicates: int = 0
    conflicts: pd.DataFrame = field(default_factory=lambda: pd.DataFrame(columns=READING_COLUMNS))


def split_batch(df: pd.DataFrame) -> tuple[pd.DataFrame, int, pd.DataFrame]:
    """(rows to store, identical duplicates within the batch, rows that clash with an earlier row of
    the batch: same meter and time, other values). The first of each is kept."""
    dups = df.duplicated(keep="first")
    df = df[~dups]
    clash = df.duplicated(subset=["meter_id", "ts"], keep="first")
    return df[~clash], int(dups.sum()), df[clash]


def empty_readings() -> pd.DataFrame:
    df = pd.DataFrame({c: pd.Series(dtype="float64") for c in READING_COLUMNS})
    df["meter_id"] = df["meter_id"].astype(object)
    df["ts"] = pd.Series(dtype="datetime64[us, UTC]")
    return df


class TimeSeriesStore(ABC):
    """Raw readings and derived intervals. Implementations must be safe to call from several threads."""

    # -- raw readings -------------------------------------------------------------------------
    @abstractmethod
    def write_readings(self, readings: pd.DataFrame) -> WriteResult:
        """Store readings (READING_COLUMNS); a reading identical to a stored one is a no-op."""

    @abstractmethod
    def read_readings(self, meter_id: str | None = None, start: pd.Timestamp | None = None,
                      end: pd.Timestamp | None = None) -> pd.DataFrame:
        """Readings with start <= ts < end, ordered by meter and time."""

    @abstractmethod
    def reading_window(self, meter_id: str, start: pd.Timestamp, end: pd.Timestamp,
                       context: int = 3) -> pd.DataFrame:
        """A meter's readings in [start, end] plus up to ``context`` readings before and after."""

    def reading_windows(self, spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]],
                        context: int = 3, look_after: bool = True) -> dict[str, pd.DataFrame]:
        """``reading_window`` for many meters at once (implementations may batch it);
        ``look_after=False``: nothing follows the spans, no context after them is needed."""
        return {m: self.reading_window(m, lo, hi, context) for m, (lo, hi) in spans.items()}

    def neighbour_times(self, spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]], look_after: bool = True
                        ) -> dict[str, tuple[pd.Timestamp | None, pd.Timestamp | None]]:
        """Per meter: the second reading before its span (the first if there is one only: new
        readings can change how the one just before them is judged, and so the intervals on its
        other side) and the earliest reading after the span; None where there is none.
        ``look_after=False`` when the span's readings are known to be the newest (live ingest)."""
        out = {}
        for m, (lo, hi) in spans.items():
            w = self.reading_window(m, lo, hi, context=2)
            before, after = w["ts"][w["ts"] < lo], w["ts"][w["ts"] > hi]
            out[m] = (before.iloc[0] if len(before) else None,
                      after.iloc[0] if len(after) and look_after else None)
        return out

    def last_readings(self, meter_ids: list[str]) -> pd.DataFrame:
        """Each meter's latest reading (READING_COLUMNS), for the meters that have one."""
        far = pd.Timestamp("2200-01-01", tz="UTC")
        frames = [self.reading_window(m, far, far, context=1).tail(1) for m in meter_ids]
        frames = [f for f in frames if len(f)]
        return pd.concat(frames, ignore_index=True) if frames else empty_readings()

    def reported_counters(self, meter_ids: list[str]) -> dict[str, tuple[bool, bool]]:
        """Per meter: whether it has ever reported (import_kwh, export_kwh)."""
        out = {}
        for m in meter_ids:
            r = self.read_readings(m)
            out[m] = (bool(r["import_kwh"].notna().any()), bool(r["export_kwh"].notna().any()))
        return out

    @abstractmethod
    def meter_ids(self) -> list[str]:
        """Every meter that has readings."""

    # -- derived intervals ------------------------------------------------------------------
    @abstractmethod
    def replace_intervals(self, house_id: str, start: pd.Timestamp, end: pd.Timestamp,
                          intervals: pd.DataFrame) -> None:
        """Replace a house's intervals with start <= interval start < end by ``intervals``."""

    def replace_intervals_many(self, spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]],
                               intervals: pd.DataFrame) -> None:
        """``replace_intervals`` for many houses at once (implementations may batch it)."""
        for house_id, (lo, hi) in spans.items():
            self.replace_intervals(house_id, lo, hi, intervals[intervals["house_id"] == house_id])

    @abstractmethod
    def read_intervals(self, start: pd.Timestamp, end: pd.Timestamp,
                       house_ids: list[str] | None = None) -> pd.DataFrame:
        """INTERVAL_COLUMNS for start <= interval start < end, ordered by start and house."""

    def missing_intervals(self, start: pd.Timestamp, end: pd.Timestamp,
                          spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]], interval_s: int) -> pd.DataFrame:
        """(house_id, start) of the interval starts in each house's [from, to) span that have no
        stored interval, ordered by house and start. This default reads the houses' intervals;
        a store should answer it with an anti-join."""
        present = self.read_intervals(start, end, list(spans))
        got = {k: pd.DatetimeIndex(v) for k, v in present.groupby("house_id")["start"]} if len(present) else {}
        frames = []
        for hid, (a, b) in spans.items():
            expected = pd.date_range(a, b, freq=f"{interval_s}s", inclusive="left")
            gaps = expected.difference(got.get(hid, pd.DatetimeIndex([], tz="UTC")))
            frames.append(pd.DataFrame({"house_id": hid, "start": gaps}))
        return pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=["house_id", "start"])

    @abstractmethod
    def community_totals(self, start: pd.Timestamp, end: pd.Timestamp,
                         house_ids: list[str]) -> pd.DataFrame:
        """Per interval start: ``total_consumption_kwh`` (I), ``total_production_kwh`` (E) and
        ``houses`` (how many of ``house_ids`` have the interval)."""

    def community_buckets(self, start: pd.Timestamp, end: pd.Timestamp, bucket_s: int,
                          house_ids: list[str]) -> pd.DataFrame:
        """Dashboard aggregate: per bucket of ``bucket_s`` seconds (UTC-aligned) the summed
        ``total_consumption_kwh`` and ``total_production_kwh`` of ``house_ids``."""
        iv = self.read_intervals(start, end, house_ids)
        iv["start"] = iv["start"].dt.floor(f"{bucket_s}s")
        g = iv.groupby("start")
        return pd.DataFrame({"total_consumption_kwh": g["delta_ei_kwh"].sum(),
                             "total_production_kwh": g["delta_eo_kwh"].sum()}).reset_index()

    @abstractmethod
    def house_sums(self, start: pd.Timestamp, end: pd.Timestamp, house_ids: list[str],
                   prices: pd.DataFrame) -> pd.DataFrame:
        """Per house: ``delta_ei_kwh``, ``delta_eo_kwh``, ``value_consumption_ct`` (sum of
        delta_ei x p_con), ``value_pv_delivery_ct`` (sum of delta_eo x p_pv), ``intervals`` and
        ``flags`` (bitwise or). ``prices`` has columns start, p_con, p_pv."""

    def house_sums_at(self, start: pd.Timestamp, end: pd.Timestamp, house_ids: list[str],
                      price_sets: list[pd.DataFrame]) -> list[pd.DataFrame]:
        """``house_sums`` of the same intervals at each of several prices (a store that reads the
        intervals out reads them once)."""
        return [self.house_sums(start, end, house_ids, prices) for prices in price_sets]

    # -- quarantine --------------------------------------------------------------------------
    @abstractmethod
    def replace_quarantine(self, meter_id: str, start: pd.Timestamp, end: pd.Timestamp,
                           rows: pd.DataFrame) -> None:
        """Replace a meter's quarantined readings with start <= ts <= end by ``rows``."""

    def replace_quarantine_many(self, spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]],
                                rows: pd.DataFrame) -> None:
        for meter_id, (lo, hi) in spans.items():
            self.replace_quarantine(meter_id, lo, hi, rows[rows["meter_id"] == meter_id])

    @abstractmethod
    def read_quarantine(self, meter_id: str | None = None) -> pd.DataFrame:
        """QUARANTINE_COLUMNS."""

    def snapshot_to(self, folder: Path) -> None:
        """Write a consistent copy of what this store keeps in the data folder into ``folder``.
        A store whose data lives on a server (which has its own backup) writes nothing here."""

    def close(self) -> None:  # pragma: no cover - trivial default
        pass
