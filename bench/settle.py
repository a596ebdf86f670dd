"""Benchmark: price and settle a synthetic community from a DuckDBStore.

    .venv/bin/python bench/settle.py                          # full size: 1,000 houses x 365 days
    .venv/bin/python bench/settle.py --houses 50 --days 31    # quick check (BENCHMARKS.md untouched)

A synthetic community (seeded RNG, vectorised numpy: every house consumes with a daily and
seasonal profile, a share of them produce PV from the sun's position and a daily clearness) is
written as 15-minute intervals into a DuckDBStore file in a temporary directory. The build runs in
a child process, so its time and memory are not part of the figures. This process then opens the
store and measures, as the community does:

1. one month: ``compute_settlement(store, houses, tariffs, parse_period('2025-03', tz), 900)``;
2. the whole year: the 12 monthly calls one after another, and one call over the whole year;
3. peak memory: ``ru_maxrss`` of this process (DuckDB's buffers included) and the tracemalloc
   peak of one call (Python and numpy/pandas allocations only; taken in separate runs).

Each figure is the median of several runs after a warm-up run, which is reported on its own
(the first call after opening the store reads the table from the file). Every result is checked:
one invoice per house, no interval missing, the invoice energies equal the generated ones, and
the community balance is 0 ct under break_even.

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
BENCH_MD = ROOT / "BENCHMARKS.md"
BEGIN, END = "<!-- bench:settle -->", "<!-- /bench:settle -->"
BUILD_VERSION = 1   # bump when the generator changes: a kept --db-dir is rebuilt

HEADER = """# Benchmarks

Performance figures of LEG-Invoicing, measured by the scripts in `bench/`. Each script rewrites
only its own section below (between `<!-- bench:NAME -->` markers), so the sections can be
refreshed independently. Run them from the repository root with the project's virtualenv.

| script | what it measures | how to run |
| --- | --- | --- |
| `bench/settle.py` | pricing and settlement (`billing.settlement.compute_settlement`) of a synthetic community of 1,000 houses x one year of 15-minute intervals (~35 M interval rows) stored in a `DuckDBStore` file: time for one month, time for the whole year, peak memory | `.venv/bin/python bench/settle.py` (full size, ~2-4 min, rewrites its section); `.venv/bin/python bench/settle.py --houses 50 --days 31` for a quick check |
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
    layout: str          # "house": rows grouped by house (as recompute_all writes them)
                         # "time":  rows in time order (as live ingest appends them)
    load: str            # "bulk": INSERT through the store's connection; "api": replace_intervals

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
        return {k: getattr(self, k) for k in ("houses", "days", "year", "tz", "seed", "pv_share",
                                                "layout", "load")} | {"build_version": BUILD_VERSION}


def house_params(spec: Spec):
    rng = np.random.default_rng(spec.seed)
    n = spec.houses
    annual_kwh = rng.lognormal(np.log(4500), 0.35, n)
    evening = rng.uniform(0.6, 1.4, n)
    has_pv = rng.random(n) < spec.pv_share
    kwp = np.where(has_pv, np.round(rng.uniform(4, 15, n), 1), 0.0)
    return annual_kwh, evening, kwp


def time_features(spec: Spec, starts: pd.DatetimeIndex):
    rng = np.random.default_rng(spec.seed + 1)
    local = starts.tz_convert(spec.zone)
    hour = np.asarray(local.hour + local.minute / 60, dtype=np.float64)
    doy = np.asarray(local.day_of_year)
    day = (local.normalize().asi8 // 86_400_000_000_000)
    _, day_idx = np.unique(day, return_inverse=True)
    clear = np.clip(rng.beta(2.0, 1.3, day_idx.max() + 1), 0.08, 1.0)[day_idx]   # community weather
    weekend = np.asarray(local.day_of_week) >= 5
    sun = np.clip(sun_elevation_sin(starts, 47.37, 8.54), 0, None) ** 1.2       # Zurich
    seasonal = 1 + 0.25 * np.cos(2 * np.pi * (doy - 15) / 365)
    base = 0.35 + 0.30 * np.exp(-((hour - 12.5) / 1.5) ** 2) * np.where(weekend, 1.6, 1.0)
    morning = 0.60 * np.exp(-((hour - 7.5) / 1.2) ** 2)
    evening = 1.00 * np.exp(-((hour - 19.0) / 2.0) ** 2)
    month = np.asarray(local.month)
    return {"base": (base + morning) * seasonal, "evening": evening * seasonal,
            "sun_clear": sun * clear, "month": month}


def generate(spec: Spec, feats, params, h0: int, h1: int, rng):
    """(delta_ei, delta_eo, flags) of houses h0..h1-1: arrays (houses, intervals), kWh per interval."""
    annual_kwh, evening_w, kwp = (p[h0:h1, None] for p in params)
    n_t = len(feats["base"])
    shape = feats["base"][None, :] + evening_w * feats["evening"][None, :]
    # normalise so that a full year's consumption is annual_kwh (the mean profile of the year ~ 1)
    scale = annual_kwh / (35040 * (shape.mean(axis=1, keepdims=True)))
    cons = shape * scale * rng.gamma(4.0, 0.25, (h1 - h0, n_t))
    pv = kwp * 0.8 * feats["sun_clear"][None, :] * rng.uniform(0.85, 1.0, (h1 - h0, n_t)) * 0.25
    net = cons - pv
    flags = np.where(rng.random((h1 - h0, n_t)) < 5e-4, 1, 0).astype(np.uint8)   # a few ESTIMATED
    return np.maximum(net, 0.0), np.maximum(-net, 0.0), flags


def build(spec: Spec, db_path: Path) -> dict:
    """Write the intervals into a new DuckDBStore at db_path; return the truth for the checks."""
    t0 = time.perf_counter()
    starts = spec.starts()
    n_t = len(starts)
    s_utc, e_utc = spec.span_utc()
    feats = time_features(spec, starts)
    params = house_params(spec)
    rng = np.random.default_rng(spec.seed + 2)
    months = sorted(set(feats["month"].tolist()))
    month_idx = np.searchsorted(months, feats["month"])
    I = np.zeros(n_t)
    E = np.zeros(n_t)
    house_month_ei = np.zeros((spec.houses, len(months)))
    house_month_eo = np.zeros((spec.houses, len(months)))
    store = DuckDBStore(db_path)
    con = store._con
    starts_naive = starts.tz_localize(None).to_numpy().astype("datetime64[us]")
    staging = spec.layout == "time"
    if staging:
        con.execute("CREATE TEMP TABLE stage AS SELECT * FROM intervals LIMIT 0")
    target = "stage" if staging else "intervals"
    chunk = 50
    for h0 in range(0, spec.houses, chunk):
        h1 = min(h0 + chunk, spec.houses)
        ei, eo, flags = generate(spec, feats, params, h0, h1, rng)
        I += ei.sum(axis=0)
        E += eo.sum(axis=0)
        for m in range(len(months)):
            sel = month_idx == m
            house_month_ei[h0:h1, m] = ei[:, sel].sum(axis=1)
            house_month_eo[h0:h1, m] = eo[:, sel].sum(axis=1)
        if spec.load == "api":
            for k in range(h1 - h0):
                hid = str(h0 + k + 1)
                df = pd.DataFrame({"house_id": hid, "start": starts.astype("datetime64[us, UTC]"),
                                   "delta_ei_kwh": ei[k], "delta_eo_kwh": eo[k], "flags": flags[k]})
                store.replace_intervals(hid, s_utc, e_utc, df)
        else:
            df = pd.DataFrame({
                "h": np.repeat(np.arange(h0 + 1, h1 + 1, dtype=np.int32), n_t),
                "start": np.tile(starts_naive, h1 - h0),
                "ei": ei.ravel(), "eo": eo.ravel(), "flags": flags.ravel()})
            con.register("chunk", df)
            con.execute(f"INSERT INTO {target} SELECT CAST(h AS VARCHAR), start, ei, eo, flags FROM chunk")
            con.unregister("chunk")
        del ei, eo, flags
    if staging:
        con.execute("INSERT INTO intervals SELECT * FROM stage ORDER BY start, CAST(house_id AS INTEGER)")
        con.execute("DROP TABLE stage")
    con.execute("CHECKPOINT")
    rows = con.execute("SELECT count(*) FROM intervals").fetchone()[0]
    store.close()
    seconds = time.perf_counter() - t0
    np.savez(db_path.with_suffix(".truth.npz"), I=I, E=E, months=np.array(months),
             house_month_ei=house_month_ei, house_month_eo=house_month_eo, kwp=params[2])
    meta = {"spec": spec.key(), "rows": int(rows), "intervals_per_house": n_t,
            "build_s": round(seconds, 1), "file_bytes": db_path.stat().st_size,
            "build_maxrss_bytes": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024}
    db_path.with_suffix(".meta.json").write_text(json.dumps(meta))
    return meta


# -- measuring ---------------------------------------------------------------------------------
def maxrss_bytes() -> int:
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024   # KiB on Linux


def timed(fn, *args, **kw):
    t0 = time.perf_counter()
    out = fn(*args, **kw)
    return time.perf_counter() - t0, out


def full_months(spec: Spec) -> list[Period]:
    s, e = spec.span_utc()
    out = []
    for m in range(1, 13):
        p = parse_period(f"{spec.year}-{m:02d}", spec.zone)
        if p.start >= s and p.end <= e:
            out.append(p)
    return out


class CheckFailed(AssertionError):
    pass


def check(cond: bool, what: str, failures: list[str]) -> None:
    if not cond:
        failures.append(what)


def check_settlement(s, period: Period, houses: list[House], truth, month_cols: list[int],
                     tariffs, failures: list[str]) -> dict:
    """Check one settlement against the generated data; return figures for the report."""
    n = len(houses)
    pid = period.period_id
    check(len(s.invoices) == n, f"{pid}: {len(s.invoices)} invoices, expected {n}", failures)
    check(not s.missing, f"{pid}: missing intervals {dict(list(s.missing.items())[:3])}", failures)
    n_exp = len(expected_starts(period, houses[0], INTERVAL_S))
    short = [inv["house_id"] for inv in s.invoices if inv["details"]["intervals"] != n_exp]
    check(not short, f"{pid}: {len(short)} invoices with other than {n_exp} intervals", failures)
    # invoice energies against the generator's per-house sums (rounded to 0.001 kWh)
    ei = truth["house_month_ei"][:, month_cols].sum(axis=1)
    eo = truth["house_month_eo"][:, month_cols].sum(axis=1)
    got_ei = np.array([float(inv["energy_imported_kwh"]) for inv in s.invoices])
    got_eo = np.array([float(inv["energy_exported_kwh"]) for inv in s.invoices])
    order = np.array([int(inv["house_id"]) - 1 for inv in s.invoices])
    err_kwh = max(np.abs(got_ei - ei[order]).max(), np.abs(got_eo - eo[order]).max())
    check(err_kwh <= 0.0011, f"{pid}: invoice energy differs from generated by {err_kwh:.4f} kWh", failures)
    # community totals and the value of consumption from the generated interval totals
    starts = pd.date_range(period.start, period.end, freq=f"{INTERVAL_S}s", inclusive="left")
    sl = slice(truth["offset"](period.start), truth["offset"](period.start) + len(starts))
    I, E = truth["I"][sl], truth["E"][sl]
    sm = s.summary
    check(abs(sm.total_consumption_kwh - I.sum()) < 1e-6 * max(1, I.sum()),
          f"{pid}: total consumption {sm.total_consumption_kwh} != generated {I.sum()}", failures)
    check(abs(sm.total_production_kwh - E.sum()) < 1e-6 * max(1, E.sum()),
          f"{pid}: total production {sm.total_production_kwh} != generated {E.sum()}", failures)
    t = tariffs_in_force(tariffs, starts.asi8 / 1e9)
    p_con, p_pv = interval_prices(I, E, t)
    value_con = float((I * p_con).sum())
    check(abs(sm.value_consumption_ct - value_con) < 1e-6 * value_con,
          f"{pid}: value of consumption {sm.value_consumption_ct} != {value_con} from the totals", failures)
    bal = sm.balance_ct
    check(abs(bal) < 1e-6 * sm.value_consumption_ct,
          f"{pid}: break_even balance {bal} ct is not 0", failures)
    net_sum = sum(inv["net_amount_ct"] for inv in s.invoices)
    return {"balance_ct": bal, "value_consumption_ct": sm.value_consumption_ct,
            "invoice_err_kwh": err_kwh, "net_sum_ct": float(net_sum),
            "consumption_kwh": sm.total_consumption_kwh, "production_kwh": sm.total_production_kwh}


def run_bench(spec: Spec, db_path: Path, meta: dict, repeat: int, year_repeat: int) -> dict:
    tz = spec.zone
    truth_np = np.load(db_path.with_suffix(".truth.npz"))
    s_utc, _ = spec.span_utc()
    truth = {k: truth_np[k] for k in truth_np.files}
    truth["offset"] = lambda ts: int((ts - s_utc).total_seconds() // INTERVAL_S)
    months_in_data = [int(m) for m in truth["months"]]
    kwp = truth["kwp"]
    houses = [House(str(i + 1), f"House {i + 1}", "simulated", float(kwp[i]) or None, None, True)
              for i in range(spec.houses)]
    tariffs = [Tariff(20, 6, 30, "break_even")]
    periods = full_months(spec)
    if not periods:
        raise SystemExit("--days covers no full calendar month: nothing to settle")
    month = next((p for p in periods if p.period_id == f"{spec.year}-03"), periods[0])
    col = lambda p: [months_in_data.index(p.start_local.month)]
    failures: list[str] = []
    res: dict = {"rss_start": maxrss_bytes()}

    gc.collect()
    t_open, store = timed(DuckDBStore, db_path)
    res["open_s"] = t_open
    res["threads"] = store._con.execute("SELECT current_setting('threads')").fetchone()[0]
    rows = store._con.execute("SELECT count(*) FROM intervals").fetchone()[0]
    check(rows == spec.houses * meta["intervals_per_house"],
          f"{rows} interval rows stored, expected {spec.houses * meta['intervals_per_house']}", failures)
    res["rows"] = rows

    def settle(p):
        return compute_settlement(store, houses, tariffs, p, INTERVAL_S)

    # 1. one month: first call (cold DuckDB buffers) then `repeat` warm runs
    first, s = timed(settle, month)
    res["month_checks"] = check_settlement(s, month, houses, truth, col(month), tariffs, failures)
    runs = []
    for _ in range(repeat):
        dt, s = timed(settle, month)
        runs.append(dt)
    res.update(month_id=month.period_id, month_first_s=first, month_runs=runs,
               month_rss=maxrss_bytes(), month_invoices=len(s.invoices))

    # where the month's time goes: the store queries, pricing, and the Python around them
    ids = [h.house_id for h in houses]
    parts = {"community_totals": [], "price_frame": [], "house_sums": []}
    for _ in range(repeat):
        dt, totals = timed(store.community_totals, month.start, month.end, ids)
        parts["community_totals"].append(dt)
        dt, prices = timed(price_frame, totals, tariffs)
        parts["price_frame"].append(dt)
        dt, _ = timed(store.house_sums, month.start, month.end, ids, prices)
        parts["house_sums"].append(dt)
    res["month_parts"] = {k: statistics.median(v) for k, v in parts.items()}

    # 2. the whole year: the monthly calls one after another, and one call over the year
    year_runs, per_month = [], {p.period_id: [] for p in periods}
    sums = None
    for r in range(year_repeat + 1):            # run 0 is the warm-up
        total = 0.0
        sums = {"consumption_kwh": 0.0, "value_consumption_ct": 0.0, "balance_ct": 0.0}
        for p in periods:
            dt, s = timed(settle, p)
            total += dt
            if r == 0:
                check_settlement(s, p, houses, truth, col(p), tariffs, failures)
            else:
                per_month[p.period_id].append(dt)
            sums["consumption_kwh"] += s.summary.total_consumption_kwh
            sums["value_consumption_ct"] += s.summary.value_consumption_ct
            sums["balance_ct"] += s.summary.balance_ct
            del s
        year_runs.append(total)
    res.update(year_first_s=year_runs[0], year_runs=year_runs[1:], year_rss=maxrss_bytes(),
               year_per_month={k: statistics.median(v) for k, v in per_month.items()},
               n_months=len(periods))

    whole = Period(f"{spec.year}-{periods[0].start_local.month:02d}..{periods[-1].start_local.month:02d}",
                   periods[0].start, periods[-1].end, tz)
    pass_runs = []
    for r in range(year_repeat + 1):
        dt, s = timed(settle, whole)
        pass_runs.append(dt)
    cols = [months_in_data.index(p.start_local.month) for p in periods]
    res["pass_checks"] = check_settlement(s, whole, houses, truth, cols, tariffs, failures)
    check(abs(s.summary.value_consumption_ct - sums["value_consumption_ct"])
          < 1e-6 * sums["value_consumption_ct"],
          "single pass and monthly calls disagree on the value of consumption", failures)
    del s
    res.update(pass_first_s=pass_runs[0], pass_runs=pass_runs[1:], pass_rss=maxrss_bytes(),
               year_sums=sums)

    # 3. Python-side allocation peaks (tracemalloc slows the calls down: timed separately, not reported as speed)
    gc.collect()
    tracemalloc.start()
    settle(month)
    res["month_tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.reset_peak()
    settle(whole)
    res["pass_tracemalloc_peak"] = tracemalloc.get_traced_memory()[1]
    tracemalloc.stop()
    res["duckdb_memory"] = int(store._con.execute(
        "SELECT coalesce(sum(memory_usage_bytes), 0) FROM duckdb_memory()").fetchone()[0])
    res["rss_end"] = maxrss_bytes()
    store.close()
    res["failures"] = failures
    return res


# -- report ------------------------------------------------------------------------------------
def machine() -> dict:
    cpu = "unknown"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    ram = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                ram = int(line.split()[1]) * 1024
    except OSError:
        pass
    import duckdb
    return {"arch": platform.machine(), "cpu": cpu, "cores": os.cpu_count(), "ram": ram,
            "python": platform.python_version(), "duckdb": duckdb.__version__,
            "numpy": np.__version__, "pandas": pd.__version__}


def gib(b: float) -> str:
    return f"{b / 1024 ** 3:.2f} GiB"


def mib(b: float) -> str:
    return f"{b / 1024 ** 2:.0f} MiB"


def verdict(ok: bool) -> str:
    return "**met**" if ok else "**NOT met**"


def render(spec: Spec, meta: dict, res: dict, m: dict, wall_s: float, repeat: int, year_repeat: int) -> str:
    month_med = statistics.median(res["month_runs"])
    year_med = statistics.median(res["year_runs"])
    pass_med = statistics.median(res["pass_runs"])
    peak = res["rss_end"]
    full = spec.houses == FULL_HOUSES and spec.days == FULL_DAYS
    date = datetime.now(timezone.utc).strftime("%Y-%m-%d %H:%M UTC")
    rng = lambda v: f"{min(v):.3f}-{max(v):.3f}"
    mc, pc = res["month_checks"], res["pass_checks"]
    parts = res["month_parts"]
    parts_sum = sum(parts.values())
    lines = [
        BEGIN,
        "## Settlement: `bench/settle.py`",
        "",
        "Prices and settles a synthetic community with `billing.settlement.compute_settlement`"
        " reading from a `DuckDBStore` file (one `Tariff(20, 6, 30, 'break_even')`, houses as"
        " `storage.ledger.House`, 900 s intervals). The store is built in a child process (not"
        " timed); each figure is the median of warm runs, the first call after opening the store"
        " (DuckDB buffers cold, the file in the OS cache) is shown separately."
        " Run: `.venv/bin/python bench/settle.py` (full size rewrites this section;"
        " `--houses 50 --days 31` is a quick check that leaves it alone).",
        "",
        f"- **Run**: {date}; `bench/settle.py --houses {spec.houses} --days {spec.days}"
        f" --layout {spec.layout} --load {spec.load}`" + ("" if full else " (**reduced size**)")
        + f"; wall time of the whole script {wall_s:.0f} s (build {meta['build_s']:.0f} s)",
        f"- **Machine**: {m['arch']}, {m['cpu']}, {m['cores']} cores, {gib(m['ram'])} RAM;"
        f" Python {m['python']}, DuckDB {m['duckdb']} ({res['threads']} threads),"
        f" numpy {m['numpy']}, pandas {m['pandas']}",
        f"- **Data**: {spec.houses:,} houses ({meta.get('pv_houses', 0)} with PV)"
        f" x {meta['intervals_per_house']:,} intervals = {res['rows']:,} interval rows"
        f" ({spec.year}, {spec.tz}, {spec.days} days), rows stored "
        + ("grouped by house (as `Community.recompute_all` writes them)" if spec.layout == "house"
           else "in time order (as live ingest appends them)")
        + f"; DuckDB file {mib(meta['file_bytes'])}",
        "",
        "| benchmark | median | warm runs (min-max) | first call | target | |",
        "| --- | ---: | ---: | ---: | ---: | --- |",
        f"| 1. one month ({res['month_id']}), `compute_settlement` | **{month_med:.3f} s** |"
        f" {rng(res['month_runs'])} s (n={len(res['month_runs'])}) | {res['month_first_s']:.3f} s |"
        f" <= {TARGET_MONTH_S} s | {verdict(month_med <= TARGET_MONTH_S)} |",
        f"| 2. whole year, {res['n_months']} monthly calls (sum) | **{year_med:.3f} s** |"
        f" {rng(res['year_runs'])} s (n={len(res['year_runs'])}) | {res['year_first_s']:.3f} s |"
        f" <= {TARGET_YEAR_S} s | {verdict(year_med <= TARGET_YEAR_S)} |",
        f"| 2b. whole year, one call over all {res['n_months']} months | {pass_med:.3f} s |"
        f" {rng(res['pass_runs'])} s (n={len(res['pass_runs'])}) | {res['pass_first_s']:.3f} s |"
        f" (info) | |",
        f"| 3. peak RSS of the process (`ru_maxrss`, DuckDB buffers included) | **{gib(peak)}** |"
        f" after open {gib(res['rss_start'])}, month {gib(res['month_rss'])},"
        f" year {gib(res['year_rss'])} | | <= 2 GiB | {verdict(peak <= TARGET_RSS_BYTES)} |",
        f"| 3b. tracemalloc peak (Python/numpy/pandas only) of one call | month"
        f" {mib(res['month_tracemalloc_peak'])}, year {mib(res['pass_tracemalloc_peak'])} | | | (info) | |",
        "",
        f"Where one warm month goes (medians, n={repeat}): `store.community_totals`"
        f" {parts['community_totals']:.3f} s, `price_frame` {parts['price_frame']:.3f} s,"
        f" `store.house_sums` {parts['house_sums']:.3f} s; the rest of `compute_settlement`"
        f" (expected intervals and invoices, in Python) {max(month_med - parts_sum, 0):.3f} s."
        f" Per month in the yearly loop: "
        + ", ".join(f"{k[-2:]}: {v:.3f}" for k, v in res["year_per_month"].items()) + " s.",
        "",
        "Checks (all passed)" if not res["failures"] else "Checks: **FAILED**: " + "; ".join(res["failures"]),
        "",
        f"- every call: {spec.houses} invoices, no missing interval, every invoice has the period's"
        f" intervals, invoice energies equal the generated ones (max difference"
        f" {max(mc['invoice_err_kwh'], pc['invoice_err_kwh']):.4f} kWh, rounding), community"
        f" totals and value of consumption equal those computed from the generated totals;",
        f"- break_even balance: {mc['balance_ct']:+.2e} ct for {res['month_id']}"
        f" (value of consumption {mc['value_consumption_ct'] / 100:,.2f} CHF),"
        f" {res['year_sums']['balance_ct']:+.2e} ct summed over the monthly calls,"
        f" {pc['balance_ct']:+.2e} ct for the single pass; one pass and the monthly calls agree.",
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
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--houses", type=int, default=FULL_HOUSES, help="houses (default %(default)s)")
    ap.add_argument("--days", type=int, default=FULL_DAYS, help="days from 1 January (default %(default)s)")
    ap.add_argument("--year", type=int, default=2025)
    ap.add_argument("--tz", default="Europe/Zurich")
    ap.add_argument("--seed", type=int, default=2025)
    ap.add_argument("--pv-share", type=float, default=0.35, help="share of houses with PV")
    ap.add_argument("--layout", choices=("house", "time"), default="house",
                    help="physical row order: grouped by house (as recompute_all writes) or by time "
                         "(as live ingest appends) (default %(default)s)")
    ap.add_argument("--load", choices=("bulk", "api"), default="bulk",
                    help="build through the store's DuckDB connection (bulk) or replace_intervals per "
                         "house (api, house layout only; slower)")
    ap.add_argument("--repeat", type=int, default=5, help="warm runs of the month (default %(default)s)")
    ap.add_argument("--year-repeat", type=int, default=3, help="warm runs of the year (default %(default)s)")
    ap.add_argument("--db-dir", type=Path, help="keep the store in this directory and reuse it when it "
                                                "matches (default: a temporary directory, removed)")
    w = ap.add_mutually_exclusive_group()
    w.add_argument("--write", dest="write", action="store_true", default=None,
                   help="rewrite the section of BENCHMARKS.md (default: only at full size)")
    w.add_argument("--no-write", dest="write", action="store_false")
    ap.add_argument("--_build", type=Path, help=argparse.SUPPRESS)
    args = ap.parse_args(argv)
    if args.load == "api" and args.layout != "house":
        ap.error("--load api writes house by house: use --layout house")
    if args.houses < 1 or args.days < 1:
        ap.error("--houses and --days must be at least 1")
    return args


def main(argv=None) -> int:
    t_wall = time.perf_counter()
    args = parse_args(argv)
    spec = Spec(args.houses, args.days, args.year, args.tz, args.seed, args.pv_share, args.layout, args.load)
    if args._build:                       # child process: build the store and exit
        print(json.dumps(build(spec, args._build)))
        return 0

    tmp = None
    if args.db_dir:
        args.db_dir.mkdir(parents=True, exist_ok=True)
        db_dir = args.db_dir
    else:
        tmp = tempfile.mkdtemp(prefix="leg-bench-settle-")
        db_dir = Path(tmp)
    db_path = db_dir / f"intervals-{spec.houses}h-{spec.days}d-{spec.layout}-{spec.load}.duckdb"
    try:
        meta_path = db_path.with_suffix(".meta.json")
        meta = json.loads(meta_path.read_text()) if meta_path.exists() else None
        if meta is None or meta["spec"] != spec.key() or not db_path.exists():
            for p in (db_path, meta_path, db_path.with_suffix(".truth.npz"),
                      Path(str(db_path) + ".wal")):
                p.unlink(missing_ok=True)
            print(f"building {spec.houses} houses x {spec.days} days in {db_path} ...", flush=True)
            cmd = [sys.executable, str(Path(__file__).resolve()), "--_build", str(db_path),
                   "--houses", str(spec.houses), "--days", str(spec.days), "--year", str(spec.year),
                   "--tz", spec.tz, "--seed", str(spec.seed), "--pv-share", str(spec.pv_share),
                   "--layout", spec.layout, "--load", spec.load]
            subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
            meta = json.loads(meta_path.read_text())
            print(f"  built {meta['rows']:,} rows in {meta['build_s']:.1f} s, file {mib(meta['file_bytes'])},"
                  f" builder peak RSS {gib(meta['build_maxrss_bytes'])}", flush=True)
        else:
            print(f"reusing {db_path} ({meta['rows']:,} rows)", flush=True)
        meta["pv_houses"] = int((np.load(db_path.with_suffix(".truth.npz"))["kwp"] > 0).sum())

        res = run_bench(spec, db_path, meta, args.repeat, args.year_repeat)
    finally:
        if tmp:
            shutil.rmtree(tmp, ignore_errors=True)
    wall = time.perf_counter() - t_wall
    section = render(spec, meta, res, machine(), wall, args.repeat, args.year_repeat)
    print(section)
    full = spec.houses == FULL_HOUSES and spec.days == FULL_DAYS
    write = args.write if args.write is not None else full
    if write:
        write_section(section)
        print(f"wrote {BENCH_MD.relative_to(ROOT)}")
    else:
        print("BENCHMARKS.md not changed" + (" (reduced size; --write to force)" if args.write is None else ""))
    if res["failures"]:
        print("CHECKS FAILED:\n  " + "\n  ".join(res["failures"]), file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
