"""Bursts from meters without a clock of their own, and the Meters page after a flood of unknown
meters, with real peers on free localhost ports.

Values timed by their arrival (Loxone HTTP polling, HTTP push) can be squeezed closer together
than the meter measured them; the plausibility rule then holds the ones that look too fast and
lets the readings that follow decide: every value that the trend confirms is stored, nothing is
rejected or counted as a counter reset. The peers: the ``http.server`` Miniserver of
tests/test_loxone_udp.py polled by the app's Loxone HTTP source; the web app served by waitress
taking pushed readings; mosquitto carrying 20,000 messages from 20,000 meters nobody registered,
then the Meters page's refresh asked for over HTTP.
"""
from __future__ import annotations

import json
import threading
import time

import numpy as np
import paho.mqtt.client as mqtt
import pandas as pd
import pytest
import requests

import registry
from billing.intervals import QUARANTINED, RESET, boundaries, ceil_boundary, floor_boundary, meter_intervals
from community import Community
from config import parse_config
from ingest.pipeline import MAX_UNKNOWN
from ingest.runtime import IngestRuntime
from peers import Mosquitto, free_port, wait_port
from test_access import callback_body
from test_ingest_timing import needs_mosquitto, wait_until
from test_loxone_udp import Miniserver
from webauth import MANAGER, add_users

HOUSE = "H1"
LIMIT_KW = 100.0                     # the default max_power_kw: 0.0278 kWh per second at most


def open_community(tmp_path, meters: list[dict], mqtt_settings: dict | None = None) -> Community:
    return Community.open(parse_config({
        "houses": {HOUSE: {"id": 1, "name": "House 1"}},
        "mqtt": mqtt_settings or {"enabled": False},
        "storage": {"data_dir": str(tmp_path / "data")},
        "meters": meters}, source="test"))


def assert_whole_series(c: Community, rt: IngestRuntime, meter_id: str, source: str, sent: list[float]) -> None:
    """Every value sent is stored, in order; accepted, none rejected, held or a reset; the pipeline's
    stats count as many received from ``source`` and no rejection; the intervals engine, judging
    the stored series, flags no reset and no quarantined reading."""
    rt.pipeline.flush()
    st = rt.pipeline.status()[meter_id]
    assert (st.accepted, st.rejected_total, st.resets, st.held, st.duplicates) == (len(sent), 0, 0, 0, 0), \
        (st.accepted, dict(st.rejected), st.last_rejection, st.resets, st.held)
    stats = rt.pipeline.stats.snapshot()
    assert stats.received[source] == len(sent) and sum(stats.rejected.values()) == 0, (stats.received, stats.rejected)
    df = c.store.read_readings(meter_id)
    assert df["import_kwh"].tolist() == pytest.approx(sent, abs=1e-9), f"{len(df)} of {len(sent)} stored"
    assert df["ts"].is_monotonic_increasing and df["ts"].is_unique
    first, last = pd.Timestamp(df["ts"].iloc[0]), pd.Timestamp(df["ts"].iloc[-1])
    bounds = boundaries(floor_boundary(first, 1), ceil_boundary(last, 1), 1)        # second by second
    res = meter_intervals(meter_id, df, bounds, LIMIT_KW, (True, False))
    assert not (res.flags & (RESET | QUARANTINED)).any() and res.quarantine.empty, res.quarantine
    covered = ~np.isnan(res.delta_ei_kwh)
    assert covered.any() and (res.delta_ei_kwh[covered] >= 0).all()
    assert c.store.read_quarantine().empty


# -- Loxone HTTP: the app polls a Miniserver ----------------------------------------------------------

class ScriptedMiniserver(Miniserver):
    """The Miniserver of test_loxone_udp.py whose ``/flaky`` output answers ``answer(k, t)`` at
    its k-th poll (t: time.monotonic() of the request): the value then, and how many seconds it
    takes to answer (a Miniserver busy elsewhere answers late: the value is the one of the
    request, the app times it by its arrival). Records every value it served."""

    def __init__(self, answer):
        self.answer = answer
        self.served: list[float] = []
        self._lock = threading.Lock()
        super().__init__()

    @property
    def flaky_value(self) -> float:
        with self._lock:
            value, delay = self.answer(len(self.served), time.monotonic())
            self.served.append(value)
        time.sleep(delay)
        return value

    @flaky_value.setter
    def flaky_value(self, _value) -> None:          # Miniserver.__init__ sets a constant one
        pass


def catch_up(k: int, _t: float) -> tuple[float, float]:
    """Per poll (1 s apart) 0.001 kWh (3.6 kW), but from the 6th poll on three answers 0.1 kWh
    apart (360 kW each: the Miniserver's counter catching up what it had not shown yet), then
    3.6 kW again: the trend from before the jump comes back after about ten polls."""
    steps = [0.001] * 5 + [0.1] * 3 + [0.001] * 200
    return round(100.0 + sum(steps[:k]), 6), 0.0


def slow_answer(t0: float):
    """A counter at 30 kW; the 6th answer comes 8 s late: the next poll, 1 s after it arrives,
    reads 9 s of energy (270 kW over 1 s); the trend comes back some polls later."""
    def answer(k: int, t: float) -> tuple[float, float]:
        return round(100.0 + 30.0 * (t - t0) / 3600.0, 6), 8.0 if k == 5 else 0.0
    return answer


@pytest.mark.parametrize("scenario", ["catch_up", "slow_answer"])
def test_loxone_http_values_that_rise_in_a_burst_are_all_stored(tmp_path, scenario):
    mini = ScriptedMiniserver(catch_up if scenario == "catch_up" else slow_answer(time.monotonic()))
    c = open_community(tmp_path, [{"id": "lox-1", "name": "Apartment 1", "type": "apartment", "house": HOUSE,
                                   "connection": "loxone_http",
                                   "loxone_http": {"url": mini.url("/flaky"), "interval_s": 1, "timeout_s": 20}}])
    rt = IngestRuntime(c, mqtt=False).start()
    held_seen = []
    try:
        polls = 22 if scenario == "catch_up" else 16
        t_start = time.monotonic()
        while len(mini.served) < polls:
            held_seen.append(rt.pipeline.status()["lox-1"].held)
            time.sleep(0.2)
        rt.connections.stop()                         # no more polls; one in flight is handed on
        runtime_s = time.monotonic() - t_start
        sent = list(mini.served)
        assert max(held_seen) > 0, "the burst was never suspect: the test tests nothing"
        assert_whole_series(c, rt, "lox-1", "loxone_http", sent)
        print(f"\nLoxone HTTP {scenario}: {len(sent)} polled, {len(c.store.read_readings('lox-1'))} stored, "
              f"at most {max(held_seen)} held at once, {runtime_s:.1f} s")
    finally:
        rt.stop()
        c.close()
        mini.close()


# -- HTTP push: the meter sends its values to the app -------------------------------------------------

def serve(app) -> tuple[str, object]:
    """``app`` (Dash) served by waitress on a free port: (base URL, server to close)."""
    import waitress
    port = free_port()
    srv = waitress.create_server(app.server, host="127.0.0.1", port=port, threads=4)
    threading.Thread(target=srv.run, daemon=True).start()
    wait_port(port)
    return f"http://127.0.0.1:{port}", srv


@pytest.mark.parametrize("step_kwh", [0.001, 0.03])
def test_pushed_values_sent_within_milliseconds_are_all_stored(tmp_path, step_kwh):
    """22 values POSTed back to back (the meter's send buffer after it could not reach the app),
    then the meter goes on every second at 5 kW. 0.001 kWh apart each step is plausible even when
    timed 1 ms apart; 0.03 kWh apart (values 22 s apart at 5 kW) each step looks like 108 kW and is
    held until the live values bring the trend back."""
    from web import create_app
    c = open_community(tmp_path, [{"id": "push-1", "name": "Apartment 1", "type": "apartment", "house": HOUSE,
                                   "connection": "http_push", "http_push": {"format": "raw"}}])
    rt = IngestRuntime(c, mqtt=False).start()
    base, srv = serve(create_app(c, rt))
    session = requests.Session()
    sent: list[float] = []
    try:
        url = f"{base}/api/meters/push-1/reading"
        headers = {"X-Meter-Token": registry.issue_push_token(c, "push-1")}

        def push(value: float) -> None:
            r = session.post(url, data=f"{value:.6f}", headers=headers, timeout=10)
            assert r.status_code == 202, r.text
            sent.append(round(value, 6))

        push(100.0)
        time.sleep(1.1)
        t_burst = time.monotonic()
        for k in range(1, 22):
            push(100.0 + step_kwh * k)
        burst_ms = (time.monotonic() - t_burst) * 1000
        rt.pipeline.flush()
        held_after_burst = rt.pipeline.status()["push-1"].held
        top, t_live = sent[-1], time.monotonic()
        while True:                                   # live again: 5 kW, a value a second
            time.sleep(1.0)
            push(top + 5.0 * (time.monotonic() - t_live) / 3600)
            rt.pipeline.flush()
            if rt.pipeline.status()["push-1"].held == 0 or time.monotonic() - t_live > 60:
                break
        push(top + 5.0 * (time.monotonic() - t_live) / 3600)
        assert (held_after_burst > 0) == (step_kwh > 0.0278), held_after_burst
        assert_whole_series(c, rt, "push-1", "http_push", sent)
        print(f"\nHTTP push, steps {step_kwh} kWh: {len(sent)} sent ({len(sent) - 22} live after the burst "
              f"of 22 in {burst_ms:.0f} ms), {len(c.store.read_readings('push-1'))} stored, "
              f"{held_after_burst} held after the burst, {time.monotonic() - t_burst:.1f} s")
    finally:
        session.close()
        srv.close()
        rt.stop()
        c.close()


# -- the Meters page after a flood of unknown meters ---------------------------------------------------

FLOOD = 20_000


@needs_mosquitto
def test_the_meters_page_stays_small_after_20000_unknown_meters(tmp_path):
    from web import create_app
    broker = Mosquitto(tmp_path / "broker").start()
    c = open_community(tmp_path, [], {"broker": "127.0.0.1", "port": broker.port, "use_tls": False,
                                      "client_id": "leg-flood"})
    add_users(c)
    rt = IngestRuntime(c).start()
    app = create_app(c, rt)
    base, srv = serve(app)
    try:
        wait_until(rt.mqtt.connected.is_set, 15, "the MQTT connection")
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="flood")
        pub.max_queued_messages_set(0)
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        t0 = time.monotonic()
        infos = [pub.publish(f"AA-{k:06d}/SENSOR", json.dumps({"Ei": 1.0, "Eo": 0.0, "ts": 100 + k}), qos=1)
                 for k in range(FLOOD)]
        for info in infos:
            info.wait_for_publish(60)
        pub.disconnect()
        pub.loop_stop()
        heard = lambda: len(rt.pipeline.unknown_meters()) + rt.pipeline.unknown_dropped
        wait_until(lambda: heard() >= FLOOD, 120, f"{FLOOD} unknown meters heard ({heard()} so far)")
        flood_s = time.monotonic() - t0
        assert len(rt.pipeline.unknown_meters()) == MAX_UNKNOWN and rt.pipeline.unknown_dropped == FLOOD - MAX_UNKNOWN

        web = requests.Session()
        web.headers["Accept-Language"] = "en"
        r = web.post(f"{base}/login", data={"username": MANAGER[0], "password": MANAGER[1]},
                     allow_redirects=False, timeout=30)
        assert r.status_code == 303, r.text[:300]
        web.headers["X-CSRFToken"] = web.cookies["_csrf_token"]
        assert web.get(f"{base}/meters", timeout=30).status_code == 200       # Dash sets up its callbacks
        key = next(k for k in app.callback_map if "meters-unknown.rowData" in k)
        t1 = time.monotonic()
        r = web.post(f"{base}/_dash-update-component", json=callback_body(app, key), timeout=60)
        refresh_s = time.monotonic() - t1
        assert r.status_code == 200, r.text[:500]
        size = len(r.content)
        out = r.json()["response"]
        rows = out["meters-unknown"]["rowData"]
        note = out["meters-unknown-note"]["children"]
        print(f"\nMeters page refresh after {FLOOD} unknown meters: {size:,} bytes, {len(rows)} rows, "
              f"note {note!r}; flood heard in {flood_s:.1f} s, refresh {refresh_s:.2f} s")
        assert size < 300_000, size
        assert len(rows) == MAX_UNKNOWN and rows[-1]["meter_id"] == f"AA-{FLOOD - 1:06d}"
        # counts as English in Switzerland writes them (Babel's en_CH: 19’000)
        assert "19\u2019000 more unknown meters" in note and "1\u2019000 heard most recently" in note, note
    finally:
        srv.close()
        rt.stop()
        c.close()
        broker.stop()
