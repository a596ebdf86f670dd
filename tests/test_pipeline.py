"""The ingest pipeline on real stores (SQLite ledger, DuckDB file in a tmp dir).

Every test drives a started ``Pipeline`` the way the live sources do: ``submit(Reading)`` for a
reading, ``reject(...)`` for a message that is not one, and, for payload-level tests, the MQTT
source's path through ``parse_sensor_payload`` (see ``feed``).

Timing note: a held (suspect) reading is decided alone once it has waited ``hold_timeout_s`` for a
successor, on the monotonic clock from the moment it was held (never from its own timestamp: a
backlog's readings are old while their successors are already queued; see the tests at the end).
"""
from __future__ import annotations

import json
import logging
import threading
import time
from collections import Counter
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

import pandas as pd
import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st

from billing.intervals import RESET, counter_step
from community import Community
from config import parse_config
from ingest.pipeline import Pipeline
from ingest.readings import Reading
from ingest.sensor import MAX_PAYLOAD_BYTES, MessageError, parse_sensor_payload, sensor_payload

TZ = "Europe/Zurich"
LIMIT_KW = 100.0          # the default max_power_kw of a house's meter
NO_TIMEOUT = 1e9          # hold_timeout_s under which only a successor decides a held reading


# -- helpers ---------------------------------------------------------------------------------------

@pytest.fixture
def env(tmp_path):
    """``env.community(meters)`` opens a community whose houses each have one meter;
    ``env.pipeline(c, **kw)`` starts a pipeline on it. Pipelines are stopped, then communities
    closed, at teardown."""
    communities, pipelines = [], []

    def community(meters=("M1", "M2", "M3"), sub="c"):
        houses = {m: {"id": i + 1, "name": f"House {i + 1}"} for i, m in enumerate(meters)}
        cfg = parse_config({
            "houses": houses,
            "community": {"name": "Test", "timezone": TZ},
            "storage": {"data_dir": str(tmp_path / sub)},
        }, source="test")
        c = Community.open(cfg)
        communities.append(c)
        return c

    def pipeline(c, **kw):
        p = Pipeline(c, **kw).start()
        pipelines.append(p)
        return p

    yield SimpleNamespace(community=community, pipeline=pipeline)
    for p in pipelines:
        p.stop()
    for c in communities:
        c.close()


def live_base(seconds_ago: float) -> datetime:
    """A whole-second UTC time ``seconds_ago`` before now (reading times of a live stream)."""
    return datetime.now(timezone.utc).replace(microsecond=0) - timedelta(seconds=seconds_ago)


def series(meter_id, base, values, step_s=10.0, eo=None):
    """Readings of one meter, ``step_s`` apart from ``base``; ``values`` are Ei (or (Ei, Eo))."""
    out = []
    for k, v in enumerate(values):
        ei, e_o = v if isinstance(v, tuple) else (v, eo)
        out.append(Reading(meter_id, base + timedelta(seconds=step_s * k), ei, e_o))
    return out


def stored(c: Community, meter_id: str) -> list[tuple[pd.Timestamp, float, float]]:
    """The stored readings of a meter as (ts, Ei, Eo), NaN -> None."""
    df = c.store.read_readings(meter_id)
    nn = lambda x: None if pd.isna(x) else float(x)
    return [(row.ts, nn(row.import_kwh), nn(row.export_kwh)) for row in df.itertuples()]


def as_rows(readings):
    return [(pd.Timestamp(r.ts_utc), r.import_kwh, r.export_kwh) for r in readings]


def feed(p: Pipeline, mac: str, payload: bytes, received: datetime) -> str | None:
    """Hand one MQTT message to the pipeline exactly as ``MqttSource._on_message`` does.
    Returns the rejection code, or None when the payload was a reading."""
    try:
        reading = parse_sensor_payload(mac, payload, received)
    except MessageError as exc:
        p.reject(mac, exc.code, f"{mac}/SENSOR: {exc}", "mqtt", received)
        return exc.code
    except Exception as exc:          # the source's safety net (huge numbers are MessageErrors too)
        p.reject(mac, "unreadable", f"{mac}/SENSOR: {exc!r}", "mqtt", received)
        return "unreadable"
    p.submit(reading, "mqtt")
    return None


def valid_payload(ei: float, eo: float = 0.0, pi: float = 1.0, po: float = 0.0, uptime: int = 100) -> bytes:
    return sensor_payload(ei, eo, pi, po, "60222760", uptime)


def plausible(last: Reading, r: Reading) -> bool:
    """True when ``r`` is a normal step from ``last`` (the rule the pipeline accepts at once by)."""
    dt = (r.ts_utc - last.ts_utc).total_seconds()
    return all(counter_step(b - a, dt, LIMIT_KW) == "ok"
               for a, b in ((last.import_kwh, r.import_kwh), (last.export_kwh, r.export_kwh))
               if a is not None and b is not None)


def wait_until(cond, timeout: float, step: float = 0.01) -> float:
    """Poll ``cond`` until true; return the time.monotonic() when it was first seen true."""
    deadline = time.monotonic() + timeout
    while True:
        if cond():
            return time.monotonic()
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout} s")
        time.sleep(step)


def rejection_warnings(caplog, meter_id: str) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "ingest.pipeline" and r.levelno == logging.WARNING
            and r.getMessage().startswith(f"meter {meter_id}: rejected")]


def unexpected_errors(caplog) -> list[str]:
    return [r.getMessage() for r in caplog.records
            if r.name == "ingest.pipeline" and r.levelno >= logging.ERROR]


# -- valid readings --------------------------------------------------------------------------------

def test_valid_readings_are_stored_with_their_values_and_status(env):
    c = env.community()
    p = env.pipeline(c)
    base = live_base(120)
    m1 = [Reading("M1", base + timedelta(seconds=10 * k), 1000.0 + 0.01 * k, 50.0 + 0.002 * k,
                  1.5 + k / 10, 0.25) for k in range(6)]
    m2 = series("M2", base, [7.0, 7.0, 7.05], eo=None)          # no export counter
    for r in m1 + m2:
        p.submit(r, "test")
    p.flush()

    assert stored(c, "M1") == as_rows(m1)
    assert stored(c, "M2") == as_rows(m2)
    df = c.store.read_readings("M1")
    assert df["power_in_kw"].tolist() == pytest.approx([r.power_in_kw for r in m1])
    assert df["power_out_kw"].tolist() == [0.25] * 6
    assert p.stored == 9

    st = p.status()
    s1 = st["M1"]
    assert (s1.house_id, s1.accepted, s1.duplicates, s1.rejected_total, s1.resets, s1.held) == ("1", 6, 0, 0, 0, 0)
    assert s1.last_import_kwh == m1[-1].import_kwh and s1.last_export_kwh == m1[-1].export_kwh
    assert s1.last_power_in_kw == m1[-1].power_in_kw and s1.last_power_out_kw == 0.25
    assert s1.last_seen == m1[-1].ts_utc and s1.last_received == m1[-1].ts_utc
    s2 = st["M2"]
    assert s2.accepted == 3 and s2.last_import_kwh == 7.05 and s2.last_export_kwh is None
    assert s2.last_seen == m2[-1].ts_utc
    s3 = st["M3"]                       # a known meter that sent nothing
    assert (s3.accepted, s3.last_seen, s3.last_import_kwh) == (0, None, None)
    # status() hands out copies: changing them does not touch the pipeline's own
    s1.rejected["x"] += 1
    assert p.status()["M1"].rejected_total == 0


def test_a_reading_is_stored_within_a_second_without_flush(env):
    c = env.community()
    p = env.pipeline(c)                 # flush_s defaults to 0.5
    assert p.flush_s == 0.5
    base = live_base(60)
    for k in range(3):
        p.submit(Reading("M1", base + timedelta(seconds=10 * k), 10.0 + 0.01 * k, 0.0))
        t0 = time.monotonic()
        seen = wait_until(lambda: len(c.store.read_readings("M1")) == k + 1, timeout=1.0)
        assert seen - t0 <= 1.0
    # the count follows the write's return, a moment after the rows became visible to readers
    wait_until(lambda: p.stored == 3, timeout=1.0)


def test_twenty_thousand_readings_of_twenty_meters_are_stored_exactly_once(env):
    meters = [f"M{i:02d}" for i in range(20)]
    c = env.community(meters)
    p = env.pipeline(c)
    base = datetime(2026, 5, 4, tzinfo=timezone.utc)
    sent: dict[str, list[Reading]] = {m: [] for m in meters}
    for k in range(1000):               # round robin, as meters publish
        ts = base + timedelta(seconds=10 * k)
        for i, m in enumerate(meters):
            r = Reading(m, ts, 100.0 * i + 0.01 * k, 0.001 * k)
            sent[m].append(r)
            p.submit(r, "test")
    p.flush(timeout=60)

    assert p.stored == 20_000
    all_rows = c.store.read_readings()
    assert len(all_rows) == 20_000
    assert not all_rows.duplicated(subset=["meter_id", "ts"]).any()
    st = p.status()
    for m in meters:
        assert stored(c, m) == as_rows(sent[m])
        assert (st[m].accepted, st[m].duplicates, st[m].rejected_total, st[m].resets) == (1000, 0, 0, 0)
    # the intervals were computed too: 1000 readings 10 s apart cover 11 full quarter hours
    iv = c.store.read_intervals(base, base + timedelta(hours=3))
    assert len(iv) == 20 * 11 and not (iv["flags"] & RESET).any()


def test_a_full_queue_makes_sources_wait_and_loses_nothing(env, caplog):
    c = env.community()
    p = env.pipeline(c, queue_size=20, batch_max=5)
    rs = series("M1", datetime(2026, 5, 4, tzinfo=timezone.utc), [0.01 * k for k in range(500)])
    # hold the store: the worker stops at its first write (a batch of 5)
    with c.store._lock:
        source = threading.Thread(target=lambda: [p.submit(r) for r in rs], daemon=True)
        source.start()
        wait_until(lambda: p.queued == 20, timeout=5.0)
        time.sleep(0.1)
        assert source.is_alive() and p.queued == 20          # the source waits: nothing dropped
    source.join(10)
    assert not source.is_alive()
    p.flush()
    assert stored(c, "M1") == as_rows(rs)
    full = [r for r in caplog.records if "queue full" in r.getMessage()]
    assert len(full) == 1                                      # logged once


# -- duplicates and order --------------------------------------------------------------------------

def test_duplicates_are_counted_and_other_older_readings_rejected_as_out_of_order(env):
    c = env.community()
    p = env.pipeline(c)
    base = live_base(100)
    r0, r1, r2, r3 = series("M1", base, [10.0, 10.01, 10.02, 10.03], eo=1.0)
    for r in (r0, r1, r1, r2):
        p.submit(r)
    p.flush()
    p.submit(r2)                                               # duplicate of a written reading
    p.submit(Reading("M1", r1.ts_utc, 10.01, 1.0))             # older than the last, but stored: a copy
    p.submit(Reading("M1", r1.ts_utc, 10.02, 1.0))             # older, other values: out of order
    p.submit(Reading("M1", r0.ts_utc - timedelta(hours=1), 9.0, 1.0))
    p.submit(Reading("M1", r2.ts_utc, 10.5, 1.0))             # same time, other values
    p.submit(r3)
    p.flush()

    assert stored(c, "M1") == as_rows([r0, r1, r2, r3])
    assert p.stored == 4
    st = p.status()["M1"]
    assert st.accepted == 4 and st.duplicates == 3
    assert st.rejected == Counter({"out_of_order": 3})
    assert "not newer" in st.last_rejection
    assert st.last_seen == r3.ts_utc


def test_after_a_restart_the_last_stored_reading_still_counts(env):
    c = env.community()
    p = env.pipeline(c)
    base = live_base(100)
    r0, r1, r2 = series("M1", base, [10.0, 10.01, 10.02])
    p.submit(r0)
    p.submit(r1)
    p.stop()
    q = env.pipeline(c)
    q.submit(r1)                      # redelivered after the restart: a duplicate
    q.submit(r0)                      # redelivered too (a broker resends all it has no ack for)
    q.submit(Reading("M1", r0.ts_utc, 9.5, None))   # older than the last, not what is stored
    q.submit(Reading("M1", r2.ts_utc, 5.0, None))   # a dip against the stored reading: held ...
    q.submit(Reading("M1", r2.ts_utc + timedelta(seconds=10), 10.03, None))  # ... and recovered
    q.flush()
    st = q.status()["M1"]
    assert st.duplicates == 2 and st.accepted == 1
    assert st.rejected == Counter({"out_of_order": 1, "went_backwards": 1})
    assert [row[1] for row in stored(c, "M1")] == [10.0, 10.01, 10.03]


# -- outliers, resets, held readings ---------------------------------------------------------------

def test_isolated_outliers_are_rejected_per_meter_and_reason(env):
    c = env.community()
    p = env.pipeline(c)
    base = live_base(200)
    # M1: a dip that recovers, later a spike far above 100 kW that comes back
    m1 = [100.00, 100.01, 90.0, 100.03, 100.04, 100.05, 150.0, 100.07, 100.08]
    # M2: Ei is fine, Eo dips twice (each recovers) and spikes once
    m2 = [(5.0, 20.0), (5.01, 20.0), (5.02, 0.0), (5.03, 20.01), (5.04, 19.5), (5.05, 20.02),
          (5.06, 900.0), (5.07, 20.03)]
    # M3: clean
    m3 = [1.0, 1.01, 1.02]
    r1 = series("M1", base, m1, eo=0.0)
    r2 = series("M2", base, m2)
    r3 = series("M3", base, m3)
    for r in r1 + r2 + r3:
        p.submit(r)
    p.flush()

    st = p.status()
    assert st["M1"].rejected == Counter({"went_backwards": 1, "implausible_power": 1})
    assert st["M2"].rejected == Counter({"went_backwards": 2, "implausible_power": 1})
    assert st["M3"].rejected == Counter()
    for m in ("M1", "M2", "M3"):
        assert st[m].resets == 0 and st[m].held == 0 and st[m].duplicates == 0
    assert "Ei rose" in st["M1"].last_rejection and "exceeds the meter's limit of 100 kW" in st["M1"].last_rejection
    assert st["M1"].last_rejection_at == r1[6].ts_utc
    assert "Eo rose" in st["M2"].last_rejection

    bad1 = {2, 6}
    bad2 = {2, 4, 6}
    assert stored(c, "M1") == as_rows([r for k, r in enumerate(r1) if k not in bad1])
    assert stored(c, "M2") == as_rows([r for k, r in enumerate(r2) if k not in bad2])
    assert stored(c, "M3") == as_rows(r3)
    assert st["M1"].accepted == 7 and st["M2"].accepted == 5 and st["M3"].accepted == 3
    assert st["M1"].last_import_kwh == 100.08 and st["M2"].last_export_kwh == 20.03


def test_a_sustained_new_level_is_a_new_series_with_reset_flagged_intervals(env):
    c = env.community()
    # historical times with a hold timeout longer than their age: each suspect waits for its
    # successor, as in a live stream
    p = env.pipeline(c, hold_timeout_s=NO_TIMEOUT)
    base = datetime(2026, 3, 2, 10, 0, tzinfo=timezone.utc)       # a quarter-hour boundary
    # M1: meter replaced at 10:20 (5000 -> 3), M2: exchanged for one with a higher count at 10:20
    v1 = [5000.0 + 0.5 * k for k in range(20)] + [3.0 + 0.5 * k for k in range(41)]
    v2 = [100.0 + 0.5 * k for k in range(20)] + [9000.0 + 0.5 * k for k in range(41)]
    r1 = series("M1", base, v1, step_s=60, eo=0.0)
    r2 = series("M2", base, v2, step_s=60, eo=0.0)
    for a, b in zip(r1, r2):
        p.submit(a)
        p.submit(b)
    p.flush()

    st = p.status()
    for m, rs in (("M1", r1), ("M2", r2)):
        s = st[m]
        assert (s.accepted, s.resets, s.rejected_total, s.held) == (61, 1, 0, 0), m
        assert s.last_reset_at == rs[20].ts_utc
        assert s.last_import_kwh == rs[-1].import_kwh
        assert stored(c, m) == as_rows(rs)       # nothing lost before, at or after the reset

    # not locked out: later readings continue the new series
    later = [Reading("M1", r1[-1].ts_utc + timedelta(minutes=m), 23.0 + 0.5 * m, 0.0) for m in (1, 2)]
    for r in later:
        p.submit(r)
    p.flush()
    assert p.status()["M1"].accepted == 63 and p.status()["M1"].rejected_total == 0
    assert stored(c, "M1")[-2:] == as_rows(later)

    iv = c.store.read_intervals(base, base + timedelta(hours=1))
    for house in ("1", "2"):
        h = iv[iv["house_id"] == house]
        assert h["start"].tolist() == [pd.Timestamp(base + timedelta(minutes=15 * q)) for q in range(4)]
        reset = (h["flags"] & RESET).astype(bool).tolist()
        assert reset == [False, True, False, False]       # 10:15-10:30 holds the gap 10:19-10:20
        # the gap counts zero: 4 min before the reset and 10 min after it, 0.5 kWh per minute
        assert h["delta_ei_kwh"].tolist() == pytest.approx([7.5, 7.0, 7.5, 7.5])


def test_a_held_reading_without_successor_is_decided_after_the_hold_timeout(env):
    c = env.community()
    hold = 1.0
    p = env.pipeline(c, hold_timeout_s=hold)
    now = live_base(0) + timedelta(seconds=1)
    dip = series("M1", now - timedelta(seconds=20), [100.0, 100.01, 50.0])      # last one at `now`
    spike = series("M2", now - timedelta(seconds=20), [100.0, 100.01, 500.0])
    submitted = time.monotonic()
    for a, b in zip(dip, spike):
        p.submit(a)
        p.submit(b)
    p.flush()                    # a flush keeps a recent suspect waiting for its successor
    st = p.status()
    assert st["M1"].held == 1 and st["M2"].held == 1
    assert st["M1"].accepted == 2 and st["M2"].accepted == 2
    assert len(stored(c, "M1")) == 2

    decided = wait_until(lambda: p.status()["M1"].held == 0 and p.status()["M2"].held == 0, timeout=5.0)
    assert decided - submitted >= hold - 0.05           # not before the timeout
    p.flush()
    st = p.status()
    # a dip alone: a new series (reset), stored
    assert (st["M1"].accepted, st["M1"].resets, st["M1"].rejected_total) == (3, 1, 0)
    assert stored(c, "M1") == as_rows(dip)
    # a spike alone: rejected, the meter continues from its last accepted reading
    assert st["M2"].rejected == Counter({"implausible_power": 1}) and st["M2"].resets == 0
    assert stored(c, "M2") == as_rows(spike[:2])
    nxt1 = Reading("M1", now + timedelta(seconds=10), 50.01, None)
    nxt2 = Reading("M2", now + timedelta(seconds=10), 100.02, None)
    p.submit(nxt1)
    p.submit(nxt2)
    p.flush()
    assert stored(c, "M1")[-1] == as_rows([nxt1])[0] and stored(c, "M2")[-1] == as_rows([nxt2])[0]


# -- unknown meters and unattributed rejections ----------------------------------------------------

def test_unknown_meters_are_counted_and_never_stored(env, caplog):
    c = env.community()
    p = env.pipeline(c)
    base = live_base(60)
    for r in series("ZZ-99", base, [1.0, 1.01, 1.02]):
        p.submit(r, "mqtt")
    p.reject("ZZ-99", "not_json", "ZZ-99/SENSOR: payload is not JSON", "mqtt")
    p.reject(None, "unknown_topic", "topic 'x/y' does not match +/SENSOR", "mqtt")
    p.reject(None, "unknown_topic", "topic 'a' does not match +/SENSOR", "mqtt")
    p.submit(Reading("M1", base, 3.0, 0.0), "mqtt")
    p.flush()

    unknown = p.unknown_meters()
    assert set(unknown) == {"ZZ-99"}
    u = unknown["ZZ-99"]
    assert u.messages == 4 and u.source == "mqtt" and u.first_seen == base
    assert "ZZ-99" not in c.store.meter_ids() and "ZZ-99" not in p.status()
    assert c.store.meter_ids() == ["M1"] and p.stored == 1
    assert p.unattributed == Counter({"unknown_topic": 2})
    assert all(s.rejected_total == 0 for s in p.status().values())
    warned = [r for r in caplog.records if "unknown meter ZZ-99" in r.getMessage()]
    assert len(warned) == 1                      # announced once, then only counted


# -- payloads through the sensor parser ------------------------------------------------------------

BAD_PAYLOADS = [
    ("not_json", b"hello"),
    ("not_json", b""),
    ("not_json", b'{"Ei": 1.0, "Eo": '),
    ("not_json", b"[" * 10_000 + b"]" * 10_000),          # deep nesting, under 64 KiB
    ("not_object", b"[1, 2, 3]"),
    ("not_object", b'"Ei"'),
    ("not_object", b"null"),
    ("wrong_type", b'{"Ei": "4619.712", "Eo": "14089.216"}'),
    ("wrong_type", b'{"Ei": 4619.7, "Eo": 1.0, "Pi": "1.047"}'),
    ("wrong_type", b'{"Ei": true, "Eo": 1.0}'),
    ("wrong_type", b'{"Ei": false}'),
    ("wrong_type", b'{"Ei": [1.0], "Eo": {"v": 1}}'),
    ("not_finite", b'{"Ei": NaN, "Eo": 1.0}'),
    ("not_finite", b'{"Ei": 1.0, "Eo": Infinity}'),
    ("not_finite", b'{"Ei": -Infinity}'),
    ("not_finite", b'{"Ei": 1e400}'),
    ("negative", b'{"Ei": -0.5, "Eo": 1.0}'),
    ("negative", b'{"Ei": 1.0, "Eo": 1.0, "Po": -2}'),
    ("too_large", b'{"Ei": 1.0, "pad": "' + b"x" * MAX_PAYLOAD_BYTES + b'"}'),
    ("missing_field", b'{"Pi": 1.0, "Po": 0.0, "ts": 12589}'),
    ("missing_field", b'{"Ei": null, "Eo": null}'),
    ("missing_field", b"{}"),
    ("not_utf8", b'{"Ei": 1.0, "SMid": "\xff\xfe"}'),
    ("not_utf8", b"\xc3\x28"),
]


@pytest.mark.parametrize("code,payload", BAD_PAYLOADS,
                         ids=[f"{c}-{i}" for i, (c, _) in enumerate(BAD_PAYLOADS)])
def test_bad_payload_gets_its_code_and_valid_messages_around_it_are_stored(env, code, payload):
    c = env.community()
    p = env.pipeline(c)
    t0 = live_base(30)
    with pytest.raises(MessageError) as err:
        parse_sensor_payload("M1", payload, t0)
    assert err.value.code == code

    assert feed(p, "M1", valid_payload(4619.712, 14089.216, 1.047), t0) is None
    assert feed(p, "M1", payload, t0 + timedelta(seconds=5)) == code
    assert feed(p, "M1", valid_payload(4619.722, 14089.216, 1.2), t0 + timedelta(seconds=10)) is None
    p.flush()

    st = p.status()["M1"]
    assert st.rejected == Counter({code: 1})
    assert st.last_rejection_at == t0 + timedelta(seconds=5)
    assert st.accepted == 2 and st.last_import_kwh == 4619.722 and st.last_power_in_kw == 1.2
    assert stored(c, "M1") == [(pd.Timestamp(t0), 4619.712, 14089.216),
                               (pd.Timestamp(t0 + timedelta(seconds=10)), 4619.722, 14089.216)]
    assert p.unattributed == Counter()


def test_only_one_counter_is_enough(env):
    c = env.community()
    p = env.pipeline(c)
    t0 = live_base(30)
    assert feed(p, "M1", b'{"Eo": 12.5}', t0) is None
    assert feed(p, "M1", b'{"Eo": 12.5, "Ei": null}', t0 + timedelta(seconds=10)) is None
    p.flush()
    assert stored(c, "M1") == [(pd.Timestamp(t0), None, 12.5), (pd.Timestamp(t0 + timedelta(seconds=10)), None, 12.5)]


# -- fuzzing -----------------------------------------------------------------------------------------

JSON = st.recursive(
    st.none() | st.booleans() | st.floats() | st.integers() | st.text(),
    lambda children: st.lists(children, max_size=5)
    | st.dictionaries(st.sampled_from(["Ei", "Eo", "Pi", "Po", "ts", "SMid"]) | st.text(max_size=5),
                      children, max_size=6),
    max_leaves=20)
_NUMBERISH = st.one_of(st.floats(), st.integers(), st.none(), st.booleans(), st.text(max_size=4))
# objects shaped like a sensor message, so that many payloads parse (and most are implausible)
SENSORISH = st.fixed_dictionaries({}, optional={"Ei": _NUMBERISH, "Eo": _NUMBERISH, "Pi": _NUMBERISH,
                                                "Po": _NUMBERISH, "ts": JSON, "SMid": st.text(max_size=8)})


def _fuzz_meter(env, caplog, payloads, encode):
    """Valid readings of M1 two seconds apart, each followed by a fuzzed payload one second later;
    returns after checking that every valid reading was stored and every payload rejected."""
    c = env.community()
    p = env.pipeline(c)
    # times from now on: a suspect reading is never decided by the hold timeout before its successor
    state = SimpleNamespace(last=Reading("M1", live_base(0), 1000.0, 5.0), valid=[], bad=0)
    state.valid.append(state.last)
    p.submit(state.last, "mqtt")

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
    @given(payloads)
    def run(value):
        payload = encode(value)
        at = state.last.ts_utc + timedelta(seconds=1)
        try:
            parsed = parse_sensor_payload("M1", payload, at)
        except Exception:
            parsed = None
        # a payload that is a plausible reading is a valid reading, not a bad message
        assume(parsed is None or not plausible(state.last, parsed))
        feed(p, "M1", payload, at)
        state.bad += 1
        nxt = Reading("M1", state.last.ts_utc + timedelta(seconds=2), state.last.import_kwh + 0.01, 5.0)
        p.submit(nxt, "mqtt")
        state.valid.append(nxt)
        state.last = nxt

    run()
    p.flush()
    assert p._thread.is_alive()
    assert not unexpected_errors(caplog)
    st = p.status()["M1"]
    assert stored(c, "M1") == as_rows(state.valid)
    assert st.accepted == len(state.valid) and st.resets == 0 and st.held == 0
    assert st.rejected_total == state.bad
    assert p.unknown_meters() == {} and p.unattributed == Counter()
    return st


def test_fuzz_arbitrary_bytes_never_cost_a_valid_reading(env, caplog):
    _fuzz_meter(env, caplog, st.binary(max_size=300), lambda b: b)


# Counters near the float maximum are finite, so valid for the parser; the plausibility rule then
# overflows to inf kW (numpy warns) and still calls them spikes, which is right.
@pytest.mark.filterwarnings("ignore:overflow encountered:RuntimeWarning")
def test_fuzz_arbitrary_json_never_costs_a_valid_reading(env, caplog):
    def encode(v):
        value, ascii_only = v
        return json.dumps(value, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    _fuzz_meter(env, caplog, st.tuples(JSON | SENSORISH, st.booleans()), encode)


def test_fuzz_isolated_outliers_of_any_size_are_rejected(env):
    c = env.community()
    p = env.pipeline(c)
    state = SimpleNamespace(last=Reading("M1", live_base(0), 1000.0, 5.0), valid=[], codes=Counter())
    state.valid.append(state.last)
    p.submit(state.last)

    @settings(deadline=None, suppress_health_check=[HealthCheck.too_slow])
    @given(counter=st.sampled_from(["import_kwh", "export_kwh"]),
           # a dip of any depth (to zero at most), or a rise over 5 s implying more than 100 kW
           step=st.one_of(st.floats(1e-6, 1.0).map(lambda f: ("dip", f)),
                          st.floats(0.14, 1e9).map(lambda d: ("spike", d))))
    def run(counter, step):
        kind, x = step
        last = state.last
        old = getattr(last, counter)
        value = old - x * old if kind == "dip" else old + x
        outlier = Reading("M1", last.ts_utc + timedelta(seconds=5),
                          **{"import_kwh": last.import_kwh, "export_kwh": last.export_kwh, counter: value})
        nxt = Reading("M1", last.ts_utc + timedelta(seconds=10), last.import_kwh + 0.01, last.export_kwh)
        p.submit(outlier)
        p.submit(nxt)
        state.codes["went_backwards" if kind == "dip" else "implausible_power"] += 1
        state.valid.append(nxt)
        state.last = nxt

    run()
    p.flush()
    st_ = p.status()["M1"]
    assert st_.rejected == state.codes and st_.resets == 0 and st_.held == 0
    assert stored(c, "M1") == as_rows(state.valid)


# -- logging ---------------------------------------------------------------------------------------

def test_rejections_are_logged_at_most_once_per_meter_per_log_every_s(env, caplog):
    caplog.set_level(logging.WARNING, logger="ingest.pipeline")
    c = env.community()
    p = env.pipeline(c, log_every_s=60)
    t0 = live_base(100)
    bad = [b"hello", b"[1]", b'{"Ei": "1"}', b'{"Ei": NaN}', b'{"Ei": -1}', b"\xff"]
    for k in range(50):
        feed(p, "M1", bad[k % len(bad)], t0 + timedelta(seconds=k))
    feed(p, "M2", b"hello", t0)
    # a rejected reading (out of order) goes through the same limit
    p.submit(Reading("M1", t0, 1.0, 1.0))
    p.submit(Reading("M1", t0 - timedelta(seconds=1), 1.0, 1.0))
    p.flush()
    assert p.status()["M1"].rejected_total == 51
    assert len(rejection_warnings(caplog, "M1")) == 1
    assert len(rejection_warnings(caplog, "M2")) == 1
    assert "not JSON" in rejection_warnings(caplog, "M1")[0]


def test_suppressed_rejections_are_summed_in_the_next_warning(env, caplog):
    caplog.set_level(logging.WARNING, logger="ingest.pipeline")
    c = env.community()
    p = env.pipeline(c, log_every_s=0.3)
    t0 = live_base(100)
    for k in range(5):
        p.reject("M1", "not_json", f"bad {k}", "mqtt", t0)
    p.flush()
    time.sleep(0.4)
    p.reject("M1", "not_json", "bad 5", "mqtt", t0)
    p.flush()
    msgs = rejection_warnings(caplog, "M1")
    assert len(msgs) == 2
    assert "bad 0" in msgs[0] and "more rejections" not in msgs[0]
    assert "bad 5" in msgs[1] and "(4 more rejections" in msgs[1]


# -- bugs ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("kind", ["dip", "jump"])
def test_a_backlog_is_judged_like_a_live_stream(env, kind):
    # a broker backlog after an outage, timed two hours back by the UptimeClock
    c = env.community()
    p = env.pipeline(c)                                      # default hold_timeout_s = 900
    base = live_base(2 * 3600)
    if kind == "dip":                  # an isolated glitch: rejected, nothing else lost
        rs = series("M1", base, [100.0, 100.01, 50.0, 100.03, 100.04, 100.05], eo=0.0)
        keep, expect_rejected, expect_resets = [0, 1, 3, 4, 5], Counter({"went_backwards": 1}), 0
    else:                              # a meter exchange with a higher count: a new series once
        # the new level has held for a minute (10 s apart: the seventh reading of it)
        rs = series("M1", base, [100.0, 100.01] + [9000.0 + 0.01 * k for k in range(8)], eo=0.0)
        keep, expect_rejected, expect_resets = list(range(10)), Counter(), 1
    for r in rs:
        p.submit(r)
    p.flush()
    st = p.status()["M1"]
    assert st.rejected == expect_rejected and st.resets == expect_resets
    assert stored(c, "M1") == as_rows([rs[k] for k in keep])


def test_a_duplicate_of_a_held_outlier_does_not_confirm_it(env):
    c = env.community()
    p = env.pipeline(c)
    rs = series("M1", live_base(100), [100.0, 100.01, 500.0, 100.03, 100.04], eo=0.0)
    for r in rs[:3] + [rs[2]] + rs[3:]:
        p.submit(r)
    p.flush()
    st = p.status()["M1"]
    assert st.duplicates == 1
    assert st.rejected == Counter({"implausible_power": 1}) and st.resets == 0
    assert stored(c, "M1") == as_rows([rs[0], rs[1], rs[3], rs[4]])


def test_stop_leaves_a_held_reading_to_the_next_run(env):
    """A stop is no reason to call a dip a reset: the held reading stays in the ledger and the
    next run decides it by the meter's next readings (here the trend comes back: a glitch)."""
    c = env.community()
    p = Pipeline(c).start()
    rs = series("M1", live_base(30), [100.0, 100.01, 50.0, 100.03], eo=0.0)
    for r in rs[:3]:
        p.submit(r)
    p.stop()
    st = p.status()["M1"]
    assert (st.held, st.resets, st.rejected_total) == (1, 0, 0)
    assert c.ledger.held_readings() == [rs[2]]
    assert stored(c, "M1") == as_rows(rs[:2])

    nxt = env.pipeline(c)
    assert nxt.status()["M1"].held == 1
    nxt.submit(rs[3])
    nxt.flush()
    st = nxt.status()["M1"]
    assert (st.held, st.resets) == (0, 0) and st.rejected == Counter({"went_backwards": 1})
    assert stored(c, "M1") == as_rows([rs[0], rs[1], rs[3]])
    assert c.ledger.held_readings() == []


def test_a_held_reading_outlives_a_crash_and_is_decided_by_the_next_reading(env):
    """The held reading's message is acknowledged with its neighbours; a pipeline that ends without
    stopping (a crash: no stop() decides it) leaves it in the ledger, and the next pipeline holds
    it again until the meter's next reading confirms it."""
    c = env.community()
    first = Pipeline(c).start()
    # meter exchanged: the new level counts once it has held for a minute (7 readings, 10 s apart)
    rs = series("M1", live_base(120), [100.0, 100.01] + [7.0 + 0.01 * k for k in range(7)], eo=0.0)
    for r in rs[:3]:
        first.submit(r)
    first.flush()
    assert first.status()["M1"].held == 1
    assert c.ledger.held_readings() == [rs[2]]
    assert stored(c, "M1") == as_rows(rs[:2])
    first._decide_held = lambda *a, **kw: None       # it ends as a killed process would: undecided
    first.stop()
    assert c.ledger.held_readings() == [rs[2]]

    second = env.pipeline(c)
    assert second.status()["M1"].held == 1
    for r in rs[3:]:
        second.submit(r)
    second.flush()
    st = second.status()["M1"]
    assert (st.held, st.resets, st.rejected_total) == (0, 1, 0)
    assert stored(c, "M1") == as_rows(rs)
    assert c.ledger.held_readings() == []


def test_a_held_outlier_rejected_after_a_restart_is_not_kept(env):
    c = env.community()
    c.ledger.hold_reading(Reading("M1", live_base(30), 900.0, 0.0))    # as a crashed run left it
    c.store_readings(pd.DataFrame({"meter_id": ["M1"], "ts": [pd.Timestamp(live_base(40))],
                                   "import_kwh": [100.0], "export_kwh": [0.0]}))
    p = env.pipeline(c)
    p.submit(Reading("M1", live_base(20), 100.02, 0.0))
    p.flush()
    assert p.status()["M1"].rejected == Counter({"implausible_power": 1})
    assert [r[1] for r in stored(c, "M1")] == [100.0, 100.02]
    assert c.ledger.held_readings() == []


@pytest.mark.parametrize("digits", [400, 5000])
def test_a_huge_integer_is_a_message_error(digits):
    payload = b'{"Ei": 1' + b"0" * digits + b', "Eo": 1.0}'
    with pytest.raises(MessageError):
        parse_sensor_payload("M1", payload, datetime.now(timezone.utc))
