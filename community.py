"""The community service: one object that wires configuration, ledger, time-series store, the
intervals engine, pricing and settlement. The command line (and later the web app and the ingest
threads) talk to this, never to the stores directly."""
from __future__ import annotations

import logging
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone

import numpy as np
import pandas as pd

from billing.intervals import boundaries, ceil_boundary, floor_boundary, meter_intervals
from billing.settlement import (Settlement, SettlementError, compute_settlement, parse_period,
                                price_frame)
from config import Config
from storage.duckdb_store import DuckDBStore
from storage.ledger import House, Ledger, Meter
from storage.timeseries import TimeSeriesStore, WriteResult

log = logging.getLogger(__name__)


@dataclass
class ImportSummary:
    rows: int = 0
    inserted: int = 0
    duplicates: int = 0
    errors: list[str] = field(default_factory=list)
    quarantined: list[str] = field(default_factory=list)

    @property
    def rejected(self) -> int:
        return len(self.errors)


class Community:
    def __init__(self, cfg: Config, ledger: Ledger, store: TimeSeriesStore, clock=None):
        self.cfg = cfg
        self.ledger = ledger
        self.store = store
        self.tz = cfg.tz
        self.interval_s = cfg.pricing.interval_minutes * 60
        self.clock = clock or (lambda: datetime.now(timezone.utc))
        self._compute_lock = threading.Lock()

    @classmethod
    def open(cls, cfg: Config, clock=None) -> "Community":
        data_dir = cfg.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(data_dir / "ledger.sqlite")
        ledger.sync_from_config(cfg)
        store = DuckDBStore(data_dir / "timeseries.duckdb")
        return cls(cfg, ledger, store, clock)

    def close(self) -> None:
        self.store.close()
        self.ledger.close()

    # -- registry ------------------------------------------------------------------------------
    def houses(self) -> list[House]:
        return self.ledger.houses()

    def meters(self) -> list[Meter]:
        return self.ledger.meters()

    def meters_of(self, house_id: str) -> list[Meter]:
        return [m for m in self.meters() if m.house_id == house_id]

    # -- readings and intervals ---------------------------------------------------------------
    def last_reading(self, meter_id: str):
        """The meter's latest stored reading (an ingest.readings.Reading), or None."""
        from ingest.readings import Reading
        far = pd.Timestamp("2200-01-01", tz="UTC")
        df = self.store.reading_window(meter_id, far, far, context=1)
        if df.empty:
            return None
        row = df.iloc[-1]
        val = lambda x: None if pd.isna(x) else float(x)
        return Reading(meter_id, row["ts"].to_pydatetime(), val(row["import_kwh"]), val(row["export_kwh"]),
                       val(row["power_in_kw"]), val(row["power_out_kw"]))

    def store_readings(self, readings: pd.DataFrame) -> WriteResult:
        """Store readings and recompute the intervals they touch (incremental)."""
        result = self.store.write_readings(readings)
        if result.inserted:
            spans = readings.groupby("meter_id")["ts"].agg(["min", "max"])
            for meter_id, span in spans.iterrows():
                self.update_intervals(meter_id, span["min"], span["max"])
        return result

    def update_intervals(self, meter_id: str, t_min: pd.Timestamp, t_max: pd.Timestamp) -> None:
        """Recompute the intervals that readings of ``meter_id`` in [t_min, t_max] can change:
        from the boundary before the preceding reading to the boundary after the following one."""
        meter = next((m for m in self.meters() if m.meter_id == meter_id), None)
        if meter is None:
            return
        ctx = self.store.reading_window(meter_id, t_min, t_max, context=1)
        r0 = floor_boundary(ctx["ts"].iloc[0], self.interval_s)
        r1 = ceil_boundary(ctx["ts"].iloc[-1], self.interval_s)
        self.recompute_house(meter.house_id, r0, r1)

    def recompute_house(self, house_id: str, r0: pd.Timestamp, r1: pd.Timestamp) -> None:
        if r1 <= r0:
            return
        bounds = boundaries(r0, r1, self.interval_s)
        with self._compute_lock:
            total_ei = np.zeros(len(bounds) - 1)
            total_eo = np.zeros(len(bounds) - 1)
            flags = np.zeros(len(bounds) - 1, dtype=np.uint8)
            valid = np.ones(len(bounds) - 1, dtype=bool)
            for m in self.meters_of(house_id):
                rd = self.store.reading_window(m.meter_id, r0, r1, context=3)
                res = meter_intervals(m.meter_id, rd, bounds, m.max_power_kw)
                valid &= res.valid
                total_ei += np.nan_to_num(res.delta_ei_kwh)
                total_eo += np.nan_to_num(res.delta_eo_kwh)
                flags |= res.flags
                q = res.quarantine
                if len(q):
                    log.warning("meter %s: %d reading(s) quarantined, first: %s at %s", m.meter_id,
                                len(q), q["reason"].iloc[0], q["ts"].iloc[0])
                self.store.replace_quarantine(m.meter_id, r0, r1, q)
            starts = pd.to_datetime(bounds[:-1][valid], unit="s", utc=True).astype("datetime64[us, UTC]")
            df = pd.DataFrame({"house_id": house_id, "start": starts, "delta_ei_kwh": total_ei[valid],
                               "delta_eo_kwh": total_eo[valid], "flags": flags[valid]})
            self.store.replace_intervals(house_id, r0, r1, df)

    def recompute_all(self) -> None:
        """Recompute every house's intervals from all stored readings."""
        for house in self.houses():
            spans = []
            for m in self.meters_of(house.house_id):
                rd = self.store.read_readings(m.meter_id)
                if len(rd):
                    spans.append((rd["ts"].iloc[0], rd["ts"].iloc[-1]))
            if spans:
                r0 = floor_boundary(min(s for s, _ in spans), self.interval_s)
                r1 = ceil_boundary(max(e for _, e in spans), self.interval_s)
                self.recompute_house(house.house_id, r0, r1)

    # -- tariffs -------------------------------------------------------------------------------
    def add_tariff(self, tariff, created_by: str) -> None:
        """Add a tariff version. It may not take effect inside or before a closed period: issued
        invoices would no longer match the tariffs on record."""
        closed_until = self.ledger.closed_until()
        if closed_until and tariff.effective_from < closed_until:
            raise SettlementError(
                f"effective_from {tariff.effective_from.astimezone(self.tz):%Y-%m-%d %H:%M} lies in a "
                f"closed period; choose {closed_until.astimezone(self.tz):%Y-%m-%d %H:%M} or later")
        self.ledger.add_tariff(tariff, created_by)

    # -- pricing and settlement ---------------------------------------------------------------
    def community_intervals(self, start: pd.Timestamp, end: pd.Timestamp) -> pd.DataFrame:
        """Per interval: the section 9.3 community fields with the prices applied."""
        ids = [h.house_id for h in self.houses()]
        return price_frame(self.store.community_totals(start, end, ids), self.ledger.tariff_versions())

    def settle(self, period_id: str, close: bool = False, allow_incomplete: bool = False,
               closed_by: str = "cli") -> Settlement:
        """Draft invoices of an open period, or the issued ones of a closed period (unchanged);
        with ``close``, issue them and close the period."""
        period = parse_period(period_id, self.tz)
        stored = self.ledger.period(period_id)
        if stored and stored["status"] == "closed":
            return Settlement(period, "closed", self.ledger.issued_invoices(period_id))
        now = pd.Timestamp(self.clock())
        if close and period.end > now:
            raise SettlementError(f"period {period_id} is not over yet (it ends "
                                  f"{period.end.tz_convert(self.tz):%Y-%m-%d %H:%M %Z}); it can be "
                                  f"closed after its last interval")
        s = compute_settlement(self.store, self.houses(), self.ledger.tariff_versions(), period,
                               self.interval_s, allow_incomplete, now)
        if close:
            drafts = sorted(s.invoices, key=lambda inv: _house_order(inv["house_id"]))
            issue_year = now.tz_convert(self.tz).year
            issued = self.ledger.close_period(period_id, period.start.isoformat(), period.end.isoformat(),
                                              drafts, issue_year, closed_by)
            log.info("period %s closed: %d invoices issued", period_id, len(issued))
            return Settlement(period, "closed", issued, s.summary, s.missing)
        return s


def _house_order(house_id: str):
    return (0, int(house_id), "") if house_id.isdigit() else (1, 0, house_id)
