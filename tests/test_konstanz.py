"""A month of real meter counters (Konstanz, June 2016, Open Power System Data, CC-BY 4.0):
imported and settled through the command line, checked against an independent computation."""
import csv
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

ROOT = Path(__file__).resolve().parent.parent
DATA = ROOT / "tests" / "data" / "opsd_konstanz_residential_2016-06.csv"
METERS = ["residential1", "residential2", "residential3", "residential4", "residential5",
          "residential6", "public1"]
P_PV, P_DEL, P_CON = 20.0, 6.0, 30.0



def long_readings() -> pd.DataFrame:
    """The wide OPSD file as meter_id,timestamp,import_kwh,export_kwh (grid import/export only:
    the house connection's counters; the PV column is generation, part of it used in the house)."""
    wide = pd.read_csv(DATA)
    rows = []
    for m in METERS:
        imp = wide.get(f"DE_KN_{m}_grid_import")
        exp = wide.get(f"DE_KN_{m}_grid_export")
        rows.append(pd.DataFrame({
            "meter_id": f"DE_KN_{m}", "timestamp": wide["utc_timestamp"],
            "import_kwh": imp.map(lambda v: f"{v:.3f}"),
            "export_kwh": exp.map(lambda v: f"{v:.3f}") if exp is not None else "",
        }))
    return pd.concat(rows, ignore_index=True)


def oracle(readings: pd.DataFrame) -> dict[str, dict[str, float]]:
    """Break-even invoices computed independently: hourly counters, linear within the hour, so
    each quarter hour gets a quarter of the hour's delta; the seed's algorithm per interval."""
    df = readings.copy()
    df["ts"] = pd.to_datetime(df["timestamp"], utc=True)
    start, end = pd.Timestamp("2016-05-31T22:00Z"), pd.Timestamp("2016-06-30T22:00Z")
    per_house = {}
    for m, g in df.groupby("meter_id"):
        g = g.set_index("ts").sort_index()
        imp = pd.to_numeric(g["import_kwh"]).diff().shift(-1) / 4
        exp = pd.to_numeric(g["export_kwh"], errors="coerce").fillna(0).diff().shift(-1) / 4
        hours = g.index[(g.index >= start) & (g.index < end)]
        per_house[m] = (imp.loc[hours], exp.loc[hours])
    hours = next(iter(per_house.values()))[0].index
    out = {m: {"ei": 0.0, "eo": 0.0, "cost": 0.0, "rev": 0.0} for m in per_house}
    for h in hours:
        I = sum(v[0][h] for v in per_house.values())
        E = sum(v[1][h] for v in per_house.values())
        if I == 0:
            p_con, p_pv = P_CON, P_DEL
        elif E >= I:
            p_con = P_DEL + (E / I) * (P_PV - P_DEL)
            p_pv = P_PV
            if p_con > P_CON:
                p_con = P_CON
                p_pv = (I * p_con + (E - I) * P_DEL) / E
        else:
            p_con = P_CON + (E / I) * (P_PV - P_CON)
            p_pv = P_PV
        for m, (imp, exp) in per_house.items():   # four identical quarter hours
            out[m]["ei"] += 4 * imp[h]
            out[m]["eo"] += 4 * exp[h]
            out[m]["cost"] += 4 * imp[h] * p_con
            out[m]["rev"] += 4 * exp[h] * p_pv
    return out


def run_cli(*args, cwd):
    return subprocess.run([sys.executable, str(ROOT / "app.py"), *args], cwd=cwd,
                          capture_output=True, text=True, timeout=300)


def test_konstanz_june_2016_import_and_settle(tmp_path):
    readings = long_readings()
    csv_path = tmp_path / "konstanz.csv"
    readings.to_csv(csv_path, index=False)
    houses = "\n".join(f'  "DE_KN_{m}":\n    id: "{m}"\n    name: "{m}"' for m in METERS)
    cfg = tmp_path / "config.yaml"
    cfg.write_text(f"""
community: {{name: Konstanz, timezone: Europe/Zurich}}
tariffs: {{p_pv: {P_PV}, p_grid_del: {P_DEL}, p_grid_con: {P_CON}}}
pricing: {{mode: break_even}}
storage: {{data_dir: "{tmp_path / 'data'}"}}
houses:
{houses}
""")
    r = run_cli("import-readings", str(csv_path), "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    assert f"{len(readings)} rows: {len(readings)} imported, 0 already stored, 0 rejected" in r.stdout

    out = tmp_path / "out"
    r = run_cli("settle", "--period", "2016-06", "--out", str(out), "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr + r.stdout
    assert "balance 0.00 CHF" in r.stdout
    with open(out / "invoices.csv", encoding="utf-8") as fh:
        rows = list(csv.DictReader(fh))
    assert len(rows) == 7
    assert list(rows[0])[:10] == ["invoice_id", "house_id", "period_start", "period_end",
                                  "energy_exported_kwh", "energy_imported_kwh", "export_revenue_ct",
                                  "import_cost_ct", "net_amount_ct", "status"]
    expected = oracle(readings)
    for row in rows:
        exp = expected[f"DE_KN_{row['house_id']}"]
        assert float(row["energy_imported_kwh"]) == pytest.approx(exp["ei"], abs=0.0006)
        assert float(row["energy_exported_kwh"]) == pytest.approx(exp["eo"], abs=0.0006)
        assert float(row["import_cost_ct"]) == pytest.approx(exp["cost"], abs=0.006)
        assert float(row["export_revenue_ct"]) == pytest.approx(exp["rev"], abs=0.006)
        assert float(row["net_amount_ct"]) == pytest.approx(
            float(row["export_revenue_ct"]) - float(row["import_cost_ct"]), abs=1e-9)
        assert row["period_start"] == "2016-06-01T00:00:00+02:00"
        assert row["period_end"] == "2016-06-30T23:59:59+02:00"
        assert row["status"] == "draft" and row["missing_intervals"] == "0"
    # residential1's June import is the counter difference at the local month boundaries
    r1 = next(r for r in rows if r["house_id"] == "residential1")
    assert float(r1["energy_imported_kwh"]) == pytest.approx(5508.767 - 5146.090, abs=1e-6)
    producers = [r for r in rows if float(r["energy_exported_kwh"]) > 0]
    assert {r["house_id"] for r in producers} == {"residential3", "residential4", "residential6"}

    # closing issues numbered invoices; settling again returns them unchanged
    r = run_cli("settle", "--period", "2016-06", "--close", "--out", str(out), "--config", str(cfg), cwd=tmp_path)
    assert r.returncode == 0, r.stderr
    closed = (out / "invoices.csv").read_text()
    assert "INV-" in closed and "issued" in closed
    r = run_cli("settle", "--period", "2016-06", "--out", str(tmp_path / "again"), "--config", str(cfg), cwd=tmp_path)
    assert (tmp_path / "again" / "invoices.csv").read_text() == closed
