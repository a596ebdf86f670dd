"""InfluxDB benchmark: readings written through the InfluxDB store, and the dashboard's month of
a 100-house community aggregated by the server.

A real influxd (Debian's influxdb 1.6 package) is started on free ports with its data in a temp
directory. Measured:

* ingest: ``InfluxStore.write_readings`` in batches of 5,000 (as the ingest pipeline writes them;
  each batch first asks InfluxDB which of its points exist, to report duplicates and conflicts);
* dashboard: for 100 houses x one month of 15-minute intervals in ``house_energy``, the community
  totals per 15 minutes (``community_totals``, InfluxQL ``GROUP BY time(15m)``), and per day.

    .venv/bin/python bench/influx.py            # writes its section of BENCHMARKS.md
    .venv/bin/python bench/influx.py --no-write --readings 50000
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from benchfile import machine, write_section  # noqa: E402
from config import InfluxConfig  # noqa: E402
from peers import Influxd  # noqa: E402
from storage.influx_store import InfluxStore  # noqa: E402


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=200_000)
    ap.add_argument("--meters", type=int, default=100)
    ap.add_argument("--houses", type=int, default=100)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        server = Influxd(tmp / "influxd").start()
        try:
            store = InfluxStore(InfluxConfig(url=server.url, database="bench"), tmp / "data")
            meters = [f"M{k:04d}" for k in range(args.meters)]
            store.set_registry({m: str(k) for k, m in enumerate(meters)})
            n_per = args.readings // args.meters
            t0 = pd.Timestamp("2026-01-01T00:00Z")
            ts = pd.date_range(t0, periods=n_per, freq="10s").astype("datetime64[us, UTC]")
            df = pd.DataFrame({
                "meter_id": np.repeat(meters, n_per),
                "ts": np.tile(ts.to_numpy(), args.meters),
                "import_kwh": np.tile(1000 + 0.003 * np.arange(n_per), args.meters),
                "export_kwh": np.tile(500 + 0.001 * np.arange(n_per), args.meters),
                "power_in_kw": 1.0, "power_out_kw": 0.0})
            df["ts"] = pd.to_datetime(df["ts"], utc=True).astype("datetime64[us, UTC]")
            df = df.sort_values(["ts", "meter_id"]).reset_index(drop=True)   # arrival order
            t = time.perf_counter()
            inserted = 0
            for i in range(0, len(df), 5000):
                inserted += store.write_readings(df.iloc[i:i + 5000]).inserted
            ingest_s = time.perf_counter() - t
            assert inserted == len(df) and store.health()["spool_batches"] == 0
            count = server.query("SELECT count(import_kwh) FROM readings", db="bench")
            stored = count["results"][0]["series"][0]["values"][0][1]
            assert stored == len(df), stored

            # a month of 15-minute intervals for 100 houses
            houses = [str(k) for k in range(args.houses)]
            starts = pd.date_range(pd.Timestamp("2026-03-01T00:00+01:00").tz_convert("UTC"),
                                   pd.Timestamp("2026-04-01T00:00+02:00").tz_convert("UTC"), freq="15min",
                                   inclusive="left").astype("datetime64[us, UTC]")
            rng = np.random.default_rng(1)
            iv = pd.DataFrame({"house_id": np.repeat(houses, len(starts)),
                               "start": np.tile(starts.to_numpy(), args.houses),
                               "delta_ei_kwh": rng.uniform(0, 1, len(starts) * args.houses),
                               "delta_eo_kwh": rng.uniform(0, 0.5, len(starts) * args.houses), "flags": 0})
            iv["start"] = pd.to_datetime(iv["start"], utc=True).astype("datetime64[us, UTC]")
            t = time.perf_counter()
            store.replace_intervals_many({}, iv)
            iv_write_s = time.perf_counter() - t
            a, b = starts[0], starts[-1] + pd.Timedelta(minutes=15)
            runs, hourly, daily = [], [], []
            for _ in range(5):
                t = time.perf_counter()
                tot = store.community_totals(a, b, houses)
                runs.append(time.perf_counter() - t)
                t = time.perf_counter()
                hours = store.community_buckets(a, b, 3600, houses)
                hourly.append(time.perf_counter() - t)
                t = time.perf_counter()
                days = store.community_buckets(a, b, 86400, houses)
                daily.append(time.perf_counter() - t)
            assert len(hours) == len(starts) // 4 and len(days) >= 31
            assert len(tot) == len(starts) and (tot["houses"] == args.houses).all()
            assert abs(tot["total_consumption_kwh"].sum() - iv["delta_ei_kwh"].sum()) < 1e-6 * len(iv)
            store.close()
        finally:
            server.stop()
    rate = len(df) / ingest_s
    month = statistics.median(hourly)
    lines = [
        f"InfluxDB 1.6.7 (Debian package) on localhost; {args.meters} meters.",
        "",
        "| measurement | result | target |",
        "|---|---:|---|",
        f"| ingest: `write_readings` of {len(df):,} readings in batches of 5,000 (with the duplicate check) "
        f"| {rate:,.0f} readings/s ({ingest_s:.1f} s) | >= 10,000/s |",
        f"| write {len(iv):,} `house_energy` intervals ({args.houses} houses x a month) | "
        f"{len(iv) / iv_write_s:,.0f} points/s | |",
        f"| dashboard: a month of {args.houses} houses per hour, `community_buckets` (median of 5) | "
        f"{month:.3f} s ({len(hours):,} buckets) | <= 1 s |",
        f"| dashboard: the same month per day (median of 5) | {statistics.median(daily):.3f} s | <= 1 s |",
        f"| settlement input: the same month per 15 min with house counts, `community_totals` (median of 5) | "
        f"{statistics.median(runs):.3f} s ({len(starts):,} buckets) | (info) |",
        "",
        f"Targets: ingest {'met' if rate >= 10_000 else 'NOT met'}; dashboard {'met' if month <= 1 else 'NOT met'}.",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("influx", "InfluxDB store (`bench/influx.py`)", machine() + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
