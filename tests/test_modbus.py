"""Modbus TCP meters against a real pymodbus TCP server on a free localhost port."""
from __future__ import annotations

import asyncio
import logging
import struct
import threading
import time

import pytest
from pymodbus.constants import ExcCodes
from pymodbus.server import ModbusTcpServer
from pymodbus.simulator import DataType, SimData, SimDevice

from config import ModbusSettings, RegisterSpec
from ingest.modbus import (EXCEPTION_NAMES, ModbusMeter, ModbusSource, decode, exception_name,
                           read_modbus_once, register_count)
from ingest.sources import SourceError
from tests.peers import free_port, wait_port


# -- registers written by hand (struct, not pymodbus) --------------------------------------------
def words(fmt: str, value) -> list[int]:
    """Big-endian registers of a value packed with struct ("f", "d", "I", "Q", "h", ...)."""
    data = struct.pack(">" + fmt, value)
    return [int.from_bytes(data[i:i + 2], "big") for i in range(0, len(data), 2)]


def little(registers: list[int]) -> list[int]:
    return list(reversed(registers))


HOLDING = [0] * 100
HOLDING[0:2] = [0x449A, 0x5000]                    # float32 1234.5, big word order
HOLDING[2:4] = [0x5000, 0x449A]                    # float32 1234.5, little word order
HOLDING[10:12] = [0x003D, 0x0900]                  # uint32 4000000 (Wh), big
HOLDING[12:14] = [0x0900, 0x003D]                  # uint32 4000000 (Wh), little
HOLDING[20:22] = words("f", -3.5)                  # a negative float32
HOLDING[22:24] = [0x7FC0, 0x0000]                  # float32 NaN
HOLDING[30:32] = words("f", 1234.56)               # 1234.56 as float32
INPUT = [0] * 50
INPUT[0:2] = words("I", 7_777_000)                 # uint32 Wh, big: 7777 kWh at input register 0
BITS = [SimData(0, values=[False] * 16, datatype=DataType.BITS)]


class Behaviour:
    """What the server's device does on the next requests: answer late or with an exception."""

    def __init__(self):
        self.delay_s = 0.0
        self.exception: ExcCodes | None = None

    async def action(self, function_code, start_address, address, count, registers, set_values):
        if self.delay_s:
            await asyncio.sleep(self.delay_s)
        return self.exception


class Server:
    """A pymodbus 3.16 ModbusTcpServer with device 1 (distinct holding and input tables), in a
    thread with its own event loop; stop() and start() keep the port."""

    def __init__(self, port: int | None = None):
        self.port = port or free_port()
        self.behaviour = Behaviour()
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._server: ModbusTcpServer | None = None

    def device(self) -> SimDevice:
        return SimDevice(1, simdata=(list(BITS), list(BITS),
                                     [SimData(0, values=list(HOLDING), datatype=DataType.REGISTERS)],
                                     [SimData(0, values=list(INPUT), datatype=DataType.REGISTERS)]),
                         action=self.behaviour.action)

    def start(self) -> "Server":
        ready, failure = threading.Event(), []
        loop = asyncio.new_event_loop()

        async def listen():
            self._server = ModbusTcpServer([self.device()], address=("127.0.0.1", self.port))
            await self._server.serve_forever(background=True)

        def run():
            asyncio.set_event_loop(loop)
            try:
                loop.run_until_complete(listen())
            except Exception as exc:      # reported to the starting thread
                failure.append(exc)
                ready.set()
                return
            ready.set()
            loop.run_forever()

        self._loop = loop
        self._thread = threading.Thread(target=run, name="modbus-server", daemon=True)
        self._thread.start()
        ready.wait(10)
        if failure:
            raise failure[0]
        wait_port(self.port)
        return self

    def connections(self) -> int:
        """Client connections the server holds open."""
        return len(self._server.active_connections)

    def stop(self) -> None:
        if self._thread is None:
            return
        loop = self._loop
        asyncio.run_coroutine_threadsafe(self._server.shutdown(), loop).result(10)

        async def cancel_rest():
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(cancel_rest(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        self._thread.join(10)
        loop.close()
        self._thread = self._server = self._loop = None


@pytest.fixture
def server():
    s = Server().start()
    yield s
    s.stop()


def settings(port: int, **kw) -> ModbusSettings:
    data = {"host": "127.0.0.1", "port": port, "timeout_s": 2, **kw}
    return ModbusSettings.model_validate(data)


def read(port: int, **kw):
    return read_modbus_once(settings(port, **kw))


# -- decode: hand-computed registers ---------------------------------------------------------------
def spec(type_: str, word_order: str = "big", scale: float = 1.0) -> RegisterSpec:
    return RegisterSpec(address=0, type=type_, word_order=word_order, scale=scale)


def test_register_count():
    assert [register_count(t) for t in ("uint16", "int16", "uint32", "int32", "uint64", "float32",
                                        "float64")] == [1, 1, 2, 2, 4, 2, 4]
    with pytest.raises(ValueError):
        register_count("string")


def test_decode_16_bit():
    assert decode([0xFFFE], spec("int16")) == -2.0
    assert decode([0xFFFE], spec("uint16")) == 65534.0
    assert decode([12345], spec("uint16", scale=0.1)) == 1234.5
    assert decode([0x8000], spec("int16")) == -32768.0


def test_decode_32_bit_both_word_orders():
    assert decode([0x449A, 0x5000], spec("float32")) == 1234.5
    assert decode([0x5000, 0x449A], spec("float32", "little")) == 1234.5
    assert decode([0x003D, 0x0900], spec("uint32", scale=0.001)) == 4000.0
    assert decode([0x0900, 0x003D], spec("uint32", "little", scale=0.001)) == 4000.0
    assert decode([0xFFFF, 0xFFFE], spec("int32")) == -2.0
    assert decode([0xFFFE, 0xFFFF], spec("int32", "little")) == -2.0
    assert decode([0x0012, 0xD687], spec("uint32", scale=0.001)) == 1234.567   # not ...0000000002


def test_decode_float32_gives_the_meters_decimal():
    assert decode(words("f", 1234.56), spec("float32")) == 1234.56
    assert decode(little(words("f", 98765.43)), spec("float32", "little")) == 98765.43


def test_decode_64_bit_both_word_orders():
    assert decode([0x0001, 0x0002, 0x0003, 0x0004], spec("uint64")) == float(0x0001000200030004)
    assert decode([0x0004, 0x0003, 0x0002, 0x0001], spec("uint64", "little")) == float(0x0001000200030004)
    assert decode([0, 0, 0x0012, 0xD687], spec("uint64", scale=0.001)) == 1234.567
    registers = words("d", 123456789.125)          # 0x419D6F3454800000
    assert registers == [0x419D, 0x6F34, 0x5480, 0x0000]
    assert decode(registers, spec("float64")) == 123456789.125
    assert decode(little(registers), spec("float64", "little")) == 123456789.125


def test_decode_wrong_register_count():
    with pytest.raises(SourceError, match="float32 needs 2 registers, got 1"):
        decode([0x449A], spec("float32"))


def test_exception_names():
    assert [exception_name(c) for c in range(1, 12)] == [
        "ILLEGAL FUNCTION", "ILLEGAL DATA ADDRESS", "ILLEGAL DATA VALUE", "SERVER DEVICE FAILURE",
        "ACKNOWLEDGE", "SERVER DEVICE BUSY", "NEGATIVE ACKNOWLEDGE", "MEMORY PARITY ERROR",
        "EXCEPTION 9", "GATEWAY PATH UNAVAILABLE", "GATEWAY TARGET DEVICE FAILED TO RESPOND"]
    assert set(EXCEPTION_NAMES) == {1, 2, 3, 4, 5, 6, 7, 8, 10, 11}


# -- reads from the server ------------------------------------------------------------------------
@pytest.mark.parametrize("word_order, float_at, uint_at", [("big", 0, 10), ("little", 2, 12)])
def test_float32_import_and_uint32_export(server, word_order, float_at, uint_at):
    sample = read(server.port,
                  **{"import": {"address": float_at, "type": "float32", "word_order": word_order},
                     "export": {"address": uint_at, "type": "uint32", "word_order": word_order,
                                "scale": 0.001}})
    assert (sample.import_kwh, sample.export_kwh) == (1234.5, 4000.0)
    assert sample.ts_utc.tzinfo is not None


def test_only_the_configured_counter(server):
    sample = read(server.port, export={"address": 30, "type": "float32"})
    assert (sample.import_kwh, sample.export_kwh) == (None, 1234.56)


def test_input_and_holding_tables_are_distinct(server):
    sample = read(server.port, **{"import": {"table": "input", "address": 0, "type": "uint32", "scale": 0.001},
                                  "export": {"table": "holding", "address": 0, "type": "uint32"}})
    assert sample.import_kwh == 7777.0
    assert sample.export_kwh == float(0x449A5000)


def test_address_outside_the_device(server):
    with pytest.raises(SourceError) as e:
        read(server.port, **{"import": {"address": 40000, "type": "float32"}})
    assert str(e.value) == "ILLEGAL DATA ADDRESS at holding register 40000 of device 1"
    assert e.value.code == "modbus_exception"
    with pytest.raises(SourceError, match=r"^ILLEGAL DATA ADDRESS at input register 49 of device 1$"):
        read(server.port, **{"import": {"table": "input", "address": 49, "type": "uint32"}})


def test_wrong_device_id(server):
    # pymodbus' server answers a device it does not have with SERVER DEVICE FAILURE (exception 4)
    with pytest.raises(SourceError) as e:
        read(server.port, device_id=7, **{"import": {"address": 0}})
    assert str(e.value) == "SERVER DEVICE FAILURE at holding register 0 of device 7"


@pytest.mark.parametrize("code, name", [(ExcCodes.DEVICE_BUSY, "SERVER DEVICE BUSY"),
                                        (ExcCodes.GATEWAY_NO_RESPONSE,
                                         "GATEWAY TARGET DEVICE FAILED TO RESPOND")])
def test_exception_responses_by_name(server, code, name):
    server.behaviour.exception = code
    with pytest.raises(SourceError) as e:
        read(server.port, **{"import": {"table": "input", "address": 0, "type": "uint32"}})
    assert str(e.value) == f"{name} at input register 0 of device 1"


def test_values_that_are_not_counters(server):
    with pytest.raises(SourceError) as e:
        read(server.port, **{"import": {"address": 20}})
    assert str(e.value) == "holding register 20 gives -3.5 kWh: not a counter"
    assert e.value.code == "bad_value"
    with pytest.raises(SourceError, match=r"^holding register 22 gives nan kWh: not a counter$"):
        read(server.port, **{"import": {"address": 22}})


def test_nothing_configured():
    with pytest.raises(SourceError, match="no import or export register"):
        read(free_port())


def test_nothing_listens():
    port = free_port()
    with pytest.raises(SourceError) as e:
        read(port, **{"import": {"address": 0}})
    assert str(e.value) == f"cannot connect to 127.0.0.1:{port} (connection refused)"
    assert e.value.code == "connect_failed"


def test_timeout_then_the_next_read_works(server):
    meter = ModbusMeter(settings(server.port, timeout_s=0.3, **{"import": {"address": 0}}))
    try:
        server.behaviour.delay_s = 1.0
        started = time.monotonic()
        with pytest.raises(SourceError) as e:
            meter.read()
        assert str(e.value) == "timed out after 0.3 s reading holding register 0 of device 1"
        assert e.value.code == "timeout"
        assert time.monotonic() - started < 0.9
        assert not meter.connected              # a late answer must not be taken for the next one
        server.behaviour.delay_s = 0.0
        assert meter.read().import_kwh == 1234.5
    finally:
        meter.close()


def test_one_connection_reused_and_replaced_after_a_restart(server):
    meter = ModbusMeter(settings(server.port, **{"import": {"address": 0}, "export": {"address": 30}}))
    try:
        assert meter.read().import_kwh == 1234.5
        assert meter.connected
        server.stop()
        with pytest.raises(SourceError) as e:
            meter.read()
        assert str(e.value) == f"cannot connect to 127.0.0.1:{server.port} (connection refused)"
        server.start()
        sample = meter.read()                   # the same meter connects again by itself
        assert (sample.import_kwh, sample.export_kwh) == (1234.5, 1234.56)
        server.stop()
        server.start()                          # the device dropped the idle connection
        assert meter.read().import_kwh == 1234.5   # replaced without an error
    finally:
        meter.close()
    assert not meter.connected


def test_source_polls_and_recovers_after_the_server_restarts(server, caplog):
    caplog.set_level(logging.INFO, logger="ingest.modbus")
    samples, failures = [], []
    got_sample, got_failure = threading.Event(), threading.Event()

    def submit(meter_id, sample):
        samples.append((meter_id, sample))
        got_sample.set()

    def failed(meter_id, error):
        failures.append((meter_id, str(error)))
        got_failure.set()

    source = ModbusSource("m-7", "Heat pump", settings(server.port, interval_s=1, timeout_s=1,
                                                       **{"import": {"address": 30}}), submit, failed)
    source.start()
    try:
        assert got_sample.wait(5)
        assert samples[0][0] == "m-7" and samples[0][1].import_kwh == 1234.56
        assert (f"Modbus data received for meter 'Heat pump': 1234.56 kWh import from 127.0.0.1:{server.port}"
                in caplog.messages)
        server.stop()
        assert got_failure.wait(5)
        assert failures[0] == ("m-7", f"cannot connect to 127.0.0.1:{server.port} (connection refused)")
        got_sample.clear()
        server.start()
        assert got_sample.wait(5)               # back-off is capped at the 1 s interval
        assert source.alive
        assert any("answers again" in m for m in caplog.messages)
        assert sum("connection refused" in m for m in caplog.messages) == 1   # warned once, not per retry
    finally:
        source.stop()
    assert not source.alive and not source.meter.connected


def test_read_once_closes_its_connection(server):
    sample = read(server.port, **{"import": {"address": 10, "type": "uint32", "scale": 0.001}})
    assert sample.import_kwh == 4000.0
    deadline = time.monotonic() + 5
    while server.connections() and time.monotonic() < deadline:
        time.sleep(0.02)
    assert server.connections() == 0
