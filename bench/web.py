"""Web benchmark: server time of the dashboard callbacks' work for a year of a 100-house community.

Builds a DuckDB store with 100 houses x one year of 15-minute intervals (time order, as ingest
writes them) and times, with the pages' own functions:

* the Community page for "this year" (automatic resolution) and for "last month" at 15 minutes
  (automatically coarsened to fit 5,000 points per trace),
* a house's month (Houses page flows),

checking that no trace has more than 5,000 points.

    .venv/bin/python bench/web.py            # writes its section of BENCHMARKS.md
    .venv/bin/python bench/web.py --no-write --houses 20
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

import analytics  # noqa: E402
from benchfile import machine, write_section  # noqa: E402
from community import Community  # noqa: E402
from config import parse_config  # noqa: E402


def timed(fn, runs=5):
    out, times = None, []
    for _ in range(runs):
        t = time.perf_counter()
        out = fn()
        times.append(time.perf_counter() - t)
    return out, statistics.median(times)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--houses", type=int, default=100)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    from components.views import community_view         # what the Community page shows
    with tempfile.TemporaryDirectory() as tmp:
        houses = {f"M{k:03d}": {"id": k + 1, "name": f"House {k + 1}"} for k in range(args.houses)}
        c = Community.open(parse_config({"houses": houses, "storage": {"data_dir": tmp}}, source="bench"))
        year_start = pd.Timestamp("2026-01-01T00:00+01:00").tz_convert("UTC")
        starts = pd.date_range(year_start, pd.Timestamp("2027-01-01T00:00+01:00").tz_convert("UTC"), freq="15min",
                               inclusive="left").astype("datetime64[us, UTC]")
        rng = np.random.default_rng(1)
        ids = [str(k + 1) for k in range(args.houses)]
        for i in range(0, len(starts), 96 * 7):           # a week at a time, in time order
            s = starts[i:i + 96 * 7]
            n = len(s) * len(ids)
            iv = pd.DataFrame({"house_id": np.tile(ids, len(s)), "start": np.repeat(s.to_numpy(), len(ids)),
                               "delta_ei_kwh": rng.uniform(0, 1, n), "delta_eo_kwh": rng.uniform(0, 0.6, n),
                               "flags": 0})
            iv["start"] = pd.to_datetime(iv["start"], utc=True).astype("datetime64[us, UTC]")
            c.store.replace_intervals_many({}, iv)
        now = pd.Timestamp("2026-12-20T12:00Z")
        view = lambda name, bucket: community_view(c, analytics.chosen_range(name, bucket, now, c.tz))
        (kpi_y, e_y, v_y, p_y), t_year = timed(lambda: view("this_year", None))
        (kpi_m, e_m, v_m, p_m), t_month15 = timed(lambda: view("last_month", "15min"))
        rng_m = analytics.resolve_range("last_month", now, c.tz)
        house, t_house = timed(lambda: analytics.house_flows(c, "7", rng_m))
        (_, e_all, _, _), t_all15 = timed(lambda: view("this_year", "15min"), runs=3)
        points = max(len(tr.x) for fig in (e_y, v_y, p_y, e_m, v_m, p_m, e_all) for tr in fig.data)
        c.close()
    lines = [
        f"{args.houses} houses x a year of 15-minute intervals ({len(starts) * args.houses:,} rows) in the embedded store.",
        "",
        "| callback work | server time (median) | target |",
        "|---|---:|---|",
        f"| Community page, this year (by month): KPIs and three figures | {t_year * 1000:.0f} ms | <= 300 ms |",
        f"| Community page, last month at 15 min ({len(e_m.data[0].x):,} points a trace) | {t_month15 * 1000:.0f} ms | <= 300 ms |",
        f"| Community page, this year at 15 min asked (coarsened to {len(e_all.data[0].x):,} points a trace) | "
        f"{t_all15 * 1000:.0f} ms | <= 300 ms |",
        f"| Houses page: one house's month, by day | {t_house * 1000:.0f} ms | <= 100 ms |",
        "",
        f"Largest trace: {points:,} points (limit 5,000).",
    ]
    print("\n".join(lines))
    if not args.no_write:
        write_section("web", "Web app callbacks (`bench/web.py`)", machine() + "\n\n" + "\n".join(lines))


if __name__ == "__main__":
    main()
