"""The web app's logic: REST API through Flask's test client, page functions and figure builders
called directly (browser tests come with the page work)."""
import json
import re
from datetime import datetime, timezone

import pandas as pd
import pytest

import analytics
from community import Community
from components.charts import energy_figure, price_figure, value_figure
from config import parse_config

HOUSES = {"M1": {"id": 1, "name": "One"}, "M2": {"id": 2, "name": "Two", "pv_kwp": 10}}


@pytest.fixture
def community(tmp_path):
    cfg = parse_config({"houses": HOUSES, "storage": {"data_dir": str(tmp_path)},
                        "web": {"base_path": "/invoicing/"}}, source="test")
    c = Community.open(cfg)
    df = pd.DataFrame({"meter_id": ["M1", "M1", "M2", "M2"],
                       "ts": pd.to_datetime(["2026-02-01T00:00+01:00", "2026-03-01T00:00+01:00"] * 2, utc=True),
                       "import_kwh": [0.0, 2688.0, 0.0, 0.0], "export_kwh": [0.0, 0.0, 0.0, 5376.0]})
    df["ts"] = df["ts"].astype("datetime64[us, UTC]")
    df["power_in_kw"] = df["power_out_kw"] = float("nan")
    c.store_readings(df)
    yield c
    c.close()


@pytest.fixture
def client(community):
    from web import create_app
    from webauth import MANAGER, add_users, login
    add_users(community)
    return login(create_app(community).server.test_client(), "/invoicing/", *MANAGER)


def test_health_and_houses(client):
    h = client.get("/invoicing/api/health").get_json()
    assert h["status"] == "ok" and h["store"]["backend"] == "embedded"
    houses = client.get("/invoicing/api/houses").get_json()
    assert [x["house_id"] for x in houses] == ["1", "2"]


def test_tariffs_get_post_history(client):
    t = client.get("/invoicing/api/tariffs").get_json()
    assert {k: t[k] for k in ("p_pv", "p_grid_del", "p_grid_con", "mode")} == \
        {"p_pv": 20.0, "p_grid_del": 6.0, "p_grid_con": 30.0, "mode": "break_even"}
    r = client.post("/invoicing/api/tariffs", data="p_pv=1")
    assert r.status_code == 415
    r = client.post("/invoicing/api/tariffs", json={"p_pv": "x", "p_grid_del": 6, "p_grid_con": 30})
    assert r.status_code == 400 and r.get_json()["field"] == "p_pv"
    r = client.post("/invoicing/api/tariffs", json={"p_pv": 10, "p_grid_del": 12, "p_grid_con": 30})
    assert r.status_code == 400 and r.get_json()["field"] == "p_grid_del"
    r = client.post("/invoicing/api/tariffs", json={"p_pv": 18, "p_grid_del": 5, "p_grid_con": 32, "bogus": 1})
    assert r.status_code == 400 and r.get_json()["field"] == "bogus"
    r = client.post("/invoicing/api/tariffs", json={"p_pv": 18, "p_grid_del": 5, "p_grid_con": 32,
                                                    "mode": "static", "effective_from": "next week"})
    assert r.status_code == 400 and r.get_json()["field"] == "effective_from"
    r = client.post("/invoicing/api/tariffs", json={"p_pv": 18, "p_grid_del": 5, "p_grid_con": 32,
                                                    "mode": "static", "effective_from": "2026-02-15T00:00"})
    assert r.status_code == 201 and r.get_json()["p_con"] == 25.0
    hist = client.get("/invoicing/api/tariffs/history").get_json()
    assert [v["p_pv"] for v in hist] == [20.0, 18.0]
    assert hist[1]["effective_from"] == "2026-02-15T00:00:00+01:00"


def test_prices_and_bad_parameters(client):
    r = client.get("/invoicing/api/prices?start=2026-02-01&end=2026-02-02")
    rows = r.get_json()
    assert r.status_code == 200 and len(rows) == 96
    # I = 1, E = 2 per interval: p_con capped at 30, p_pv = (30 + 6) / 2 = 18
    assert rows[0]["p_con"] == 30.0 and rows[0]["p_pv"] == 18.0 and rows[0]["start"] == "2026-02-01T00:00:00+01:00"
    r = client.get("/invoicing/api/prices?start=yesterday")
    assert r.status_code == 400 and r.get_json()["field"] == "start"
    r = client.get("/invoicing/api/prices?start=2026-02-02&end=2026-02-01")
    assert r.status_code == 400 and r.get_json()["field"] == "end"


def test_invoices_json_and_csv(client):
    r = client.get("/invoicing/api/invoices?period=2026-02").get_json()
    assert [i["import_cost_ct"] for i in r["invoices"]] == ["80640.00", "0.00"]
    r = client.get("/invoicing/api/invoices?period=2026-13")
    assert r.status_code == 400 and r.get_json()["field"] == "period"
    assert client.get("/invoicing/api/invoices").status_code == 400
    csv = client.get("/invoicing/api/invoices.csv?period=2026-02")
    assert csv.status_code == 200 and csv.headers["Content-Disposition"].endswith('invoices-2026-02.csv"')
    assert csv.data.decode().splitlines()[0].startswith("invoice_id,house_id,period_start,period_end")


def test_pages_are_served_under_the_base_path(client):
    r = client.get("/invoicing/")
    assert r.status_code == 200 and b"_dash-config" in r.data
    cfg = json.loads(r.data.decode().split('<script id="_dash-config" type="application/json">')[1].split("</script>")[0])
    assert cfg["url_base_pathname"] == "/invoicing/"
    assert client.get("/invoicing/_dash-layout").status_code == 200


def test_ranges_and_resolution():
    tz = __import__("zoneinfo").ZoneInfo("Europe/Zurich")
    now = pd.Timestamp("2026-03-15T10:00Z")
    r = analytics.resolve_range("last_month", now, tz)
    assert (r.start, r.end, r.bucket) == (pd.Timestamp("2026-01-31T23:00Z"), pd.Timestamp("2026-02-28T23:00Z"), "day")
    assert analytics.fit_bucket(pd.Timestamp("2025-01-01T00:00Z"), pd.Timestamp("2026-01-01T00:00Z"), "15min") == "day"
    with pytest.raises(ValueError, match="range"):
        analytics.resolve_range("forever", now, tz)


def test_custom_range_and_refresh_only_while_the_range_includes_now():
    from components.controls import range_state
    tz = __import__("zoneinfo").ZoneInfo("Europe/Zurich")
    now = pd.Timestamp("2026-03-15T10:00Z")
    # DST starts on 2026-03-29: the custom range is local days, so 23 hours that day
    r = analytics.chosen_range("custom", None, now, tz, "2026-03-29", "2026-03-29")
    assert (r.start, r.end, r.bucket) == (pd.Timestamp("2026-03-28T23:00Z"), pd.Timestamp("2026-03-29T22:00Z"), "15min")
    assert analytics.chosen_range("custom", None, now, tz, "2026-03-01", "2026-03-10").bucket == "hour"
    assert analytics.chosen_range("custom", None, now, tz, "2025-01-01", "2025-12-31").bucket == "day"
    assert analytics.chosen_range("custom", "month", now, tz, "2025-01-01", "2025-03-31").bucket == "month"
    with pytest.raises(ValueError, match="before the first"):
        analytics.chosen_range("custom", None, now, tz, "2026-03-10", "2026-03-01")
    with pytest.raises(ValueError, match="first and the last"):
        analytics.chosen_range("custom", None, now, tz, "2026-03-10", None)
    with pytest.raises(ValueError, match="resolution"):
        analytics.chosen_range("today", "week", now, tz)
    # the controls: dates shown only for custom; refresh only while the range includes now
    assert range_state("today", None, None, now, tz)[:3] == ({"display": "none"}, "", False)
    assert range_state("last_month", None, None, now, tz)[2] is True
    assert range_state("custom", "2026-03-01", "2026-03-31", now, tz)[:3] == ({}, "", False)
    assert range_state("custom", "2026-02-01", "2026-02-28", now, tz)[2] is True
    style, error, disabled, _ = range_state("custom", "2026-03-10", "2026-03-01", now, tz)
    assert style == {} and "before the first day" in error and disabled


def test_house_view_shows_live_power_and_the_draft(community):
    from components.views import house_view, live_power_card
    now = pd.Timestamp.now(tz="UTC")
    card = str(live_power_card(community, "1", now))
    assert "no reading yet" in card or "reports no power" in card or "drawing" in card
    t = pd.Timestamp.now(tz="UTC").floor("s")
    community.store_readings(pd.DataFrame({"meter_id": ["M1"], "ts": [t], "import_kwh": [1e6],
                                           "export_kwh": [0.0], "power_in_kw": [1.25], "power_out_kw": [0.0]}))
    card = str(live_power_card(community, "1", t + pd.Timedelta(seconds=5)))
    assert "drawing 1.25 kW, feeding in 0.00 kW" in card and "stale" not in card
    assert "stale" in str(live_power_card(community, "1", t + pd.Timedelta(hours=1)))
    rng = analytics.chosen_range("last_month", None, now, community.tz)
    energy, value, invoice, power, shares = house_view(community, "1", rng, now)
    assert shares == []                                  # LEG and grid shares only in pricing.mode leg
    assert "draft" in str(invoice) and "1.25 kW" in str(power)


def test_flows_kpis_and_figures(community):
    rng = analytics.Range(pd.Timestamp("2026-01-31T23:00Z"), pd.Timestamp("2026-02-28T23:00Z"), "day")
    flows = analytics.community_flows(community, rng)
    assert len(flows) == 28 and flows["start"].iloc[0] == pd.Timestamp("2026-02-01", tz="Europe/Zurich")
    assert flows["consumption_kwh"].iloc[0] == pytest.approx(96) and flows["p_con"].iloc[0] == pytest.approx(30)
    k = analytics.kpis(flows)
    assert k["self_sufficiency"] == pytest.approx(1.0) and k["self_consumption"] == pytest.approx(0.5)
    assert k["balance_chf"] == 0.0
    fig = energy_figure(flows)
    assert [t.name for t in fig.data] == ["Consumption", "Production"] and fig.data[0].y[0] == pytest.approx(-96)
    assert value_figure(flows).data[0].y[0] == pytest.approx(-96 * 30 / 100)
    assert list(price_figure(flows).data[1].y[:1]) == [pytest.approx(18)]
    house = analytics.house_flows(community, "2", rng)
    assert house["production_kwh"].sum() == pytest.approx(5376)


def test_tariff_page_logic(community):
    from components.views import p_con_text, submit
    assert p_con_text({"p_pv": 20, "p_grid_del": 6, "p_grid_con": 30, "mode": "static"}).startswith("25.00 ct/kWh")
    assert p_con_text({"p_pv": 40, "p_grid_del": 6, "p_grid_con": 30, "mode": "static"}) == "—"
    errors, msg = submit(community, {"p_pv": 40, "p_grid_del": 6, "p_grid_con": 30, "mode": "static"}, None,
                         datetime.now(timezone.utc))
    assert errors == {"p_pv": "must not exceed p_grid_con (40.0 > 30.0)"} and msg is None
    errors, msg = submit(community, {"p_pv": 19, "p_grid_del": 6, "p_grid_con": 30, "mode": "static"},
                         "2026-03-01T00:00", datetime.now(timezone.utc))
    assert errors == {} and msg.startswith("Saved: in force from 2026-03-01 00:00")


def test_meter_status_and_quality(community):
    import monitoring
    now = pd.Timestamp("2026-03-01T00:10+01:00")
    rows = monitoring.meter_rows(community, None, now)
    assert [r["meter_id"] for r in rows] == ["M1", "M2"]
    assert rows[0]["status"] == "OK" and rows[0]["last_import_kwh"] == 2688.0
    later = monitoring.meter_rows(community, None, now + pd.Timedelta(hours=1))
    assert later[0]["status"] == "stale" and "min ago" in later[0]["reason"]
    q = monitoring.quality_summary(community, pd.Timestamp("2026-01-31T23:00Z"), pd.Timestamp("2026-02-28T23:00Z"))
    assert q["houses"][0] == {"house": "One", "intervals": 2688, "estimated": 2688, "reset": 0, "quarantined": 0}
    assert q["quarantined"] == []


def test_periods_single_invoices_and_zip(client, community):
    import io
    import zipfile
    periods = client.get("/invoicing/api/periods").get_json()
    feb = next(p for p in periods if p["period_id"] == "2026-02")
    assert feb["status"] == "open" and feb["invoices"] == 2 and feb["missing_intervals"] == 0
    # listed from the first month with data (February) to the running one
    assert periods[0]["status"] == "running" and periods[-1]["period_id"] == "2026-02"
    # a month without readings, asked for: everything missing, said per house
    jan = client.get("/invoicing/api/invoices?period=2026-01").get_json()
    assert jan["missing"] == {"1": 744 * 4, "2": 744 * 4}
    one = client.get("/invoicing/api/invoices/DRAFT-2026-02-1").get_json()
    assert one["import_cost_ct"] == "80640.00" and one["net_amount_chf"] == "-806.40"
    csv_one = client.get("/invoicing/api/invoices/DRAFT-2026-02-1.csv")
    assert csv_one.status_code == 200 and len(csv_one.data.decode().splitlines()) == 2
    assert client.get("/invoicing/api/invoices/INV-2026-999").status_code == 404
    bad = client.get("/invoicing/api/invoices/INV-<b>")
    assert bad.status_code == 400 and bad.get_json()["field"] == "invoice_id"
    assert client.get("/invoicing/api/invoices/DRAFT-2026-02-9").status_code == 404
    # the ZIP: the CSV and one PDF per invoice; the same bytes on every download
    z1 = client.get("/invoicing/api/invoices.zip?period=2026-02")
    assert z1.status_code == 200 and z1.headers["Content-Disposition"].endswith('invoices-2026-02.zip"')
    names = zipfile.ZipFile(io.BytesIO(z1.data)).namelist()
    assert names == ["2026-02/invoices-2026-02.csv", "2026-02/DRAFT-2026-02-1.pdf", "2026-02/DRAFT-2026-02-2.pdf"]
    assert zipfile.ZipFile(io.BytesIO(z1.data)).read("2026-02/DRAFT-2026-02-1.pdf").startswith(b"%PDF-")
    assert client.get("/invoicing/api/invoices.zip?period=2026-02").data == z1.data
    assert client.get("/invoicing/api/invoices.zip?period=02-2026").get_json()["field"] == "period"


def finish(services, job):
    """Poll a page job as the progress bar does until it ends: (job store, message)."""
    import time

    from components.views import job_progress
    for _ in range(200):
        store, poll_disabled, _value, _style, message = job_progress(services.jobs, job)
        if poll_disabled:
            return store, message
        time.sleep(0.05)
    raise AssertionError("job did not finish")


def test_closing_from_the_page_runs_as_a_job_once(community):
    from components.views import close_job, settlement_view
    from jobs import Jobs
    from web import Services
    s = Services(community, None, Jobs())
    alert, rows, closable = settlement_view(community, "2026-02", "/invoicing/")
    assert closable and rows[0]["download"] == ("[PDF](/invoicing/api/invoices/DRAFT-2026-02-1.pdf) · "
                                                "[CSV](/invoicing/api/invoices/DRAFT-2026-02-1.csv)")
    assert settlement_view(community, "2026-01")[2] is False          # data missing: cannot close
    store, message = finish(s, close_job(s, "2026-02")[0])
    assert store["status"] == "done" and "2026-02 closed: 2 invoices issued, their PDFs stored" in str(message)
    assert community.ledger.stored_documents(["INV-2026-001", "INV-2026-002"]) == {"INV-2026-001", "INV-2026-002"}
    alert, rows, closable = settlement_view(community, "2026-02")
    assert not closable and [r["invoice_id"] for r in rows] == ["INV-2026-001", "INV-2026-002"]
    assert community.ledger.period("2026-02")["closed_by"] == "web"
    # a second close fails with the reason, and numbers are not consumed
    store, message = finish(s, close_job(s, "2026-02")[0])
    assert store["status"] == "failed" and "already closed" in str(message)
    assert [i["invoice_id"] for i in community.ledger.issued_invoices("2026-02")] == ["INV-2026-001", "INV-2026-002"]


def test_jobs_run_one_per_key_and_report_errors():
    import threading

    from jobs import JobBusy, Jobs
    jobs = Jobs()
    gate = threading.Event()

    def slow(progress):
        progress(1, 4, "first")
        gate.wait(5)
        return "ok"
    j = jobs.start("k", "Slow work", slow)
    with pytest.raises(JobBusy, match="Slow work is already running"):
        jobs.start("k", "Slow work", slow)
    gate.set()
    jobs.shutdown()
    assert jobs.get(j.job_id).status == "done" and jobs.get(j.job_id).result == "ok"
    jobs = Jobs()
    bad = jobs.start("b", "Broken", lambda p: 1 / 0)
    jobs.shutdown()
    assert jobs.get(bad.job_id).status == "failed" and "ZeroDivisionError" in jobs.get(bad.job_id).error


def test_adopting_an_unknown_meter_makes_a_house_that_survives_a_restart(tmp_path):
    from components.views import adopt
    from ingest.pipeline import Pipeline
    from ingest.readings import Reading
    from web import Services
    cfg = parse_config({"houses": HOUSES, "storage": {"data_dir": str(tmp_path)}}, source="test")
    c = Community.open(cfg, clock=lambda: datetime(2026, 3, 10, 12, tzinfo=timezone.utc))
    p = Pipeline(c).start()
    try:
        t0 = datetime(2026, 3, 10, 11, 0, tzinfo=timezone.utc)
        p.submit(Reading("NEW-1", t0, 10.0, 0.0), "mqtt")
        p.flush()
        assert "NEW-1" in p.unknown_meters()
        s = Services(c, type("R", (), {"pipeline": p, "registry_changed": lambda self: p.registry_changed()})())
        alert, ok = adopt(s, None, "X", None)
        assert not ok and "Select a meter" in str(alert)
        alert, ok = adopt(s, "NEW-1", "  ", None)
        assert not ok and "name" in str(alert)
        alert, ok = adopt(s, "NEW-1", "Hofstrasse 3", "10.03.2026")
        assert not ok and "not a date" in str(alert)
        alert, ok = adopt(s, "NEW-1", "Hofstrasse 3", None)
        assert ok and "is now house 3" in str(alert) and "billed from 2026-03-10" in str(alert)
        assert "NEW-1" not in p.unknown_meters()
        assert not adopt(s, "M1", "Again", None)[1]                     # registered meters cannot be adopted
        # the pipeline takes its readings now
        p.submit(Reading("NEW-1", t0 + pd.Timedelta(minutes=15), 10.5, 0.0), "mqtt")
        p.flush()
        assert p.status()["NEW-1"].accepted == 1
    finally:
        p.stop()
        c.close()
    c = Community.open(cfg)                                           # config.yaml does not list it: it stays
    try:
        h = {x.house_id: x for x in c.houses()}
        assert h["3"].name == "Hofstrasse 3" and h["3"].active_from == "2026-03-10"
        assert [m.meter_id for m in c.meters_of("3")] == ["NEW-1"]
    finally:
        c.close()


def test_health_says_what_needs_action_and_metrics_need_a_token(tmp_path):
    from auth.accounts import Accounts
    from ingest.pipeline import Pipeline
    from ingest.readings import Reading
    from web import create_app
    cfg = parse_config({"houses": HOUSES, "storage": {"data_dir": str(tmp_path)}, "mqtt": {"enabled": False}},
                       source="test")
    c = Community.open(cfg)
    runtime = type("R", (), {})()
    runtime.pipeline = Pipeline(c).start()
    runtime.mqtt, runtime.simulator = None, None
    runtime.connections = type("C", (), {"alive": lambda self: {}, "errors": {}})()
    try:
        now = datetime.now(timezone.utc)
        runtime.pipeline.submit(Reading("M1", now, 10.0, 0.0), "mqtt")
        runtime.pipeline.submit(Reading("M1", now, -1.0, 0.0), "mqtt")       # rejected: went backwards
        runtime.pipeline.flush()
        app = create_app(c, runtime)
        client = app.server.test_client()
        h = client.get("/api/health")
        body = h.get_json()
        assert h.status_code == 200 and body["status"] == "degraded"            # M2 has sent nothing
        assert body["warnings"] == ["meter M2: no reading yet"] and body["ingest"]["threads"] == {"pipeline": True}
        assert next(m for m in body["meters"] if m["meter_id"] == "M1")["last_reading_age_s"] < 60
        assert client.get("/metrics").status_code == 401
        token = Accounts(c.ledger).create_token("read", "test")
        m = client.get("/metrics", headers={"Authorization": f"Bearer {token}"})
        text = m.data.decode()
        assert m.status_code == 200 and 'leg_messages_received_total{source="mqtt"} 2.0' in text
        assert 'leg_readings_stored_total 1.0' in text and "leg_store_write_seconds_count 1.0" in text
        assert 'leg_meter_last_reading_age_seconds{meter="M1"}' in text and "leg_invoice_runs_total 0.0" in text
        assert 'leg_messages_rejected_total{reason=' in text
        assert re.search(r"^leg_store_memory_bytes \d", text, re.M), "the embedded store's memory"
        assert re.search(r"^leg_store_reopens_total 0\.0$", text, re.M), "reopens of the embedded store"
        # the pipeline's thread dies: 503, named
        runtime.pipeline.stop()
        h = client.get("/api/health")
        assert h.status_code == 503 and h.get_json()["problems"] == ["ingest thread pipeline is not running"]
    finally:
        runtime.pipeline.stop()
        c.close()
