"""Energy and value flows for the dashboards: plain functions over the community service, so the
pages stay thin and these are tested on their own.

Ranges are named in the community's time zone; buckets are 15 min, hour, day or month (local),
chosen so that no trace has more than MAX_POINTS points.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

MAX_POINTS = 5000
BUCKETS = {"15min": pd.Timedelta(minutes=15), "hour": pd.Timedelta(hours=1), "day": pd.Timedelta(days=1),
           "month": pd.Timedelta(days=31)}
RANGES = {"today": "Today", "7days": "Last 7 days", "this_month": "This month", "last_month": "Last month",
          "this_year": "This year", "custom": "Custom dates"}
MAX_CUSTOM_DAYS = 3660
FLOW_COLUMNS = ["start", "consumption_kwh", "production_kwh", "grid_import_kwh", "grid_export_kwh",
                "value_consumption_ct", "value_pv_delivery_ct", "value_grid_import_ct", "value_grid_export_ct",
                "p_con", "p_pv", "grid_only_cost_ct", "grid_only_credit_ct"]
# grid_only_cost_ct: the same consumption bought at p_grid_con; grid_only_credit_ct: the same
# production sold at p_grid_del (what every house would have paid and earned without the community)


@dataclass(frozen=True)
class Range:
    start: pd.Timestamp       # UTC
    end: pd.Timestamp         # UTC, exclusive
    bucket: str


def resolve_range(name: str, now: pd.Timestamp, tz, first_day=None, last_day=None) -> Range:
    """A named range in the community's zone, with a resolution that fits it. ``custom`` spans
    the local days ``first_day`` to ``last_day`` (ISO dates, both included)."""
    local = now.tz_convert(tz)
    day = local.normalize()
    if name == "custom":
        try:
            first = pd.Timestamp(first_day).tz_localize(tz) if first_day else None
            last = pd.Timestamp(last_day).tz_localize(tz) if last_day else None
        except (ValueError, TypeError):
            raise ValueError(f"dates: {first_day!r} to {last_day!r} are not dates (YYYY-MM-DD)") from None
        if first is None or last is None:
            raise ValueError("dates: choose the first and the last day of the range")
        if last < first:
            raise ValueError("dates: the last day is before the first day")
        end = last + pd.DateOffset(days=1)
        if (end - first).days > MAX_CUSTOM_DAYS:
            raise ValueError(f"dates: at most {MAX_CUSTOM_DAYS} days at a time")
        days = (end - first).days
        bucket = "15min" if days <= 2 else "hour" if days <= 14 else "day" if days <= 400 else "month"
        return Range(first.tz_convert("UTC"), end.tz_convert("UTC"), bucket)
    if name == "today":
        start, end, bucket = day, day + pd.DateOffset(days=1), "15min"
    elif name == "7days":
        start, end, bucket = day - pd.DateOffset(days=6), day + pd.DateOffset(days=1), "hour"
    elif name == "this_month":
        start = day.replace(day=1)
        start, end, bucket = start, start + pd.DateOffset(months=1), "day"
    elif name == "last_month":
        end = day.replace(day=1)
        start, end, bucket = end - pd.DateOffset(months=1), end, "day"
    elif name == "this_year":
        start = day.replace(month=1, day=1)
        start, end, bucket = start, start + pd.DateOffset(years=1), "month"
    else:
        raise ValueError(f"range: unknown {name!r}; one of {', '.join(RANGES)}")
    return Range(start.tz_convert("UTC"), end.tz_convert("UTC"), bucket)


def chosen_range(range_name: str, bucket: str | None, now: pd.Timestamp, tz, first_day=None,
                 last_day=None) -> Range:
    """The range the controls describe: a named or custom range, at the chosen resolution or the
    one that fits it."""
    rng = resolve_range(range_name, now, tz, first_day, last_day)
    if bucket:
        if bucket not in BUCKETS:
            raise ValueError(f"resolution: unknown {bucket!r}; one of {', '.join(BUCKETS)}")
        rng = Range(rng.start, rng.end, bucket)
    return rng


def includes_now(rng: Range, now: pd.Timestamp) -> bool:
    """Whether new readings can still change what the range shows (then the page refreshes)."""
    return rng.start <= now < rng.end


def fit_bucket(start: pd.Timestamp, end: pd.Timestamp, bucket: str) -> str:
    """``bucket``, or the next coarser one if the range would need more than MAX_POINTS points."""
    order = list(BUCKETS)
    i = order.index(bucket)
    while i < len(order) - 1 and (end - start) / BUCKETS[order[i]] > MAX_POINTS:
        i += 1
    return order[i]


def _bucket_local(starts: pd.Series, bucket: str, tz) -> pd.Series:
    """Each interval's bucket start in the community's zone (days and months are local)."""
    if bucket == "15min":
        return starts.dt.tz_convert(tz)
    if bucket == "hour":                     # whole-hour offsets: a UTC hour is a local hour
        return starts.dt.floor("h").dt.tz_convert(tz)
    local = starts.dt.tz_convert(tz)
    if bucket == "day":
        return local.dt.normalize()
    return local.dt.tz_localize(None).dt.to_period("M").dt.start_time.dt.tz_localize(tz)


def _aggregate(df: pd.DataFrame, bucket: str, tz) -> pd.DataFrame:
    if df.empty:
        return pd.DataFrame(columns=FLOW_COLUMNS)
    df = df.copy()
    df["bucket"] = _bucket_local(df["start"], bucket, tz)
    sums = df.groupby("bucket")[FLOW_COLUMNS[1:9] + ["grid_only_cost_ct", "grid_only_credit_ct"]].sum()
    # average prices weighted by the energy they applied to
    w_con = df["consumption_kwh"].where(df["consumption_kwh"] > 0, 0)
    w_pv = df["production_kwh"].where(df["production_kwh"] > 0, 0)
    g = df.assign(pc=df["p_con"] * w_con, pp=df["p_pv"] * w_pv, wc=w_con, wp=w_pv,
                  pc0=df["p_con"], pp0=df["p_pv"]).groupby("bucket")
    agg = g[["pc", "pp", "wc", "wp", "pc0", "pp0"]].agg({"pc": "sum", "pp": "sum", "wc": "sum", "wp": "sum",
                                                          "pc0": "mean", "pp0": "mean"})
    sums["p_con"] = np.where(agg["wc"] > 0, agg["pc"] / agg["wc"].where(agg["wc"] > 0, 1), agg["pc0"])
    sums["p_pv"] = np.where(agg["wp"] > 0, agg["pp"] / agg["wp"].where(agg["wp"] > 0, 1), agg["pp0"])
    out = sums.reset_index().rename(columns={"bucket": "start"})
    return out[FLOW_COLUMNS]


def community_flows(community, rng: Range) -> pd.DataFrame:
    """Per bucket: the community's energy (kWh), values (ct) and average prices (ct/kWh)."""
    p = community.community_intervals(rng.start, rng.end)
    if p.empty:
        return pd.DataFrame(columns=FLOW_COLUMNS)
    df = pd.DataFrame({
        "start": p["start"], "consumption_kwh": p["total_consumption_kwh"],
        "production_kwh": p["total_production_kwh"], "grid_import_kwh": p["grid_import_kwh"],
        "grid_export_kwh": p["grid_export_kwh"],
        "value_consumption_ct": p["total_consumption_kwh"] * p["p_con"],
        "value_pv_delivery_ct": p["total_production_kwh"] * p["p_pv"],
        "value_grid_import_ct": p["value_grid_import_ct"], "value_grid_export_ct": p["value_grid_export_ct"],
        "p_con": p["p_con"], "p_pv": p["p_pv"],
        "grid_only_cost_ct": p["total_consumption_kwh"] * p["tariff_p_grid_con"],
        "grid_only_credit_ct": p["total_production_kwh"] * p["tariff_p_grid_del"]})
    return _aggregate(df, fit_bucket(rng.start, rng.end, rng.bucket), community.tz)


def house_flows(community, house_id: str, rng: Range) -> pd.DataFrame:
    """Per bucket: one house's consumption and production (kWh), values (ct), prices applied."""
    p = community.community_intervals(rng.start, rng.end)
    iv = community.store.read_intervals(rng.start, rng.end, [house_id])
    if iv.empty or p.empty:
        return pd.DataFrame(columns=FLOW_COLUMNS)
    m = iv.merge(p[["start", "p_con", "p_pv", "tariff_p_grid_con", "tariff_p_grid_del"]], on="start")
    df = pd.DataFrame({
        "start": m["start"], "consumption_kwh": m["delta_ei_kwh"], "production_kwh": m["delta_eo_kwh"],
        "grid_import_kwh": 0.0, "grid_export_kwh": 0.0,
        "value_consumption_ct": m["delta_ei_kwh"] * m["p_con"], "value_pv_delivery_ct": m["delta_eo_kwh"] * m["p_pv"],
        "value_grid_import_ct": 0.0, "value_grid_export_ct": 0.0, "p_con": m["p_con"], "p_pv": m["p_pv"],
        "grid_only_cost_ct": m["delta_ei_kwh"] * m["tariff_p_grid_con"],
        "grid_only_credit_ct": m["delta_eo_kwh"] * m["tariff_p_grid_del"]})
    return _aggregate(df, fit_bucket(rng.start, rng.end, rng.bucket), community.tz)


SHARE_COLUMNS = ["start", "leg_consumed_kwh", "grid_consumed_kwh", "leg_produced_kwh", "grid_fed_in_kwh"]


def share_flows(community, rng: Range, house_id: str | None = None) -> pd.DataFrame | None:
    """For a LEG billed from the grid operator's data (pricing.mode leg): per bucket the LEG share
    and the grid share of the consumption and of the production (kWh) of the community or of one
    house, as the DSO sent them; None in the other modes."""
    if not community.sdat_billed():
        return None
    points = [p for p, h in community.point_houses().items() if house_id is None or h == house_id]
    v = community.sdat.values(rng.start, rng.end, points)
    v = v[v["product"].isin(["leg", "grid"])]
    if v.empty:
        return pd.DataFrame(columns=SHARE_COLUMNS)
    consumption = v["direction"] == "consumption"
    column = np.where(v["product"] == "leg", np.where(consumption, "leg_consumed_kwh", "leg_produced_kwh"),
                      np.where(consumption, "grid_consumed_kwh", "grid_fed_in_kwh"))
    df = pd.DataFrame({"bucket": _bucket_local(v["start"], fit_bucket(rng.start, rng.end, rng.bucket), community.tz),
                       "column": column, "kwh": v["volume_kwh"].to_numpy()})
    out = df.pivot_table(index="bucket", columns="column", values="kwh", aggfunc="sum", fill_value=0.0)
    out = out.reindex(columns=SHARE_COLUMNS[1:], fill_value=0.0).reset_index().rename(columns={"bucket": "start"})
    return out[SHARE_COLUMNS]


def share_kpis(shares: pd.DataFrame) -> dict:
    """Totals of ``share_flows`` and the LEG share of the consumption (0..1, None without any)."""
    t = {c: float(shares[c].sum()) for c in SHARE_COLUMNS[1:]}
    consumed = t["leg_consumed_kwh"] + t["grid_consumed_kwh"]
    return {**t, "leg_share_of_consumption": t["leg_consumed_kwh"] / consumed if consumed > 0 else None}


def kpis(flows: pd.DataFrame) -> dict:
    """Self-sufficiency, self-consumption, community balance (CHF), energy totals, and the savings
    against the grid alone (CHF): what the consumption would have cost at p_grid_con minus what it
    cost in the community, plus what the production earned in the community minus what it would
    have earned at p_grid_del."""
    c, p = float(flows["consumption_kwh"].sum()), float(flows["production_kwh"].sum())
    gi, ge = float(flows["grid_import_kwh"].sum()), float(flows["grid_export_kwh"].sum())
    balance_ct = float((flows["value_consumption_ct"] + flows["value_grid_export_ct"]
                        - flows["value_pv_delivery_ct"] - flows["value_grid_import_ct"]).sum())
    return {"consumption_kwh": c, "production_kwh": p, "grid_import_kwh": gi, "grid_export_kwh": ge,
            "self_sufficiency": (1 - gi / c) if c > 0 else None,
            "self_consumption": (1 - ge / p) if p > 0 else None,
            "balance_chf": round(balance_ct / 100, 2) + 0.0,
            "savings_chf": round(savings_ct(flows) / 100, 2) + 0.0}


def savings_ct(flows: pd.DataFrame) -> float:
    """Savings against the grid alone (ct; see ``kpis``), from flows of a community or a house."""
    if flows.empty:
        return 0.0
    return float((flows["grid_only_cost_ct"] - flows["value_consumption_ct"]
                  + flows["value_pv_delivery_ct"] - flows["grid_only_credit_ct"]).sum())


YEAR_COLUMNS = ["month", "consumption_kwh", "production_kwh", "grid_import_kwh", "self_sufficiency", "cost_chf",
                "credit_chf", "savings_chf"]


def year_months(community, year: int, house_id: str | None = None) -> pd.DataFrame:
    """The twelve local months of ``year`` (community or one house): consumption, production and
    grid import (kWh), self-sufficiency (the community's, 0..1, None without consumption), what
    the consumption cost and the production earned in the community, and the savings against the
    grid alone (CHF, see ``kpis``). Months without data have zeros and no self-sufficiency."""
    tz = community.tz
    start = pd.Timestamp(year=int(year), month=1, day=1).tz_localize(tz)
    rng = Range(start.tz_convert("UTC"), (start + pd.DateOffset(years=1)).tz_convert("UTC"), "month")
    flows = community_flows(community, rng) if house_id is None else house_flows(community, house_id, rng)
    months = pd.date_range(start, periods=12, freq="MS")
    rows = []
    by_month = {pd.Timestamp(r.start).month: r for r in flows.itertuples(index=False)} if len(flows) else {}
    for m in months:
        r = by_month.get(m.month)
        if r is None:
            rows.append({"month": m.strftime("%Y-%m"), "consumption_kwh": 0.0, "production_kwh": 0.0,
                         "grid_import_kwh": 0.0, "self_sufficiency": None, "cost_chf": 0.0, "credit_chf": 0.0,
                         "savings_chf": 0.0})
            continue
        one = pd.DataFrame([r._asdict()])
        k = kpis(one)
        rows.append({"month": m.strftime("%Y-%m"), "consumption_kwh": round(float(r.consumption_kwh), 3),
                     "production_kwh": round(float(r.production_kwh), 3),
                     "grid_import_kwh": round(float(r.grid_import_kwh), 3),
                     "self_sufficiency": k["self_sufficiency"] if house_id is None else None,
                     "cost_chf": round(float(r.value_consumption_ct) / 100, 2) + 0.0,
                     "credit_chf": round(float(r.value_pv_delivery_ct) / 100, 2) + 0.0,
                     "savings_chf": k["savings_chf"]})
    return pd.DataFrame(rows, columns=YEAR_COLUMNS)


def year_xlsx(community, years: list[int], headers: dict[str, str] | None = None) -> bytes:
    """The monthly figures of ``years`` (one sheet each, and the community's name and the year in
    the first row) as an Excel workbook (XlsxWriter); ``headers`` names the columns (default: the
    column keys)."""
    import io

    import xlsxwriter
    out = io.BytesIO()
    book = xlsxwriter.Workbook(out, {"in_memory": True})
    bold = book.add_format({"bold": True})
    kwh = book.add_format({"num_format": "#,##0.000"})
    chf = book.add_format({"num_format": "#,##0.00"})
    pct = book.add_format({"num_format": "0.0%"})
    formats = {"consumption_kwh": kwh, "production_kwh": kwh, "grid_import_kwh": kwh, "self_sufficiency": pct,
               "cost_chf": chf, "credit_chf": chf, "savings_chf": chf}
    for year in years:
        df = year_months(community, year)
        sheet = book.add_worksheet(str(year))
        sheet.write(0, 0, f"{community.cfg.community.name} {year}", bold)
        for col, key in enumerate(YEAR_COLUMNS):
            sheet.write(2, col, (headers or {}).get(key, key), bold)
            sheet.set_column(col, col, 16)
        for row, rec in enumerate(df.to_dict("records"), start=3):
            sheet.write_string(row, 0, rec["month"])
            for col, key in enumerate(YEAR_COLUMNS[1:], start=1):
                if rec[key] is None:
                    sheet.write_blank(row, col, None)
                else:
                    sheet.write_number(row, col, float(rec[key]), formats[key])
        total = 3 + len(df)
        sheet.write_string(total, 0, (headers or {}).get("total", "total"), bold)
        for col, key in enumerate(YEAR_COLUMNS[1:], start=1):
            if key != "self_sufficiency":
                sheet.write_number(total, col, round(float(df[key].sum()), 3 if key.endswith("_kwh") else 2),
                                   formats[key])
    book.close()
    return out.getvalue()
