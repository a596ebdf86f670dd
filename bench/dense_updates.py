"""Memory and time of the live update that completes an interval, quarter hour after quarter hour,
when meters report densely.

The soak (``bench/soak.py``) runs the simulator at 100x speed, but the app times live MQTT readings
by their arrival, so its quarter hours hold 96 times the seed's readings (8,640 per meter instead
of 90) and only two of them end in a 35-minute run. This benchmark reproduces that density
without the wall clock: for each of ``--quarters`` quarter hours it writes the quarter's readings of
200 meters (generated inside DuckDB), reopens the store (as it does every
``storage.reopen_every_rows``), then runs ``Community.update_intervals_many(..., appended=True)``
in a thread of its own (as the pipeline does) for the first reading after the quarter's end: every
house completes an interval. It samples the process's resident memory (VmRSS) before the update,
right after it, and after the next reopen. Flat = the lows after the reopens do not climb with the
number of completed quarter hours (nor with the history within the store's 2-hour search margin).

    .venv/bin/python bench/dense_updates.py                  # 12 quarter hours; writes BENCHMARKS.md
    .venv/bin/python bench/dense_updates.py --quarters 4 --no-write
"""
from __future__ import annotations

import argparse
import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

import pandas as pd  # noqa: E402

from benchfile import machine, write_section  # noqa: E402
from history import METERS, START, open_community, rss_mib  # noqa: E402

PER_QUARTER = 8640                  # readings per meter and quarter hour: 1,920 messages/s for 200 meters


def fill_quarter(c, q: int) -> None:
    """Quarter hour q's readings of every meter, evenly spaced (a counter rising 0.1 Wh per reading)."""
    c.store._con.execute("""
        INSERT INTO readings
        SELECT 'H-' || lpad(m::VARCHAR, 3, '0'), $t0 + to_microseconds((i * 900000000 // $per)::BIGINT),
               0.0001 * i, 0.0, 3.6, 0.0
        FROM range($a, $b) t(i), range(200) s(m) ORDER BY i, m""",
                         {"t0": START.tz_localize(None), "per": PER_QUARTER, "a": q * PER_QUARTER,
                          "b": (q + 1) * PER_QUARTER})


def measure(quarters: int, folder: Path) -> list[dict]:
    c = open_community(folder)
    rows = []
    try:
        fill_quarter(c, 0)
        for q in range(1, quarters + 1):
            fill_quarter(c, q)                     # quarter q-1 is complete once q's first reading is in
            c.store.reopen()
            before = rss_mib()
            end = START + pd.Timedelta(seconds=900 * q)
            spans = {m: (end, end) for m in METERS}
            t = time.perf_counter()
            worker = threading.Thread(target=c.update_intervals_many, args=(spans,), kwargs={"appended": True})
            worker.start()
            worker.join()
            took = time.perf_counter() - t
            after = rss_mib()
            c.store.reopen()
            rows.append({"quarter": q, "before": before, "after": after, "reopened": rss_mib(), "seconds": took,
                         "readings": 200 * PER_QUARTER * (q + 1)})
            print(f"quarter {q:2d}: {rows[-1]['readings']:>10,} readings stored; RSS before {before:.0f} MiB, "
                  f"after the update {after:.0f} MiB ({took:.1f} s), after the reopen {rows[-1]['reopened']:.0f} MiB",
                  flush=True)
        n = len(c.store.read_intervals(START, START + pd.Timedelta(seconds=900 * quarters)))
        if n != 200 * quarters:
            raise SystemExit(f"expected {200 * quarters} completed intervals, found {n}")
    finally:
        c.close()
    return rows


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quarters", type=int, default=12)
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    with tempfile.TemporaryDirectory(prefix="leg-dense-") as tmp:
        rows = measure(args.quarters, Path(tmp))
    if args.no_write:
        return 0
    lows = [r["reopened"] for r in rows]
    settled = lows[2:] or lows                    # the first quarters warm the caches up
    lines = [machine(), "",
             f"200 meters, {PER_QUARTER:,} readings per meter and quarter hour (96 times the seed's rate, as in the "
             "soak); after each quarter hour the store is reopened and the update that completes it runs for all "
             "200 houses in a thread of its own. Run `.venv/bin/python bench/dense_updates.py` (about two minutes).",
             "",
             "| quarter hours completed | readings stored | RSS before the update | right after it | update took | after the next reopen |",
             "|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        lines.append(f"| {r['quarter']} | {r['readings']:,} | {r['before']:.0f} MiB | {r['after']:.0f} MiB | "
                     f"{r['seconds']:.1f} s | {r['reopened']:.0f} MiB |")
    lines += ["", f"After the reopens, from the third quarter hour on: {min(settled):.0f}-{max(settled):.0f} MiB "
                  f"(first {settled[0]:.0f}, last {settled[-1]:.0f}: {settled[-1] - settled[0]:+.0f} MiB over "
                  f"{len(settled) - 1} more completed quarter hours)."]
    write_section("dense_updates", "Completing intervals at 96x density (`bench/dense_updates.py`)", "\n".join(lines))
    print("BENCHMARKS.md: section 'dense_updates' written")
    return 0


if __name__ == "__main__":
    sys.exit(main())
