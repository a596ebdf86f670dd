"""The meter registry and the connections beyond MQTT, end to end against real peers on loopback.

The integration guide's complete example: a building's total and solar meters polled over HTTP,
apartments 1-3 pushing over UDP on ports of their own, tenants A-C. Readings flow through the one
pipeline, intervals and invoices come out for the tenants, and the total meter's cross-check agrees
with the computed grid exchange. Plus: the registry's rules, replacing a meter without losing or
double-counting energy, pushed readings with a per-meter token, test connection, the command line."""
import json
import logging
import socket
import threading
import time
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pandas as pd
import pytest

import monitoring
import registry
from community import Community
from config import ConfigError, parse_config
from peers import free_port

DAY = pd.Timestamp("2026-03-10T00:00", tz="Europe/Zurich")
TENANTS = {"AA-00-00-00-00-0A": {"id": 1, "name": "Tenant A"}, "AA-00-00-00-00-0B": {"id": 2, "name": "Tenant B"},
           "AA-00-00-00-00-0C": {"id": 3, "name": "Tenant C"},
           "AA-00-00-00-00-0D": {"id": 4, "name": "Building owner", "pv_kwp": 25}}
RATES = {"apartment-1": 0.5, "apartment-2": 1.0, "apartment-3": 1.5}     # kWh per hour
SOLAR_KWH, TOTAL_START = 30.0, 5000.0                                   # over the day


class Miniserver:
    """Virtual HTTP outputs: each path answers its readings in turn, then keeps the last one."""

    def __init__(self, answers: dict[str, list[dict]]):
        self.answers = {k: list(v) for k, v in answers.items()}
        self.hits: dict[str, int] = {}
        owner = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self):
                queue = owner.answers.get(self.path)
                owner.hits[self.path] = owner.hits.get(self.path, 0) + 1
                if queue is None:
                    self.send_response(404)
                    self.end_headers()
                    return
                body = json.dumps(queue.pop(0) if len(queue) > 1 else queue[0]).encode()
                self.send_response(200)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            def log_message(self, *a):
                pass
        self.port = free_port()
        self.httpd = ThreadingHTTPServer(("127.0.0.1", self.port), Handler)
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


def wait_for(check, timeout=20.0, what="condition"):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return
        time.sleep(0.1)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_guides_complete_example_end_to_end(tmp_path, caplog):
    from ingest.runtime import IngestRuntime
    caplog.set_level(logging.INFO)
    t0, t1 = DAY.tz_convert("UTC"), (DAY + pd.Timedelta(days=1)).tz_convert("UTC")
    grid_kwh = sum(RATES.values()) * 24 - SOLAR_KWH
    mini = Miniserver({
        "/dev/sps/io/UUID-TOTAL/state": [{"value": TOTAL_START, "ts": t0.isoformat()},
                                         {"value": TOTAL_START + grid_kwh, "ts": t1.isoformat()}],
        "/dev/sps/io/UUID-SOLAR/state": [{"power_kwh": 100.0, "ts": t0.isoformat()},
                                         {"power_kwh": 100.0 + SOLAR_KWH, "ts": t1.isoformat()}]})
    ports = {f"apartment-{i}": free_port() for i in (1, 2, 3)}
    url = f"http://127.0.0.1:{mini.port}/dev/sps/io/"
    cfg = parse_config({
        "houses": TENANTS, "storage": {"data_dir": str(tmp_path)}, "mqtt": {"enabled": False},
        "meters": [
            {"id": "total", "name": "Total Building Meter", "type": "total", "connection": "loxone_http",
             "loxone_http": {"url": url + "UUID-TOTAL/state", "interval_s": 1}},
            {"id": "solar", "name": "Solar Production Meter", "type": "solar", "house": "AA-00-00-00-00-0D",
             "connection": "loxone_http", "loxone_http": {"url": url + "UUID-SOLAR/state", "interval_s": 1}},
        ] + [{"id": mid, "name": f"Apartment {mid[-1]}", "type": "apartment",
              "house": f"AA-00-00-00-00-0{'ABC'[int(mid[-1]) - 1]}", "connection": "udp",
              "udp": {"port": port, "sender_ip": "127.0.0.1", "format": "csv", "host": "127.0.0.1"}}
             for mid, port in ports.items()]}, source="test")
    c = Community.open(cfg, clock=lambda: datetime(2026, 4, 2, tzinfo=timezone.utc))
    runtime = IngestRuntime(c, mqtt=False).start()
    try:
        sender = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        for mid, port in ports.items():
            for h in range(25):                               # hourly counters, local time without offset
                ts = (DAY + pd.Timedelta(hours=h)).tz_localize(None)
                sender.sendto(f"{1000 + RATES[mid] * h:.3f},{ts:%Y-%m-%dT%H:%M:%S}".encode(), ("127.0.0.1", port))
        sender.sendto(b"\xff\xfegarbage", ("127.0.0.1", ports["apartment-1"]))
        sender.close()
        stored = lambda mid: len(c.store.read_readings(mid))
        wait_for(lambda: all(stored(m) == 25 for m in ports) and stored("total") >= 2 and stored("solar") >= 2,
                 what="every meter's readings in the store")
        runtime.pipeline.flush()
        st = runtime.pipeline.status()
        assert st["apartment-1"].rejected_total == 1 and st["apartment-2"].rejected_total == 0
    finally:
        runtime.stop()
        mini.close()
    logs = caplog.text
    assert "UDP listener started for meter 'Apartment 1' on port" in logs
    assert "UDP data received for meter 'Apartment 2'" in logs
    assert "HTTP data received for meter 'Solar Production Meter'" in logs
    # intervals for every house over the whole day, invoices for tenants A-C
    s = c.settle("2026-03", allow_incomplete=True)
    inv = {i["house_id"]: i for i in s.invoices}
    for hid, mid in (("1", "apartment-1"), ("2", "apartment-2"), ("3", "apartment-3")):
        assert float(inv[hid]["energy_imported_kwh"]) == pytest.approx(RATES[mid] * 24)
        assert float(inv[hid]["net_amount_chf"]) < 0
        assert s.missing[hid] == (31 * 24 - 1 - 24) * 4         # only the day we sent (March has 743 h)
    assert float(inv["4"]["energy_exported_kwh"]) == pytest.approx(SOLAR_KWH)
    # the total meter is never billed, and its cross-check agrees with the computed grid import
    assert set(inv) == {"1", "2", "3", "4"}
    check = monitoring.total_crosscheck(c, t0, t1)
    assert len(check) == 1 and check[0]["day"] == "2026-03-10"
    assert check[0]["measured_import_kwh"] == pytest.approx(grid_kwh, abs=1e-3)
    assert check[0]["computed_import_kwh"] == pytest.approx(grid_kwh, abs=1e-3)
    assert check[0]["difference"] == "0.0%"
    c.close()


def community(tmp_path, **extra):
    cfg = parse_config({"houses": TENANTS, "storage": {"data_dir": str(tmp_path)}, "mqtt": {"enabled": False},
                        **extra}, source="test")
    return Community.open(cfg, clock=lambda: datetime(2026, 4, 2, tzinfo=timezone.utc))


def test_registry_rules_in_config_and_in_the_form(tmp_path):
    bad = {"houses": TENANTS, "meters": [
        {"id": "t", "type": "total", "house": "AA-00-00-00-00-0A", "connection": "import"},
        {"id": "a", "type": "apartment", "connection": "udp"},
        {"id": "b", "type": "apartment", "house": "nowhere", "connection": "udp", "udp": {"port": 9000}},
        {"id": "c", "type": "apartment", "house": "AA-00-00-00-00-0A", "connection": "udp", "udp": {"port": 9000}},
        {"id": "m", "type": "solar", "house": "AA-00-00-00-00-0D", "connection": "modbus", "modbus": {"host": "x"}}]}
    with pytest.raises(ConfigError) as e:
        parse_config(bad, source="t")
    errors = "\n".join(e.value.errors)
    for expected in ("meters[0].house: a total meter measures the building",
                     "meters[1].udp: required for connection udp", "meters[1].house: required for a apartment",
                     "meters[2].house: 'nowhere' is not a key under houses",
                     "meters[3].udp: port 9000 is shared", "meters[4].modbus: name the import or the export"):
        assert expected in errors, expected
    c = community(tmp_path)
    try:
        with pytest.raises(registry.RegistryError) as e:
            registry.save(c, {"id": "hp", "type": "apartment", "house": "1", "connection": "modbus",
                              "modbus": {"host": "", "port": 99999, "import": {"address": 0}}}, "boss", new=True)
        assert set(e.value.errors) == {"modbus.host", "modbus.port"}
        m = registry.save(c, {"id": "hp", "name": "Heat pump", "type": "apartment", "house": "1",
                              "connection": "modbus", "modbus": {"host": "10.0.0.5", "import": {"address": 4}}},
                          "boss", new=True)
        assert m.settings["import"]["address"] == 4 and m.house_id == "1" and m.origin == "web"
        with pytest.raises(registry.RegistryError, match="exists already"):
            registry.save(c, {"id": "hp", "type": "apartment", "house": "1", "connection": "mqtt"}, "boss", new=True)
    finally:
        c.close()
    c = community(tmp_path)                        # kept across a restart; config entries are applied too
    try:
        assert c.ledger.meter("hp").name == "Heat pump"
    finally:
        c.close()


def test_replacing_a_meter_splits_the_energy_at_the_replacement(tmp_path):
    c = community(tmp_path)
    try:
        mac = "AA-00-00-00-00-0A"                  # tenant A's meter, replaced at 12:10 local
        at = (DAY + pd.Timedelta(hours=12, minutes=10)).tz_convert("UTC")
        df = pd.DataFrame([{"meter_id": mac, "ts": (DAY + pd.Timedelta(hours=h)).tz_convert("UTC"),
                            "import_kwh": 100.0 + h} for h in range(0, 13)])                      # 1 kWh/h
        df["ts"] = pd.to_datetime(df["ts"], utc=True).astype("datetime64[us, UTC]")
        df["export_kwh"] = df["power_in_kw"] = df["power_out_kw"] = float("nan")
        c.store_readings(df)
        # replace: the old meter's final reading 112.1666 at 12:10, the new one's start 4.0 (2 kWh/h after)
        new = registry.replace_meter(c, mac, {"id": "new-a2", "connection": "import"},
                                     {"import_kwh": 112 + 10 / 60}, {"import_kwh": 4.0}, at.to_pydatetime(), "boss")
        assert new.active_from == at.isoformat() and c.ledger.meter(mac).retired_at == at.isoformat()
        later = pd.DataFrame({"meter_id": "new-a2", "ts": [(DAY + pd.Timedelta(hours=h)).tz_convert("UTC")
                                                           for h in (13, 14, 15, 16)],
                              "import_kwh": [4.0 + 2 * (50 / 60) + 2 * (h - 13) for h in (13, 14, 15, 16)]})
        later["ts"] = later["ts"].astype("datetime64[us, UTC]")
        later["export_kwh"] = later["power_in_kw"] = later["power_out_kw"] = float("nan")
        c.store_readings(later)
        c.recompute_all()
        iv = c.store.read_intervals(DAY.tz_convert("UTC"), (DAY + pd.Timedelta(hours=16)).tz_convert("UTC"), ["1"])
        assert len(iv) == 64                                       # every interval, none missing
        by = iv.set_index(iv["start"].dt.tz_convert("Europe/Zurich").dt.strftime("%H:%M"))["delta_ei_kwh"]
        assert by["11:45"] == pytest.approx(0.25) and by["13:00"] == pytest.approx(0.5)
        # 12:00-12:15: 10 min of the old meter at 1 kWh/h, 5 min of the new one at 2 kWh/h
        assert by["12:00"] == pytest.approx(10 / 60 + 2 * 5 / 60)
        assert iv["delta_ei_kwh"].sum() == pytest.approx(12 + 10 / 60 + 2 * (3 + 50 / 60))
    finally:
        c.close()


def test_pushed_readings_need_the_meters_token(tmp_path):
    from ingest.runtime import IngestRuntime
    from web import create_app
    c = community(tmp_path, meters=[{"id": "pv-push", "type": "solar", "house": "AA-00-00-00-00-0D",
                                     "connection": "http_push", "http_push": {"format": "json"}}])
    runtime = IngestRuntime(c, mqtt=False).start()
    try:
        token = registry.issue_push_token(c, "pv-push")
        client = create_app(c, runtime).server.test_client()
        assert client.get("/api/meters/pv-push/reading?value=12.5").status_code == 401
        assert client.get("/api/meters/pv-push/reading?value=12.5&token=wrong").status_code == 401
        hour_ago = (pd.Timestamp.now(tz="UTC") - pd.Timedelta(hours=1)).isoformat()
        r = client.post("/api/meters/pv-push/reading", data=json.dumps({"value": "12.5 kWh", "ts": hour_ago}),
                        headers={"X-Meter-Token": token})
        assert r.status_code == 202 and r.get_json()["value_kwh"] == 12.5
        r = client.get(f"/api/meters/pv-push/reading?value=13.5&token={token}")      # a Loxone virtual output
        assert r.status_code == 202
        r = client.post("/api/meters/pv-push/reading", data=b"{nope", headers={"X-Meter-Token": token})
        assert r.status_code == 400 and r.get_json()["field"] == "value"
        runtime.pipeline.flush()
        got = c.store.read_readings("pv-push")
        assert list(got["export_kwh"]) == [12.5, 13.5] and got["import_kwh"].isna().all()
        assert runtime.pipeline.status()["pv-push"].rejected_total == 1
        registry.issue_push_token(c, "pv-push")                    # a new token: the old one stops working
        assert client.get(f"/api/meters/pv-push/reading?value=14&token={token}").status_code == 401
    finally:
        runtime.stop()
        c.close()


def test_test_connection_from_the_form_and_the_command_line(tmp_path):
    from click.testing import CliRunner

    import app as cli_app
    import yaml
    from components import meter_form
    from test_modbus import Server
    server = Server().start()
    try:
        data = {"houses": TENANTS, "storage": {"data_dir": str(tmp_path)}, "mqtt": {"enabled": False},
                "meters": [{"id": "hp", "type": "apartment", "house": "AA-00-00-00-00-0A", "connection": "modbus",
                            "modbus": {"host": "127.0.0.1", "port": server.port, "import": {"address": 0}}},
                           {"id": "off", "type": "apartment", "house": "AA-00-00-00-00-0B", "connection": "modbus",
                            "modbus": {"host": "127.0.0.1", "port": server.port, "import": {"address": 4000}}}]}
        cfg_file = tmp_path / "config.yaml"
        cfg_file.write_text(yaml.safe_dump(data))
        r = CliRunner().invoke(cli_app.cli, ["test-meter", "hp", "--config", str(cfg_file)])
        assert r.exit_code == 0 and "import 1234.5 kWh" in r.output, r.output
        r = CliRunner().invoke(cli_app.cli, ["test-meter", "off", "--config", str(cfg_file)])
        assert r.exit_code != 0 and "ILLEGAL DATA ADDRESS" in r.output
        c = Community.open(parse_config(data, source="t"))
        try:
            values = {"id": "new", "type": "apartment", "house": "1", "connection": "modbus", "active": True}
            settings = {("modbus", "host"): "127.0.0.1", ("modbus", "port"): server.port,
                        ("modbus", "import-address"): 2, ("modbus", "import-word_order"): "little"}
            assert "read import 1’234.500 kWh" in str(meter_form.test(c, values, settings))
            server.stop()
            assert "cannot connect" in str(meter_form.test(c, values, settings))
        finally:
            c.close()
    finally:
        server.stop()
