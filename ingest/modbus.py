"""Modbus TCP meters: cumulative import and export counters read from holding or input registers.

* ``decode`` turns the registers of one counter into kWh: the register type (16, 32 or 64 bit,
  integer or IEEE float) and the word order of multi-register values come from the meter's
  ``RegisterSpec``; the raw value is multiplied by its ``scale`` (0.001 for a counter in Wh).
* ``ModbusMeter`` keeps one connection to the device, opened at the first read and opened again
  after any failure; each counter is one request. A connection the device has closed while idle
  (many close after 30 to 120 s without traffic) is replaced once without reporting an error.
* Every failure is a ``SourceError`` whose message says what happened and where:
  "cannot connect to 192.168.1.60:502 (connection refused)",
  "timed out after 5 s reading holding register 0 of device 1",
  "ILLEGAL DATA ADDRESS at holding register 40000 of device 1",
  "holding register 0 gives -3.5 kWh: not a counter".
* ``ModbusSource`` polls a meter on its interval (back-off after failures comes from
  ``PollingSource``); ``read_modbus_once`` is the connection test of the meter form.
"""
from __future__ import annotations

import errno
import logging
import math
import socket
import struct
import threading
from datetime import datetime, timezone
from typing import Callable

from pymodbus.client import ModbusTcpClient
from pymodbus.exceptions import ConnectionException, ModbusException, ModbusIOException

from config import ModbusSettings, RegisterSpec
from ingest.sources import PollingSource, Sample, SourceError

log = logging.getLogger(__name__)

_DATATYPES = {
    "uint16": ModbusTcpClient.DATATYPE.UINT16,
    "int16": ModbusTcpClient.DATATYPE.INT16,
    "uint32": ModbusTcpClient.DATATYPE.UINT32,
    "int32": ModbusTcpClient.DATATYPE.INT32,
    "uint64": ModbusTcpClient.DATATYPE.UINT64,
    "float32": ModbusTcpClient.DATATYPE.FLOAT32,
    "float64": ModbusTcpClient.DATATYPE.FLOAT64,
}

# Standard Modbus exception codes (Modbus Application Protocol V1.1b3, section 7).
EXCEPTION_NAMES = {
    1: "ILLEGAL FUNCTION",
    2: "ILLEGAL DATA ADDRESS",
    3: "ILLEGAL DATA VALUE",
    4: "SERVER DEVICE FAILURE",
    5: "ACKNOWLEDGE",
    6: "SERVER DEVICE BUSY",
    7: "NEGATIVE ACKNOWLEDGE",
    8: "MEMORY PARITY ERROR",
    10: "GATEWAY PATH UNAVAILABLE",
    11: "GATEWAY TARGET DEVICE FAILED TO RESPOND",
}


def exception_name(code: int) -> str:
    """The standard name of a Modbus exception code ("EXCEPTION 9" for one without a name)."""
    return EXCEPTION_NAMES.get(code, f"EXCEPTION {code}")


def register_count(type_: str) -> int:
    """How many 16-bit registers a value of this type occupies (1, 2 or 4)."""
    try:
        return _DATATYPES[type_].value[1]
    except KeyError:
        raise ValueError(f"unknown register type {type_!r}") from None


def _shortest_float32(x: float) -> float:
    """The shortest decimal that is the same float32 (a meter's 1234.56, not 1234.56005859375)."""
    if not math.isfinite(x):
        return x
    for digits in range(6, 10):
        y = float(f"{x:.{digits}g}")
        if struct.pack(">f", y) == struct.pack(">f", x):
            return y
    return x


def decode(registers: list[int], spec: RegisterSpec) -> float:
    """The counter in kWh from the registers of one value: raw value × ``spec.scale``.

    Multi-register values are big-endian within each register; ``spec.word_order`` says whether
    the most significant register comes first ("big") or last ("little")."""
    count = register_count(spec.type)
    if len(registers) != count:
        raise SourceError(f"{spec.type} needs {count} registers, got {len(registers)}", "bad_answer")
    raw = ModbusTcpClient.convert_from_registers(list(registers), data_type=_DATATYPES[spec.type],
                                                 word_order=spec.word_order)
    if spec.type == "float32":
        raw = _shortest_float32(raw)
    value = float(raw) * float(spec.scale)
    if math.isfinite(value):
        value = float(f"{value:.15g}")      # 1234.567, not 1234.5670000000002 from 1234567 × 0.001
    return value


def _format_kwh(value: float) -> str:
    return f"{value:.10g}"


def _format_seconds(value: float) -> str:
    return f"{value:g}"


def _connect_reason(exc: OSError, timeout_s: float) -> str:
    if isinstance(exc, ConnectionRefusedError):
        return "connection refused"
    if isinstance(exc, (socket.timeout, TimeoutError)):
        return f"no answer within {_format_seconds(timeout_s)} s"
    if isinstance(exc, socket.gaierror):
        return "unknown host"
    reasons = {errno.EHOSTUNREACH: "host unreachable", errno.ENETUNREACH: "network unreachable",
               errno.ECONNRESET: "connection reset", errno.EADDRNOTAVAIL: "address not available"}
    if exc.errno in reasons:
        return reasons[exc.errno]
    return (exc.strerror or str(exc) or type(exc).__name__).lower()


class _Client(ModbusTcpClient):
    """The synchronous pymodbus TCP client, keeping why the last connection attempt failed
    (pymodbus only logs it)."""

    connect_error: OSError | None = None

    def connect(self) -> bool:
        if self.socket:
            return True
        self.connect_error = None
        try:
            self.socket = socket.create_connection(
                (self.comm_params.host, self.comm_params.port),
                timeout=self.comm_params.timeout_connect,
                source_address=self.comm_params.source_address)
        except OSError as exc:
            self.connect_error = exc
            self.close()
        return self.socket is not None


class ModbusMeter:
    """One Modbus TCP device and the counters its settings name; ``read`` is safe to call from
    several threads (reads take turns)."""

    def __init__(self, settings: ModbusSettings):
        self.settings = settings
        host = settings.host
        self.where = f"[{host}]:{settings.port}" if ":" in host else f"{host}:{settings.port}"
        self.timeout_s = float(settings.timeout_s)
        # retries=0: one request waits timeout_s, not (1 + retries) × timeout_s
        self._client = _Client(host, port=settings.port, timeout=self.timeout_s, retries=0)
        self._lock = threading.Lock()

    def read(self) -> Sample:
        """The configured counters now, in kWh; raises ``SourceError``."""
        s = self.settings
        if s.import_ is None and s.export is None:
            raise SourceError("no import or export register is configured", "not_configured")
        with self._lock:
            import_kwh = self._counter(s.import_) if s.import_ is not None else None
            export_kwh = self._counter(s.export) if s.export is not None else None
            return Sample(import_kwh, export_kwh, datetime.now(timezone.utc))

    def close(self) -> None:
        with self._lock:
            self._client.close()

    @property
    def connected(self) -> bool:
        return self._client.connected

    # -- one counter ------------------------------------------------------------------------------
    def _counter(self, spec: RegisterSpec) -> float:
        value = decode(self._registers(spec), spec)
        if not math.isfinite(value) or value < 0:
            raise SourceError(f"{spec.table} register {spec.address} gives {_format_kwh(value)} kWh: "
                              "not a counter", "bad_value")
        return value

    def _connect(self) -> None:
        if not self._client.connect():
            exc = self._client.connect_error or OSError("connection failed")
            raise SourceError(f"cannot connect to {self.where} ({_connect_reason(exc, self.timeout_s)})",
                              "connect_failed")

    def _registers(self, spec: RegisterSpec) -> list[int]:
        device = self.settings.device_id
        what = f"{spec.table} register {spec.address} of device {device}"
        count = register_count(spec.type)
        request = (self._client.read_holding_registers if spec.table == "holding"
                   else self._client.read_input_registers)
        for attempt in (1, 2):
            reused = self._client.connected
            if not reused:
                self._connect()
            try:
                rr = request(spec.address, count=count, device_id=device)
            except ModbusIOException as exc:
                self._client.close()
                if "No response received" in exc.string:
                    raise SourceError(f"timed out after {_format_seconds(self.timeout_s)} s reading {what}",
                                      "timeout") from None
                raise SourceError(f"invalid answer from {self.where} reading {what}", "bad_answer") from None
            except (ConnectionException, OSError) as exc:
                self._client.close()
                if reused and attempt == 1:
                    log.debug("%s closed the connection (%s): connecting again", self.where, exc)
                    continue
                raise SourceError(f"connection to {self.where} lost reading {what}", "connection_lost") from None
            except ModbusException as exc:
                self._client.close()
                raise SourceError(f"invalid answer from {self.where} reading {what}: {exc.string}",
                                  "bad_answer") from None
            if rr.isError():
                code = getattr(rr, "exception_code", 0)
                raise SourceError(f"{exception_name(code)} at {what}", "modbus_exception")
            registers = list(rr.registers)
            if len(registers) != count:
                self._client.close()
                raise SourceError(f"{len(registers)} registers instead of {count} from {self.where} "
                                  f"reading {what}", "bad_answer")
            return registers
        raise AssertionError("unreachable")


def _describe(sample: Sample) -> str:
    parts = []
    if sample.import_kwh is not None:
        parts.append(f"{_format_kwh(sample.import_kwh)} kWh import")
    if sample.export_kwh is not None:
        parts.append(f"{_format_kwh(sample.export_kwh)} kWh export")
    return ", ".join(parts)


class ModbusSource(PollingSource):
    """Polls one Modbus meter every ``settings.interval_s``: each sample goes to
    ``submit(meter_id, sample)``, each failure to ``failed(meter_id, error)``."""

    def __init__(self, meter_id: str, name: str, settings: ModbusSettings,
                 submit: Callable[[str, Sample], None], failed: Callable[[str, SourceError], None]):
        self.meter_id, self.meter_name = meter_id, name
        self.meter = ModbusMeter(settings)
        self._submit, self._report = submit, failed
        self._last_error: str | None = None
        super().__init__(f"modbus-{meter_id}", float(settings.interval_s), self.meter.read,
                         self._on_sample, self._on_failure)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self.meter.close()

    def _on_sample(self, sample: Sample) -> None:
        if self._last_error is not None:
            log.info("Modbus meter '%s' answers again (%s)", self.meter_name, self.meter.where)
            self._last_error = None
        log.info("Modbus data received for meter '%s': %s from %s", self.meter_name, _describe(sample),
                 self.meter.where)
        self._submit(self.meter_id, sample)

    def _on_failure(self, error: SourceError) -> None:
        message = str(error)
        if message != self._last_error:
            log.warning("Modbus meter '%s': %s", self.meter_name, message)
        self._last_error = message
        self._report(self.meter_id, error)


def read_modbus_once(settings: ModbusSettings) -> Sample:
    """Connect, read the configured counters, close: the connection test of the meter form."""
    meter = ModbusMeter(settings)
    try:
        return meter.read()
    finally:
        meter.close()
