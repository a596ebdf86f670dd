"""Benchmark: price and settle a synthetic community from a DuckDBStore.

    .venv/bin/python bench/settle.py                          # full size: 1,000 houses x 365 days
    .venv/bin/python bench/settle.py --houses 50 --days 31    # quick check (BENCHMARKS.md untouched)

A synthetic community (seeded RNG, vectorised numpy: every house consumes with a daily and
seasonal profile, a share of them produce PV from the sun's position and a daily clearness) is
written as 15-minute intervals into DuckDBStore files in a temporary directory, in two physical
row orders (``--layout``):

* ``house``: grouped by house, written with ``DuckDBStore.replace_intervals`` one house at a
  time, as ``Community.recompute_all`` does after an import;
* ``time``: in time order, as live ingest appends them (bulk-inserted through the store's DuckDB
  connection, since writing it interval by interval through the API would take hours).

Building runs in a child process and each layout is measured in a fresh child process of its own,
so neither the build nor the other layout counts in the time or memory figures. Measured, as the
community does it:

1. one month: ``compute_settlement(store, houses, tariffs, parse_period('2025-03', tz), 900)``;
2. the whole year: the 12 monthly calls one after another, and one call over the whole year;
   2c: one month in which every house lacks its last interval (ingest a quarter hour behind),
   with ``allow_incomplete=True`` (the rows are deleted in a transaction that is rolled back;
   ``--no-incomplete`` skips it);
3. peak memory: ``ru_maxrss`` of the measuring process (DuckDB's buffers included) and the
   tracemalloc peak of one call (Python and numpy/pandas allocations only; separate runs).

Each figure is the median of several runs after a warm-up run, which is reported on its own
(the first call after opening the store reads the table from the file). Every result is checked:
one invoice per house, no interval missing, the invoice energies equal the generated ones, the
community totals and value of consumption equal those computed from the generated totals, and the
community balance is 0 ct under break_even.

The share of the machine's CPU used by other processes while measuring is reported; above 15 %
the times are flagged as inflated (the machine is shared: rerun when it is quiet).

At full size (or with ``--write``) the script rewrites its own section of BENCHMARKS.md, between
``<!-- bench:settle -->`` and ``<!-- /bench:settle -->``; the rest of the file is kept.
"""
from __future__ import annotations

import argparse
import gc
import json
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import tracemalloc
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from zoneinfo import ZoneInfo

ROOT = Path(__file__).resolve().parent.parent
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from billing.settlement import Period, compute_settlement, expected_starts, parse_period, price_frame  # noqa: E402
from pricing.engine import interval_prices, tariffs_in_force  # noqa: E402
from pricing.tariffs import Tariff  # noqa: E402
from simulator.profiles import sun_elevation_sin  # noqa: E402
from storage.duckdb_store import DuckDBStore  # noqa: E402
from storage.ledger import House  # noqa: E402

INTERVAL_S = 900
FULL_HOUSES, FULL_DAYS = 1000, 365
TARGET_MONTH_S = 0.5
TARGET_YEAR_S = 3.0
TARGET_RSS_BYTES = 2 * 1024 ** 3
LAYOUTS = ("house", "time")
BUSY = 0.15       # share of the machine used by other processes above which the times are flagged
BENCH_MD = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- bench:settle -->", "<!-- /bench:settle -->"
BUILD_VERSION = 2   # bump when the generator or the build changes: a kept --db-dir is rebuilt

HEADER = """# Benchmarks

Performance figures of LEG-Invoicing, measured by the scripts in `bench/`. Each script rewrites
only its own section below (between `<!-- bench:NAME -->` and `<!-- /bench:NAME -->`), so the
sections can be refreshed independently. Run them from the repository root with the project's
virtualenv; a figure is only comparable with one taken on the same machine, and the machine shares
its CPUs with other work (each section says how busy it was).

| script | what it measures | how to run |
| --- | --- | --- |
| `bench/settle.py` | pricing and settlement (`billing.settlement.compute_settlement`) of a synthetic community of 1,000 houses x one year of 15-minute intervals (35 M interval rows) in a `DuckDBStore` file: time for one month, time for the whole year, peak memory; every result checked against the generated data | `.venv/bin/python bench/settle.py` (full size, 2-4 minutes, rewrites its section); `.venv/bin/python bench/settle.py --houses 50 --days 31` for a quick check; `--help` for the options |
"""


# -- synthetic community ---------------------------------------------------------------------
@dataclass
class Spec:
    houses: int
    days: int
    year: int
    tz: str
    seed: int
    pv_share: float

    @property
    def zone(self) -> ZoneInfo:
        return ZoneInfo(self.tz)

    def span_utc(self) -> tuple[pd.Timestamp, pd.Timestamp]:
        start = pd.Timestamp(datetime(self.year, 1, 1), tz=self.zone)
        end = start + pd.DateOffset(days=self.days)   # local calendar days (DST-aware)
        return start.tz_convert("UTC"), end.tz_convert("UTC")

    def starts(self) -> pd.DatetimeIndex:
        s, e = self.span_utc()
        return pd.date_range(s, e, freq=f"{INTERVAL_S}s", inclusive="left")

    def key(self) -> dict:
        return {k: getattr(self, k) for k in ("houses", "days", "year", "tz", "seed", "pv_share")} \
            | {"build_version": BUILD_VERSION}

    def args(self) -> list[str]:
        return ["--houses", str(self.houses), "--days", str(self.days), "--year", str(self.year),
                "--tz", self.tz, "--seed", str(self.seed), "--pv-share", str(self.pv_share)]


def house_params(spec: Spec):
    rng = np.random.default_rng(spec.seed)
    n = spec.houses
    annual_kwh = rng.lognormal(np.log(4500), 0.35, n)
    evening = rng.uniform(0.6, 1.4, n)
    has_pv = rng.random(n) < spec.pv_share
    kwp = np.where(has_pv, np.round(rng.uniform(4, 15, n), 1), 0.0)
    return annual_kwh, evening, kwp


def time_features(spec: Spec, starts: pd.DatetimeIndex) -> dict:
    rng = np.random.default_rng(spec.seed + 1)
    local = starts.tz_convert(spec.zone)
    hour = np.asarray(local.hour + local.minute / 60, dtype=np.float64)
    doy = np.asarray(local.day_of_year)
    day = local.normalize().asi8 // 86_400_000_000_000
    _, day_idx = np.unique(day, return_inverse=True)
    clear = np.clip(rng.beta(2.0, 1.3, day_idx.max() + 1), 0.08, 1.0)[day_idx]   # community weather
    weekend = np.asarray(local.day_of_week) >= 5
    sun = np.clip(sun_elevation_sin(starts, 47.37, 8.54), 0, None) ** 1.2       # Zurich
    seasonal = 1 + 0.25 * np.cos(2 * np.pi * (doy - 15) / 365)
    base = 0.35 + 0.30 * np.exp(-((hour - 12.5) / 1.5) ** 2) * np.where(weekend, 1.6, 1.0)
    morning = 0.60 * np.exp(-((hour - 7.5) / 1.2) ** 2)
    evening = 1.00 * np.exp(-((hour - 19.0) / 2.0) ** 2)
    return {"base": (base + morning) * seasonal, "evening": evening * seasonal,
            "sun_clear": sun * clear, "month": np.asarray(local.month)}


def generate(feats: dict, params, h0: int, h1: int, rng):
    """(delta_ei, delta_eo, flags) of houses h0..h1-1: arrays (houses, intervals), kWh per interval."""
    annual_kwh, evening_w, kwp = (p[h0:h1, None] for p in params)
    n_t = len(feats["base"])
    shape = feats["base"][None, :] + evening_w * feats["evening"][None, :]
    # the mean profile value is scaled so that a full year's consumption is about annual_kwh
    scale = annual_kwh / (35040 * shape.mean(axis=1, keepdims=True))
    cons = shape * scale * rng.gamma(4.0, 0.25, (h1 - h0, n_t))
    pv = kwp * 0.8 * feats["sun_clear"][None, :] * rng.uniform(0.85, 1.0, (h1 - h0, n_t)) * 0.25
    net = cons - pv
    flags = np.where(rng.random((h1 - h0, n_t)) < 5e-4, 1, 0).astype(np.uint8)   # a few ESTIMATED
    return np.maximum(net, 0.0), np.maximum(-net, 0.0), flags


def db_file(db_dir: Path, spec: Spec, layout: str) -> Path:
    return db_dir / f"intervals-{spec.houses}h-{spec.days}d-{layout}.duckdb"


def build(spec: Spec, db_dir: Path, layouts: list[str]) -> dict:
    """Generate the community once and write it into one DuckDBStore per layout; save the truth
    (per-interval community totals, per-house monthly sums) for the checks."""
    t0 = time.perf_counter()
    starts = spec.starts()
    n_t, n_h = len(starts), spec.houses
    s_utc, e_utc = spec.span_utc()
    feats = time_features(spec, starts)
    params = house_params(spec)
    rng = np.random.default_rng(spec.seed + 2)
    ei = np.empty((n_h, n_t))
    eo = np.empty((n_h, n_t))
    flags = np.empty((n_h, n_t), dtype=np.uint8)
    for h0 in range(0, n_h, 50):
        h1 = min(h0 + 50, n_h)
        ei[h0:h1], eo[h0:h1], flags[h0:h1] = generate(feats, params, h0, h1, rng)
    months = sorted(set(feats["month"].tolist()))
    month_idx = np.searchsorted(months, feats["month"])
    truth = {"I": ei.sum(axis=0), "E": eo.sum(axis=0), "months": np.array(months), "kwp": params[2],
             "house_month_ei": np.stack([ei[:, month_idx == m].sum(axis=1) for m in range(len(months))], 1),
             "house_month_eo": np.stack([eo[:, month_idx == m].sum(axis=1) for m in range(len(months))], 1)}
    np.savez(db_dir / "truth.npz", **truth)
    meta = {"spec": spec.key(), "generate_s": round(time.perf_counter() - t0, 1), "intervals_per_house": n_t,
            "pv_houses": int((params[2] > 0).sum()), "layouts": {}}
    starts_utc = starts.astype("datetime64[us, UTC]")
    starts_naive = starts.tz_localize(None).to_numpy().astype("datetime64[us]")
    for layout in layouts:
        t1 = time.perf_counter()
        path = db_file(db_dir, spec, layout)
        store = DuckDBStore(path)
        con = store._con
        if layout == "house":        # through the store's API, one house at a time
            for k in range(n_h):
                hid = str(k + 1)
                df = pd.DataFrame({"house_id": hid, "start": starts_utc, "delta_ei_kwh": ei[k],
                                   "delta_eo_kwh": eo[k], "flags": flags[k]})
                store.replace_intervals(hid, s_utc, e_utc, df)
            how = "DuckDBStore.replace_intervals, one call per house"
        else:                        # in time order, bulk through the store's connection
            step = 96 * 7
            hids = np.arange(1, n_h + 1, dtype=np.int32)
            for t0_ in range(0, n_t, step):
                t1_ = min(t0_ + step, n_t)
                df = pd.DataFrame({"h": np.tile(hids, t1_ - t0_),
                                   "start": np.repeat(starts_naive[t0_:t1_], n_h),
                                   "ei": ei[:, t0_:t1_].T.ravel(), "eo": eo[:, t0_:t1_].T.ravel(),
                                   "flags": flags[:, t0_:t1_].T.ravel()})
                con.register("chunk", df)
                con.execute("INSERT INTO intervals SELECT CAST(h AS VARCHAR), start, ei, eo, flags FROM chunk")
                con.unregister("chunk")
            how = "INSERT through the store's DuckDB connection, one week of all houses at a time"
        con.execute("CHECKPOINT")
        rows = con.execute("SELECT count(*) FROM intervals").fetchall()[0][0]
        store.close()
        meta["layouts"][layout] = {"rows": int(rows), "build_s": round(time.perf_counter() - t1, 1),
                                   "file_bytes": path.stat().st_size, "how": how}
    meta["build_maxrss_bytes"] = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024
    return meta


# -- measuring ---------------------------------------------------------------------------------
def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


class CpuMeter:
    """Share of the machine's CPU time used by other processes while this one measures."""

    @staticmethod
    def _busy() -> float:
        try:
            f = [int(x) for x in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
        except OSError:
            return float("nan")
        idle = f[3] + (f[4] if len(f) > 4 else 0)
        return (sum(f[:8]) - idle) / os.sysconf("SC_CLK_TCK")

    @staticmethod
    def _own() -> float:
        r = resource.getrusage(resource.RUSAGE_SELF)
        return r.ru_utime + r.ru_stime

    def __enter__(self):
        self.t, self.busy, self.own = time.perf_counter(), self._busy(), self._own()
        return self

    def __exit__(self, *exc):
        wall = time.perf_counter() - self.t
        others = (self._busy() - self.busy) - (self._own() - self.own)
        self.others_share = max(others, 0.0) / (wall * (os.cpu_count() or 1)) if wall > 0 else 0.0
        return False


def full_months(spec: Spec) -> list[Period]:
    s, e = spec.span_utc()
    out = []
    for m in range(1, 13):
        p = parse_period(f"{spec.year}-{m:02d}", spec.zone)
        if p.start >= s and p.end <= e:
            out.append(p)
    return out


def check(cond: bool, what: str, failures: list[str]) -> None:
    if not cond:
        failures.append(what)


def check_settlement(s, period: Period, houses: list[House], truth: dict, month_cols: list[int],
                     tariffs, failures: list[str]) -> dict:
    """Check one settlement against the generated data; return figures for the report."""
    n = len(houses)
    pid = period.period_id
    check(len(s.invoices) == n, f"{pid}: {len(s.invoices)} invoices, expected {n}", failures)
    check(not s.missing, f"{pid}: missing intervals {dict(list(s.missing.items())[:3])}", failures)
    n_exp = len(expected_starts(period, houses[0], INTERVAL_S))
    short = [inv["house_id"] for inv in s.invoices if inv["details"]["intervals"] != n_exp]
    check(not short, f"{pid}: {len(short)} invoices with other than {n_exp} intervals", failures)
    # invoice energies against the generator's per-house sums (invoices round to 0.001 kWh)
    ei = truth["house_month_ei"][:, month_cols].sum(axis=1)
    eo = truth["house_month_eo"][:, month_cols].sum(axis=1)
    order = np.array([int(inv["house_id"]) - 1 for inv in s.invoices])
    got_ei = np.array([float(inv["energy_imported_kwh"]) for inv in s.invoices])
    got_eo = np.array([float(inv["energy_exported_kwh"]) for inv in s.invoices])
    err_kwh = float(max(np.abs(got_ei - ei[order]).max(), np.abs(got_eo - eo[order]).max()))
    check(err_kwh <= 0.0011, f"{pid}: invoice energy differs from generated by {err_kwh:.4f} kWh", failures)
    # community totals and value of consumption from the generated per-interval totals
    starts = pd.date_range(period.start, period.end, freq=f"{INTERVAL_S}s", inclusive="left")
    off = int((period.start - truth["start"]).total_seconds() // INTERVAL_S)
    I, E = truth["I"][off:off + len(starts)], truth["E"][off:off + len(starts)]
    sm = s.summary
    check(abs(sm.total_consumption_kwh - I.sum()) <= 1e-9 * I.sum(),
          f"{pid}: total consumption {sm.total_consumption_kwh} != generated {I.sum()}", failures)
    check(abs(sm.total_production_kwh - E.sum()) <= 1e-9 * max(E.sum(), 1.0),
          f"{pid}: total production {sm.total_production_kwh} != generated {E.sum()}", failures)
    p_con, _ = interval_prices(I, E, tariffs_in_force(tariffs, starts.asi8 / 1e9))
    value_con = float((I * p_con).sum())
    check(abs(sm.value_consumption_ct - value_con) <= 1e-9 * value_con,
          f"{pid}: value of consumption {sm.value_consumption_ct} != {value_con} from the totals", failures)
    check(abs(sm.balance_ct) <= 1e-9 * sm.value_consumption_ct,
          f"{pid}: break_even balance {sm.balance_ct} ct is not 0", failures)
    return {"balance_ct": sm.balance_ct, "value_consumption_ct": sm.value_consumption_ct,
            "invoice_err_kwh": err_kwh}


def measure(spec: Spec, db_dir: Path, layout: str, repeat: int, year_repeat: int,
            incomplete: bool = True) -> dict:
    """Run in a fresh process: open the layout's store and take every figure."""
    res: dict = {"layout": layout, "rss_start": maxrss_bytes()}
    meta = json.loads((db_dir / "meta.json").read_text())
    t = np.load(db_dir / "truth.npz")
    truth = {k: t[k] for k in t.files} | {"start": spec.span_utc()[0]}
    months_in_data = [int(m) for m in truth["months"]]
    houses = [House(str(i + 1), f"House {i + 1}", "simulated", float(truth["kwp"][i]) or None, None, True)
              for i in range(spec.houses)]
    tariffs = [Tariff(20, 6, 30, "break_even")]
    periods = full_months(spec)
    month = next((p for p in periods if p.period_id == f"{spec.year}-03"), periods[0])
    col = lambda p: [months_in_data.index(p.start_local.month)]
    failures: list[str] = []

    cpu = CpuMeter().__enter__()
    gc.collect()
    store = DuckDBStore(db_file(db_dir, spec, layout))
    con = store._con
    res["threads"] = con.execute("SELECT current_setting('threads')").fetchall()[0][0]
    res["rows"] = con.execute("SELECT count(*) FROM intervals").fetchall()[0][0]
    expected_rows = spec.houses * meta["intervals_per_house"]
    check(res["rows"] == expected_rows, f"{res['rows']} interval rows stored, expected {expected_rows}", failures)

    def settle(p: Period):
        return compute_settlement(store, houses, tariffs, p, INTERVAL_S)

    # 1. one month: the first call (DuckDB buffers cold) and `repeat` warm runs
    first, s = timed(settle, month)
    res["month_checks"] = check_settlement(s, month, houses, truth, col(month), tariffs, failures)
    runs = [timed(settle, month)[0] for _ in range(repeat)]
    res.update(month_id=month.period_id, month_first_s=first, month_runs=runs, month_rss=maxrss_bytes())

    # where a warm month's time goes: the two store queries and the pricing between them
    ids = [h.house_id for h in houses]
    parts: dict[str, list[float]] = {"community_totals": [], "price_frame": [], "house_sums": []}
    for _ in range(repeat):
        dt, totals = timed(store.community_totals, month.start, month.end, ids)
        parts["community_totals"].append(dt)
        dt, prices = timed(price_frame, totals, tariffs)
        parts["price_frame"].append(dt)
        parts["house_sums"].append(timed(store.house_sums, month.start, month.end, ids, prices)[0])
    res["month_parts"] = {k: statistics.median(v) for k, v in parts.items()}

    # 2. the whole year: the monthly calls one after another (run 0 is the warm-up) ...
    year_runs, per_month = [], {p.period_id: [] for p in periods}
    sums = {"value_consumption_ct": 0.0, "balance_ct": 0.0}
    for r in range(year_repeat + 1):
        total = 0.0
        for p in periods:
            dt, s = timed(settle, p)
            total += dt
            if r == 0:
                check_settlement(s, p, houses, truth, col(p), tariffs, failures)
                sums["value_consumption_ct"] += s.summary.value_consumption_ct
                sums["balance_ct"] += s.summary.balance_ct
            else:
                per_month[p.period_id].append(dt)
        year_runs.append(total)
    res.update(year_first_s=year_runs[0], year_runs=year_runs[1:], year_rss=maxrss_bytes(),
               year_per_month={k: statistics.median(v) for k, v in per_month.items()},
               n_months=len(periods), year_sums=sums)

    # ... and one call over all the months
    whole = Period(f"{periods[0].period_id}..{periods[-1].period_id}", periods[0].start, periods[-1].end,
                   spec.zone)
    pass_runs = []
    for _ in range(year_repeat + 1):
        dt, s = timed(settle, whole)
        pass_runs.append(dt)
    res["pass_checks"] = check_settlement(s, whole, houses, truth, [col(p)[0] for p in periods], tariffs,
                                          failures)
    check(abs(s.summary.value_consumption_ct - sums["value_consumption_ct"])
          <= 1e-9 * sums["value_consumption_ct"],
          "the call over the year and the monthly calls disagree on the value of consumption", failures)
    del s
    res.update(pass_first_s=pass_runs[0], pass_runs=pass_runs[1:], pass_rss=maxrss_bytes())
    cpu.__exit__(None, None, None)
    res["others_cpu_share"] = cpu.others_share

    # 2c. a month in which every house lacks its last interval (as when ingest lags by a quarter
    # hour), settled with allow_incomplete; the rows are deleted in a transaction rolled back after
    if incomplete:
        last = periods[-1]
        gap = last.end - pd.Timedelta(seconds=INTERVAL_S)
        con.execute("BEGIN")
        try:
            con.execute("DELETE FROM intervals WHERE start = ?", [gap.tz_localize(None)])
            dt, s = timed(compute_settlement, store, houses, tariffs, last, INTERVAL_S, True)
        finally:
            con.execute("ROLLBACK")
        after = con.execute("SELECT count(*) FROM intervals").fetchall()[0][0]
        check(after == expected_rows, f"{after} rows after the rollback of 2c, expected {expected_rows}", failures)
        check(len(s.invoices) == spec.houses and s.missing == {h.house_id: 1 for h in houses}
              and all(inv["details"]["missing_intervals"] == 1 for inv in s.invoices),
              f"{last.period_id} without its last interval: every house should miss exactly 1", failures)
        res.update(incomplete_s=dt, incomplete_id=last.period_id, incomplete_missing=len(s.missing),
                   incomplete_rss=maxrss_bytes())
        del s

    # 3. Python-side allocation peaks (tracemalloc slows the calls: not used for any time figure)
    gc.collect()
    tracemalloc.start()
    settle(month)
    res["month_tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    settle(whole)
    res["pass_tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    res["rss_end"] = maxrss_bytes()
    store.close()
    res["failures"] = failures
    return res


# -- report ------------------------------------------------------------------------------------
def machine() -> dict:
    def first(path: str, prefix: str) -> str | None:
        try:
            for line in Path(path).read_text().splitlines():
                if line.startswith(prefix):
                    return line.split(":", 1)[1].strip()
        except OSError:
            pass
        return None

    import duckdb
    ram_kib = first("/proc/meminfo", "MemTotal")
    return {"arch": platform.machine(), "cpu": first("/proc/cpuinfo", "model name") or platform.processor(),
            "cores": os.cpu_count(), "ram": int(ram_kib.split()[0]) * 1024 if ram_kib else 0,
            "kernel": platform.release(), "python": platform.python_version(),
            "duckdb": duckdb.__version__, "numpy": np.__version__, "pandas": pd.__version__}


MEASURED = ("billing/settlement.py", "billing/intervals.py", "pricing", "storage/duckdb_store.py",
            "storage/timeseries.py", "storage/ledger.py", "simulator/profiles.py")


def code_version() -> str:
    """The commit measured, and whether the modules on the measured path had uncommitted changes."""
    try:
        head = subprocess.run(["git", "-C", str(ROOT), "log", "-1", "--format=%h %s"], capture_output=True,
                              text=True, check=True).stdout.strip()
        dirty = subprocess.run(["git", "-C", str(ROOT), "status", "--porcelain", "--", *MEASURED],
                               capture_output=True, text=True, check=True).stdout.split("\n")
        dirty = [line[3:] for line in dirty if line.strip()]
    except (OSError, subprocess.CalledProcessError):
        return "unknown (not a git checkout)"
    return f"commit {head}" + (f" (**uncommitted changes**: {', '.join(dirty)})" if dirty else "")


def gib(b: float) -> str:
    return f"{b / 1024 ** 3:.2f} GiB"


def mib(b: float) -> str:
    return f"{b / 1024 ** 2:.0f} MiB"


def verdict(ok: bool) -> str:
    return "met" if ok else "**NOT met**"


LAYOUT_NAMES = {"house": "rows grouped by house", "time": "rows in time order"}


def render(spec: Spec, meta: dict, results: dict[str, dict], m: dict, wall_s: float, repeat: int,
           year_repeat: int, date: str) -> str:
    full = spec.houses == FULL_HOUSES and spec.days == FULL_DAYS
    layouts = list(results)
    med = lambda v: statistics.median(v)
    span = lambda v: f"{min(v):.3f}-{max(v):.3f}"
    r0 = results[layouts[0]]
    months = lambda r: f"{r['n_months']} month" + ("s" if r["n_months"] != 1 else "")
    head = "| benchmark | target | " + " | ".join(LAYOUT_NAMES[lo] for lo in layouts) + " |"
    sep = "| --- | ---: | " + " | ".join("---" for _ in layouts) + " |"

    def row(label, target, cell):
        return f"| {label} | {target} | " + " | ".join(cell(results[lo]) for lo in layouts) + " |"

    def time_cell(key, target=None):
        def cell(r):
            runs = r[f"{key}_runs"]
            v = med(runs)
            ok = "" if target is None else f", {verdict(v <= target)}"
            return (f"**{v:.3f} s**{ok} (warm runs {span(runs)} s, n={len(runs)};"
                    f" first call {r[f'{key}_first_s']:.3f} s)")
        return cell

    rows = [
        row(f"1. one month ({r0['month_id']}): `compute_settlement`", f"<= {TARGET_MONTH_S} s",
            time_cell("month", TARGET_MONTH_S)),
        row(f"2. whole year ({months(r0)}): the monthly calls one after another, summed", f"<= {TARGET_YEAR_S} s",
            time_cell("year", TARGET_YEAR_S)),
        row(f"2b. whole year ({months(r0)}): one call over all of them", "(info)", time_cell("pass")),
        *([row(f"2c. one month ({r0['incomplete_id']}) in which every house lacks its last interval:"
               " `compute_settlement(..., allow_incomplete=True)`", "(info)",
               lambda r: f"**{r['incomplete_s']:.3f} s** (one run; {r['incomplete_missing']:,} houses"
                         " reported with 1 missing interval)")]
          if "incomplete_s" in r0 else []),
        row("3. peak RSS of the measuring process (`ru_maxrss`, DuckDB buffers included)",
            f"<= {gib(TARGET_RSS_BYTES)}",
            lambda r: (f"**{gib(r['rss_end'])}**, {verdict(r['rss_end'] <= TARGET_RSS_BYTES)}"
                       f" (after imports {gib(r['rss_start'])}, after the month {gib(r['month_rss'])},"
                       f" after the monthly calls {gib(r['year_rss'])}, after 2b {gib(r['pass_rss'])}"
                       + (f", after 2c {gib(r['incomplete_rss'])}" if "incomplete_rss" in r else "") + ")")),
        row("3b. tracemalloc peak of one call (Python, numpy, pandas; not DuckDB)", "(info)",
            lambda r: f"month {mib(r['month_tracemalloc_peak'])}, year {mib(r['pass_tracemalloc_peak'])}"),
        row("where a warm month goes (medians)", "(info)",
            lambda r: (f"`community_totals` {r['month_parts']['community_totals']:.3f} s,"
                       f" `price_frame` {r['month_parts']['price_frame']:.3f} s,"
                       f" `house_sums` {r['month_parts']['house_sums']:.3f} s, the rest of"
                       f" `compute_settlement` (Python) ~"
                       f"{max(med(r['month_runs']) - sum(r['month_parts'].values()), 0):.3f} s")),
        row("each month in the yearly loop (median, s)", "(info)",
            lambda r: " ".join(f"{k[-2:]}: {v:.2f}" for k, v in r["year_per_month"].items())),
        row("CPU used by other processes while measuring", "(info)",
            lambda r: f"{100 * r['others_cpu_share']:.0f} % of the machine"
                      + (" (**busy: the times above are inflated**)" if r["others_cpu_share"] > BUSY else "")),
    ]
    failures = [f"{lo}: {f}" for lo in layouts for f in results[lo]["failures"]]
    mc = {lo: results[lo]["month_checks"] for lo in layouts}
    err = max(max(r["month_checks"]["invoice_err_kwh"], r["pass_checks"]["invoice_err_kwh"])
              for r in results.values())
    lay = meta["layouts"]
    lines = [
        BEGIN,
        "## Settlement: `bench/settle.py`",
        "",
        "`billing.settlement.compute_settlement` over a synthetic community read from a `DuckDBStore`"
        " file: one `Tariff(20, 6, 30, 'break_even')`, houses as `storage.ledger.House`, 900 s"
        " intervals. The store is built in a child process (not timed) and each layout is measured"
        " in a fresh process. A figure is the median of the warm runs; the first call after opening"
        " the store (DuckDB's buffers cold, the file in the OS cache) is shown on its own."
        " Run `.venv/bin/python bench/settle.py` (full size rewrites this section;"
        " `--houses 50 --days 31` is a quick check that leaves it alone).",
        "",
        f"- **Run**: {date}, `.venv/bin/python bench/settle.py"
        + ("" if full else f" --houses {spec.houses} --days {spec.days}") + "`"
        + ("" if full else " (**reduced size**)")
        + f"; wall time of the whole script {wall_s:.0f} s (generating the data {meta['generate_s']:.0f} s, "
        + ", ".join(f"writing the {lo} layout {lay[lo]['build_s']:.0f} s" for lo in layouts if lo in lay) + ")",
        f"- **Code**: {m['code']}",
        f"- **Machine**: {m['arch']}, {m['cpu']}, {m['cores']} cores, {gib(m['ram'])} RAM, Linux {m['kernel']};"
        f" Python {m['python']}, DuckDB {m['duckdb']} ({r0['threads']} threads), numpy {m['numpy']},"
        f" pandas {m['pandas']}",
        f"- **Data**: {spec.houses:,} houses ({meta['pv_houses']} with PV) x"
        f" {meta['intervals_per_house']:,} intervals = {r0['rows']:,} interval rows ({spec.year},"
        f" {spec.tz}, {spec.days} days from 1 January). Two physical row orders of the same data: "
        + "; ".join(f"*{LAYOUT_NAMES[lo]}* ({lay[lo]['how']}; file {mib(lay[lo]['file_bytes'])})"
                    for lo in layouts)
        + ". Grouped by house is what `Community.recompute_all` leaves; time order is what live"
        " ingest (small windows, all houses) tends towards.",
        "",
        head,
        sep,
        *rows,
        "",
        ("**Checks: all passed.**" if not failures else "**Checks FAILED**: " + "; ".join(failures))
        + f" Every call of 1, 2 and 2b: {spec.houses:,} invoices, no missing interval, every invoice has all the"
        f" period's intervals, invoice energies equal the generated ones (max difference {err:.4f}"
        " kWh: rounding to 0.001 kWh), community totals and value of consumption equal those"
        " computed from the generated per-interval totals, the call over the year agrees with the"
        " monthly calls, and the break_even community balance is 0 ("
        + "; ".join(f"{lo}: {mc[lo]['balance_ct']:+.1e} ct in {r0['month_id']},"
                    f" {results[lo]['year_sums']['balance_ct']:+.1e} ct over the monthly calls,"
                    f" {results[lo]['pass_checks']['balance_ct']:+.1e} ct in the call over the year"
                    for lo in layouts)
        + f"; value of consumption in {r0['month_id']}: {mc[layouts[0]]['value_consumption_ct'] / 100:,.2f} CHF)."
        + (" In 2c every house is reported with exactly 1 missing interval (rows deleted in a"
           " transaction that is rolled back)." if "incomplete_s" in r0 else ""),
        END,
    ]
    return "\n".join(lines) + "\n"


def write_section(section: str, path: Path = BENCH_MD) -> None:
    text = path.read_text(encoding="utf-8") if path.exists() else HEADER
    if BEGIN in text and END in text:
        before, rest = text.split(BEGIN, 1)
        _, after = rest.split(END, 1)
        text = before + section.rstrip("\n") + after
    else:
        text = text.rstrip("\n") + "\n\n" + section
    path.write_text(text, encoding="utf-8")


# -- main --------------------------------------------------------------------------------------
def parse_args(argv=None):
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                 formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog="See the module docstring (bench/settle.py) for what is measured.")
    ap.add_argument("--houses", type=int, default=FULL_HOUSES, help="houses (default %(default)s)")
    ap.add_argument("--days", type=int, default=FULL_DAYS,
                    help="days of data from 1 January; only whole months are settled (default %(default)s)")
    ap.add_argument("--year", type=int, default=2025, help="(default %(default)s)")
    ap.add_argument("--tz", default="Europe/Zurich", help="community time zone (default %(default)s)")
    ap.add_argument("--seed", type=int, default=2025, help="(default %(default)s)")
    ap.add_argument("--pv-share", type=float, default=0.35, help="share of houses with PV (default %(default)s)")
    ap.add_argument("--layout", choices=(*LAYOUTS, "both"), default="both",
                    help="physical row order of the intervals table (default %(default)s)")
    ap.add_argument("--repeat", type=int, default=7, help="warm runs of the month (default %(default)s)")
    ap.add_argument("--year-repeat", type=int, default=3, help="warm runs of the year (default %(default)s)")
    ap.add_argument("--no-incomplete", dest="incomplete", action="store_false",
                    help="skip benchmark 2c (a month where every house lacks its last interval; slow)")
    ap.add_argument("--db-dir", type=Path, help="keep the stores in this directory and reuse them when "
                                                "they match (default: a temporary directory, removed)")
    w = ap.add_mutually_exclusive_group()
    w.add_argument("--write", dest="write", action="store_true", default=None,
                   help="rewrite the section of BENCHMARKS.md (default: only at full size)")
    w.add_argument("--no-write", dest="write", action="store_false", help="never touch BENCHMARKS.md")
    ap.add_argument("--_build", type=Path, help=argparse.SUPPRESS)
    ap.add_argument("--_measure", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.houses < 1 or args.days < 1 or args.repeat < 1 or args.year_repeat < 1:
        ap.error("--houses, --days, --repeat and --year-repeat must be at least 1")
    return args


def child(args, spec: Spec, layouts: list[str], mode: str, db_dir: Path, out: Path | None = None) -> None:
    cmd = [sys.executable, str(Path(__file__).resolve()), f"--_{mode}", str(out or db_dir), *spec.args(),
           "--layout", layouts[0] if len(layouts) == 1 else "both", "--db-dir", str(db_dir),
           "--repeat", str(args.repeat), "--year-repeat", str(args.year_repeat), "--no-write"]
    if not args.incomplete:
        cmd.append("--no-incomplete")
    subprocess.run(cmd, check=True)


def main(argv=None) -> int:
    t_wall = time.perf_counter()
    args = parse_args(argv)
    spec = Spec(args.houses, args.days, args.year, args.tz, args.seed, args.pv_share)
    layouts = list(LAYOUTS) if args.layout == "both" else [args.layout]
    if args._build:                         # child: build the stores
        meta = build(spec, args._build, layouts)
        (args._build / "meta.json").write_text(json.dumps(meta))
        return 0
    if args._measure:                       # child: measure one layout, results as JSON
        res = measure(spec, args.db_dir, layouts[0], args.repeat, args.year_repeat, args.incomplete)
        args._measure.write_text(json.dumps(res))
        return 0

    if not full_months(spec):
        raise SystemExit(f"--days {spec.days} covers no whole calendar month of {spec.year}: nothing to settle")
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    code = code_version()             # before measuring: the tree may change while this runs
    tmp = None
    if args.db_dir:
        db_dir = args.db_dir
        db_dir.mkdir(parents=True, exist_ok=True)
    else:
        db_dir = Path(tempfile.mkdtemp(prefix="leg-bench-settle-"))
        tmp = db_dir
    try:
        meta_path = db_dir / "meta.json"
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        if (meta is None or meta["spec"] != spec.key()
                or any(lo not in meta["layouts"] or not db_file(db_dir, spec, lo).exists() for lo in layouts)):
            for p in [meta_path, db_dir / "truth.npz"] + [db_file(db_dir, spec, lo) for lo in LAYOUTS]:
                p.unlink(missing_ok=True)
                Path(str(p) + ".wal").unlink(missing_ok=True)
            print(f"building {spec.houses:,} houses x {spec.days} days ({', '.join(layouts)}) in {db_dir} ...",
                  flush=True)
            child(args, spec, layouts, "build", db_dir)
            meta = json.loads(meta_path.read_text())
            print(f"  generated in {meta['generate_s']:.1f} s; "
                  + "; ".join(f"{lo}: {v['rows']:,} rows written in {v['build_s']:.1f} s, file {mib(v['file_bytes'])}"
                              for lo, v in meta["layouts"].items())
                  + f"; builder peak RSS {gib(meta['build_maxrss_bytes'])}", flush=True)
        else:
            print(f"reusing the stores in {db_dir}", flush=True)
        results = {}
        for lo in layouts:
            print(f"measuring the {lo} layout ...", flush=True)
            out = db_dir / f"result-{lo}.json"
            child(args, spec, [lo], "measure", db_dir, out)
            results[lo] = json.loads(out.read_text())
            r = results[lo]
            print(f"  month {statistics.median(r['month_runs']):.3f} s, year (monthly calls)"
                  f" {statistics.median(r['year_runs']):.3f} s, year (one call) {statistics.median(r['pass_runs']):.3f} s,"
                  f" peak RSS {gib(r['rss_end'])}", flush=True)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t_wall
    section = render(spec, meta, results, machine() | {"code": code}, wall, args.repeat, args.year_repeat, date)
    print(section)
    full = spec.houses == FULL_HOUSES and spec.days == FULL_DAYS
    if args.write if args.write is not None else full:
        write_section(section)
        print(f"wrote {BENCH_MD.relative_to(ROOT)}")
    else:
        print("BENCHMARKS.md not changed" + (" (reduced size; --write to force)" if args.write is None else ""))
    failures = [f"{lo}: {f}" for lo in layouts for f in results[lo]["failures"]]
    if failures:
        print("CHECKS FAILED:\n  " + "\n  ".join(failures), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
