"""Memory of a process that keeps writing readings to the embedded store, with and without reopening.

DuckDB keeps what a connection has written in memory until the file is closed: the blocks of the
new readings stay in its cache (below ``storage.memory_limit_mb``) and, outside its own accounting,
some of its bookkeeping. The store therefore reopens its file after ``storage.reopen_every_rows``
written readings. This benchmark writes the same readings through ``DuckDBStore.write_readings``
(batches of 1,000: 200 meters x 5 timestamps 10 s apart, each with the duplicate check), once per
setting, each in a fresh process, and samples after every 300,000 readings:

* the process's resident memory (VmRSS);
* glibc's heap in use (``mallinfo2().uordblks``: what is allocated and not freed, fragmentation aside);
* the store's own memory (``duckdb_memory()``, what ``/api/health`` reports);
* the longest reopen.

    .venv/bin/python bench/store_memory.py                   # 3 M readings per setting; writes BENCHMARKS.md
    .venv/bin/python bench/store_memory.py --readings 600000 --no-write
"""
from __future__ import annotations

import argparse
import ctypes
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "bench")]

BATCH_METERS, BATCH_STEPS, STEP_S = 200, 5, 10
SAMPLE_EVERY = 300_000


class _MallInfo2(ctypes.Structure):
    _fields_ = [(n, ctypes.c_size_t) for n in ("arena", "ordblks", "smblks", "hblks", "hblkhd", "usmblks",
                                                "fsmblks", "uordblks", "fordblks", "keepcost")]


def _heap_in_use_mib() -> float | None:
    try:
        libc = ctypes.CDLL("libc.so.6")
        libc.mallinfo2.restype = _MallInfo2
        return libc.mallinfo2().uordblks / 2 ** 20
    except (OSError, AttributeError):            # not glibc (or older than 2.33)
        return None


def _rss_mib() -> float:
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_one(readings: int, reopen_every: int | None, memory_limit_mb: int) -> dict:
    """Write ``readings`` into a new store in this process; the samples as a dict."""
    import numpy as np
    import pandas as pd

    from storage.duckdb_store import DuckDBStore
    meters = np.repeat([f"M-{k:03d}" for k in range(BATCH_METERS)], BATCH_STEPS)
    start = pd.Timestamp("2026-01-01T00:00:00Z")
    rng = np.random.default_rng(1)
    samples = []
    with tempfile.TemporaryDirectory(prefix="leg-store-memory-") as tmp:
        store = DuckDBStore(Path(tmp) / "timeseries.duckdb", memory_limit_mb, reopen_every_rows=reopen_every)

        def sample(n: int) -> None:
            samples.append({"readings": n, "rss": _rss_mib(), "heap": _heap_in_use_mib(),
                            "store": store.health()["memory_bytes"] / 2 ** 20})

        sample(0)
        t0, written, b = time.monotonic(), 0, 0
        while written < readings:
            offsets = (b * BATCH_STEPS + np.tile(np.arange(BATCH_STEPS), BATCH_METERS)) * STEP_S
            df = pd.DataFrame({"meter_id": meters, "ts": start + pd.to_timedelta(offsets, unit="s"),
                               "import_kwh": rng.random(len(meters)), "export_kwh": rng.random(len(meters)),
                               "power_in_kw": 0.0, "power_out_kw": 0.0})
            res = store.write_readings(df)
            if res.inserted != len(df):
                raise RuntimeError(f"batch {b}: {res.inserted} of {len(df)} readings inserted")
            written += len(df)
            b += 1
            if written % SAMPLE_EVERY == 0:
                sample(written)
        seconds = time.monotonic() - t0
        stored = len(store.read_readings(meters[0]))
        reopens, reopen_max = store.reopens, store.reopen_seconds_max
        store.close()
    return {"samples": samples, "seconds": seconds, "reopens": reopens, "reopen_max_s": reopen_max,
            "stored_first_meter": stored, "expected_first_meter": readings // BATCH_METERS}


def _child(args) -> None:
    res = run_one(args.readings, args.reopen_every[0] or None, args.memory_limit_mb)
    print(json.dumps(res))


def _fmt(v, digits=0) -> str:
    return "?" if v is None else f"{v:,.{digits}f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--readings", type=int, default=3_000_000, help="readings written per setting")
    ap.add_argument("--reopen-every", type=int, nargs="+", default=[0, 100_000],
                    help="storage.reopen_every_rows settings to compare (0: never)")
    ap.add_argument("--memory-limit-mb", type=int, default=512)
    ap.add_argument("--no-write", action="store_true", help="leave BENCHMARKS.md alone")
    ap.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.child:
        _child(args)
        return
    if args.readings % SAMPLE_EVERY:
        ap.error(f"--readings must be a multiple of {SAMPLE_EVERY:,}")
    results = {}
    for every in args.reopen_every:
        out = subprocess.run([sys.executable, __file__, "--child", "--readings", str(args.readings),
                              "--reopen-every", str(every), "--memory-limit-mb", str(args.memory_limit_mb)],
                             capture_output=True, text=True)
        if out.returncode:
            raise SystemExit(f"the run with reopen every {every} failed:\n{out.stderr[-3000:]}")
        results[every] = json.loads(out.stdout.strip().splitlines()[-1])
        r = results[every]
        last = r["samples"][-1]
        print(f"reopen every {every or 'never'}: {r['seconds']:.1f} s, {r['reopens']} reopens "
              f"(longest {r['reopen_max_s']:.2f} s), RSS {r['samples'][1]['rss']:.0f} -> {last['rss']:.0f} MiB, "
              f"heap in use {_fmt(r['samples'][1]['heap'])} -> {_fmt(last['heap'])} MiB", flush=True)
        if r["stored_first_meter"] != r["expected_first_meter"]:
            raise SystemExit(f"readings lost: {r['stored_first_meter']} of {r['expected_first_meter']} stored")
    if args.no_write:
        return
    from benchfile import machine, write_section
    names = {e: ("never reopened" if not e else f"reopened every {e:,}") for e in results}
    lines = [machine(), "",
             f"`.venv/bin/python bench/store_memory.py` ({args.readings:,} readings per setting, each setting in a "
             f"fresh process; `storage.memory_limit_mb: {args.memory_limit_mb}`). Batches of "
             f"{BATCH_METERS * BATCH_STEPS:,} readings ({BATCH_METERS} meters x {BATCH_STEPS} timestamps) through "
             "`DuckDBStore.write_readings` with its duplicate check. Columns per setting: resident memory (RSS), "
             "glibc heap in use (`mallinfo2`), the store's own accounted memory (`duckdb_memory()`), in MiB.", "",
             "| readings written | " + " | ".join(f"{names[e]}: RSS / heap / store" for e in results) + " |",
             "|---:|" + "---:|" * len(results)]
    for k, s0 in enumerate(next(iter(results.values()))["samples"]):
        cells = []
        for r in results.values():
            s = r["samples"][k]
            cells.append(f"{s['rss']:.0f} / {_fmt(s['heap'])} / {s['store']:.0f}")
        lines.append(f"| {s0['readings']:,} | " + " | ".join(cells) + " |")
    lines.append("")
    for e, r in results.items():
        first, last = r["samples"][1], r["samples"][-1]
        per_m = (last["rss"] - first["rss"]) / ((last["readings"] - first["readings"]) / 1e6)
        lines.append(f"- {names[e]}: {r['seconds']:.1f} s for {args.readings:,} readings; RSS "
                     f"{first['rss']:.0f} -> {last['rss']:.0f} MiB after the first {SAMPLE_EVERY:,} "
                     f"({per_m:+.1f} MiB per million readings), highest {max(s['rss'] for s in r['samples']):.0f}"
                     + (f"; {r['reopens']} reopens, the longest {r['reopen_max_s']:.2f} s" if e else "") + ".")
    write_section("store_memory", "Embedded store: memory while writing (`bench/store_memory.py`)", "\n".join(lines))


if __name__ == "__main__":
    main()
