"""One contract for both time-series stores: the embedded DuckDB file and a real InfluxDB 1.x
(Debian's influxdb package, started by the test on free ports with its data in a temp dir)."""
import itertools
import time
import zoneinfo
from datetime import datetime, timezone
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from billing.settlement import parse_period
from community import Community
from config import parse_config
from ingest.csv_files import parse_readings_csv
from peers import Influxd, influxd_binary

BACKENDS = ["embedded", "influxdb"]
_db_names = itertools.count()
KONSTANZ = Path(__file__).resolve().parent / "data" / "opsd_konstanz_residential_2016-06.csv"


@pytest.fixture(scope="module")
def influxd(tmp_path_factory):
    if influxd_binary() is None:
        pytest.skip("influxd is not installed (apt-get install influxdb)")
    server = Influxd(tmp_path_factory.mktemp("influxd")).start()
    yield server
    server.stop()


@pytest.fixture
def make(tmp_path, request):
    opened = []

    def make(backend, houses, mode="break_even", sub=None, db=None, influx_mode="read_write"):
        data = {"houses": houses, "pricing": {"mode": mode},
                "community": {"timezone": "Europe/Zurich"},
                "storage": {"data_dir": str(tmp_path / (sub or backend)), "backend": backend}}
        if backend == "influxdb":
            server = request.getfixturevalue("influxd")
            data["influxdb"] = {"url": server.url, "database": db or f"energy{next(_db_names)}",
                                "mode": influx_mode}
        c = Community.open(parse_config(data, source="test"),
                           clock=lambda: datetime(2030, 1, 1, tzinfo=timezone.utc))
        opened.append(c)
        return c

    yield make
    for c in opened:
        c.close()


def frame(rows):
    df = pd.DataFrame(rows, columns=["meter_id", "ts", "import_kwh", "export_kwh"])
    df["ts"] = pd.to_datetime(df["ts"], utc=True).astype("datetime64[us, UTC]")
    df["power_in_kw"] = np.nan
    df["power_out_kw"] = np.nan
    return df


HOUSES = {"M1": {"id": 1, "name": "One"}, "M2": {"id": 2, "name": "Two"}}


@pytest.mark.parametrize("backend", BACKENDS)
def test_readings_round_trip_with_duplicates_and_conflicts(make, backend):
    c = make(backend, HOUSES)
    rows = [("M1", "2026-01-01T00:00Z", 1.0, 0.5), ("M1", "2026-01-01T00:15Z", 1.25, None),
            ("M2", "2026-01-01T00:00Z", 7.0, 0.0)]
    first = c.store.write_readings(frame(rows))
    assert (first.inserted, first.duplicates, len(first.conflicts)) == (3, 0, 0)
    again = c.store.write_readings(frame(rows[:2] + [("M2", "2026-01-01T00:00Z", 9.0, 0.0)]))
    assert (again.inserted, again.duplicates, len(again.conflicts)) == (0, 2, 1)
    got = c.store.read_readings()
    assert list(got["meter_id"]) == ["M1", "M1", "M2"]
    assert list(got["import_kwh"]) == [1.0, 1.25, 7.0]          # the stored value wins a conflict
    assert np.isnan(got["export_kwh"].iloc[1])
    assert str(got["ts"].dtype) == "datetime64[us, UTC]"
    m1 = c.store.read_readings("M1", pd.Timestamp("2026-01-01T00:10Z"))
    assert list(m1["import_kwh"]) == [1.25]
    assert c.store.meter_ids() == ["M1", "M2"]


@pytest.mark.parametrize("backend", BACKENDS)
def test_windows_and_last_readings(make, backend):
    c = make(backend, HOUSES)
    base = pd.Timestamp("2026-02-01T00:00Z")
    c.store.write_readings(frame([("M1", base + pd.Timedelta(minutes=5 * k), float(k), 0.0) for k in range(20)]))
    w = c.store.reading_window("M1", base + pd.Timedelta(minutes=30), base + pd.Timedelta(minutes=40), context=2)
    assert list(w["import_kwh"]) == [4.0, 5.0, 6.0, 7.0, 8.0, 9.0, 10.0]
    last = c.store.last_readings(["M1", "M2"])
    assert list(last["meter_id"]) == ["M1"] and last["import_kwh"].iloc[0] == 19.0
    ws = c.store.reading_windows({"M1": (base + pd.Timedelta(minutes=90), base + pd.Timedelta(minutes=200))},
                                 context=3, look_after=False)
    assert list(ws["M1"]["import_kwh"]) == [15.0, 16.0, 17.0, 18.0, 19.0]


@pytest.mark.parametrize("backend", BACKENDS)
def test_intervals_totals_and_house_sums(make, backend):
    c = make(backend, HOUSES)
    t = pd.date_range("2026-03-01T00:00Z", periods=4, freq="15min").astype("datetime64[us, UTC]")
    iv = pd.DataFrame({"house_id": ["1"] * 4 + ["2"] * 3, "start": list(t) + list(t[:3]),
                       "delta_ei_kwh": [1.0, 2.0, 3.0, 4.0, 0.5, 0.5, 0.5],
                       "delta_eo_kwh": [0.0, 0.0, 0.0, 0.0, 2.0, 2.0, 0.0], "flags": [0, 1, 0, 0, 0, 0, 2]})
    c.store.replace_intervals_many({"1": (t[0], t[-1] + pd.Timedelta(minutes=15)),
                                    "2": (t[0], t[-1] + pd.Timedelta(minutes=15))}, iv)
    got = c.store.read_intervals(t[0], t[-1] + pd.Timedelta(minutes=15))
    assert len(got) == 7 and list(got["house_id"][:2]) == ["1", "2"]
    assert int(got["flags"].sum()) == 3
    tot = c.store.community_totals(t[0], t[-1] + pd.Timedelta(minutes=15), ["1", "2"])
    assert list(tot["total_consumption_kwh"]) == [1.5, 2.5, 3.5, 4.0]
    assert list(tot["total_production_kwh"]) == [2.0, 2.0, 0.0, 0.0]
    assert list(tot["houses"]) == [2, 2, 2, 1]
    prices = pd.DataFrame({"start": t, "p_con": [10.0, 20.0, 30.0, 40.0], "p_pv": [1.0, 2.0, 3.0, 4.0]})
    sums = c.store.house_sums(t[0], t[-1] + pd.Timedelta(minutes=15), ["1", "2"], prices).set_index("house_id")
    assert sums.loc["1", "value_consumption_ct"] == pytest.approx(10 + 40 + 90 + 160)
    assert sums.loc["2", "value_pv_delivery_ct"] == pytest.approx(2 * 1 + 2 * 2)
    assert sums.loc["2", "intervals"] == 3 and int(sums.loc["2", "flags"]) == 2
    only2 = c.store.house_sums(t[0], t[-1] + pd.Timedelta(minutes=15), ["2"], prices)
    assert list(only2["house_id"]) == ["2"]
    # at several prices at once (a settlement's community and grid prices): as one call each
    grid = prices.assign(p_con=30.0, p_pv=6.0)
    at = c.store.house_sums_at(t[0], t[-1] + pd.Timedelta(minutes=15), ["1", "2"], [prices, grid])
    pd.testing.assert_frame_equal(at[0], sums.reset_index())
    pd.testing.assert_frame_equal(at[1], c.store.house_sums(t[0], t[-1] + pd.Timedelta(minutes=15), ["1", "2"], grid))
    assert at[1].set_index("house_id").loc["1", "value_consumption_ct"] == pytest.approx(30 * (1 + 2 + 3 + 4))


def konstanz_houses():
    return {f"DE_KN_{m}": {"id": m, "name": m} for m in
            ["residential1", "residential2", "residential3", "residential4", "residential5", "residential6", "public1"]}


def konstanz_readings(c):
    wide = pd.read_csv(KONSTANZ)
    rows = []
    for mac in konstanz_houses():
        imp = wide[f"{mac}_grid_import"]
        exp = wide[f"{mac}_grid_export"] if f"{mac}_grid_export" in wide else None
        for k, ts in enumerate(wide["utc_timestamp"]):
            rows.append((mac, ts, imp[k], exp[k] if exp is not None else None))
    return frame(rows)


def test_settlement_is_identical_on_both_stores(make):
    figures = {}
    for backend in BACKENDS:
        c = make(backend, konstanz_houses())
        c.store_readings(konstanz_readings(c))
        s = c.settle("2016-06")
        figures[backend] = [(i["house_id"], i["energy_imported_kwh"], i["energy_exported_kwh"],
                             i["import_cost_ct"], i["export_revenue_ct"], i["net_amount_ct"]) for i in s.invoices]
        assert not s.missing and abs(s.summary.balance_ct) < 1e-6
    assert figures["embedded"] == figures["influxdb"]


def test_influx_measurements_keep_the_section_9_3_names(make, influxd):
    c = make("influxdb", HOUSES, db="grafana")
    c.store_readings(frame([("M1", "2026-04-01T00:00Z", 1.0, 0.0), ("M1", "2026-04-01T01:00Z", 2.0, 0.0),
                            ("M2", "2026-04-01T00:00Z", 5.0, 0.0), ("M2", "2026-04-01T01:00Z", 5.0, 0.8)]))
    res = influxd.query("SHOW FIELD KEYS", db="grafana")["results"][0]["series"]
    fields = {s["name"]: {v[0] for v in s["values"]} for s in res}
    assert {"delta_ei_kwh", "delta_eo_kwh", "value_consumption_ct", "value_pv_delivery_ct",
            "tariff_p_con", "tariff_p_pv"} <= fields["house_energy"]
    assert {"total_consumption_kwh", "total_production_kwh", "grid_import_kwh", "grid_export_kwh",
            "value_grid_import_ct", "value_grid_export_ct", "tariff_p_grid_con",
            "tariff_p_grid_del"} == fields["community_energy"]
    tags = influxd.query("SHOW TAG KEYS FROM house_energy", db="grafana")["results"][0]["series"][0]["values"]
    assert {t[0] for t in tags} == {"house_id", "mac"}
    q = influxd.query("SELECT sum(value_consumption_ct) FROM house_energy WHERE house_id = '1'", db="grafana")
    # 1 kWh in the hour, house 2 exports 0.8: p_con = 30 + 0.8 * (20 - 30) = 22 ct/kWh
    assert q["results"][0]["series"][0]["values"][0][1] == pytest.approx(22.0)


def test_influx_field_types_do_not_depend_on_the_values(make, influxd):
    # InfluxDB's JSON gives a sum of 0.0 as 0: an hour without consumption (or production) must
    # still write total_consumption_kwh (and every other kWh, ct and tariff field) as a float, or
    # InfluxDB refuses the later writes for a field type conflict and their points are lost
    c = make("influxdb", HOUSES, db="types")
    c.store_readings(frame([("M2", "2026-04-01T00:00Z", 5.0, 0.0), ("M2", "2026-04-01T01:00Z", 5.0, 0.8)]))
    c.store_readings(frame([("M1", "2026-04-02T00:00Z", 1.0, 0.0), ("M1", "2026-04-02T01:00Z", 2.0, 0.0)]))
    assert c.store.health()["dead_batches"] == 0
    res = influxd.query("SHOW FIELD KEYS", db="types")["results"][0]["series"]
    types = {(s["name"], k): t for s in res for k, t in s["values"]}
    assert {k: t for k, t in types.items() if t != "float"} == {("house_energy", "flags"): "integer"}
    q = influxd.query("SELECT total_production_kwh FROM community_energy WHERE time >= '2026-04-02T00:00:00Z'",
                      db="types")
    assert [v[1] for v in q["results"][0]["series"][0]["values"]] == [0.0] * 4


def test_influx_outage_spools_and_replays_exactly_once(make, influxd):
    c = make("influxdb", HOUSES, db="outage")
    c.store_readings(frame([("M1", "2026-05-01T00:00Z", 1.0, 0.0)]))
    influxd.stop()
    try:
        res = c.store.write_readings(frame([("M1", f"2026-05-01T00:{m:02d}Z", 1.0 + m / 100, 0.0)
                                            for m in range(1, 31)]))
        assert res.inserted == 30
        h = c.store.health()
        assert h["spool_batches"] >= 1 and h["spool_lines"] == 30
        c.close()                      # the app stops while InfluxDB is down: the spool is on disk
    finally:
        influxd.start()
    c2 = make("influxdb", HOUSES, db="outage", sub="influxdb")   # same data dir: same spool
    deadline = time.monotonic() + 20
    while c2.store.health()["spool_batches"] and time.monotonic() < deadline:
        time.sleep(0.2)
    assert c2.store.health()["spool_batches"] == 0
    got = c2.store.read_readings("M1")
    assert len(got) == 31 and got["ts"].is_unique
    assert c2.store.replay() == 0                   # nothing left: a replay never doubles
    assert len(c2.store.read_readings("M1")) == 31


def test_read_only_mode_settles_from_another_collectors_house_energy(make, influxd):
    # the LEG stack's own collector writes house_energy deltas every minute (tags house_id, mac)
    lines = []
    start = pd.Timestamp("2026-02-01T00:00:00+01:00").tz_convert("UTC")
    minutes = 28 * 24 * 60
    for k in range(minutes):
        t_us = (start + pd.Timedelta(minutes=k)).value // 1000
        lines.append(f"house_energy,house_id=1,mac=M1 delta_ei_kwh=0.01,delta_eo_kwh=0.0 {t_us}")
        lines.append(f"house_energy,house_id=2,mac=M2 delta_ei_kwh=0.0,delta_eo_kwh=0.02 {t_us}")
    influxd.query('CREATE DATABASE "legstack"')
    import urllib.request
    for i in range(0, len(lines), 5000):
        req = urllib.request.Request(f"{influxd.url}/write?db=legstack&precision=u",
                                     data="\n".join(lines[i:i + 5000]).encode(), method="POST")
        assert urllib.request.urlopen(req).status == 204
    c = make("influxdb", HOUSES, mode="static", db="legstack", influx_mode="read_only")
    s = c.settle("2026-02")
    one, two = s.invoices
    assert not s.missing
    assert float(one["energy_imported_kwh"]) == pytest.approx(minutes * 0.01)
    assert float(two["energy_exported_kwh"]) == pytest.approx(minutes * 0.02)
    assert float(one["import_cost_ct"]) == pytest.approx(minutes * 0.01 * 25)     # static: (20 + 30) / 2
    with pytest.raises(PermissionError, match="read_only"):
        c.store.write_readings(frame([("M1", "2026-02-03T00:00Z", 1.0, 0.0)]))
    from ingest.runtime import IngestRuntime
    with pytest.raises(RuntimeError, match="read_only"):
        IngestRuntime(c, mqtt=False).start()


@pytest.mark.parametrize("backend", BACKENDS)
def test_community_buckets_for_dashboards(make, backend):
    c = make(backend, HOUSES)
    t = pd.date_range("2026-03-01T00:00Z", periods=8, freq="15min").astype("datetime64[us, UTC]")
    iv = pd.DataFrame({"house_id": ["1"] * 8 + ["2"] * 8, "start": list(t) * 2,
                       "delta_ei_kwh": [1.0] * 8 + [0.5] * 8, "delta_eo_kwh": [0.0] * 8 + [0.25] * 8,
                       "flags": 0})
    c.store.replace_intervals_many({}, iv)
    b = c.store.community_buckets(t[0], t[-1] + pd.Timedelta(minutes=15), 3600, ["1", "2"])
    assert list(b["start"]) == [t[0], t[4]]
    assert list(b["total_consumption_kwh"]) == [6.0, 6.0] and list(b["total_production_kwh"]) == [1.0, 1.0]
    only1 = c.store.community_buckets(t[0], t[-1] + pd.Timedelta(minutes=15), 3600, ["1"])
    assert list(only1["total_consumption_kwh"]) == [4.0, 4.0]


def test_the_embedded_store_reopens_after_its_write_budget_and_keeps_every_reading(make, tmp_path):
    """DuckDB gives back the memory of a connection's writes only when the file is closed: the
    embedded store reopens it after ``storage.reopen_every_rows`` written readings, while other
    threads keep reading, and nothing written before is lost or loses its duplicate check."""
    import threading

    from storage.duckdb_store import DuckDBStore
    assert make("embedded", HOUSES).store.reopen_every_rows == 100_000          # the default
    store = DuckDBStore(tmp_path / "reopen" / "timeseries.duckdb", 64, reopen_every_rows=2500)
    base = pd.Timestamp("2026-03-01T00:00Z")
    batches = [frame([(f"M{m}", base + pd.Timedelta(seconds=10 * (200 * b + k)), float(200 * b + k), 0.0)
                      for m in range(5) for k in range(200)]) for b in range(10)]
    errors, stop = [], threading.Event()

    def reader():
        while not stop.is_set():
            try:
                store.last_readings(["M0", "M4"])
                store.read_readings("M1", base)
            except Exception as exc:                # a query that met a closed connection
                errors.append(exc)

    t = threading.Thread(target=reader)
    t.start()
    try:
        memory = []
        for b, batch in enumerate(batches):
            assert store.write_readings(batch).inserted == 1000
            memory.append(store.health()["memory_bytes"])
    finally:
        stop.set()
        t.join()
    assert errors == []
    h = store.health()
    assert (h["reopens"], h["written_since_open"]) == (3, 1000)    # after 3,000, 6,000 and 9,000
    assert memory[2] < memory[1] and memory[1] > 0                   # the reopen gave its memory back
    assert len(store.read_readings()) == 10_000
    again = store.write_readings(pd.concat([batches[0], frame([("M0", base, 99.0, 0.0)])]))
    assert (again.inserted, again.duplicates, len(again.conflicts)) == (0, 1000, 1)
    store.close()
    reopened = DuckDBStore(tmp_path / "reopen" / "timeseries.duckdb")
    assert len(reopened.read_readings()) == 10_000
    reopened.close()


@pytest.mark.parametrize("backend", BACKENDS)
def test_windows_of_many_meters_find_their_context_near_far_and_beyond(make, backend):
    """``reading_windows`` against ``reading_window`` (one meter, the plain query) for meters whose
    context lies within minutes, within hours, further than that, or nowhere, on both sides."""
    c = make(backend, HOUSES)
    base = pd.Timestamp("2026-02-01T12:00Z")
    lo, hi = base, base + pd.Timedelta(minutes=30)
    series = {
        "D": [base + pd.Timedelta(seconds=10 * k) for k in range(-400, 600)],        # dense: 10 s
        "F": [base + pd.Timedelta(minutes=5 * k) for k in range(-6, 12)],            # exactly 15 min away
        "S": [base + pd.Timedelta(minutes=40 * k) for k in range(-5, 6)],            # sparse: hours away
        "G": [base - pd.Timedelta(hours=h) for h in (30, 29, 28, 27)]                # a long gap on both sides
             + [base + pd.Timedelta(minutes=m) for m in (0, 10, 20)]
             + [base + pd.Timedelta(hours=h) for h in (26, 27, 28, 29)],
        "N": [base + pd.Timedelta(minutes=m) for m in (1, 2)],                       # new: nothing around it
    }
    rows = [(m, t, float(k), 0.0) for m, ts in series.items() for k, t in enumerate(ts)]
    c.store.write_readings(frame(rows))
    for look_after in (True, False):
        got = c.store.reading_windows({m: (lo, hi) for m in series}, context=3, look_after=look_after)
        for m in series:
            want, w = c.store.reading_window(m, lo, hi, context=3), got[m]
            if not look_after:                       # what follows the span is not asked for
                want, w = want[want["ts"] <= hi], w[w["ts"] <= hi]
            assert w["ts"].tolist() == want["ts"].tolist(), (m, look_after)
            assert w["import_kwh"].tolist() == want["import_kwh"].tolist(), (m, look_after)
    got = c.store.reading_windows({m: (lo, hi) for m in series}, context=3)
    assert {m: len(w) for m, w in got.items()} == {"D": 3 + 181 + 3, "F": 3 + 7 + 3, "S": 3 + 1 + 3,
                                                  "G": 3 + 3 + 3, "N": 2}
