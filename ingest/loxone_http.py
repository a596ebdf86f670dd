"""Loxone HTTP source: the app polls a Miniserver's virtual output
(``http://<miniserver>/dev/sps/io/<uuid>/state``) every ``interval_s`` (15 minutes by default).

The answer may be

* a JSON object: the field named in the settings, else the first of ``power_kwh``, ``power``,
  ``value``, ``kwh``, ``energy``; the Miniserver's own JSON answer
  ``{"LL": {"control": "...", "value": "1234.56kWh", "Code": "200"}}`` is read the same way;
* the Miniserver's XML answer ``<LL control="dev/sps/io/..." value="1234.56kWh" Code="200"/>``;
  a ``Code`` other than 200 is the Miniserver refusing the request (unknown output, no right);
* a bare number in text (``1234.56`` or ``1234.56 kWh``).

One read is one GET with the configured timeout (the whole answer must arrive within it) and basic
authentication when a user name is set. Proxy settings of the environment are not used: the
Miniserver is a device of the local network. Every failure is a ``SourceError`` whose message says
what went wrong ("HTTP 401 from 192.168.1.100", "timed out after 10 s",
"cannot connect to 192.168.1.100:80 (connection refused)").
"""
from __future__ import annotations

import errno
import json
import logging
import socket
import time
import xml.etree.ElementTree as ET
from datetime import timezone
from typing import Callable
from urllib.parse import urlsplit

import requests
import urllib3

from ingest.sources import FIELDS, PollingSource, Sample, SourceError, number

log = logging.getLogger(__name__)

MAX_BODY = 64 * 1024          # a meter value is a few bytes; anything bigger is the wrong URL
_ACCEPT = "application/json, text/xml;q=0.9, text/plain;q=0.8, */*;q=0.5"


def kwh_text(value: float) -> str:
    """A counter for log lines: 1234.56, 1234, 0.5 (no float noise, no exponent)."""
    return (f"{value:.6f}".rstrip("0").rstrip(".")) or "0"


def _short(text: str, limit: int = 60) -> str:
    text = " ".join(text.split())
    return repr(text if len(text) <= limit else text[:limit] + "…")


# -- parsing ------------------------------------------------------------------------------------

def field_names(field: str | None) -> tuple[str, ...]:
    return (field,) if field else FIELDS


def _no_field(field: str | None) -> SourceError:
    return SourceError(f"no numeric field {'/'.join(field_names(field))} in the response", "no_field")


def _code_error(code, control) -> SourceError:
    where = f" for {control}" if control else ""
    return SourceError(f"the Miniserver answered Code {code}{where}", "miniserver_code")


def _ci_get(mapping: dict, key: str):
    """``mapping[key]`` ignoring case (the Miniserver writes ``Code``, people write ``code``)."""
    if key in mapping:
        return mapping[key]
    low = key.lower()
    return next((v for k, v in mapping.items() if isinstance(k, str) and k.lower() == low), None)


def json_value(obj, field: str | None) -> float:
    """The counter in a decoded JSON document: a number (or numeric string) at the top, or the
    named field (else the first of FIELDS present) of an object; a field whose value is an object
    is read through its ``value``; the Miniserver's ``{"LL": {...}}`` answer is unwrapped and its
    ``Code`` checked."""
    if isinstance(obj, (int, float, str)) and not isinstance(obj, bool):
        return number(obj, "value")
    if not isinstance(obj, dict):
        raise SourceError(f"the response is a JSON {type(obj).__name__}, not an object with a value",
                          "no_field")
    ll = obj.get("LL")
    if isinstance(ll, dict):
        code = _ci_get(ll, "Code")
        if code is not None and str(code).strip() != "200":
            raise _code_error(str(code).strip(), _ci_get(ll, "control"))
    for scope in (obj, ll if isinstance(ll, dict) else None):
        if scope is None:
            continue
        for name in field_names(field):
            if name in scope:
                value = scope[name]
                if isinstance(value, dict) and "value" in value:
                    value = value["value"]
                return number(value, name)
    raise _no_field(field)


def _looks_like_html(text: str, content_type: str) -> bool:
    head = text[:2048].lower()
    if head.startswith("<!doctype html") or head.startswith("<html"):
        return True
    if "<html" in head or "<body" in head or "<head" in head:
        return True
    # an HTML content type with a body that is not XML either (a plain "Not found" page)
    return "html" in content_type and head.startswith("<") and not head.startswith("<?xml") \
        and not head.startswith("<ll")


def _xml_value(text: str, field: str | None) -> float:
    try:
        root = ET.fromstring(text)
    except ET.ParseError as exc:
        raise SourceError(f"the response is not well-formed XML ({exc})", "bad_xml") from None
    code = _ci_get(root.attrib, "Code")
    if code is not None and code.strip() != "200":
        raise _code_error(code.strip(), _ci_get(root.attrib, "control"))
    names = (field, "value") if field and field != "value" else ("value",) + tuple(
        n for n in FIELDS if n != "value")
    for name in names:
        value = _ci_get(root.attrib, name)
        if value is not None:
            return number(value, name)
    for name in names:                      # <meter><value>1234.56</value></meter>
        child = root.find(name)
        if child is not None and (child.text or "").strip():
            return number(child.text, name)
    if (root.text or "").strip() and not len(root):
        return number(root.text, root.tag)
    raise SourceError('the response is XML without a value (expected <LL value="..." Code="200"/>)',
                      "no_field")


def parse_http_body(body: bytes | str, content_type: str | None, field: str | None) -> float:
    """The counter in an HTTP answer (JSON, the Miniserver's XML, or a bare number)."""
    if isinstance(body, bytes):
        try:
            text = body.decode("utf-8-sig")
        except UnicodeDecodeError:
            raise SourceError(f"the response is not UTF-8 text (starts with {body[:16]!r})",
                              "not_text") from None
    else:
        text = body
    text = text.strip().strip("\x00").strip()
    ctype = (content_type or "").lower()
    if not text:
        raise SourceError("the response is empty", "empty")
    if _looks_like_html(text, ctype):
        raise SourceError("the response is an HTML page, not a meter value (check the URL)", "html_page")
    if text[0] in "{[" or "json" in ctype:
        try:
            obj = json.loads(text)
        except ValueError as exc:
            if text[0] in "{[":
                raise SourceError(f"the response is not valid JSON ({exc})", "bad_json") from None
        else:
            return json_value(obj, field)
    if text[0] == "<":
        return _xml_value(text, field)
    try:
        return number(text, "value")
    except SourceError as exc:
        if exc.code == "bad_value":
            raise
        raise SourceError(f"the response is not a number, JSON or the Miniserver's XML: {_short(text)}",
                          "not_a_number") from None


# -- reading ------------------------------------------------------------------------------------

def _secs(x: float) -> str:
    return f"{x:g}"


def _chain(exc: BaseException):
    """The exceptions behind a requests/urllib3 exception (reasons, causes, wrapped arguments)."""
    seen, todo = set(), [exc]
    while todo:
        e = todo.pop(0)
        if e is None or id(e) in seen:
            continue
        seen.add(id(e))
        yield e
        todo.extend([getattr(e, "reason", None), e.__cause__, e.__context__])
        todo.extend(a for a in getattr(e, "args", ()) if isinstance(a, BaseException))


def _os_error(exc: BaseException) -> OSError | None:
    """The socket error at the root of the chain."""
    return next((e for e in _chain(exc) if isinstance(e, OSError)
                 and not isinstance(e, requests.RequestException)
                 and (e.errno is not None or isinstance(e, socket.gaierror))), None)


def _timed_out(exc: BaseException) -> bool:
    # urllib3's NewConnectionError derives from its ConnectTimeoutError whatever the cause
    return any(isinstance(e, (TimeoutError, urllib3.exceptions.TimeoutError, requests.exceptions.Timeout))
               and not isinstance(e, urllib3.exceptions.NewConnectionError) for e in _chain(exc))


def _connect_reason(exc: BaseException) -> str:
    if _timed_out(exc):
        return "timed out"
    os_err = _os_error(exc)
    text = str(exc)
    if isinstance(os_err, socket.gaierror) or "NameResolutionError" in text or \
            "Name or service not known" in text or "getaddrinfo failed" in text:
        return "host name not found"
    if os_err is not None:
        known = {errno.ECONNREFUSED: "connection refused", errno.EHOSTUNREACH: "no route to host",
                 errno.ENETUNREACH: "network unreachable", errno.ECONNRESET: "connection reset",
                 errno.ETIMEDOUT: "timed out"}
        if os_err.errno in known:
            return known[os_err.errno]
        return os_err.strerror or type(os_err).__name__
    if "RemoteDisconnected" in text or "Connection aborted" in text:
        return "the connection was closed without an answer"
    return type(exc).__name__


def _new_session() -> requests.Session:
    s = requests.Session()
    s.trust_env = False            # no proxy or .netrc from the environment for a LAN device
    return s


def read_http(settings, meter_type: str, session: requests.Session | None = None, tz=timezone.utc) -> Sample:
    """One GET of ``settings.url`` (config.LoxoneHttpSettings) → a ``Sample`` for the meter's type;
    ``tz``: the community's zone, for a reading time without an offset."""
    url = settings.url
    parts = urlsplit(url)
    host = parts.hostname or url
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise SourceError(f"the URL {url!r} has an invalid port", "bad_url") from None
    timeout = float(settings.timeout_s)
    auth = (settings.username, settings.password or "") if settings.username else None
    own = session is None
    sess = _new_session() if own else session
    deadline = time.monotonic() + timeout
    try:
        try:
            with sess.get(url, timeout=timeout, auth=auth, stream=True, allow_redirects=True,
                          headers={"Accept": _ACCEPT, "Connection": "close"}) as resp:
                if not 200 <= resp.status_code < 300:
                    raise SourceError(f"HTTP {resp.status_code} from {host}", "http_status")
                chunks, size = [], 0
                for chunk in resp.iter_content(4096):
                    chunks.append(chunk)
                    size += len(chunk)
                    if size > MAX_BODY:
                        raise SourceError(f"the response is over {MAX_BODY // 1024} KiB, not a meter "
                                          "value (check the URL)", "too_large")
                    if time.monotonic() > deadline:
                        raise SourceError(f"timed out after {_secs(timeout)} s", "timeout")
                body, ctype = b"".join(chunks), resp.headers.get("Content-Type")
        except requests.exceptions.Timeout:
            raise SourceError(f"timed out after {_secs(timeout)} s", "timeout") from None
        except requests.exceptions.SSLError as exc:
            raise SourceError(f"TLS error with {host}: {_os_error(exc) or exc}", "tls") from None
        except requests.exceptions.ConnectionError as exc:
            reason = _connect_reason(exc)
            if reason == "timed out":
                raise SourceError(f"timed out after {_secs(timeout)} s", "timeout") from None
            where = f"[{host}]:{port}" if ":" in host else f"{host}:{port}"
            raise SourceError(f"cannot connect to {where} ({reason})", "connect") from None
        except (requests.exceptions.InvalidURL, requests.exceptions.MissingSchema,
                requests.exceptions.InvalidSchema) as exc:
            raise SourceError(f"the URL {url!r} is not valid ({exc})", "bad_url") from None
        except requests.RequestException as exc:
            raise SourceError(f"HTTP request to {host} failed: {type(exc).__name__}: {exc}",
                              "http_error") from None
    finally:
        if own:
            sess.close()
    return Sample.single(parse_http_body(body, ctype, settings.field), meter_type, _reading_time(body, tz))


def _reading_time(body: bytes, tz):
    """The reading's own time when a JSON answer carries one (``ts`` or ``timestamp``, as in UDP
    datagrams; a gateway in front of the meter may add it); otherwise None: the time of the read."""
    from ingest.udp import parse_timestamp
    try:
        obj = json.loads(body)
    except (ValueError, UnicodeDecodeError):
        return None
    raw = obj.get("ts", obj.get("timestamp")) if isinstance(obj, dict) else None
    return parse_timestamp(raw, tz) if raw is not None else None


class LoxoneHttpSource(PollingSource):
    """Polls one meter's virtual output: each sample goes to ``submit(sample)``, each failure to
    ``failed(SourceError)``; a failure is retried after a back-off and never ends polling."""

    def __init__(self, meter_id: str, name: str | None, settings, meter_type: str,
                 submit: Callable[[Sample], None], failed: Callable[[SourceError], None],
                 session: requests.Session | None = None, tz=timezone.utc):
        self.meter_id, self.label = meter_id, name or meter_id
        self.tz = tz
        self.settings, self.meter_type = settings, meter_type
        self.host = urlsplit(settings.url).hostname or settings.url
        self._submit, self._report = submit, failed
        self._session = session or _new_session()
        self.reads = 0
        self.failures = 0
        self.last_sample: Sample | None = None
        self.last_error: str | None = None
        super().__init__(f"loxone-http-{meter_id}", float(settings.interval_s), self.read_once,
                         self._on_sample, self._on_failure)

    def read_once(self) -> Sample:
        return read_http(self.settings, self.meter_type, self._session, self.tz)

    def stop(self, timeout: float = 10.0) -> None:
        super().stop(timeout)
        self._session.close()

    def _on_sample(self, sample: Sample) -> None:
        self.reads += 1
        self.last_sample = sample
        value = sample.export_kwh if sample.import_kwh is None else sample.import_kwh
        if self.last_error is not None:
            log.info("HTTP meter '%s' answers again (%s)", self.label, self.host)
        self.last_error = None
        log.info("HTTP data received for meter '%s': %s kWh from %s", self.label, kwh_text(value), self.host)
        try:
            self._submit(sample)
        except Exception:                   # the pipeline's problem must not end polling
            log.exception("HTTP meter '%s': handing the sample on failed", self.label)

    def _on_failure(self, exc: SourceError) -> None:
        self.failures += 1
        message = str(exc)
        if message != self.last_error:
            log.warning("HTTP read failed for meter '%s': %s", self.label, message)
        else:
            log.debug("HTTP read failed for meter '%s': %s", self.label, message)
        self.last_error = message
        try:
            self._report(exc)
        except Exception:
            log.exception("HTTP meter '%s': reporting the failure failed", self.label)
