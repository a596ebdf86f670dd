"""Starting and stopping ingest: the pipeline and its sources, explicitly and once.

``IngestRuntime.start()`` is called by the command that runs the app or the collector, never at
import; ``stop()`` flushes everything buffered to the store and computes the intervals.
"""
from __future__ import annotations

import logging
import sys
from datetime import datetime, timezone

import pandas as pd

from ingest.pipeline import Pipeline
from ingest.sensor import SensorIntake

log = logging.getLogger(__name__)


class IngestRuntime:
    def __init__(self, community, *, mqtt: bool | None = None, simulate: bool = False,
                 backfill_days: float = 90, seed: int = 1, offset_months: int = 0,
                 pipeline_options: dict | None = None):
        self.community = community
        cfg = community.cfg
        self.use_mqtt = cfg.mqtt.enabled if mqtt is None else mqtt
        self.simulate = simulate
        self.backfill_days = backfill_days
        self.seed = seed
        self.offset_months = offset_months
        options = {"intervals_every_s": max(1.0, min(cfg.collector.interval, 60))} | (pipeline_options or {})
        self.pipeline = Pipeline(community, **options)
        # the in-process simulator's messages are live: no uptime anchors needed here (the MQTT
        # process keeps its own in data_dir/sensor_clock.json)
        self.intake = SensorIntake(self.pipeline)
        self.mqtt = None
        self.simulator = None
        self.sdat_inbox = None
        from ingest.connections import Connections
        self.connections = Connections(community, self.pipeline)
        self._started = False

    def start(self) -> "IngestRuntime":
        if self._started:
            raise RuntimeError("ingest already started")
        c = self.community.cfg
        if c.storage.backend == "influxdb" and c.influxdb.mode == "read_only":
            raise RuntimeError("influxdb.mode is read_only: another collector writes the data; "
                               "LEG-Invoicing runs no ingest")
        self._started = True
        # the network thread must get the GIL back quickly from the pipeline worker, or the
        # broker's in-flight window stalls: hand it over every 1 ms instead of every 5 ms
        sys.setswitchinterval(0.001)
        self.pipeline.start()
        self.connections.start()
        if self.simulate:
            self._start_simulator()
        if self.use_mqtt:
            from ingest.mqtt_process import MqttProcessSource
            self.mqtt = MqttProcessSource(self.community.cfg.mqtt, self.pipeline,
                                          anchors_path=self.community.cfg.data_dir / "sensor_clock.json").start()
        if c.sdat.inbox:
            from ingest.sdat_inbox import SdatInbox
            self.sdat_inbox = SdatInbox(self.community, c.sdat.inbox, c.sdat.poll_s).start()
        return self

    def _start_simulator(self) -> None:
        from simulator.live import HouseSimulator, SimulatorThread
        from simulator.profiles import profiles_for
        c = self.community
        sim = HouseSimulator(profiles_for(c.cfg.houses), c.tz, c.cfg.data_dir / "simulator_state.json",
                             self.seed, self.offset_months)
        for p in sim.profiles:            # a store that already has a meter's history wins
            if p.meter_id not in sim.state:
                last = c.last_reading(p.meter_id)
                if last is not None:
                    sim.resume(p.meter_id, last.import_kwh or 0.0, last.export_kwh or 0.0, last.ts_utc)
        history = sim.backfill(self.backfill_days, pd.Timestamp.now(tz="UTC"))
        if len(history):
            log.info("simulator: writing %d days of history (%d readings)", self.backfill_days, len(history))
            c.store_readings(history)
        publish = lambda mac, payload: self.intake.message(mac, payload, datetime.now(timezone.utc), "simulator")
        self.simulator = SimulatorThread(sim, publish).start()

    def registry_changed(self) -> None:
        """A meter was added, changed, deactivated or replaced: the pipeline and the connections follow."""
        self.pipeline.registry_changed()
        if self._started:
            self.connections.reload()

    def stop(self) -> None:
        if not self._started:
            return
        if self.simulator:
            self.simulator.stop()
        if self.sdat_inbox:
            self.sdat_inbox.stop()
        if self.mqtt:
            self.mqtt.stop()
        self.connections.stop()
        self.pipeline.stop()
        self.intake.save()
        self._started = False
