"""Live work against a growing history: does a batch write or a minute's interval update of the
embedded store cost more when it already holds weeks of readings?

For each history size (200 meters, 10-s readings, in time order; 1,728,000 readings = one day), the
store is filled, checkpointed and reopened (as after a restart), then measured:

* ``write``: ``DuckDBStore.write_readings`` of a batch of 600 new readings (3 per meter, about
  what the pipeline writes every 0.3 s at 1,920 messages/s), with its duplicate check;
* ``update``: ``Community.update_intervals_many(..., appended=True)`` for all 200 meters after a
  minute of new readings that passes an interval's end (the costly case: every house completes an
  interval), and the same for a minute inside the running interval (the usual case);
* the process's resident memory and the store's own (``duckdb_memory()``) after the measurements.

    .venv/bin/python bench/history.py                     # 0, 1, 7 and 21 days; writes BENCHMARKS.md
    .venv/bin/python bench/history.py --days 0 1 --no-write
"""
from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402
import yaml  # noqa: E402

from benchfile import machine, write_section  # noqa: E402
from community import Community  # noqa: E402
from config import load_config  # noqa: E402

METERS = [f"H-{k:03d}" for k in range(200)]
STEP_S = 10
PER_DAY = 86400 // STEP_S
START = pd.Timestamp("2026-01-01T00:00:00Z")


def rss_mib() -> float:
    return int(Path("/proc/self/status").read_text().split("VmRSS:")[1].split()[0]) / 1024


def open_community(folder: Path) -> Community:
    cfg = {"houses": {m: {"id": k + 1, "name": f"House {k + 1}"} for k, m in enumerate(METERS)},
           "storage": {"data_dir": str(folder / "data"), "backend": "embedded"},
           "logging": {"level": "WARNING", "file": None}}
    (folder / "config.yaml").write_text(yaml.safe_dump(cfg))
    return Community.open(load_config(folder / "config.yaml"))


def fill(c: Community, days: int) -> int:
    """``days`` of history, generated inside DuckDB (a counter rising 0.01 kWh per reading)."""
    n = days * PER_DAY
    if not n:
        return 0
    con = c.store._con
    for day in range(days):                         # a day per statement: within the store's memory cap
        con.execute("""
            INSERT INTO readings
            SELECT 'H-' || lpad(m::VARCHAR, 3, '0'), $t0 + to_seconds(i * $step), 0.01 * i, 0.0, 3.6, 0.0
            FROM range($a, $b) t(i), range(200) s(m) ORDER BY i, m""",
                    {"t0": START.tz_localize(None), "step": STEP_S, "a": day * PER_DAY, "b": (day + 1) * PER_DAY})
    con.execute("CHECKPOINT")
    return n


def batch(k0: int, n: int) -> pd.DataFrame:
    """Readings k0 .. k0+n-1 of every meter."""
    ks = np.arange(k0, k0 + n)
    ts = (START + pd.to_timedelta(ks * STEP_S, unit="s")).astype("datetime64[us, UTC]")
    return pd.DataFrame({"meter_id": np.repeat(METERS, n), "ts": np.tile(ts, len(METERS)),
                         "import_kwh": np.tile(0.01 * ks, len(METERS)), "export_kwh": 0.0,
                         "power_in_kw": 3.6, "power_out_kw": 0.0})


def minute(c: Community, k0: int) -> tuple[float, float]:
    """Write a minute (6 readings per meter, in batches of 3) from reading k0 on; returns the
    median batch write (s) and the interval update after it (s)."""
    writes = []
    for b in range(k0, k0 + 6, 3):
        df = batch(b, 3)
        t = time.perf_counter()
        c.store.write_readings(df)
        writes.append(time.perf_counter() - t)
    spans = {m: (START + pd.Timedelta(seconds=k0 * STEP_S), START + pd.Timedelta(seconds=(k0 + 5) * STEP_S))
             for m in METERS}
    t = time.perf_counter()
    c.update_intervals_many(spans, appended=True)
    return statistics.median(writes), time.perf_counter() - t


def measure(days: int, folder: Path) -> dict:
    c = open_community(folder)
    t = time.perf_counter()
    n = fill(c, days)
    fill_s = time.perf_counter() - t
    c.close()
    c = open_community(folder)                      # reopened: nothing of the fill in memory
    k = days * PER_DAY                              # each meter's next reading: an interval starts
    writes, inside, crossing = [], [], []
    for j in range(31):                             # half an hour in minutes (6 readings each)
        w, u = minute(c, k)
        if j:                                       # the first minute only warms up
            writes.append(w)
            # completing: the minute's readings, or the two before them, lie in an earlier interval
            (crossing if (k - 2) // 90 != (k + 5) // 90 else inside).append(u)
        k += 6
    health = c.store.health()
    out = {"days": days, "rows": len(METERS) * k, "fill_s": fill_s,
           "write_ms": 1000 * statistics.median(writes), "write_p90_ms": 1000 * float(np.percentile(writes, 90)),
           "inside_ms": 1000 * statistics.median(inside) if inside else float("nan"),
           "crossing_ms": 1000 * statistics.median(crossing) if crossing else float("nan"),
           "n_crossing": len(crossing), "rss_mib": rss_mib(), "store_mib": health["memory_bytes"] / 2 ** 20,
           "file_mib": (folder / "data" / "timeseries.duckdb").stat().st_size / 2 ** 20}
    c.close()
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, nargs="+", default=[0, 1, 7, 21])
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    rows = []
    for days in args.days:
        with tempfile.TemporaryDirectory(prefix="leg-history-") as tmp:
            r = measure(days, Path(tmp))
        rows.append(r)
        print(f"{days:3d} days ({r['rows']:,} readings, filled in {r['fill_s']:.0f} s): write {r['write_ms']:.1f} ms "
              f"(p90 {r['write_p90_ms']:.1f}), update inside {r['inside_ms']:.0f} ms, crossing "
              f"{r['crossing_ms']:.0f} ms ({r['n_crossing']}), RSS {r['rss_mib']:.0f} MiB, store {r['store_mib']:.0f} MiB, "
              f"file {r['file_mib']:.0f} MiB", flush=True)
    if args.no_write:
        return 0
    base = rows[0]
    lines = [machine(), "",
             "200 meters with 10-s readings (a day is 1,728,000 readings); for each history the store is filled, "
             "checkpointed and reopened, then a quarter hour of live work is measured in minutes: batch writes of 600 "
             "readings with the duplicate check, and the minute's interval update of all 200 houses (inside the "
             "running interval, and the minute whose readings pass an interval's end, when every house completes "
             "one). Run `.venv/bin/python bench/history.py` (a few minutes).", "",
             "| history | readings stored | batch write (median / p90) | update inside an interval | update completing an interval | process RSS | store memory | store file |",
             "|---|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['days']} days | {r['rows']:,} | {r['write_ms']:.1f} / {r['write_p90_ms']:.1f} ms | "
                     f"{r['inside_ms']:.0f} ms | {r['crossing_ms']:.0f} ms | {r['rss_mib']:.0f} MiB | "
                     f"{r['store_mib']:.0f} MiB | {r['file_mib']:.0f} MiB |")
    last = rows[-1]
    lines += ["", f"From {base['days']} to {last['days']} days of history the batch write changes by "
                  f"{last['write_ms'] / base['write_ms'] - 1:+.0%} and the completing update by "
                  f"{last['crossing_ms'] / base['crossing_ms'] - 1:+.0%} (flat = the live work does not grow "
                  f"with the history)."]
    write_section("history", "Live work against a growing history (`bench/history.py`)", "\n".join(lines))
    print("BENCHMARKS.md: section 'history' written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
