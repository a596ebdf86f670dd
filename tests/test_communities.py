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

ROOT = Path(__file__).resolve().parent.parent


def two_communities(tmp_path) -> Path:
    cfg = tmp_path / "config.yaml"
    cfg.write_text(yaml.safe_dump({
        "storage": {"data_dir": str(tmp_path / "data")},
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


def test_one_csv_two_communities_settled_apart(tmp_path):
    cfg = two_communities(tmp_path)
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
