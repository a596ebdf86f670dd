"""The meter connections beyond MQTT, started from the registry: a polling thread per Loxone HTTP
and Modbus meter, one UDP listener per port (meters on a shared port told apart by sender).
Every sample goes into the one pipeline as a Reading; every failure is counted there as a
rejection with its reason (shown on the Meters page). ``reload()`` follows registry changes:
sources whose meter changed are restarted, the others keep running."""
from __future__ import annotations

import json
import logging

from config import LoxoneHttpSettings, ModbusSettings, UdpSettings
from ingest.readings import Reading
from ingest.sources import Sample, SourceError

log = logging.getLogger(__name__)


class Connections:
    def __init__(self, community, pipeline):
        self.community = community
        self.pipeline = pipeline
        self._sources: dict[str, tuple[str, object]] = {}    # key -> (fingerprint, source)
        self.errors: dict[str, str] = {}                      # key -> why it could not start

    # callbacks of the sources ----------------------------------------------------------------
    def _submit(self, meter_id: str, sample: Sample, source: str) -> None:
        self.pipeline.submit(Reading(meter_id, sample.ts_utc, sample.import_kwh, sample.export_kwh), source)

    def _failed(self, meter_id: str | None, exc: SourceError, source: str) -> None:
        self.pipeline.reject(meter_id, exc.code, str(exc), source)

    # lifecycle ----------------------------------------------------------------------------------
    def wanted(self) -> dict[str, tuple[str, callable]]:
        """key -> (fingerprint, factory) for every source the registry asks for."""
        out = {}
        meters = [m for m in self.community.ledger.meters() if m.retired_at is None]
        udp_ports: dict[int, list] = {}
        for m in meters:
            fp = json.dumps([m.connection, m.type, m.name, m.settings], sort_keys=True)
            if m.connection == "loxone_http":
                out[f"http:{m.meter_id}"] = (fp, lambda m=m: self._http(m))
            elif m.connection == "modbus":
                out[f"modbus:{m.meter_id}"] = (fp, lambda m=m: self._modbus(m))
            elif m.connection == "udp":
                s = UdpSettings(**m.settings)
                udp_ports.setdefault((s.host, s.port), []).append((m, s))
        for (host, port), group in udp_ports.items():
            fp = json.dumps([[m.meter_id, m.type, m.name, m.settings] for m, _ in group], sort_keys=True)
            out[f"udp:{port}"] = (fp, lambda host=host, port=port, group=group: self._udp(host, port, group))
        return out

    def _http(self, m):
        from ingest.loxone_http import LoxoneHttpSource
        return LoxoneHttpSource(m.meter_id, m.label, LoxoneHttpSettings(**m.settings), m.type,
                                lambda sample: self._submit(m.meter_id, sample, "loxone_http"),
                                lambda exc: self._failed(m.meter_id, exc, "loxone_http"),
                                tz=self.community.tz).start()

    def _modbus(self, m):
        from ingest.modbus import ModbusSource
        return ModbusSource(m.meter_id, m.label, ModbusSettings.model_validate(m.settings),
                            lambda mid, sample: self._submit(mid, sample, "modbus"),
                            lambda mid, exc: self._failed(mid, exc, "modbus")).start()

    def _udp(self, host, port, group):
        from ingest.udp import UdpListener
        routes = [(m.meter_id, m.label, m.type, s.sender_ip, s.format, s.field) for m, s in group]
        return UdpListener(host, port, routes, self.community.tz,
                           lambda mid, sample: self._submit(mid, sample, "udp"),
                           lambda mid, exc: self._failed(mid, exc, "udp"),
                           lambda addr: self._failed(None, SourceError(
                               f"UDP datagram from {addr} on port {port}: no meter takes datagrams from this sender",
                               "foreign_sender"), "udp")).start()

    def reload(self) -> None:
        """Start what the registry asks for and is not running; stop what it no longer asks for
        or what changed (then start it anew)."""
        wanted = self.wanted()
        for key in list(self._sources):
            fp, src = self._sources[key]
            if key not in wanted or wanted[key][0] != fp:
                src.stop()
                del self._sources[key]
                log.info("meter connection %s stopped", key)
        for key, (fp, make) in wanted.items():
            if key in self._sources:
                continue
            try:
                self._sources[key] = (fp, make())
                self.errors.pop(key, None)
            except SourceError as exc:             # e.g. a UDP port in use: said, not fatal
                self.errors[key] = str(exc)
                log.error("meter connection %s cannot start: %s", key, exc)

    start = reload

    def stop(self) -> None:
        for key, (_, src) in list(self._sources.items()):
            src.stop()
        self._sources.clear()

    def alive(self) -> dict[str, bool]:
        return {k: bool(getattr(src, "alive", True)) for k, (_, src) in self._sources.items()}
