"""The live house simulator: publishes each simulated house's meter every 10 s in exactly the
format of the LEG specification's section 8.3, to an MQTT broker or straight into the app's own
parser and pipeline (the embedded demo).

Counters continue from a state file across restarts (never backwards): at each tick the energy
since the last tick is integrated at 10-second steps, however long the pause was. ``backfill``
writes history directly to the store, much faster than publishing it.
"""
from __future__ import annotations

import json
import logging
import threading
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

import pandas as pd

from ingest.sensor import sensor_payload
from simulator.profiles import HouseProfile, base_counters, integrate, simulate_counters

log = logging.getLogger(__name__)

STEP_S = 10
BACKFILL_STEP_S = 60


class HouseSimulator:
    def __init__(self, profiles: list[HouseProfile], tz: ZoneInfo, state_path: Path | None,
                 seed: int = 1, offset_months: int = 0):
        self.profiles = profiles
        self.tz = tz
        self.seed = seed
        self.offset_months = offset_months
        self.state_path = Path(state_path) if state_path else None
        self.state: dict[str, dict] = {}
        if self.state_path and self.state_path.exists():
            try:
                self.state = json.loads(self.state_path.read_text())
            except (OSError, ValueError) as exc:
                raise RuntimeError(f"{self.state_path}: unreadable simulator state ({exc}); "
                                   f"delete it to start the counters afresh") from None

    def save(self) -> None:
        if self.state_path:
            self.state_path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.state_path.with_suffix(".tmp")
            tmp.write_text(json.dumps(self.state, indent=1))
            tmp.replace(self.state_path)

    def resume(self, meter_id: str, import_kwh: float, export_kwh: float, at: datetime) -> None:
        """Continue a meter from known counters (e.g. its last stored reading)."""
        self.state[meter_id] = {"import_kwh": import_kwh, "export_kwh": export_kwh,
                                "t": at.timestamp(), "boot": at.timestamp()}

    def backfill(self, days: float, now: pd.Timestamp) -> pd.DataFrame:
        """History for the last ``days`` up to ``now`` (one reading a minute), for houses that have
        no state yet; their counters then continue from its end."""
        fresh = [p for p in self.profiles if p.meter_id not in self.state]
        if not fresh or days <= 0:
            return pd.DataFrame()
        end = now.floor(f"{BACKFILL_STEP_S}s")
        start = end - pd.Timedelta(days=days)
        df = simulate_counters(fresh, start, end, BACKFILL_STEP_S, self.tz, self.seed, self.offset_months)
        last = df.groupby("meter_id").tail(1)
        for row in last.itertuples(index=False):
            self.state[row.meter_id] = {"import_kwh": row.import_kwh, "export_kwh": row.export_kwh,
                                        "t": row.ts.timestamp(), "boot": start.timestamp()}
        self.save()
        return df

    def tick(self, now: datetime) -> list[tuple[str, bytes]]:
        """Advance every house to ``now``; one (MAC, payload) per house."""
        out = []
        t_now = now.timestamp()
        for p in self.profiles:
            st = self.state.get(p.meter_id)
            if st is None:
                c_in, c_out = base_counters(p)
                st = self.state[p.meter_id] = {"import_kwh": c_in, "export_kwh": c_out, "t": t_now, "boot": t_now}
            pi = po = 0.0
            if t_now > st["t"]:
                start = pd.Timestamp(st["t"], unit="s", tz="UTC")
                end = pd.Timestamp(t_now, unit="s", tz="UTC")
                ts, e_in, e_out, net = integrate(p, start, end, STEP_S, self.tz, self.seed, self.offset_months)
                # the last step may be shorter than STEP_S
                if len(ts):
                    frac = (t_now - ts[-1].timestamp()) / STEP_S
                    e_in[-1] *= frac
                    e_out[-1] *= frac
                    st["import_kwh"] += float(e_in.sum())
                    st["export_kwh"] += float(e_out.sum())
                    pi, po = max(float(net[-1]), 0.0), max(-float(net[-1]), 0.0)
                st["t"] = t_now
            smid = f"6022{p.index:04d}"
            out.append((p.meter_id, sensor_payload(st["import_kwh"], st["export_kwh"], pi, po, smid,
                                                   int(t_now - st["boot"]))))
        return out


class SimulatorThread:
    """Calls ``publish(mac, payload)`` for every house every ``STEP_S`` seconds until stopped."""

    def __init__(self, sim: HouseSimulator, publish, interval_s: float = STEP_S):
        self.sim = sim
        self.publish = publish
        self.interval_s = interval_s
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self.ticks = 0

    def start(self) -> "SimulatorThread":
        if self._thread is not None:
            raise RuntimeError("simulator already started")
        self._thread = threading.Thread(target=self._run, name="house-simulator", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread:
            self._thread.join(10)
            self._thread = None
        self.sim.save()

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                for mac, payload in self.sim.tick(datetime.now(timezone.utc)):
                    self.publish(mac, payload)
                self.ticks += 1
                if self.ticks % 6 == 0:
                    self.sim.save()
            except Exception:
                log.exception("simulator tick failed (continuing)")
            self._stop.wait(self.interval_s)
