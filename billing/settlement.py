"""Settlement periods (calendar months, quarters or years in the community time zone) and invoice
figures.

Period ids: ``YYYY-MM`` (a month), ``YYYY-Qn`` (a quarter), ``YYYY`` (a year); a community bills
by one kind (``community.billing_period``). Draft invoices are ``DRAFT-<period>-<house>``.

Money is computed from the unrounded interval values and rounded once, at the invoice line:
energies to 0.001 kWh, the ct amounts to 0.01 ct (the seed's invoice shows half Rappen, e.g.
3007.5 ct), ``net_amount_ct = export_revenue_ct - import_cost_ct`` exactly, and the amount in CHF
is that net converted and rounded half-up to the Rappen.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd

from billing.intervals import flag_names
from pricing.engine import grid_flows, interval_prices, tariffs_in_force
from pricing.tariffs import Tariff
from storage.ledger import House

CSV_FIELDS = ["invoice_id", "house_id", "period_start", "period_end", "energy_exported_kwh",
              "energy_imported_kwh", "export_revenue_ct", "import_cost_ct", "net_amount_ct", "status"]
CSV_EXTRA_FIELDS = ["house_name", "net_amount_chf", "avg_p_con", "avg_p_pv", "intervals",
                    "missing_intervals", "flags", "payment_reference"]
# pricing.mode leg (billing/leg.py): for information, what the grid operator bills, and the saving
LEG_CSV_FIELDS = ["grid_share_consumed_kwh", "grid_share_fed_in_kwh", "grid_fee_saving_ct"]

_KWH = Decimal("0.001")
_CT = Decimal("0.01")
_CHF = Decimal("0.01")
_PERIOD_RE = re.compile(r"^(\d{4})(?:-(\d{2})|-Q(\d))?$")
PERIOD_KINDS = ("month", "quarter", "year")
_EXPECTED = {"month": "a month as YYYY-MM, e.g. 2026-01", "quarter": "a quarter as YYYY-Qn, e.g. 2026-Q1",
             "year": "a year as YYYY, e.g. 2026"}


class SettlementError(Exception):
    pass


class IncompleteDataError(SettlementError):
    def __init__(self, period_id: str, missing: dict[str, list[pd.Timestamp]], counts: dict[str, int], tz):
        self.missing = missing
        self.counts = counts
        lines = []
        for hid, starts in missing.items():
            first = ", ".join(s.tz_convert(tz).strftime("%Y-%m-%d %H:%M") for s in starts[:3])
            lines.append(f"house {hid}: {counts[hid]} intervals missing, first at {first}")
        super().__init__(f"period {period_id} has incomplete data; invoices would be wrong:\n  "
                         + "\n  ".join(lines)
                         + "\nImport the missing readings, or settle with --allow-incomplete "
                           "to bill only the intervals present (marked on each invoice).")


@dataclass(frozen=True)
class Period:
    period_id: str
    start: pd.Timestamp   # UTC, inclusive
    end: pd.Timestamp     # UTC, exclusive
    tz: ZoneInfo

    @property
    def hours(self) -> float:
        return (self.end - self.start).total_seconds() / 3600

    @property
    def start_local(self) -> pd.Timestamp:
        return self.start.tz_convert(self.tz)

    @property
    def end_local_inclusive(self) -> pd.Timestamp:
        """The last second of the period, as the seed's ``period_end`` shows it."""
        return (self.end - pd.Timedelta(seconds=1)).tz_convert(self.tz)


def period_kind(period_id: str) -> str | None:
    """``month``, ``quarter`` or ``year`` for a well-formed period id, else None."""
    m = _PERIOD_RE.match(period_id or "")
    if not m:
        return None
    if m.group(2) is not None:
        return "month" if 1 <= int(m.group(2)) <= 12 else None
    if m.group(3) is not None:
        return "quarter" if 1 <= int(m.group(3)) <= 4 else None
    return "year"


def parse_period(period_id: str, tz: ZoneInfo, kind: str | None = None) -> Period:
    """The period ``period_id`` in ``tz`` (local midnights, DST included); with ``kind``, a period
    of another kind is refused."""
    found = period_kind(period_id)
    if found is None or (kind and found != kind):
        wanted = _EXPECTED[kind] if kind else "a month as YYYY-MM, a quarter as YYYY-Qn or a year as YYYY"
        why = f" (the community bills by {kind}: community.billing_period)" if found and kind else ""
        raise SettlementError(f"period {str(period_id)[:40]!r}: expected {wanted}{why}")
    y = int(period_id[:4])
    first = {"month": int(period_id[5:7] or 1) if found == "month" else 1,
             "quarter": (int(period_id[-1]) - 1) * 3 + 1 if found == "quarter" else 1, "year": 1}[found]
    months = {"month": 1, "quarter": 3, "year": 12}[found]
    start = pd.Timestamp(datetime(y, first, 1), tz=tz)
    after = first - 1 + months                       # months after January of the first month's year
    end = pd.Timestamp(datetime(y + after // 12, after % 12 + 1, 1), tz=tz)
    return Period(period_id, start.tz_convert("UTC"), end.tz_convert("UTC"), tz)


def period_of(ts: pd.Timestamp, tz: ZoneInfo, kind: str = "month") -> str:
    """The id of the period of ``kind`` that contains ``ts``."""
    local = ts.tz_convert(tz)
    return {"month": f"{local:%Y-%m}", "quarter": f"{local.year}-Q{(local.month - 1) // 3 + 1}",
            "year": f"{local.year}"}[kind]


def recent_periods(now: pd.Timestamp, tz: ZoneInfo, kind: str = "month", count: int | None = None) -> list[str]:
    """The ids of the running period of ``kind`` and those before it, newest first (a year of
    months, eight quarters or three years unless ``count`` says otherwise)."""
    count = count or {"month": 12, "quarter": 8, "year": 3}[kind]
    local = now.tz_convert(tz)
    step = {"month": 1, "quarter": 3, "year": 12}[kind]
    first = pd.Timestamp(datetime(local.year, local.month, 1), tz=tz)
    return [period_of(first - pd.DateOffset(months=k * step), tz, kind) for k in range(count)]


def draft_id(period_id: str, house_id: str) -> str:
    return f"DRAFT-{period_id}-{house_id}"


def draft_candidates(document_id: str) -> list[tuple[str, str]]:
    """(period id, house id) readings of a draft's id, most specific first: ``DRAFT-2026-12-5`` is
    house 5 of December 2026, or house ``12-5`` of the year 2026; the caller looks each up."""
    if not document_id.startswith("DRAFT-"):
        return []
    rest = document_id[len("DRAFT-"):]
    out = []
    for n in (7, 4):                                 # YYYY-MM / YYYY-Qn, then YYYY
        pid, sep, house = rest[:n], rest[n:n + 1], rest[n + 1:]
        if sep == "-" and house and period_kind(pid):
            out.append((pid, house))
    return out


def _dec(x: float, q: Decimal) -> Decimal:
    return Decimal(repr(float(x))).quantize(q, rounding=ROUND_HALF_UP)


@dataclass
class CommunitySummary:
    total_consumption_kwh: float
    total_production_kwh: float
    grid_import_kwh: float
    grid_export_kwh: float
    value_grid_import_ct: float
    value_grid_export_ct: float
    value_consumption_ct: float
    value_pv_delivery_ct: float

    @property
    def self_sufficiency(self) -> float | None:
        """Share of consumption covered by local production."""
        if self.total_consumption_kwh <= 0:
            return None
        return 1 - self.grid_import_kwh / self.total_consumption_kwh

    @property
    def self_consumption(self) -> float | None:
        """Share of local production consumed in the community."""
        if self.total_production_kwh <= 0:
            return None
        return 1 - self.grid_export_kwh / self.total_production_kwh

    @property
    def balance_ct(self) -> float:
        """Community profit: what houses and the grid pay it minus what it pays producers and the grid."""
        return (self.value_consumption_ct + self.value_grid_export_ct
                - self.value_pv_delivery_ct - self.value_grid_import_ct)


@dataclass
class Settlement:
    period: Period
    status: str                       # open (drafts) | closed (issued)
    invoices: list[dict]
    summary: CommunitySummary | None = None
    missing: dict[str, int] = field(default_factory=dict)   # house -> missing intervals


def expected_span(period: Period, house: House, interval_s: int,
                  now: pd.Timestamp | None = None) -> tuple[pd.Timestamp, pd.Timestamp] | None:
    """[start, end) of the intervals a house must have in the period: from its ``active_from``
    (local midnight) until it left (``active_until``, to the interval) and, for a period still
    running, up to the last interval ended by ``now``; None when it has none."""
    start = period.start
    end = period.end if now is None else min(period.end, now.floor(f"{interval_s}s"))
    if house.active_until:
        end = min(end, pd.Timestamp(house.active_until).tz_convert("UTC").floor(f"{interval_s}s"))
    if house.active_from:
        af = pd.Timestamp(date.fromisoformat(house.active_from), tz=period.tz).tz_convert("UTC")
        start = max(start, af)
    return (start, end) if start < end else None


def expected_starts(period: Period, house: House, interval_s: int,
                    now: pd.Timestamp | None = None) -> pd.DatetimeIndex:
    """The interval starts of ``expected_span``."""
    span = expected_span(period, house, interval_s, now)
    if span is None:
        return pd.DatetimeIndex([], tz="UTC")
    return pd.date_range(span[0], span[1], freq=f"{interval_s}s", inclusive="left")


def price_frame(totals: pd.DataFrame, tariffs: list[Tariff]) -> pd.DataFrame:
    """Add the section 9.3 community fields and p_con/p_pv to per-interval totals (start, I, E)."""
    starts_s = totals["start"].to_numpy(dtype="datetime64[us]").astype(np.int64) / 1e6
    t = tariffs_in_force(tariffs, starts_s)
    I = totals["total_consumption_kwh"].to_numpy(dtype=np.float64)
    E = totals["total_production_kwh"].to_numpy(dtype=np.float64)
    p_con, p_pv = interval_prices(I, E, t)
    gi, ge = grid_flows(I, E)
    out = totals.copy()
    out["grid_import_kwh"] = gi
    out["grid_export_kwh"] = ge
    out["value_grid_import_ct"] = gi * t.p_grid_con
    out["value_grid_export_ct"] = ge * t.p_grid_del
    out["tariff_p_grid_con"] = t.p_grid_con
    out["tariff_p_grid_del"] = t.p_grid_del
    out["p_con"] = p_con
    out["p_pv"] = p_pv
    out["tariff_version"] = t.version
    return out


def compute_settlement(store, houses: list[House], tariffs: list[Tariff], period: Period,
                       interval_s: int, allow_incomplete: bool = False,
                       now: pd.Timestamp | None = None) -> Settlement:
    """Draft invoices for every house active in ``period`` from the stored intervals; ``now``
    limits the intervals expected of a period that is still running."""
    active = [h for h in houses if expected_span(period, h, interval_s) is not None]
    spans = {h.house_id: expected_span(period, h, interval_s, now) for h in active}
    # a house counts (in the community's I and E, and on its invoice) only from its active_from:
    # houses are grouped by the start of their span (usually all start with the period)
    groups: dict[pd.Timestamp, list[str]] = {}
    for h in active:
        groups.setdefault(expected_span(period, h, interval_s)[0], []).append(h.house_id)
    if not groups:
        return Settlement(period, "open", [], None, {})
    totals = pd.concat([store.community_totals(s, period.end, ids) for s, ids in groups.items()],
                       ignore_index=True)
    if len(groups) > 1:
        totals = totals.groupby("start", as_index=False)[
            ["total_consumption_kwh", "total_production_kwh", "houses"]].sum()
    prices = price_frame(totals, tariffs)
    # and the same energy at the grid's prices: what each house would have paid and earned alone
    grid_prices = pd.DataFrame({"start": prices["start"], "p_con": prices["tariff_p_grid_con"],
                                "p_pv": prices["tariff_p_grid_del"]})
    both = [store.house_sums_at(s, period.end, ids, [prices, grid_prices]) for s, ids in groups.items()]
    sums = pd.concat([b[0] for b in both], ignore_index=True).set_index("house_id")
    have = sums["intervals"].to_dict()
    grid_only = pd.concat([b[1] for b in both], ignore_index=True).set_index("house_id").to_dict("index")

    missing_counts: dict[str, int] = {}
    missing_first: dict[str, list[pd.Timestamp]] = {}
    short = []
    for h in active:
        span = spans[h.house_id]
        n_expected = 0 if span is None else int((span[1] - span[0]).total_seconds()) // interval_s
        if have.get(h.house_id, 0) < n_expected:
            short.append(h)
    if short:                      # only then: which intervals are missing (one query)
        gaps = store.missing_intervals(period.start, period.end,
                                       {h.house_id: spans[h.house_id] for h in short}, interval_s)
        for hid, starts in gaps.groupby("house_id", sort=False)["start"]:
            missing_counts[hid] = len(starts)
            missing_first[hid] = list(starts.iloc[:3])
    if missing_counts and not allow_incomplete:
        raise IncompleteDataError(period.period_id, missing_first, missing_counts, period.tz)

    summary = CommunitySummary(
        total_consumption_kwh=float(prices["total_consumption_kwh"].sum()),
        total_production_kwh=float(prices["total_production_kwh"].sum()),
        grid_import_kwh=float(prices["grid_import_kwh"].sum()),
        grid_export_kwh=float(prices["grid_export_kwh"].sum()),
        value_grid_import_ct=float(prices["value_grid_import_ct"].sum()),
        value_grid_export_ct=float(prices["value_grid_export_ct"].sum()),
        value_consumption_ct=float(sums["value_consumption_ct"].sum()) if len(sums) else 0.0,
        value_pv_delivery_ct=float(sums["value_pv_delivery_ct"].sum()) if len(sums) else 0.0,
    )
    versions = sorted({int(v) for v in prices["tariff_version"].unique()}) if len(prices) else []
    ordered = sorted(tariffs, key=lambda t: t.effective_from)
    tariff_info = [{"effective_from": ordered[v].effective_from.isoformat(), "mode": ordered[v].mode,
                    "p_pv": ordered[v].p_pv, "p_grid_del": ordered[v].p_grid_del,
                    "p_grid_con": ordered[v].p_grid_con} for v in versions]

    rows = sums.to_dict("index")              # plain dicts: no pandas indexing per invoice
    period_start = period.start_local.isoformat()
    period_end = period.end_local_inclusive.isoformat()
    invoices = []
    for h in active:
        row = rows.get(h.house_id)
        ei = float(row["delta_ei_kwh"]) if row is not None else 0.0
        eo = float(row["delta_eo_kwh"]) if row is not None else 0.0
        cost = float(row["value_consumption_ct"]) if row is not None else 0.0
        revenue = float(row["value_pv_delivery_ct"]) if row is not None else 0.0
        flags = int(row["flags"]) if row is not None else 0
        alone = grid_only.get(h.house_id)
        grid_cost = float(alone["value_consumption_ct"]) if alone is not None else 0.0
        grid_credit = float(alone["value_pv_delivery_ct"]) if alone is not None else 0.0
        export_ct, import_ct = _dec(revenue, _CT), _dec(cost, _CT)
        net_ct = export_ct - import_ct
        invoices.append({
            "invoice_id": draft_id(period.period_id, h.house_id),
            "house_id": h.house_id,
            "period_start": period_start,
            "period_end": period_end,
            "energy_exported_kwh": _dec(eo, _KWH),
            "energy_imported_kwh": _dec(ei, _KWH),
            "export_revenue_ct": export_ct,
            "import_cost_ct": import_ct,
            "net_amount_ct": net_ct,
            "net_amount_chf": (net_ct / 100).quantize(_CHF, rounding=ROUND_HALF_UP),
            "status": "draft",
            "details": {
                "house_name": h.name,
                "avg_p_con": round(cost / ei, 4) if ei > 0 else None,
                "avg_p_pv": round(revenue / eo, 4) if eo > 0 else None,
                "intervals": int(row["intervals"]) if row is not None else 0,
                "missing_intervals": missing_counts.get(h.house_id, 0),
                "flags": flag_names(flags),
                # savings against the grid alone: consumption at p_grid_con minus its cost here,
                # plus the credit here minus the production at p_grid_del (rounded once)
                "grid_only_cost_ct": str(_dec(grid_cost, _CT)),
                "grid_only_credit_ct": str(_dec(grid_credit, _CT)),
                "savings_ct": str(_dec((grid_cost - cost) + (revenue - grid_credit), _CT)),
                "tariffs": tariff_info,
            },
        })
    return Settlement(period, "open", invoices, summary, missing_counts)


def invoice_rows(invoices: list[dict]) -> list[dict]:
    """Flat rows for the CSV: the seed's fields first, then the extras."""
    rows = []
    for inv in invoices:
        d = inv.get("details", {})
        row = {k: inv[k] for k in CSV_FIELDS}
        row.update({"house_name": d.get("house_name"), "net_amount_chf": inv["net_amount_chf"],
                    "avg_p_con": d.get("avg_p_con"), "avg_p_pv": d.get("avg_p_pv"),
                    "intervals": d.get("intervals"), "missing_intervals": d.get("missing_intervals"),
                    "flags": " ".join(d.get("flags", [])), "payment_reference": inv.get("payment_reference", "")})
        if "leg" in d:
            row.update({k: d["leg"].get(k) for k in LEG_CSV_FIELDS})
        rows.append(row)
    return rows
