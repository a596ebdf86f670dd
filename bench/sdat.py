"""SDAT-CH import benchmark: a year of the grid operator's daily LEG deliveries.

Each daily file covers the last 5 days (overlapping the previous file by 4; the newest day
estimated, Condition 21, and revised by the next file) with the total, LEG share and grid share of
every metering point: 200 points x 3 products = 600 MeteringData of 5 x 96 = 480 observations,
about 288,000 observations and 38 MB per file. The files are generated into a folder (not timed;
every ``--bare-every``-th also parsed bare, in the same run: ``xml.etree.ElementTree.fromstring``
and ``lxml.etree.fromstring``, a tree and nothing else), then the folder is imported as
``python app.py import-sdat FOLDER`` does (``Community.import_sdat_paths``): the next files read,
hashed, parsed and checked (ingest/sdat.py) in two worker processes (at a lower CPU priority)
while the importing process stores
each in ``sdat.sqlite`` (newest Creation wins per metering point, product and quarter hour) and,
as in pricing mode ``leg``, derives the houses' 15-minute intervals where values are new or
revised and writes them to the community's reading store.

SDAT values themselves are kept only in ``sdat.sqlite``, whatever the storage backend; what
reaches the reading store (the embedded DuckDB store or InfluxDB) is the derived intervals. The
import runs once with the embedded store and once with ``storage.backend: influxdb`` against a
real influxd (Debian's influxdb package) on free ports, each in a process of its own so that
peak RSS is the import's.

    .venv/bin/python bench/sdat.py                         # a year, 200 points; writes its section
    .venv/bin/python bench/sdat.py --days 30 --no-write    # a smaller run
    .venv/bin/python bench/sdat.py --backends embedded
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from datetime import date, datetime, timedelta, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path[:0] = [str(ROOT), str(ROOT / "tests"), str(ROOT / "bench")]

import numpy as np  # noqa: E402
from lxml import etree  # noqa: E402

from benchfile import machine, write_section  # noqa: E402
from sdat_files import leg_document, local_day  # noqa: E402

WINDOW_DAYS = 5
FIRST_DAY = date(2026, 1, 1)


def points(n: int) -> dict[str, str]:
    """Metering point -> direction: every tenth point a producer."""
    return {f"CH10079012345000000000000{k:08d}": ("production" if k % 10 == 9 else "consumption")
            for k in range(n)}


def _milli(point: int, product: int, q0: int, n: int, high: int) -> np.ndarray:
    """Deterministic milli-kWh of a point's product for quarter hours q0 ... q0 + n - 1 (since FIRST_DAY)."""
    q = np.arange(q0, q0 + n, dtype=np.uint64)
    h = q * np.uint64(0x9E3779B97F4A7C15) + np.uint64((point * 2 + product + 1) * 0xBF58476D1CE4E5B9 % 2**64)
    h ^= h >> np.uint64(31)
    h *= np.uint64(0x94D049BB133111EB)
    h ^= h >> np.uint64(29)
    return (h % np.uint64(high)).astype(np.int64)


def daily_file(day: int, pts: dict[str, str]) -> tuple[str, bytes, int]:
    """The file sent the morning after day ``day`` (0-based): days day-4 ... day, the last estimated."""
    first = max(0, day - WINDOW_DAYS + 1)
    d0 = FIRST_DAY + timedelta(days=first)
    start, end = local_day(d0.year, d0.month, d0.day, days=day - first + 1)
    dl = FIRST_DAY + timedelta(days=day)
    last_start, _ = local_day(dl.year, dl.month, dl.day)
    n = int((end - start) / timedelta(minutes=15))
    k_est = int((last_start - start) / timedelta(minutes=15))
    q0 = int((start - local_day(FIRST_DAY.year, FIRST_DAY.month, FIRST_DAY.day)[0]) / timedelta(minutes=15))
    series = {}
    for k, (point, direction) in enumerate(pts.items()):
        leg = (_milli(k, 0, q0, n, 500) / 1000).tolist()   # a quarter hour's value is the same in every file ...
        grid = (_milli(k, 1, q0, n, 200) / 1000).tolist()
        for q in range(k_est, n):                           # ... but the newest day: estimated, revised next day
            leg[q] = round(leg[q] / 2, 3)
        series[point] = (direction, leg, grid)
    creation = datetime.combine(dl + timedelta(days=1), datetime.min.time(), timezone.utc) + timedelta(hours=5)
    data = leg_document(f"DOC-{day:03d}", creation, start, end, series,
                        conditions={s: "21" for s in range(k_est + 1, n + 1)})
    name = f"{creation:%Y%m%d_%H%M%S}_12X-0000001216-O_E66_12X-LEGTESTCOM-T_{day:03d}.xml"
    return name, data, 3 * len(pts) * n


def config(data_dir: Path, pts: dict[str, str], influx_url: str | None) -> dict:
    cfg = {
        "community": {"name": "LEG benchmark", "timezone": "Europe/Zurich"},
        "pricing": {"mode": "leg"},
        "tariffs": {"p_pv": 15.0, "p_grid_del": 6.0, "p_grid_con": 30.0},
        "leg": {"grid_fee_reduction": 0.4, "grid_fee_ct_per_kwh": 10.0},
        "houses": {f"house-{k}": {"id": k + 1, "name": f"House {k + 1}", "metering_points": [p]}
                   for k, p in enumerate(pts)},
        "storage": {"data_dir": str(data_dir)},
        "mqtt": {"enabled": False},
    }
    if influx_url:
        cfg["storage"]["backend"] = "influxdb"
        cfg["influxdb"] = {"url": influx_url, "database": "bench"}
    return cfg


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a running process (/proc/PID/stat)."""
    import os
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def timed(fn, acc: dict, key: str):
    def wrapper(*a, **kw):
        t = time.perf_counter()
        try:
            return fn(*a, **kw)
        finally:
            acc[key] = acc.get(key, 0.0) + time.perf_counter() - t
    return wrapper


def generate(args, folder: Path) -> dict:
    """Every day's file into ``folder`` (not timed), and the bare parses of every ``--bare-every``-th."""
    pts = points(args.points)
    obs = nbytes = 0
    bare = {"files_bare": 0, "observations_bare": 0, "t_et": 0.0, "t_lxml": 0.0}
    t0 = time.perf_counter()
    for day in range(args.days):
        name, data, n = daily_file(day, pts)
        (folder / name).write_bytes(data)
        obs += n
        nbytes += len(data)
        if day % args.bare_every == 0:
            t = time.perf_counter()
            ET.fromstring(data)
            bare["t_et"] += time.perf_counter() - t
            t = time.perf_counter()
            etree.fromstring(data, etree.XMLParser(resolve_entities=False, no_network=True))
            bare["t_lxml"] += time.perf_counter() - t
            bare["files_bare"] += 1
            bare["observations_bare"] += n
        del data
        if args.progress and (day + 1) % 20 == 0:
            print(f"  generated {day + 1} files ({time.perf_counter() - t0:.0f} s)", file=sys.stderr)
    return {"files": args.days, "observations": obs, "bytes": nbytes, **bare}


def run_backend(args) -> dict:
    """One backend, in this process: the folder's files imported as ``python app.py import-sdat FOLDER``."""
    from community import Community
    from config import parse_config
    from ingest.sdat_inbox import sdat_files
    pts = points(args.points)
    files = sdat_files([args.files])
    with tempfile.TemporaryDirectory(dir=args.tmp) as tmp:
        tmp = Path(tmp)
        server = None
        if args.backend == "influxdb":
            from peers import Influxd
            server = Influxd(tmp / "influxd").start()
        try:
            c = Community.open(parse_config(config(tmp / "data", pts, server.url if server else None), source="bench"))
            acc: dict[str, float] = {}
            c.sdat.import_document = timed(c.sdat.import_document, acc, "store")
            c.apply_sdat = timed(c.apply_sdat, acc, "reading_store")
            store_one = c._import_sdat

            def import_one(read):                      # the worker's parse time, as it reports it
                acc["parse"] = acc.get("parse", 0.0) + read.parse_s
                return store_one(read)
            c._import_sdat = import_one
            rss0 = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
            counts = {"inserted": 0, "updated": 0, "unchanged": 0}
            server_cpu0 = process_cpu_s(server.proc.pid) if server else 0.0
            cpu0, t = time.process_time(), time.perf_counter()
            done = 0
            for path, summary in c.import_sdat_paths(files):          # as app.py import-sdat FOLDER
                if summary.error or summary.refused:
                    raise SystemExit(f"{path.name}: {summary.error or summary.refused[:3]}")
                for k in counts:
                    counts[k] += getattr(summary, k)
                done += 1
                if args.progress and done % 20 == 0:
                    print(f"  {args.backend}: {done} files imported ({time.perf_counter() - t:.0f} s)", file=sys.stderr)
            t_import, cpu_main = time.perf_counter() - t, time.process_time() - cpu0
            cpu_server = process_cpu_s(server.proc.pid) - server_cpu0 if server else None
            rows = c.sdat.value_count()
            day_rows = c.sdat._con.execute("SELECT count(*) FROM sdat_days").fetchone()[0]
            db_bytes = sum(p.stat().st_size for p in (tmp / "data").glob("sdat.sqlite*"))
            c.close()
        finally:
            if server:
                server.proc.terminate()
                server.proc.wait(30)
    return {"backend": args.backend, "files": done, "t_import": t_import, "cpu_main": cpu_main, "cpu_server": cpu_server,
            **{f"t_{k}": v for k, v in acc.items()}, "counts": counts, "rows": rows, "day_rows": day_rows,
            "db_bytes": db_bytes, "peak_rss_mb": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
            "rss_before_mb": rss0 / 1024}


def report(gen: dict, results: list[dict], args) -> str:
    r0 = results[0]
    n = gen["observations"]
    et = gen["observations_bare"] / gen["t_et"]
    lx = gen["observations_bare"] / gen["t_lxml"]
    lines = [
        f"{machine()}",
        "",
        f"Size: {gen['files']} daily files (days) x {args.points} metering points x 3 products, 5-day windows "
        f"overlapping by 4: {n:,} observations, {gen['bytes'] / 1e9:.2f} GB of XML "
        f"({n / gen['files']:,.0f} observations and {gen['bytes'] / gen['files'] / 1e6:.1f} MB per file); "
        f"at the end {r0['rows']:,} quarter-hour values in sdat.sqlite, {r0['day_rows']:,} rows of a point's product "
        f"over a UTC day ({r0['db_bytes'] / 1e9:.2f} GB).",
        "",
        "Import = `Community.import_sdat_paths` over the folder, as `python app.py import-sdat FOLDER` runs it: "
        "the next files read, hashed, parsed and checked (ingest/sdat.py) in two worker processes (nice 5) while this one "
        "stores each in sdat.sqlite (storage/sdat_store.py) and derives the houses' intervals where values are "
        "new or revised, written to the reading store (`apply_sdat`, pricing mode leg). SDAT values go to "
        "sdat.sqlite under either backend; \"into InfluxDB\" is the derived intervals. Bare parse = the same "
        f"bytes to a tree and nothing else (nothing read, checked or stored), on every {args.bare_every}. file "
        f"({gen['files_bare']} files, {gen['observations_bare']:,} observations), in the same run.",
        "",
        "| backend | **import obs/s** (wall) | import / bare lxml | import / bare ElementTree | files/s | "
        "parse s (worker) | sdat.sqlite s | reading store s | CPU s of the importing process | peak RSS MB |",
        "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for r in results:
        rate = n / r["t_import"]
        lines.append(
            f"| {r['backend']} | **{rate:,.0f}** | {rate / lx:.2f} | {rate / et:.2f} | {r['files'] / r['t_import']:.2f} | "
            f"{r.get('t_parse', 0):.1f} | {r.get('t_store', 0):.1f} | {r.get('t_reading_store', 0):.1f} | "
            f"{r['cpu_main']:.1f} | {r['peak_rss_mb']:,.0f} |")
    c = r0["counts"]
    lines += [
        "",
        f"Bare parses: lxml {lx:,.0f} obs/s, ElementTree {et:,.0f} obs/s (one core each).",
        f"Summaries over the run: {c['inserted']:,} quarter-hour values new, {c['updated']:,} revised (the "
        f"estimated newest day), {c['unchanged']:,} unchanged (the 3 days repeated by each file). "
        "Peak RSS is the importing process's (`ru_maxrss`, the worker not included); "
        f"{r0['rss_before_mb']:,.0f} MB before the first file.",
        "",
        f"Run: `flock /tmp/cpu.lock .venv/bin/python bench/sdat.py --days {args.days} --points {args.points}` "
        "(`--backends embedded` or `influxdb` for one).",
        "",
        "Per file: " + "; ".join(
            f"{r['backend']}: {r['t_import'] / r['files']:.3f} s wall, the importing process "
            f"{r['cpu_main'] / r['files']:.3f} s of CPU (sdat.sqlite {r.get('t_store', 0) / r['files']:.3f} s, "
            f"reading store {r.get('t_reading_store', 0) / r['files']:.3f} s), a worker {r.get('t_parse', 0) / r['files']:.3f} s "
            "to read one (wall, sharing the cores)"
            + (f", the InfluxDB server {r['cpu_server'] / r['files']:.3f} s of CPU on the same cores"
               if r.get("cpu_server") is not None else "") for r in results) + ".",
        "Target 1,000,000 observations/s: " + "; ".join(
            f"{r['backend']} {'reached' if n / r['t_import'] >= 1e6 else 'not reached'} ({n / r['t_import'] / 1e6:.2f} of it)"
            for r in results) + ".",
    ]
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--days", type=int, default=365)
    ap.add_argument("--points", type=int, default=200)
    ap.add_argument("--backends", default="embedded,influxdb")
    ap.add_argument("--backend", help=argparse.SUPPRESS)           # the child process of one backend
    ap.add_argument("--files", help=argparse.SUPPRESS)             # its folder of files
    ap.add_argument("--tmp", default=None, help="folder for the temporary files (default: the system's)")
    ap.add_argument("--bare-every", type=int, default=5, help="bare parses of every N-th file (default 5)")
    ap.add_argument("--progress", action="store_true", help="print progress")
    ap.add_argument("--no-write", action="store_true")
    args = ap.parse_args()
    if args.backend:
        print(json.dumps(run_backend(args)))
        return
    with tempfile.TemporaryDirectory(dir=args.tmp) as folder:
        gen = generate(args, Path(folder))
        results = []
        for backend in args.backends.split(","):
            cmd = [sys.executable, __file__, "--backend", backend, "--files", folder, "--points", str(args.points)] \
                + (["--progress"] if args.progress else []) + (["--tmp", args.tmp] if args.tmp else [])
            out = subprocess.run(cmd, stdout=subprocess.PIPE, check=True, text=True).stdout
            results.append(json.loads(out.strip().splitlines()[-1]))
            print(json.dumps(results[-1]), file=sys.stderr)
    text = report(gen, results, args)
    print(text)
    if not args.no_write:
        write_section("sdat", f"SDAT-CH import: daily LEG deliveries of {args.points} metering points", text)


if __name__ == "__main__":
    main()
