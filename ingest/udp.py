"""UDP source: a Miniserver's virtual UDP output sends the counter whenever it changes.

Datagram formats (one reading each, UTF-8 text, at most 8 KiB):

* ``json``: ``{"value": 1234.56}`` — the field named in the settings, else the first of
  ``power_kwh``, ``power``, ``value``, ``kwh``, ``energy``; an optional ``ts`` or ``timestamp``
  (ISO 8601, or Unix seconds) gives the reading's time;
* ``csv``: ``1234.56,2025-01-15T10:30:00`` or just ``1234.56`` (``;`` separates too);
* ``raw``: ``1234.56`` (a unit such as ``kWh`` may follow).

A timestamp without a UTC offset is the community's local time; a local time that a DST change
makes ambiguous or nonexistent is refused (the sender must add the offset). Without a timestamp the
reading is taken at receipt.

One ``UdpListener`` owns one port. Several meters may share it when their senders differ: a route
with a ``sender_ip`` takes that address's datagrams, a route without one takes those of every other
address. A datagram no route accepts is counted per address in ``foreign`` and dropped (logged at
most once a minute per address). A datagram that cannot be read is reported to ``failed`` and
never ends the listener.
"""
from __future__ import annotations

import errno
import ipaddress
import json
import logging
import select
import socket
import threading
import time
from collections import Counter
from datetime import datetime, timezone
from typing import Callable, NamedTuple
from zoneinfo import ZoneInfo

from ingest.loxone_http import json_value, kwh_text
from ingest.sources import Sample, SourceError, number

log = logging.getLogger(__name__)

MAX_DATAGRAM = 8 * 1024
_RECV = 65536                   # big enough to see (and refuse) any oversized datagram whole
_LOG_EVERY_S = 60.0


class UdpRoute(NamedTuple):
    meter_id: str
    name: str | None
    meter_type: str
    sender_ip: str | None
    fmt: str = "json"
    field: str | None = None


# -- parsing ------------------------------------------------------------------------------------

def parse_timestamp(value, tz: ZoneInfo) -> datetime:
    """A reading's time in UTC: ISO 8601 (local time of ``tz`` without an offset) or Unix seconds
    (milliseconds when it is too large for seconds)."""
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        secs = float(value)
        if secs > 1e11:
            secs /= 1000.0
        try:
            return datetime.fromtimestamp(secs, timezone.utc)
        except (OverflowError, OSError, ValueError):
            raise SourceError(f"timestamp: {value!r} is not a Unix time", "bad_timestamp") from None
    from ingest.csv_files import parse_timestamp as iso_timestamp    # one rule for local times
    from ingest.readings import ReadingError
    try:
        return iso_timestamp(str(value if value is not None else "")[:64], tz)
    except ReadingError as exc:
        raise SourceError(str(exc), "bad_timestamp") from None


def _text(data: bytes) -> str:
    if len(data) > MAX_DATAGRAM:
        raise SourceError(f"datagram of {len(data)} bytes is over the 8 KiB limit", "too_large")
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError:
        raise SourceError(f"datagram of {len(data)} bytes is not UTF-8 text (starts with {data[:16]!r})",
                          "not_text") from None
    text = text.strip().strip("\x00").strip()
    if not text:
        raise SourceError("datagram is empty", "empty")
    if any(ord(c) < 32 and c not in "\t\r\n" for c in text):
        raise SourceError(f"datagram is not text (control characters in {text[:32]!r})", "not_text")
    return text


def parse_datagram(data: bytes, fmt: str, field: str | None, tz: ZoneInfo) -> tuple[float, datetime | None]:
    """The counter (kWh) in one datagram and its UTC time when the datagram carries one."""
    text = _text(data)
    if fmt == "json":
        try:
            obj = json.loads(text)
        except ValueError as exc:
            raise SourceError(f"datagram is not valid JSON ({exc}): {text[:40]!r}", "bad_json") from None
        value = json_value(obj, field)
        ts = None
        if isinstance(obj, dict):
            raw_ts = obj.get("ts", obj.get("timestamp"))
            if raw_ts is not None:
                ts = parse_timestamp(raw_ts, tz)
        return value, ts
    if fmt == "csv":
        line = text.splitlines()[0].strip()
        sep = ";" if ";" in line else ","
        parts = [p.strip() for p in line.split(sep)]
        if len(parts) > 2:
            raise SourceError(f"csv datagram has {len(parts)} fields; expected value[,timestamp]: "
                              f"{line[:40]!r}", "bad_csv")
        value = number(parts[0], "value")
        ts = parse_timestamp(parts[1], tz) if len(parts) == 2 and parts[1] else None
        return value, ts
    if fmt == "raw":
        return number(text, "value"), None
    raise SourceError(f"unknown datagram format {fmt!r} (json, csv or raw)", "bad_format")


# -- addresses ----------------------------------------------------------------------------------

def _norm_ip(addr: str) -> str:
    """An address as compared with ``sender_ip``: canonical text, IPv4-mapped IPv6 as IPv4."""
    try:
        ip = ipaddress.ip_address(addr.split("%", 1)[0])
    except ValueError:
        return addr
    if isinstance(ip, ipaddress.IPv6Address) and ip.ipv4_mapped is not None:
        ip = ip.ipv4_mapped
    return str(ip)


def _sender(sender_ip: str | None) -> str | None:
    if not sender_ip:
        return None
    try:
        return _norm_ip(str(ipaddress.ip_address(sender_ip.strip())))
    except ValueError:
        pass
    try:              # a host name: resolved once, when the listener starts
        return _norm_ip(socket.getaddrinfo(sender_ip.strip(), None, type=socket.SOCK_DGRAM)[0][4][0])
    except OSError:
        raise SourceError(f"sender IP {sender_ip!r} is not an IP address and does not resolve",
                          "bad_sender") from None


def _family(host: str) -> int:
    return socket.AF_INET6 if ":" in host else socket.AF_INET


def _bind(host: str, port: int) -> socket.socket:
    sock = socket.socket(_family(host), socket.SOCK_DGRAM)
    try:
        if sock.family == socket.AF_INET6:
            sock.setsockopt(socket.IPPROTO_IPV6, socket.IPV6_V6ONLY, 0)   # "::" takes IPv4 too
        sock.bind((host, port))
    except OSError as exc:
        sock.close()
        if exc.errno == errno.EADDRINUSE:
            raise SourceError(f"UDP port {port} is in use by another program or another listener "
                              "(choose a free port)", "port_in_use") from None
        if exc.errno == errno.EACCES:
            raise SourceError(f"UDP port {port} needs administrator rights (choose a port above 1023)",
                              "port_denied") from None
        if exc.errno == errno.EADDRNOTAVAIL:
            raise SourceError(f"cannot listen on {host}: the address is not one of this machine's",
                              "bad_host") from None
        raise SourceError(f"cannot listen on UDP {host}:{port} ({exc.strerror or exc})", "bind") from None
    return sock


class _Throttle:
    """True at most once every ``every_s`` per key."""

    def __init__(self, every_s: float = _LOG_EVERY_S):
        self.every_s, self._last = every_s, {}

    def __call__(self, key) -> bool:
        now = time.monotonic()
        last = self._last.get(key)
        if last is not None and now - last < self.every_s:
            return False
        self._last[key] = now
        return True


# -- listener -----------------------------------------------------------------------------------

class UdpListener:
    """Receives one UDP port's datagrams in a thread of its own and hands each reading to
    ``submit(meter_id, sample)``; unreadable datagrams go to ``failed(meter_id, SourceError)``,
    datagrams from an address no route accepts to ``rejected(address)`` (when given)."""

    def __init__(self, host: str, port: int, routes: list, tz: ZoneInfo,
                 submit: Callable[[str, Sample], None], failed: Callable[[str, SourceError], None],
                 rejected: Callable[[str], None] | None = None):
        self.host, self.port, self.tz = host, int(port), tz
        self.routes = [UdpRoute(*r) for r in routes]
        if not self.routes:
            raise ValueError("a UDP listener needs at least one meter")
        self._submit, self._failed, self._rejected = submit, failed, rejected
        self._by_sender: dict[str, UdpRoute] = {}
        self._anyone: UdpRoute | None = None
        for r in self.routes:
            key = _sender(r.sender_ip)
            other = self._anyone if key is None else self._by_sender.get(key)
            if other is not None:
                who = "any sender" if key is None else key
                raise SourceError(f"meters '{other.name or other.meter_id}' and '{r.name or r.meter_id}' "
                                  f"both listen on UDP port {self.port} for {who}; give each its "
                                  "sender IP", "port_conflict")
            if key is None:
                self._anyone = r
            else:
                self._by_sender[key] = r
        self.received: Counter = Counter()      # meter id -> readings handed on
        self.errors: Counter = Counter()        # meter id -> unreadable datagrams
        self.foreign: Counter = Counter()       # address -> dropped datagrams
        self.last_error: dict[str, str] = {}
        self._log_foreign, self._log_data, self._log_error = _Throttle(), _Throttle(), _Throttle()
        self._sock: socket.socket | None = None
        self._wake: tuple[socket.socket, socket.socket] | None = None     # ends the wait at stop()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def route_for(self, addr: str) -> UdpRoute | None:
        return self._by_sender.get(_norm_ip(addr), self._anyone)

    def start(self) -> "UdpListener":
        if self._thread is not None:
            raise RuntimeError(f"UDP listener on port {self.port} already started")
        self._sock = _bind(self.host, self.port)
        self._wake = socket.socketpair()
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, name=f"udp-{self.port}", daemon=True)
        self._thread.start()
        for r in self.routes:
            log.info("UDP listener started for meter '%s' on port %d%s", r.name or r.meter_id, self.port,
                     f" (sender {r.sender_ip})" if r.sender_ip else "")
        return self

    def stop(self, timeout: float = 5.0) -> None:
        self._stop.set()
        if self._wake is not None:
            try:
                self._wake[1].send(b"x")
            except OSError:
                pass
        if self._thread is not None:
            self._thread.join(timeout)
            self._thread = None
        for s in (self._sock, *(self._wake or ())):
            if s is not None:
                s.close()
        self._sock, self._wake = None, None
        log.info("UDP listener on port %d stopped", self.port)

    @property
    def alive(self) -> bool:
        return self._thread is not None and self._thread.is_alive()

    def _run(self) -> None:
        sock, wake = self._sock, self._wake[0]
        while not self._stop.is_set():
            try:
                ready, _, _ = select.select([sock, wake], [], [], 1.0)
                if sock not in ready:
                    continue
                data, addr = sock.recvfrom(_RECV)
            except OSError as exc:
                if self._stop.is_set():
                    break
                log.warning("UDP port %d: receive failed: %s", self.port, exc)
                self._stop.wait(0.5)
                continue
            try:
                self.handle(data, addr[0])
            except Exception:                  # a bug must not end the listener
                log.exception("UDP port %d: unexpected error with a datagram from %s", self.port, addr[0])

    def handle(self, data: bytes, addr: str) -> None:
        """One datagram from ``addr`` (the receive loop's work, callable directly)."""
        route = self.route_for(addr)
        if route is None:
            sender = _norm_ip(addr)
            self.foreign[sender] += 1
            if self._log_foreign(sender):
                log.warning("UDP port %d: datagram from %s dropped: no meter on this port takes data from "
                            "that address (%d so far)", self.port, sender, self.foreign[sender])
            if self._rejected is not None:
                self._rejected(sender)
            return
        label = route.name or route.meter_id
        try:
            value, ts = parse_datagram(data, route.fmt, route.field, self.tz)
        except SourceError as exc:
            self.errors[route.meter_id] += 1
            self.last_error[route.meter_id] = str(exc)
            if self._log_error((route.meter_id, str(exc))):
                log.warning("UDP datagram for meter '%s' from %s refused: %s", label, addr, exc)
            self._failed(route.meter_id, exc)
            return
        self.received[route.meter_id] += 1
        self.last_error.pop(route.meter_id, None)
        (log.info if self._log_data(route.meter_id) else log.debug)(
            "UDP data received for meter '%s': %s kWh from %s", label, kwh_text(value), _norm_ip(addr))
        self._submit(route.meter_id, Sample.single(value, route.meter_type, ts))


def read_udp_once(settings, meter_type: str, tz: ZoneInfo, timeout_s: float = 30) -> Sample:
    """Waits on ``settings.port`` (config.UdpSettings) for one datagram from the allowed sender and
    reads it ("test connection"); datagrams from other addresses are ignored."""
    sender = _sender(settings.sender_ip)
    sock = _bind(settings.host, settings.port)
    ignored: Counter = Counter()
    deadline = time.monotonic() + timeout_s
    try:
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                break
            ready, _, _ = select.select([sock], [], [], left)
            if not ready:
                break
            data, addr = sock.recvfrom(_RECV)
            who = _norm_ip(addr[0])
            if sender is not None and who != sender:
                ignored[who] += 1
                continue
            value, ts = parse_datagram(data, settings.format, settings.field, tz)
            log.info("UDP data received on port %d: %s kWh from %s", settings.port, kwh_text(value), who)
            return Sample.single(value, meter_type, ts)
    finally:
        sock.close()
    note = ""
    if ignored:
        seen = ", ".join(f"{a} ×{n}" for a, n in ignored.most_common(3))
        note = f" (ignored datagrams from {seen}; only {sender} is accepted)"
    raise SourceError(f"no datagram on UDP port {settings.port} within {timeout_s:g} s{note}", "timeout")
