"""Billing a Swiss LEG from the grid operator's data (``pricing.mode: leg``).

Since 2026 the DSO measures every participant and sends, per metering point and quarter hour, the
total, the **LEG share** (energy exchanged inside the community) and the **grid share** (SDAT-CH,
see ingest/sdat.py). The DSO bills the grid share itself; the LEG bills only the LEG share. So a
house's billing interval is: ``delta_ei_kwh`` = the LEG share of its consumption points,
``delta_eo_kwh`` = the LEG share of its production points. An interval exists only when every
metering point of the house has its LEG share for that quarter hour (else it is missing, and the
period incomplete, as with meters); a value the DSO marked with a ``Condition`` (e.g. 21,
estimated) flags the interval ``estimated``.

The grid-fee reduction (StromVG Art. 17e: 40 % behind one transformer station and grid level, 20 %
otherwise) applies to the grid components of the LEG share's grid tariff. It is the DSO's to apply;
the invoice shows the member what it saves: LEG share consumed × ``leg.grid_fee_ct_per_kwh`` ×
``leg.grid_fee_reduction``.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from decimal import ROUND_HALF_UP, Decimal

import numpy as np
import pandas as pd

from billing.intervals import ESTIMATED
from storage.timeseries import INTERVAL_COLUMNS

_KWH = Decimal("0.001")
# Per quarter hour the LEG shares consumed equal the LEG shares produced up to the DSO's rounding:
# half a unit of the third decimal per value, at least 0.001 kWh.
BALANCE_TOLERANCE_PER_VALUE_KWH = 0.0005
BALANCE_TOLERANCE_MIN_KWH = 0.001
_CT = Decimal("0.01")


def leg_intervals(values: pd.DataFrame, point_house: dict[str, str]) -> pd.DataFrame:
    """INTERVAL_COLUMNS from SDAT rows (metering_point, product, start, direction, volume_kwh,
    condition) of the houses' metering points, ordered by start and house_id. Summed with numpy on
    a grid of (quarter hour, house): an import derives some 40,000 intervals at a time."""
    leg = values[(values["product"] == "leg") & values["metering_point"].isin(point_house.keys())]
    if leg.empty:
        return pd.DataFrame(columns=INTERVAL_COLUMNS)
    houses = sorted(set(point_house.values()))
    house_of = {h: k for k, h in enumerate(houses)}
    points = list(point_house)
    point_of = {p: k for k, p in enumerate(points)}
    codes, seen_points = pd.factorize(leg["metering_point"])
    point = np.array([point_of[p] for p in seen_points], np.int64)[codes]
    house = np.array([house_of[point_house[p]] for p in points], np.int64)
    starts = pd.DatetimeIndex(pd.to_datetime(leg["start"], utc=True)).as_unit("us").asi8
    quarters, at = np.unique(starts, return_inverse=True)
    cell = at.reshape(-1) * len(houses) + house[point]          # (quarter hour, house), in output order
    cells = len(quarters) * len(houses)
    volume = leg["volume_kwh"].to_numpy(float)
    direction = leg["direction"].to_numpy()
    ei = np.bincount(cell, weights=np.where(direction == "consumption", volume, 0.0), minlength=cells)
    eo = np.bincount(cell, weights=np.where(direction == "production", volume, 0.0), minlength=cells)
    estimated = np.bincount(cell, weights=leg["condition"].notna().to_numpy(float), minlength=cells) > 0
    # an interval only where every point of the house has its value (each point counted once)
    has = np.zeros((len(quarters), len(points)), bool)
    has[at.reshape(-1), point] = True
    q, p = np.nonzero(has)
    delivered = np.bincount(q * len(houses) + house[p], minlength=cells)     # points with a value per cell
    needed = np.bincount(house, minlength=len(houses))
    keep = np.flatnonzero((delivered > 0) & (delivered == np.tile(needed, len(quarters))))
    return pd.DataFrame({
        "house_id": np.array(houses, dtype=object)[keep % len(houses)],
        "start": pd.Series(quarters[keep // len(houses)].astype("datetime64[us]")).dt.tz_localize("UTC"),
        "delta_ei_kwh": ei[keep], "delta_eo_kwh": eo[keep],
        "flags": np.where(estimated[keep], ESTIMATED, 0).astype(np.uint8)})


def leg_extras(values: pd.DataFrame, point_house: dict[str, str], reduction: float,
               grid_fee_ct_per_kwh: float) -> dict[str, dict]:
    """Per house over ``values``' span: the grid share consumed and fed in (for information: the DSO
    bills them), the LEG share consumed and the grid-fee saving on it (ct, rounded once)."""
    v = values[values["metering_point"].isin(point_house.keys())]
    out: dict[str, dict] = {}
    for house in set(point_house.values()):
        mine = v[v["metering_point"].map(point_house) == house]
        def total(product, direction):
            sel = mine[(mine["product"] == product) & (mine["direction"] == direction)]
            return float(sel["volume_kwh"].sum())
        leg_con = total("leg", "consumption")
        saving = Decimal(repr(leg_con)) * Decimal(repr(grid_fee_ct_per_kwh)) * Decimal(repr(reduction))
        out[house] = {
            "grid_share_consumed_kwh": Decimal(repr(total("grid", "consumption"))).quantize(_KWH, ROUND_HALF_UP),
            "grid_share_fed_in_kwh": Decimal(repr(total("grid", "production"))).quantize(_KWH, ROUND_HALF_UP),
            "grid_fee_saving_ct": saving.quantize(_CT, ROUND_HALF_UP),
            # quarter hours whose LEG share the DSO estimated (what the invoice bills), not every product's row
            "estimated_values": int(mine.loc[(mine["product"] == "leg") & mine["condition"].notna(), "start"].nunique()),
        }
    return out


@dataclass
class LegBalance:
    """The reconciliation of a period's LEG shares (see ``leg_balance``)."""
    quarter_hours: int                                   # quarter hours of the period (so far)
    unbalanced: pd.DataFrame                             # start, consumed_kwh, produced_kwh, difference_kwh
    missing: dict[str, int] = field(default_factory=dict)   # metering point -> quarter hours without LEG share
    estimated: int = 0                                   # quarter hours with an estimated LEG share

    @property
    def balanced(self) -> bool:
        return self.unbalanced.empty

    @property
    def complete(self) -> bool:
        return not self.missing


def leg_balance(values: pd.DataFrame, points: list[str], starts: pd.DatetimeIndex) -> LegBalance:
    """Reconcile the LEG shares of ``points`` over the quarter hours ``starts`` (UTC): inside a LEG
    every kWh one member takes from the community another feeds in, so per quarter hour the LEG
    shares consumed must equal those produced (within the DSO's rounding, see the tolerance above).
    Also counts, per metering point, the quarter hours the DSO sent no LEG share for, and the
    quarter hours with an estimated one (``Condition`` set). ``values``: SdatStore.values rows."""
    leg = values[(values["product"] == "leg") & values["metering_point"].isin(points)
                 & values["start"].isin(starts)]
    consumed = leg["volume_kwh"].where(leg["direction"] == "consumption", 0.0)
    produced = leg["volume_kwh"].where(leg["direction"] == "production", 0.0)
    per_qh = pd.DataFrame({"start": leg["start"], "consumed_kwh": consumed, "produced_kwh": produced,
                           "n": 1}).groupby("start", as_index=False).sum()
    per_qh["difference_kwh"] = per_qh["consumed_kwh"] - per_qh["produced_kwh"]
    tolerance = (per_qh["n"] * BALANCE_TOLERANCE_PER_VALUE_KWH).clip(lower=BALANCE_TOLERANCE_MIN_KWH)
    off = per_qh[per_qh["difference_kwh"].abs() > tolerance + 1e-9]
    unbalanced = off[["start", "consumed_kwh", "produced_kwh", "difference_kwh"]].round(
        {"consumed_kwh": 3, "produced_kwh": 3, "difference_kwh": 3}).reset_index(drop=True)
    seen = leg.groupby("metering_point")["start"].nunique()
    missing = {p: int(len(starts) - seen.get(p, 0)) for p in points if len(starts) - seen.get(p, 0) > 0}
    estimated = int(leg.loc[leg["condition"].notna(), "start"].nunique())
    return LegBalance(len(starts), unbalanced, missing, estimated)
