"""The community service: one object that wires configuration, ledger, time-series store, the
intervals engine, pricing and settlement. The command line (and later the web app and the ingest
threads) talk to this, never to the stores directly."""
from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass, field
import re
from datetime import date, datetime, timezone

import numpy as np
import pandas as pd

from billing.intervals import boundaries, ceil_boundary, floor_boundary, meter_intervals
from billing.settlement import (Settlement, SettlementError, compute_settlement, draft_candidates, parse_period,
                                price_frame, recent_periods)
from config import Config
from storage.duckdb_store import DuckDBStore
from storage.ledger import House, Ledger, LedgerError, Meter
from storage.timeseries import INTERVAL_COLUMNS, QUARANTINE_COLUMNS, TimeSeriesStore, WriteResult

log = logging.getLogger(__name__)
_METER_ID = re.compile(r"^[A-Za-z0-9_:.-]{1,64}$")
# Houses recomputed per store query: bounds the readings held in memory at once (a live update of
# 200 houses at the end of an interval, or a large import), each chunk stored before the next.
# Measured for 200 houses completing an interval (bench/history.py): 25 houses a chunk took 0.6 s
# and left the process 29 MiB larger; 10 take 0.76 s and leave it 9 MiB larger; 5 take 1.1 s.
RECOMPUTE_CHUNK = 10


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
        self._meters: dict[str, Meter] | None = None
        self._reports: dict[str, tuple[bool, bool]] = {}
        self._sdat = None
        self._sdat_lock = threading.Lock()
        self._billing_synced = False                # derive_pending_sdat has compared the metering points

    @classmethod
    def open(cls, cfg: Config, clock=None) -> "Community":
        data_dir = cfg.data_dir
        data_dir.mkdir(parents=True, exist_ok=True)
        ledger = Ledger(data_dir / "ledger.sqlite")
        ledger.sync_from_config(cfg)
        if cfg.storage.backend == "influxdb":
            from storage.influx_store import InfluxStore
            store = InfluxStore(cfg.influxdb, data_dir, community=cfg.slug)
            store.set_registry({m.meter_id: m.house_id for m in ledger.meters()})
        else:
            store = DuckDBStore(data_dir / "timeseries.duckdb", cfg.storage.memory_limit_mb,
                                cfg.storage.reopen_every_rows or None)
        if cfg.slug:
            from ingest.pipeline import JOURNAL_FILE, journal_backlog
            waiting = journal_backlog(data_dir.parent / JOURNAL_FILE, cfg.slug)
            if waiting:
                log.warning("community %s: %d readings acknowledged by the last run of all communities are still "
                            "in its ingest journal, not yet in its store: a run of all communities (python app.py "
                            "run) writes them when it starts", cfg.slug, waiting)
        community = cls(cfg, ledger, store, clock)
        from storage.backup import SDAT_FILE
        if cfg.pricing.mode == "leg" and (data_dir / SDAT_FILE).exists():
            community.derive_pending_sdat()
        return community

    def close(self) -> None:
        if self._sdat is not None:
            self._sdat.close()
        self.store.close()
        self.ledger.close()

    # -- the grid operator's data (SDAT-CH, pricing.mode leg) ----------------------------------
    @property
    def sdat(self):
        """The SDAT-CH values (storage/sdat_store.py), opened on first use."""
        with self._sdat_lock:
            if self._sdat is None:
                from storage.sdat_store import SdatStore
                from storage.backup import SDAT_FILE
                self._sdat = SdatStore(self.cfg.data_dir / SDAT_FILE)
            return self._sdat

    def point_houses(self) -> dict[str, str]:
        """Metering point ID -> house id (config.metering_points)."""
        from config import metering_points
        return metering_points(self.cfg)

    def sdat_billed(self) -> set[str]:
        """Houses billed from the grid operator's data (pricing.mode leg, with metering points)."""
        return set(self.point_houses().values()) if self.cfg.pricing.mode == "leg" else set()

    def import_sdat_file(self, name: str, raw: bytes):
        """Import one SDAT-CH file: an ImportSummary (``error`` set when the file as a whole was
        refused). In leg mode the intervals of the houses it concerns are derived again."""
        from ingest.sdat import ReadFile, SdatError, parse_sdat
        from storage.sdat_store import content_digest
        try:
            read = ReadFile(name, content_digest(raw), parse_sdat(raw, name))
        except SdatError as exc:
            read = ReadFile(name, "", error=str(exc).removeprefix(f"{name}: "))
        return self._import_sdat(read)

    def import_sdat_paths(self, paths, names=None):
        """Import files in their order, yielding ``(path, ImportSummary)`` as each is stored. With
        more than one file the next ones are read and parsed in two worker processes meanwhile
        (``ingest.sdat.read_sdat_file``), so that parsing and storing use every core of a small
        machine; a store error ends the import at that file (the files before it are stored)."""
        from ingest.sdat import read_sdat_file, start_worker
        paths = list(paths)
        names = list(names) if names is not None else [str(p) for p in paths]
        if len(paths) < 2:
            for path, name in zip(paths, names):
                yield path, self._import_sdat(read_sdat_file(str(path), name))
            return
        import multiprocessing
        from concurrent.futures import ProcessPoolExecutor
        workers = 2 if (os.cpu_count() or 1) > 1 else 1   # a file parses in about 1.4 x the time it takes to store
        with ProcessPoolExecutor(max_workers=workers, mp_context=multiprocessing.get_context("spawn"),
                                 initializer=start_worker) as pool:
            pending = []
            ahead = iter(zip(paths, names))
            for path, name in ahead:                    # a file ahead for each worker, and one waiting
                pending.append((path, pool.submit(read_sdat_file, str(path), name)))
                if len(pending) == workers + 1:
                    break
            try:
                while pending:
                    path, future = pending.pop(0)
                    read = future.result()
                    nxt = next(ahead, None)
                    if nxt is not None:
                        pending.append((nxt[0], pool.submit(read_sdat_file, str(nxt[0]), nxt[1])))
                    yield path, self._import_sdat(read)
            finally:
                for _, future in pending:
                    future.cancel()

    def _import_sdat(self, read):
        from storage.sdat_store import ImportSummary
        if read.document is None:
            return ImportSummary(read.name, error=read.error)
        doc = read.document
        self.derive_pending_sdat()                  # the houses' points recorded first, and what an earlier failure left
        summary = self.sdat.import_document(doc, read.digest, set(self.point_houses()),
                                            derive=self.cfg.pricing.mode == "leg")
        if summary.pending_id is not None:                             # only where values are new or revised
            self.apply_sdat(pd.Timestamp(summary.changed[0]), pd.Timestamp(summary.changed[1]))
            self.sdat.forget_pending(summary.pending_id)
        return summary

    def apply_sdat(self, start: pd.Timestamp, end: pd.Timestamp, houses=None) -> None:
        """Derive the intervals of SDAT-billed houses (of ``houses`` among them, if given) in
        [start, end) from the stored LEG shares."""
        from billing.leg import leg_intervals
        billed = self.sdat_billed()
        houses = billed if houses is None else billed & set(houses)
        if not houses:
            return
        point_house = {p: h for p, h in self.point_houses().items() if h in houses}
        values = self.sdat.values(start, end, list(point_house), product="leg")
        intervals = leg_intervals(values, point_house)
        with self._compute_lock:
            self.store.replace_intervals_many({h: (start, end) for h in houses}, intervals)

    def derive_pending_sdat(self) -> int:
        """In leg mode, when the community opens: the intervals an interrupted import did not
        derive, and those of houses whose metering points changed since the last derivation
        (a point added to config.yaml after its files were imported: its values were kept). The
        number of spans derived."""
        if self.cfg.pricing.mode != "leg":
            return 0
        moved = 0
        if not self._billing_synced:                # the configuration does not change while the community is open
            moved = self.sdat.sync_billing(self.point_houses())
            self._billing_synced = True
        spans = self.sdat.pending()
        for pending_id, start, end, houses in spans:
            self.apply_sdat(pd.Timestamp(start), pd.Timestamp(end), houses)
            self.sdat.forget_pending(pending_id)
        if spans:
            log.warning("community %s: derived the intervals of %d span(s) of SDAT values (%d metering point(s) "
                        "added, removed or moved since the last derivation; the rest left by an interrupted import)",
                        self.cfg.slug or self.cfg.community.name, len(spans), moved)
        return len(spans)

    def leg_details(self, period) -> dict[str, dict]:
        """Per SDAT-billed house for a period: grid shares and the grid-fee saving (see billing/leg.py)."""
        from billing.leg import leg_extras
        if not self.sdat_billed():
            return {}
        point_house = self.point_houses()
        values = self.sdat.values(period.start, period.end, list(point_house))
        return leg_extras(values, point_house, self.cfg.leg.grid_fee_reduction, self.cfg.leg.grid_fee_ct_per_kwh)

    def leg_reconciliation(self, period):
        """For a LEG billed from the grid operator's data: the period's LEG shares reconciled per
        quarter hour (billing/leg.py ``leg_balance``) up to now; None in the other modes."""
        from billing.leg import leg_balance
        if not self.sdat_billed():
            return None
        end = min(pd.Timestamp(period.end), pd.Timestamp(self.clock()).floor(f"{self.interval_s}s"))
        starts = pd.date_range(pd.Timestamp(period.start).tz_convert("UTC"), end.tz_convert("UTC"),
                               freq=f"{self.interval_s}s", inclusive="left")
        points = list(self.point_houses())
        return leg_balance(self.sdat.values(period.start, period.end, points), points, starts)

    # -- registry ------------------------------------------------------------------------------
    def houses(self) -> list[House]:
        return self.ledger.houses()

    def meters(self) -> list[Meter]:
        return list(self._meter_map().values())

    def _meter_map(self) -> dict[str, Meter]:
        """Active meters by id, cached: the registry changes only through reload_registry()."""
        if self._meters is None:
            self._meters = {m.meter_id: m for m in self.ledger.meters()}
        return self._meters

    def reload_registry(self) -> None:
        self._meters = None
        if hasattr(self.store, "set_registry"):
            self.store.set_registry({m.meter_id: m.house_id for m in self.ledger.meters()})

    def adopt_meter(self, meter_id: str, name: str, active_from: date, created_by: str) -> str:
        """Register an unknown meter as a new house, billed from ``active_from`` (a local date).
        Returns the new house id. Raises ValueError with the field at fault."""
        meter_id = (meter_id or "").strip()
        name = (name or "").strip()
        if not _METER_ID.match(meter_id):
            raise ValueError(f"meter_id: {meter_id!r} is not a meter id (letters, digits, - _ : . only)")
        if not name or len(name) > 100:
            raise ValueError("name: give the house a name (at most 100 characters)")
        if meter_id in self._meter_map():
            raise ValueError(f"meter_id: {meter_id} is already registered")
        numeric = [int(h.house_id) for h in self.ledger.houses(active_only=False) if h.house_id.isdigit()]
        house_id = str(max(numeric, default=0) + 1)
        try:
            self.ledger.adopt_meter(meter_id, house_id, name, created_by, active_from.isoformat())
        except LedgerError as exc:
            raise ValueError(f"meter_id: {exc}") from None
        self.reload_registry()
        log.info("meter %s adopted as house %s (%s) by %s", meter_id, house_id, name, created_by)
        return house_id

    def billing_meters(self) -> list[Meter]:
        """Every meter that bills a house, also retired and deactivated ones: each counts for the
        house within its span (from ``active_from`` to ``retired_at``)."""
        return [m for m in self.ledger.meters(active_only=False) if m.house_id is not None]

    def meters_of(self, house_id: str) -> list[Meter]:
        return [m for m in self.meters() if m.house_id == house_id]

    # -- readings and intervals ---------------------------------------------------------------
    def last_reading(self, meter_id: str):
        """The meter's latest stored reading (an ingest.readings.Reading), or None."""
        return self.last_readings([meter_id]).get(meter_id)

    def last_readings(self, meter_ids: list[str]) -> dict:
        """Latest stored reading per meter (ingest.readings.Reading), for meters that have one."""
        from ingest.readings import Reading
        val = lambda x: None if pd.isna(x) else float(x)
        return {r.meter_id: Reading(r.meter_id, r.ts.to_pydatetime(), val(r.import_kwh), val(r.export_kwh),
                                    val(r.power_in_kw), val(r.power_out_kw))
                for r in self.store.last_readings(meter_ids).itertuples(index=False)}

    def store_readings(self, readings: pd.DataFrame) -> WriteResult:
        """Store readings and recompute the intervals they touch (incremental)."""
        result = self.store.write_readings(readings)
        if result.inserted:
            spans = readings.groupby("meter_id")["ts"].agg(["min", "max"])
            self.update_intervals_many({m: (r["min"], r["max"]) for m, r in spans.iterrows()})
        return result

    def update_intervals(self, meter_id: str, t_min: pd.Timestamp, t_max: pd.Timestamp) -> None:
        self.update_intervals_many({meter_id: (t_min, t_max)})

    def update_intervals_many(self, spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]],
                              appended: bool = False) -> None:
        """Recompute the intervals that new readings of each meter in [t_min, t_max] can change:
        from the boundary before the second preceding reading (the new ones can change how the
        one just before them is judged) to the boundary after the following one.
        ``appended``: the readings are the meters' newest (live ingest), none follows them."""
        meters = {m.meter_id: m for m in self.billing_meters()}
        spans = {m: v for m, v in spans.items() if m in meters}
        neighbours = self.store.neighbour_times(spans, look_after=not appended)
        houses: dict[str, tuple[pd.Timestamp, pd.Timestamp]] = {}
        for m, (t_min, t_max) in spans.items():
            prev, nxt = neighbours.get(m, (None, None))
            r0 = floor_boundary(prev if prev is not None else t_min, self.interval_s)
            r1 = ceil_boundary(nxt if nxt is not None else t_max, self.interval_s)
            if appended and t_max < r1 and (r1 - r0).total_seconds() <= self.interval_s:
                # the readings, and the two before them, all lie in the running interval: nothing
                # can be completed or changed before a reading reaches its end (live ingest then
                # recomputes an interval once, not on every update)
                continue
            h = meters[m].house_id
            if h in houses:
                r0, r1 = min(r0, houses[h][0]), max(r1, houses[h][1])
            houses[h] = (r0, r1)
        self.recompute_houses(houses, appended=appended)

    def _reported_counters(self, windows: dict[str, pd.DataFrame]) -> dict[str, tuple[bool, bool]]:
        """Which counters each meter has ever reported (cached; a window that shows one updates it)."""
        unknown = [m for m in windows if m not in self._reports]
        if unknown:
            self._reports.update(self.store.reported_counters(unknown))
        for m, w in windows.items():
            if len(w):
                a, b = self._reports[m]
                self._reports[m] = (a or bool(w["import_kwh"].notna().any()), b or bool(w["export_kwh"].notna().any()))
        return {m: self._reports[m] for m in windows}

    def recompute_house(self, house_id: str, r0: pd.Timestamp, r1: pd.Timestamp) -> None:
        self.recompute_houses({house_id: (r0, r1)})

    def recompute_houses(self, spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]],
                         appended: bool = False) -> None:
        """Recompute the intervals of each house with start in [r0, r1) from its meters' readings."""
        sdat = self.sdat_billed()             # billed from the grid operator's data, not from meters
        spans = {h: (r0, r1) for h, (r0, r1) in spans.items() if r1 > r0 and h is not None and h not in sdat}
        by_house: dict[str, list[Meter]] = {}
        for m in self.billing_meters():
            by_house.setdefault(m.house_id, []).append(m)
        items = list(spans.items())
        for k in range(0, len(items), RECOMPUTE_CHUNK):
            self._recompute_chunk(dict(items[k:k + RECOMPUTE_CHUNK]), by_house, appended)
        if getattr(self.store, "stores_priced_intervals", False) and spans:
            self.publish_prices(min(a for a, _ in spans.values()), max(b for _, b in spans.values()))

    def _recompute_chunk(self, spans: dict[str, tuple[pd.Timestamp, pd.Timestamp]],
                         by_house: dict[str, list[Meter]], appended: bool) -> None:
        meter_spans = {m.meter_id: spans[h] for h in spans for m in by_house.get(h, [])}
        with self._compute_lock:
            windows = self.store.reading_windows(meter_spans, context=3, look_after=not appended)
            reports = self._reported_counters(windows)
            frames, quarantined = [], []
            for house_id, (r0, r1) in spans.items():
                bounds = boundaries(r0, r1, self.interval_s)
                n = len(bounds) - 1
                total_ei, total_eo = np.zeros(n), np.zeros(n)
                flags = np.zeros(n, dtype=np.uint8)
                valid = np.ones(n, dtype=bool) if by_house.get(house_id) else np.zeros(n, dtype=bool)
                for m in by_house.get(house_id, []):
                    window, inside = _meter_span(m, windows[m.meter_id], bounds, self.interval_s)
                    if not inside.any():
                        continue                      # the meter did not count in these intervals
                    res = meter_intervals(m.meter_id, window, bounds, m.max_power_kw, reports[m.meter_id])
                    res.delta_ei_kwh[~inside] = 0.0
                    res.delta_eo_kwh[~inside] = 0.0
                    res.valid[~inside] = True
                    res.flags[~inside] = 0
                    valid &= res.valid
                    total_ei += np.nan_to_num(res.delta_ei_kwh)
                    total_eo += np.nan_to_num(res.delta_eo_kwh)
                    flags |= res.flags
                    q = res.quarantine
                    q = q[(q["ts"] >= r0) & (q["ts"] <= r1)] if len(q) else q     # context readings: their own window
                    if len(q):
                        log.warning("meter %s: %d reading(s) quarantined, first: %s at %s", m.meter_id,
                                    len(q), q["reason"].iloc[0], q["ts"].iloc[0])
                        quarantined.append(q)
                starts = pd.to_datetime(bounds[:-1][valid], unit="s", utc=True).astype("datetime64[us, UTC]")
                frames.append(pd.DataFrame({"house_id": house_id, "start": starts,
                                            "delta_ei_kwh": total_ei[valid], "delta_eo_kwh": total_eo[valid],
                                            "flags": flags[valid]}))
            intervals = pd.concat(frames, ignore_index=True) if frames else pd.DataFrame(columns=INTERVAL_COLUMNS)
            # stored in time order: a period's queries then read only that period's row groups
            intervals = intervals.sort_values(["start", "house_id"], kind="stable")
            q_all = pd.concat(quarantined, ignore_index=True) if quarantined else \
                pd.DataFrame(columns=QUARANTINE_COLUMNS)
            self.store.replace_intervals_many(spans, intervals)
            self.store.replace_quarantine_many(meter_spans, q_all)

    def publish_prices(self, start: pd.Timestamp, end: pd.Timestamp) -> None:
        """Write the section 9.3 value and tariff fields of [start, end) to a store that keeps them
        (InfluxDB, for Grafana); every house's values in an interval change with any house's data."""
        prices = self.community_intervals(start, end)
        if prices.empty:
            return
        iv = self.store.read_intervals(start, end, [h.house_id for h in self.houses()])
        m = iv.merge(prices[["start", "p_con", "p_pv"]], on="start")
        house_values = pd.DataFrame({
            "house_id": m["house_id"], "start": m["start"],
            "value_consumption_ct": m["delta_ei_kwh"] * m["p_con"],
            "value_pv_delivery_ct": m["delta_eo_kwh"] * m["p_pv"],
            "tariff_p_con": m["p_con"], "tariff_p_pv": m["p_pv"]})
        self.store.write_priced(house_values, prices)

    def recompute_all(self) -> None:
        """Recompute every house's intervals from all stored readings (of every meter that
        counted for it, replaced ones included)."""
        meters = self.billing_meters()
        for house in self.houses():
            spans = []
            for m in (m for m in meters if m.house_id == house.house_id):
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
        from pricing.tariffs import version_conflict
        conflict = version_conflict(self.ledger.tariff_versions(), tariff, self.tz)
        if conflict is not None:                  # one version per effective_from (TariffConflict)
            raise conflict
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
        kind = self.cfg.community.billing_period
        period = parse_period(period_id, self.tz)
        stored = self.ledger.period(period_id)
        if not (stored and stored["status"] == "closed"):      # closed periods of any kind stay readable
            parse_period(period_id, self.tz, kind)
        if stored and stored["status"] == "closed":
            if close:
                raise SettlementError(f"period {period_id} is already closed (at {stored['closed_at'][:16]} "
                                      f"UTC by {stored['closed_by']}); its invoices stay as issued")
            return Settlement(period, "closed", self.with_references(self.ledger.issued_invoices(period_id)))
        now = pd.Timestamp(self.clock())
        if close and period.end > now:
            raise SettlementError(f"period {period_id} is not over yet (it ends "
                                  f"{period.end.tz_convert(self.tz):%Y-%m-%d %H:%M %Z}); it can be "
                                  f"closed after its last interval")
        # every house that belonged to the community during the period, also one that left since
        s = compute_settlement(self.store, self.ledger.houses(active_only=False), self.ledger.tariff_versions(), period,
                               self.interval_s, allow_incomplete, now)
        leg = self.leg_details(period)
        for inv in s.invoices:
            if inv["house_id"] in leg:
                inv["details"]["leg"] = {k: str(v) if not isinstance(v, int) else v
                                         for k, v in leg[inv["house_id"]].items()}
        if close:
            overlap = [p["period_id"] for p in self.ledger.periods() if p["status"] == "closed"
                       and pd.Timestamp(p["start_utc"]) < period.end and pd.Timestamp(p["end_utc"]) > period.start]
            if overlap:
                raise SettlementError(f"period {period_id} overlaps the closed period {', '.join(overlap)}: "
                                      "its energy is billed already")
            drafts = sorted(s.invoices, key=lambda inv: _house_order(inv["house_id"]))
            issue_year = now.tz_convert(self.tz).year
            issued = self.ledger.close_period(period_id, period.start.isoformat(), period.end.isoformat(),
                                              drafts, issue_year, closed_by)
            log.info("period %s closed: %d invoices issued", period_id, len(issued))
            return Settlement(period, "closed", self.with_references(issued), s.summary, s.missing)
        self.with_references(s.invoices)
        return s

    def with_references(self, invoices: list[dict]) -> list[dict]:
        """Set each invoice's ``payment_reference``: the one its QR-bill carries ('' for drafts and
        credits; billing.payments.payment_reference)."""
        from billing.payments import payment_reference
        for inv in invoices:
            inv["payment_reference"] = payment_reference(inv, self.cfg.community.iban) or ""
        return invoices


    def recent_periods(self, count: int | None = None) -> list[str]:
        """The running billing period and those before it, newest first (community.billing_period)."""
        return recent_periods(pd.Timestamp(self.clock()), self.tz, self.cfg.community.billing_period, count)

    def periods(self, count: int | None = None) -> list[dict]:
        """The recent billing periods (a year of months, eight quarters or three years; the running
        one first) and any older closed period: status, invoice count, the intervals stored and
        those still missing (data completeness). Open periods older than the first with any
        stored interval are left out."""
        now = pd.Timestamp(self.clock())
        ids = self.recent_periods(count)
        stored = {p["period_id"]: p for p in self.ledger.periods()}
        ids += sorted(set(stored) - set(ids), reverse=True)
        out = []
        for pid in ids:
            s = self.settle(pid, allow_incomplete=True)
            st = stored.get(pid, {})
            status = s.status if s.status == "closed" else ("running" if s.period.end > now else "open")
            out.append({"period_id": pid, "status": status, "invoices": len(s.invoices),
                        "intervals": sum(int((i.get("details") or {}).get("intervals") or 0) for i in s.invoices),
                        "missing_intervals": sum(s.missing.values()), "houses_missing": sorted(s.missing),
                        "closed_at": st.get("closed_at"), "closed_by": st.get("closed_by"),
                        "start": s.period.start_local.isoformat(), "end": s.period.end_local_inclusive.isoformat()})
        # the periods before the community's first data are no work to do: not listed (the running
        # period always is, and every closed one)
        while len(out) > 1 and out[-1]["status"] == "open" and out[-1]["intervals"] == 0:
            out.pop()
        return out

    def invoice(self, invoice_id: str) -> dict | None:
        """An issued invoice, or the draft ``DRAFT-<period>-<house>`` as it stands now."""
        inv = self.ledger.invoice(invoice_id)
        if inv is not None or not invoice_id.startswith("DRAFT-"):
            return self.with_references([inv])[0] if inv is not None else None
        for period_id, _house in draft_candidates(invoice_id):
            try:
                s = self.settle(period_id, allow_incomplete=True)
            except SettlementError:
                continue
            found = next((i for i in s.invoices if i["invoice_id"] == invoice_id), None)
            if found is not None:
                return found
        return None


def _meter_span(m: Meter, window: pd.DataFrame, bounds_s: np.ndarray, interval_s: int):
    """(readings, inside) for a meter that counts only from ``active_from`` to ``retired_at``:
    outside that span it contributes nothing; the counter is held at its start reading back to the
    interval boundary before it, and at its final reading up to the boundary after it, so the
    intervals around a replacement are split exactly between the old and the new meter."""
    inside = np.ones(len(bounds_s) - 1, dtype=bool)
    if m.active_from is None and m.retired_at is None:
        return window, inside
    extra = []
    if m.active_from is not None:
        t0 = pd.Timestamp(m.active_from)
        inside &= bounds_s[1:] > t0.timestamp()
        first = window[window["ts"] >= t0].head(1)
        if len(first):
            extra.append(first.assign(ts=floor_boundary(t0, interval_s)))
    if m.retired_at is not None:
        t1 = pd.Timestamp(m.retired_at)
        inside &= bounds_s[:-1] < t1.timestamp()
        last = window[window["ts"] <= t1].tail(1)
        if len(last):
            extra.append(last.assign(ts=ceil_boundary(t1, interval_s)))
        window = window[window["ts"] <= t1]
    if m.active_from is not None:
        window = window[window["ts"] >= pd.Timestamp(m.active_from)]
    if extra:
        window = pd.concat([window] + extra, ignore_index=True).drop_duplicates("ts", keep="first")
    return window, inside


def _house_order(house_id: str):
    return (0, int(house_id), "") if house_id.isdigit() else (1, 0, house_id)
