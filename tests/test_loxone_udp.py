"""Loxone HTTP polling and the UDP listener against real peers on free localhost ports: an
``http.server`` playing the Miniserver, and UDP senders bound to 127.0.0.1/.2/.3."""
from __future__ import annotations

import base64
import json
import logging
import queue
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from zoneinfo import ZoneInfo

import pytest

from config import LoxoneHttpSettings, UdpSettings
from ingest.loxone_http import LoxoneHttpSource, parse_http_body, read_http
from ingest.sources import SourceError
from ingest.udp import UdpListener, parse_datagram, read_udp_once
from tests.peers import free_port

TZ = ZoneInfo("Europe/Zurich")
XML_OK = '<?xml version="1.0" encoding="utf-8"?><LL control="dev/sps/io/0f12a3b4/state" value="1234.56kWh" Code="200"/>'
XML_500 = '<LL control="dev/sps/io/0f12a3b4/state" value="" Code="500"/>'
HTML = "<!DOCTYPE html><html><head><title>Error</title></head><body><h1>Not here</h1></body></html>"


# -- the Miniserver ---------------------------------------------------------------------------------

class Miniserver:
    """Answers per path; ``flaky`` follows ``self.flaky_ok``; records the Authorization headers."""

    def __init__(self):
        self.auth_seen: list[str | None] = []
        self.flaky_ok = True
        self.flaky_value = 100.0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def log_message(self, *args):
                pass

            def send(self, status: int, body: str, ctype: str) -> None:
                data = body.encode()
                self.send_response(status)
                self.send_header("Content-Type", ctype)
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def do_GET(self):
                path = self.path
                if path.startswith("/json/"):
                    name = path.split("/")[2]
                    self.send(200, json.dumps({"other": 7, name: 1234.56}), "application/json")
                elif path == "/ll-json":
                    self.send(200, json.dumps({"LL": {"control": "dev/sps/io/x/state", "value": "1234.56kWh",
                                                      "Code": "200"}}), "application/json")
                elif path == "/nofield":
                    self.send(200, '{"temperature": 21.5}', "application/json")
                elif path == "/xml":
                    self.send(200, XML_OK, "text/xml")
                elif path == "/xml500":
                    self.send(200, XML_500, "text/xml")
                elif path == "/html":
                    self.send(200, HTML, "text/html")
                elif path == "/missing":
                    self.send(404, HTML, "text/html")
                elif path == "/text":
                    self.send(200, "1234.56 kWh\n", "text/plain")
                elif path == "/auth":
                    header = self.headers.get("Authorization")
                    outer.auth_seen.append(header)
                    good = "Basic " + base64.b64encode(b"admin:s3cret").decode()
                    if header == good:
                        self.send(200, '{"value": 42}', "application/json")
                    else:
                        self.send(401, "unauthorized", "text/plain")
                elif path == "/slow":
                    time.sleep(1.5)
                    self.send(200, '{"value": 1}', "application/json")
                elif path == "/flaky":
                    if outer.flaky_ok:
                        self.send(200, json.dumps({"value": outer.flaky_value}), "application/json")
                    else:
                        self.send(500, "oops", "text/plain")
                else:
                    self.send(404, "no", "text/plain")

        self.server = ThreadingHTTPServer(("127.0.0.1", free_port()), Handler)
        self.server.daemon_threads = True
        self.port = self.server.server_address[1]
        self.thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self.thread.start()

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()


@pytest.fixture(scope="module")
def mini():
    m = Miniserver()
    yield m
    m.close()


def http(url: str, **kw) -> LoxoneHttpSettings:
    return LoxoneHttpSettings(url=url, **kw)


# -- HTTP: parsing and single reads -----------------------------------------------------------------

@pytest.mark.parametrize("name", ["power_kwh", "power", "value", "kwh", "energy"])
def test_http_json_field_names(mini, name):
    sample = read_http(http(mini.url(f"/json/{name}")), "apartment")
    assert sample.import_kwh == 1234.56 and sample.export_kwh is None
    assert sample.ts_utc.tzinfo is not None


def test_http_named_field_and_solar_is_export(mini):
    sample = read_http(http(mini.url("/json/meter"), field="meter"), "solar")
    assert sample.export_kwh == 1234.56 and sample.import_kwh is None
    with pytest.raises(SourceError, match=r"^no numeric field power_kwh/power/value/kwh/energy in the response$"):
        read_http(http(mini.url("/nofield")), "apartment")
    with pytest.raises(SourceError, match=r"^no numeric field meter in the response$"):
        read_http(http(mini.url("/json/value"), field="meter"), "apartment")


def test_http_miniserver_answers(mini):
    assert read_http(http(mini.url("/xml")), "total").import_kwh == 1234.56
    assert read_http(http(mini.url("/ll-json")), "apartment").import_kwh == 1234.56
    assert read_http(http(mini.url("/text")), "apartment").import_kwh == 1234.56
    with pytest.raises(SourceError, match=r"^the Miniserver answered Code 500 for dev/sps/io/0f12a3b4/state$") as e:
        read_http(http(mini.url("/xml500")), "apartment")
    assert e.value.code == "miniserver_code"


def test_http_html_and_status_errors(mini):
    with pytest.raises(SourceError) as e:
        read_http(http(mini.url("/html")), "apartment")
    assert str(e.value) == "the response is an HTML page, not a meter value (check the URL)"
    with pytest.raises(SourceError, match=r"^HTTP 404 from 127\.0\.0\.1$"):
        read_http(http(mini.url("/missing")), "apartment")


def test_http_basic_auth(mini):
    mini.auth_seen.clear()
    with pytest.raises(SourceError, match=r"^HTTP 401 from 127\.0\.0\.1$") as e:
        read_http(http(mini.url("/auth")), "apartment")
    assert e.value.code == "http_status"
    with pytest.raises(SourceError, match=r"^HTTP 401 from 127\.0\.0\.1$"):
        read_http(http(mini.url("/auth"), username="admin", password="wrong"), "apartment")
    ok = read_http(http(mini.url("/auth"), username="admin", password="s3cret"), "apartment")
    assert ok.import_kwh == 42
    assert mini.auth_seen[0] is None
    assert mini.auth_seen[1] == "Basic " + base64.b64encode(b"admin:wrong").decode()


def test_http_timeout(mini):
    t0 = time.monotonic()
    with pytest.raises(SourceError) as e:
        read_http(http(mini.url("/slow"), timeout_s=0.3), "apartment")
    assert str(e.value) == "timed out after 0.3 s" and e.value.code == "timeout"
    assert time.monotonic() - t0 < 1.2


def test_http_connection_refused():
    port = free_port()               # nothing listens there
    with pytest.raises(SourceError) as e:
        read_http(http(f"http://127.0.0.1:{port}/dev/sps/io/x/state"), "apartment")
    assert str(e.value) == f"cannot connect to 127.0.0.1:{port} (connection refused)"
    assert e.value.code == "connect"


@pytest.mark.parametrize("body, ctype, message", [
    ("<LL value=\"12\" Code=\"403\"/>", "text/xml", "the Miniserver answered Code 403"),
    ('{"LL": {"control": "dev/sps/io/x", "Code": "404"}}', None, "the Miniserver answered Code 404 for dev/sps/io/x"),
    ('{"value": -3}', "application/json", "value: -3.0 is not a counter value (finite, 0 or more)"),
    ('{"value": "n/a"}', "application/json", "value: 'n/a' is not a number"),
    ('{"value": 1', "application/json", None),
    ("<LL", "text/xml", None),
    ("", "text/plain", "the response is empty"),
    ("Welcome", "text/plain", "the response is not a number, JSON or the Miniserver's XML: 'Welcome'"),
    ("<html><body>login</body></html>", "text/xml", "the response is an HTML page, not a meter value (check the URL)"),
])
def test_parse_http_body_errors(body, ctype, message):
    with pytest.raises(SourceError) as e:
        parse_http_body(body.encode(), ctype, None)
    if message is not None:
        assert str(e.value) == message
    with pytest.raises(SourceError):
        parse_http_body(b"\xff\xfe\x00\x01", None, None)


def test_parse_http_body_variants():
    assert parse_http_body('{"LL": {"value": "1\'234.5 kWh"}}', None, None) == 1234.5
    assert parse_http_body(b'{"power": {"value": 7.5}}', "application/json", None) == 7.5
    assert parse_http_body(b'{"power_kwh": 1, "value": 2}', None, None) == 1     # search order
    assert parse_http_body(b'{"power_kwh": 1, "value": 2}', None, "value") == 2
    assert parse_http_body(b"<meter><value>9.25</value></meter>", "text/xml", None) == 9.25
    assert parse_http_body(b"  17 ", None, None) == 17


# -- HTTP: the polling source -----------------------------------------------------------------------

def test_polling_source_emits_fails_and_recovers(mini, caplog):
    caplog.set_level(logging.INFO, logger="ingest.loxone_http")
    samples, failures = queue.Queue(), queue.Queue()
    mini.flaky_ok, mini.flaky_value = True, 1234.56
    settings = http(mini.url("/flaky"), timeout_s=2).model_copy(update={"interval_s": 0.2})
    src = LoxoneHttpSource("m-solar", "Solar", settings, "solar", samples.put, failures.put)
    src.start()
    try:
        first = samples.get(timeout=5)
        assert first.export_kwh == 1234.56
        mini.flaky_ok = False
        err = failures.get(timeout=5)
        assert isinstance(err, SourceError) and str(err) == "HTTP 500 from 127.0.0.1"
        failures.get(timeout=5)                       # retried, still polling
        assert src.alive
        mini.flaky_value, mini.flaky_ok = 1240.0, True
        deadline = time.monotonic() + 5
        while True:
            s = samples.get(timeout=max(0.01, deadline - time.monotonic()))
            if s.export_kwh == 1240.0:
                break
        assert src.alive and src.last_error is None and src.failures >= 2
    finally:
        src.stop()
    assert not src.alive
    text = caplog.text
    assert "HTTP data received for meter 'Solar': 1234.56 kWh from 127.0.0.1" in text
    assert "HTTP read failed for meter 'Solar': HTTP 500 from 127.0.0.1" in text


def test_polling_survives_a_failing_consumer(mini):
    calls = []

    def submit(sample):
        calls.append(sample)
        raise RuntimeError("pipeline closed")

    mini.flaky_ok = True
    settings = http(mini.url("/flaky")).model_copy(update={"interval_s": 0.1})
    src = LoxoneHttpSource("m1", None, settings, "apartment", submit, lambda e: None).start()
    try:
        deadline = time.monotonic() + 5
        while len(calls) < 2 and time.monotonic() < deadline:
            time.sleep(0.02)
        assert len(calls) >= 2 and src.alive
    finally:
        src.stop()


# -- UDP --------------------------------------------------------------------------------------------

def free_udp_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def send(port: int, data: bytes, src: str = "127.0.0.1") -> None:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as s:
        s.bind((src, 0))
        s.sendto(data, ("127.0.0.1", port))


class Sink:
    def __init__(self):
        self.samples, self.failures, self.rejected = queue.Queue(), queue.Queue(), queue.Queue()

    def submit(self, meter_id, sample):
        self.samples.put((meter_id, sample))

    def failed(self, meter_id, exc):
        self.failures.put((meter_id, exc))

    def reject(self, addr):
        self.rejected.put(addr)


def wait_for(cond, timeout=5.0):
    deadline = time.monotonic() + timeout
    while not cond():
        if time.monotonic() > deadline:
            raise AssertionError("condition not reached")
        time.sleep(0.01)


@pytest.mark.parametrize("fmt, payload, value, ts", [
    ("json", b'{"value": 1234.56}', 1234.56, None),
    ("json", b'{"power_kwh": "1234.56 kWh", "ts": "2025-01-15T10:30:00"}', 1234.56,
     datetime(2025, 1, 15, 9, 30, tzinfo=timezone.utc)),
    ("csv", b"1234.56,2025-01-15T10:30:00\n", 1234.56, datetime(2025, 1, 15, 9, 30, tzinfo=timezone.utc)),
    ("csv", b"1234.56,2025-07-15T10:30:00+02:00", 1234.56, datetime(2025, 7, 15, 8, 30, tzinfo=timezone.utc)),
    ("csv", b"1234.56", 1234.56, None),
    ("raw", b"1234.56\n", 1234.56, None),
    ("raw", b"1234.56 kWh", 1234.56, None),
])
def test_udp_formats_and_routing(fmt, payload, value, ts, caplog):
    caplog.set_level(logging.INFO, logger="ingest.udp")
    port, sink = free_udp_port(), Sink()
    routes = [("apt1", "Apartment 1", "apartment", "127.0.0.1", fmt, None),
              ("pv", "Solar", "solar", "127.0.0.2", "raw", None)]
    lst = UdpListener("127.0.0.1", port, routes, TZ, sink.submit, sink.failed, sink.reject).start()
    try:
        send(port, payload)
        meter, sample = sink.samples.get(timeout=5)
        assert meter == "apt1" and sample.import_kwh == value and sample.export_kwh is None
        if ts is None:
            assert abs((datetime.now(timezone.utc) - sample.ts_utc).total_seconds()) < 5
        else:
            assert sample.ts_utc == ts
        send(port, b"88.5", src="127.0.0.2")
        meter, sample = sink.samples.get(timeout=5)
        assert meter == "pv" and sample.export_kwh == 88.5 and sample.import_kwh is None
        send(port, payload, src="127.0.0.3")
        assert sink.rejected.get(timeout=5) == "127.0.0.3"
        send(port, payload, src="127.0.0.3")
        wait_for(lambda: lst.foreign["127.0.0.3"] == 2)
        assert sink.samples.empty() and sink.failures.empty()
    finally:
        lst.stop()
    text = caplog.text
    assert f"UDP listener started for meter 'Apartment 1' on port {port}" in text
    assert "UDP data received for meter 'Apartment 1': 1234.56 kWh from 127.0.0.1" in text
    assert text.count("datagram from 127.0.0.3 dropped") == 1        # at most once a minute


@pytest.mark.parametrize("fmt, data, message", [
    ("json", b"\xff\xfe\x00\x81garbage", "datagram of 11 bytes is not UTF-8 text"),
    ("raw", b"\x01\x02\x03", "datagram is not text"),
    ("json", b"x" * 9000, "datagram of 9000 bytes is over the 8 KiB limit"),
    ("raw", b"-12.5", "value: -12.5 is not a counter value (finite, 0 or more)"),
    ("json", b'{"value": 1', "datagram is not valid JSON"),
    ("json", b'{"temp": 1}', "no numeric field power_kwh/power/value/kwh/energy in the response"),
    ("csv", b"100,2025-10-26T02:30:00",
     "timestamp: local time 2025-10-26T02:30:00 occurs twice in Europe/Zurich (DST change); add the UTC offset"),
    ("csv", b"100,2025-03-30T02:30:00",
     "timestamp: local time 2025-03-30T02:30:00 does not exist in Europe/Zurich (DST change); add the UTC offset"),
    ("csv", b"100,yesterday", "timestamp: 'yesterday' is not ISO 8601"),
    ("csv", b"1,2,3", "csv datagram has 3 fields"),
])
def test_udp_bad_datagrams_reported_listener_survives(fmt, data, message):
    port, sink = free_udp_port(), Sink()
    lst = UdpListener("127.0.0.1", port, [("apt1", "Apartment 1", "apartment", "127.0.0.1", fmt, None)],
                      TZ, sink.submit, sink.failed).start()
    try:
        send(port, data)
        meter, exc = sink.failures.get(timeout=5)
        assert meter == "apt1" and isinstance(exc, SourceError)
        assert str(exc).startswith(message), str(exc)
        good = {"json": b'{"value": 5}', "csv": b"5,2025-10-26T02:30:00+01:00", "raw": b"5"}[fmt]
        send(port, good)
        meter, sample = sink.samples.get(timeout=5)
        assert sample.import_kwh == 5 and lst.alive
        assert lst.errors["apt1"] == 1 and lst.received["apt1"] == 1
    finally:
        lst.stop()


def test_udp_dst_with_offset_accepted():
    _, ts = parse_datagram(b"100,2025-10-26T02:30:00+02:00", "csv", None, TZ)
    _, ts2 = parse_datagram(b"100;2025-10-26T02:30:00+01:00", "csv", None, TZ)
    assert (ts2 - ts).total_seconds() == 3600 and ts.tzinfo is not None
    assert parse_datagram(b'{"value": 3, "timestamp": 1736937000}', "json", None, TZ)[1] == \
        datetime(2025, 1, 15, 10, 30, tzinfo=timezone.utc)


def test_udp_wildcard_route_and_consumer_errors():
    port, sink = free_udp_port(), Sink()
    calls = []

    def submit(meter_id, sample):
        calls.append(meter_id)
        if len(calls) == 1:
            raise RuntimeError("pipeline closed")
        sink.submit(meter_id, sample)

    routes = [("apt1", "Apartment 1", "apartment", "127.0.0.1", "raw", None),
              ("any", "Anyone", "total", None, "raw", None)]
    lst = UdpListener("127.0.0.1", port, routes, TZ, submit, sink.failed).start()
    try:
        send(port, b"1")                          # the consumer fails: logged, the listener goes on
        send(port, b"2")
        meter, sample = sink.samples.get(timeout=5)
        assert meter == "apt1" and sample.import_kwh == 2
        send(port, b"3", src="127.0.0.3")         # no exact route: the one without a sender IP takes it
        meter, sample = sink.samples.get(timeout=5)
        assert meter == "any" and sample.import_kwh == 3
        assert not lst.foreign and lst.alive
    finally:
        lst.stop()


def test_udp_route_conflicts():
    with pytest.raises(SourceError, match="both listen on UDP port 9 for 127.0.0.1"):
        UdpListener("127.0.0.1", 9, [("a", "A", "apartment", "127.0.0.1", "raw", None),
                                     ("b", "B", "apartment", "127.0.0.1", "raw", None)], TZ, print, print)
    with pytest.raises(SourceError, match="for any sender"):
        UdpListener("127.0.0.1", 9, [("a", "A", "apartment", None, "raw", None),
                                     ("b", "B", "apartment", None, "raw", None)], TZ, print, print)


def test_udp_port_in_use_and_stop_frees_port():
    port, sink = free_udp_port(), Sink()
    blocker = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    blocker.bind(("127.0.0.1", port))
    lst = UdpListener("127.0.0.1", port, [("a", "A", "apartment", None, "raw", None)], TZ, sink.submit, sink.failed)
    with pytest.raises(SourceError, match=rf"^UDP port {port} is in use") as e:
        lst.start()
    assert e.value.code == "port_in_use"
    blocker.close()
    lst.start()
    send(port, b"7")
    assert sink.samples.get(timeout=5)[1].import_kwh == 7
    t0 = time.monotonic()
    lst.stop()
    assert time.monotonic() - t0 < 2 and not lst.alive
    again = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    again.bind(("127.0.0.1", port))          # the port is free again
    again.close()


def test_read_udp_once():
    port = free_udp_port()
    settings = UdpSettings(port=port, sender_ip="127.0.0.1", format="csv", host="127.0.0.1")

    def later():
        time.sleep(0.2)
        send(port, b"999", src="127.0.0.2")      # not the allowed sender: ignored
        send(port, b"1234.56,2025-01-15T10:30:00")

    threading.Thread(target=later, daemon=True).start()
    sample = read_udp_once(settings, "solar", TZ, timeout_s=5)
    assert sample.export_kwh == 1234.56 and sample.ts_utc == datetime(2025, 1, 15, 9, 30, tzinfo=timezone.utc)

    with pytest.raises(SourceError) as e:
        read_udp_once(settings, "solar", TZ, timeout_s=0.3)
    assert str(e.value) == f"no datagram on UDP port {port} within 0.3 s" and e.value.code == "timeout"

    threading.Timer(0.1, send, args=(port, b"5", "127.0.0.3")).start()
    with pytest.raises(SourceError, match=r"\(ignored datagrams from 127\.0\.0\.3 ×1; only 127\.0\.0\.1 is accepted\)"):
        read_udp_once(settings, "solar", TZ, timeout_s=0.6)

    threading.Timer(0.1, send, args=(port, b"-1,2025-01-15T10:30:00")).start()
    with pytest.raises(SourceError, match="not a counter value"):
        read_udp_once(settings, "solar", TZ, timeout_s=5)
