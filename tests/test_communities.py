"""Several communities in one configuration file (communities: <slug>: ...): one CSV routed by meter
id, each community settled with its own mode and tariffs to hand-computed figures and numbered on
its own; --community on the commands; configuration errors that name the communities."""
from __future__ import annotations

import csv
import subprocess
import sys
from pathlib import Path

import pytest
import yaml

from config import ConfigError, load_config, parse_communities
from test_store_contract import influxd  # noqa: F401  (fixture: a real influxd)

ROOT = Path(__file__).resolve().parent.parent


def two_communities(tmp_path, influx_url: str | None = None) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "storage": {"data_dir": str(tmp_path / "data"), "backend": "influxdb" if influx_url else "embedded"},
        **({"influxdb": {"url": influx_url, "database": "shared"}} if influx_url else {}),
        "mqtt": {"enabled": False},
        "communities": {
            "sonnenhalde": {
                "community": {"name": "LEG Sonnenhalde"},
                "pricing": {"mode": "static"},
                "tariffs": {"p_pv": 20.0, "p_grid_del": 6.0, "p_grid_con": 30.0},
                "houses": {"M1": {"id": 1, "name": "Meier"}, "M2": {"id": 2, "name": "Keller", "pv_kwp": 10}},
            },
            "bergblick": {
                "community": {"name": "ZEV Bergblick"},
                "pricing": {"mode": "zev_proportional"},
                "tariffs": {"p_pv": 15.0, "p_grid_del": 5.0, "p_grid_con": 35.0},
                "houses": {"M3": {"id": 1, "name": "Huber"}, "M4": {"id": 2, "name": "Brunner", "pv_kwp": 8}},
            },
        },
    }))
    return cfg


def app(*args, check=True):
    r = subprocess.run([sys.executable, str(ROOT / "app.py"), *args], capture_output=True, text=True, timeout=300,
                       cwd=ROOT)
    if check:
        assert r.returncode == 0, r.stdout + r.stderr
    return r


@pytest.mark.parametrize("backend", ["embedded", "influxdb"])
def test_one_csv_two_communities_settled_apart(tmp_path, request, backend):
    """Both communities number their houses 1 and 2; with InfluxDB they share one database, told
    apart by the community tag (a real influxd)."""
    influx = request.getfixturevalue("influxd") if backend == "influxdb" else None
    cfg = two_communities(tmp_path, influx.url if influx else None)
    readings = tmp_path / "readings.csv"
    rows = [("M1", 0, 0, 100, 0), ("M2", 0, 0, 0, 50), ("M3", 0, 0, 80, 0), ("M4", 0, 0, 0, 40)]
    with readings.open("w", newline="") as fh:
        w = csv.writer(fh)
        w.writerow(["meter_id", "timestamp", "import_kwh", "export_kwh"])
        for meter, i0, e0, i1, e1 in rows:
            w.writerow([meter, "2026-02-01T00:00:00+01:00", i0, e0])
            w.writerow([meter, "2026-03-01T00:00:00+01:00", i1, e1])
        w.writerow(["M9", "2026-02-01T00:00:00+01:00", 1, 0])                # no community has it
    r = app("import-readings", str(readings), "--config", str(cfg), check=False)
    assert r.returncode == 0, r.stderr
    assert "9 rows: 8 imported, 0 already stored, 1 rejected" in r.stdout
    assert "line 10" in r.stderr and "M9" in r.stderr

    out = {}
    for slug in ("sonnenhalde", "bergblick"):
        app("--community", slug, "settle", "--period", "2026-02", "--close", "--out", str(tmp_path / slug),
            "--config", str(cfg))
        with (tmp_path / slug / "invoices.csv").open() as fh:
            out[slug] = {row["house_id"]: row for row in csv.DictReader(fh)}
    sonne, berg = out["sonnenhalde"], out["bergblick"]
    # static: p_con = (20 + 30) / 2 = 25 ct for 100 kWh; 50 kWh credited at p_pv 20 ct
    assert (sonne["1"]["import_cost_ct"], sonne["2"]["export_revenue_ct"]) == ("2500.00", "1000.00")
    # zev_proportional: I = 80, E = 40 in every interval: p_con = (40 x 15 + 40 x 35) / 80 = 25 ct,
    # p_pv = 15 ct (everything produced is used locally)
    assert (berg["1"]["import_cost_ct"], berg["2"]["export_revenue_ct"]) == ("2000.00", "600.00")
    # numbered on their own: each community starts at 001
    assert sorted(r["invoice_id"][-3:] for r in sonne.values()) == ["001", "002"]
    assert sorted(r["invoice_id"][-3:] for r in berg.values()) == ["001", "002"]
    assert (tmp_path / "data" / "sonnenhalde" / "ledger.sqlite").exists()
    assert (tmp_path / "data" / "bergblick" / "ledger.sqlite").exists()
    if influx:
        # one database, every point tagged with its community; house 1 is two series
        import requests
        q = lambda text: requests.get(f"{influx.url}/query", params={"db": "shared", "q": text},
                                      timeout=10).json()["results"][0]
        tags = q("SHOW TAG VALUES FROM house_energy WITH KEY = community")["series"][0]["values"]
        assert sorted(v[1] for v in tags) == ["bergblick", "sonnenhalde"]
        series = q("SHOW SERIES FROM house_energy WHERE house_id = '1'")["series"][0]["values"]
        assert sorted(v[0] for v in series) == ["house_energy,community=bergblick,house_id=1,mac=M3",
                                                "house_energy,community=sonnenhalde,house_id=1,mac=M1"]
        for m in ("readings", "community_energy"):
            assert "series" not in q(f"SELECT count(*) FROM {m} WHERE community = ''"), m
    # the commands that work on one community say which ones there are
    r = app("settle", "--period", "2026-02", "--config", str(cfg), check=False)
    assert r.returncode != 0 and "configures 2 communities (bergblick, sonnenhalde)" in r.stderr
    r = app("tariffs", "list", "--community", "nowhere", "--config", str(cfg), check=False)
    assert r.returncode != 0 and "no community 'nowhere'" in r.stderr


def test_configuration_errors_name_the_communities(tmp_path):
    base = {"storage": {"data_dir": str(tmp_path)}}
    with pytest.raises(ConfigError) as err:
        parse_communities({**base, "communities": {
            "a": {"houses": {"M1": {"id": 1, "name": "A"}}},
            "b": {"houses": {"M1": {"id": 1, "name": "B"}}, "meters": [{"id": "X1", "house": "M1"}]},
            "c": {"houses": {"X1": {"id": 1, "name": "C"}}}}}, "f.yaml")
    assert "communities.b: meter or metering point 'M1' belongs to communities.a already (one community per meter)" in err.value.errors
    assert any(e.startswith("communities.c: meter or metering point 'X1' belongs to communities.b") for e in err.value.errors)
    with pytest.raises(ConfigError) as err:
        parse_communities({**base, "houses": {}, "communities": {
            "Bad Slug": {}, "ok": {"web": {"port": 1}, "tariffs": {"p_pv": "x"}}}}, "f.yaml")
    assert set(err.value.errors) >= {
        "houses: belongs under communities.<slug> when the file has communities:",
        "communities.Bad Slug: a slug is 1 to 40 characters a-z, 0-9 and -",
        "communities.ok.web: is shared by all communities: put it at the top of the file",
        "communities.ok.tariffs.p_pv: must be a number"}
    single = tmp_path / "one.yaml"
    single.write_text(yaml.safe_dump({"houses": {"M1": {"id": 1, "name": "A"}}}))
    with pytest.raises(ConfigError, match="leave --community out"):
        load_config(single, "a")
    assert load_config(single).slug is None


def open_instance(tmp_path):
    """Both communities open in this process, February 2026 closed in each, instance accounts."""
    import pandas as pd

    from community import Community
    from instance import open_accounts
    from web import Services
    cfg_file = two_communities(tmp_path)
    configs = parse_communities(yaml.safe_load(cfg_file.read_text()), str(cfg_file))
    communities = {}
    for slug, cfg in configs.items():
        c = Community.open(cfg)
        meters = list(cfg.houses)
        df = pd.DataFrame({"meter_id": [m for m in meters for _ in range(2)],
                           "ts": pd.to_datetime(["2026-02-01T00:00+01:00", "2026-03-01T00:00+01:00"] * 2, utc=True),
                           "import_kwh": [0.0, 100.0, 0.0, 0.0], "export_kwh": [0.0, 0.0, 0.0, 50.0]})
        df["ts"] = df["ts"].astype("datetime64[us, UTC]")
        c.store_readings(df)
        c.settle("2026-02", close=True, closed_by="test")
        communities[slug] = c
    ledger, accounts = open_accounts(configs)
    return configs, communities, ledger, accounts, {s: Services(c, slug=s) for s, c in communities.items()}


def test_nothing_of_one_community_is_reachable_from_another(tmp_path):
    from auth.accounts import AccountError
    from web import create_app
    from webauth import login
    from instance import instance_dir
    configs, communities, ledger, accounts, services = open_instance(tmp_path)
    try:
        accounts.add_user("provider", "provider-secret-1", "manager")                       # every community
        accounts.add_user("berg-admin", "berg-secret-12", "manager", communities=["bergblick"])
        accounts.add_user("meier", "meier-secret-12", "member", ["sonnenhalde:1"])
        with pytest.raises(AccountError, match="not in the registry"):
            accounts.add_user("x", "x-secret-1234", "member", ["elsewhere:1"])
        with pytest.raises(AccountError, match="not configured"):
            accounts.add_user("y", "y-secret-1234", "manager", communities=["elsewhere"])
        app = create_app(communities["bergblick"], None, accounts, instance=services,
                         secret_dir=instance_dir(configs)).server
        provider = login(app.test_client(), "/", "provider", "provider-secret-1")
        berg = login(app.test_client(), "/", "berg-admin", "berg-secret-12")
        meier = login(app.test_client(), "/", "meier", "meier-secret-12")
        names = lambda client, path: [h["name"] for h in client.get(path).get_json()]
        # the path, ?community= and the switcher choose; each community numbers its own invoices
        assert names(provider, "/api/c/sonnenhalde/houses") == ["Meier", "Keller"]
        assert names(provider, "/api/houses?community=bergblick") == ["Huber", "Brunner"]
        # house 2 delivered 50 kWh in each: at p_pv 20 ct in Sonnenhalde, at 15 ct in Bergblick
        assert provider.get("/api/c/sonnenhalde/invoices/INV-2026-002").get_json()["export_revenue_ct"] == "1000.00"
        assert provider.get("/api/c/bergblick/invoices/INV-2026-002").get_json()["export_revenue_ct"] == "750.00"
        assert provider.get("/community/sonnenhalde").status_code == 303
        assert names(provider, "/api/houses") == ["Meier", "Keller"]                         # kept in the session
        assert provider.get("/api/c/nowhere/houses").status_code == 404
        # a manager kept to one community, a member of the other: refused everywhere else
        assert names(berg, "/api/houses") == ["Huber", "Brunner"]
        for path in ("/api/c/sonnenhalde/houses", "/api/c/sonnenhalde/invoices?period=2026-02",
                     "/api/c/sonnenhalde/invoices/INV-2026-001.pdf", "/api/c/sonnenhalde/payments",
                     "/api/houses?community=sonnenhalde"):
            assert berg.get(path).status_code == 403, path
        # every API route of the other community, whatever its parameters: refused before the view
        from auth.web import route_level
        from test_access import concrete
        checked = 0
        for rule in app.url_map.iter_rules():
            if not rule.rule.startswith("/api/") or route_level(app, rule.endpoint, "/") in ("public", "control"):
                continue
            path = concrete(rule, None).replace("/api/", "/api/c/sonnenhalde/", 1)
            for method in sorted(rule.methods - {"HEAD", "OPTIONS"}):
                r = berg.open(path, method=method, json={})
                assert r.status_code == 403, (method, path, r.status_code)
                checked += 1
        assert checked >= 15
        assert berg.get("/community/sonnenhalde").status_code == 403                        # the switcher too
        assert names(berg, "/api/houses") == ["Huber", "Brunner"]                             # still its own
        mine = meier.get("/api/c/sonnenhalde/invoices?period=2026-02").get_json()["invoices"]
        assert [i["house_id"] for i in mine] == ["1"] and mine[0]["import_cost_ct"] == "2500.00"
        assert meier.get("/api/c/bergblick/invoices?period=2026-02").status_code == 403
        assert meier.get("/api/c/bergblick/invoices/INV-2026-001.pdf").status_code == 403
        # pages and callbacks of the chosen community: the brand names it
        page = provider.get("/")
        assert page.status_code == 200
    finally:
        ledger.close()
        for c in communities.values():
            c.close()


@pytest.mark.skipif(__import__("peers").mosquitto_binary() is None, reason="mosquitto is not installed")
def test_one_app_runs_both_communities_over_one_mqtt_subscription(tmp_path):
    import json
    import os
    import time

    import paho.mqtt.client as mqtt
    import requests

    from peers import Mosquitto, free_port, wait_port
    broker = Mosquitto(tmp_path / "broker").start()
    cfg = two_communities(tmp_path)
    data = yaml.safe_load(cfg.read_text())
    port = free_port()
    data["mqtt"] = {"broker": "127.0.0.1", "port": broker.port, "client_id": "leg-many"}
    data["web"] = {"host": "127.0.0.1", "port": port}
    data["collector"] = {"interval": 1}
    cfg.write_text(yaml.safe_dump(data))
    env = {**os.environ, "LEG_ADMIN_PASSWORD": "instance-secret-1"}
    proc = subprocess.Popen([sys.executable, str(ROOT / "app.py"), "run", "--config", str(cfg)], cwd=ROOT, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        wait_port(port, timeout=60)
        token = app("token", "create", "--scope", "read", "--config", str(cfg)).stdout.strip().splitlines()[-1]
        bearer = {"Authorization": f"Bearer {token}"}
        pub = mqtt.Client(mqtt.CallbackAPIVersion.VERSION2, client_id="meters")
        pub.connect("127.0.0.1", broker.port)
        pub.loop_start()
        base = time.time()
        for k in range(5):
            for mac, ei in (("M1", 10.0), ("M3", 20.0), ("M9", 1.0)):
                pub.publish(f"{mac}/SENSOR", json.dumps({"Ei": ei + k * 0.01, "Eo": 0.0, "ts": 100 + 2 * k}),
                            qos=1).wait_for_publish(10)
        accepted = {}
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            accepted = {slug: {m["meter_id"]: m["accepted"] for m in requests.get(
                f"http://127.0.0.1:{port}/api/c/{slug}/meters", headers=bearer, timeout=30).json()}
                for slug in ("sonnenhalde", "bergblick")}
            if accepted["sonnenhalde"].get("M1") == 5 and accepted["bergblick"].get("M3") == 5:
                break
            time.sleep(0.5)
        assert accepted["sonnenhalde"] == {"M1": 5, "M2": 0}, accepted
        assert accepted["bergblick"] == {"M3": 5, "M4": 0}, accepted      # nothing of M9, nothing crossed over
        assert time.time() - base < 60
        pub.loop_stop()
        # /metrics: both communities, each series labelled by its slug
        text = requests.get(f"http://127.0.0.1:{port}/metrics", headers=bearer, timeout=30).text
        for slug in ("sonnenhalde", "bergblick"):
            assert f'leg_readings_stored_total{{community="{slug}"}} 5.0' in text, text[:3000]
        assert 'leg_meter_last_reading_age_seconds{community="bergblick",meter="M3"}' in text
        assert 'community="sonnenhalde",meter="M3"' not in text and 'community="bergblick",meter="M1"' not in text
        # the commands beside the running app reach it for their community (control.json per data dir)
        for slug, meter in (("sonnenhalde", "M1"), ("bergblick", "M3")):
            control = json.loads((tmp_path / "data" / slug / "control.json").read_text())
            assert control["base"].endswith(f"/c/{slug}/") and control["pid"] == proc.pid
            r = app("export-readings", "--community", slug, "--config", str(cfg))
            rows = list(csv.DictReader(r.stdout.splitlines()))
            assert len(rows) == 5 and {row["meter_id"] for row in rows} == {meter}, r.stdout
        # the secret of a control file does not open another community's store without its path
        r = requests.get(f"http://127.0.0.1:{port}/control/readings", timeout=30,
                         headers={"X-Control-Secret": control["secret"]})
        assert r.status_code == 404 and r.json()["field"] == "community"
    finally:
        proc.terminate()
        out = proc.communicate(timeout=60)[0]
        broker.stop()
    assert "2 communities: bergblick, sonnenhalde" in out, out[-3000:]
    assert "meter M9 belongs to no community" in out, out[-3000:]
    assert not list((tmp_path / "data").glob("*/control.json")), "control files removed at the stop"


def test_the_pipelines_of_all_communities_run_in_one_thread_and_acknowledge_after_the_write(tmp_path):
    """One ``PipelineGroup`` for every community (as ``app.py run`` starts them): one worker
    thread, readings routed by meter, a mark answered only once the readings handed before it are
    in their community's store, and only the communities handed something write for it."""
    import threading
    import time
    from datetime import datetime, timedelta, timezone

    from community import Community
    from ingest.pipeline import PipelineGroup
    from ingest.readings import Reading
    from ingest.runtime import IngestRuntime
    from instance import PipelineRouter

    configs = parse_communities(yaml.safe_load(two_communities(tmp_path).read_text()), source="test")
    group = PipelineGroup(ack_min_s=0.2)
    before = {t.name for t in threading.enumerate()}
    communities = {s: Community.open(cfg) for s, cfg in configs.items()}
    runtimes = {s: IngestRuntime(c, mqtt=False, pipeline_options={"group": group}).start()
                for s, c in communities.items()}
    try:
        started = [t for t in threading.enumerate() if t.name.startswith("ingest-pipeline")]
        assert [t.name for t in started] == ["ingest-pipelines"] and "ingest-pipelines" not in before
        router = PipelineRouter(runtimes).start()
        base = datetime.now(timezone.utc) - timedelta(minutes=5)
        acked = threading.Event()
        for k in range(3):
            router.submit(Reading("M1", base + timedelta(seconds=10 * k), 10.0 + 0.01 * k, 0.0), "test")
            router.submit(Reading("M3", base + timedelta(seconds=10 * k), 20.0 + 0.01 * k, 0.0), "test")
        seen = {}

        def done():
            seen.update({s: len(c.store.read_readings()) for s, c in communities.items()})
            acked.set()
        router.mark(done)
        assert acked.wait(10)
        assert seen == {"sonnenhalde": 3, "bergblick": 3}            # stored before the acknowledgement
        writes = {s: rt.pipeline.stats.writes for s, rt in runtimes.items()}
        # a batch of one community's meter: only that community writes for its mark
        router.submit(Reading("M1", base + timedelta(seconds=40), 10.05, 0.0), "test")
        acked.clear()
        router.mark(acked.set)
        assert acked.wait(10)
        assert runtimes["sonnenhalde"].pipeline.stats.writes == writes["sonnenhalde"] + 1
        assert runtimes["bergblick"].pipeline.stats.writes == writes["bergblick"]
        assert {m: s.accepted for m, s in runtimes["bergblick"].pipeline.status().items()} == {"M3": 3, "M4": 0}
        # one community stopped: the other's pipeline keeps working in the same thread
        runtimes.pop("sonnenhalde").stop()
        router.runtimes = runtimes
        router.submit(Reading("M3", base + timedelta(seconds=40), 20.05, 0.0), "test")
        runtimes["bergblick"].pipeline.flush()
        assert len(communities["bergblick"].store.read_readings()) == 4
    finally:
        for rt in runtimes.values():
            rt.stop()
        for c in communities.values():
            c.close()
    deadline = time.monotonic() + 5                   # the last member gone, the thread ends
    while any(t.name == "ingest-pipelines" for t in threading.enumerate()) and time.monotonic() < deadline:
        time.sleep(0.01)
    assert not any(t.name == "ingest-pipelines" for t in threading.enumerate())
