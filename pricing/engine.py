"""Per-interval prices, vectorised over all intervals of a range (no Python loop per interval).

Per interval, ``I`` is the community's total consumption (the sum of the houses' ``delta_ei_kwh``)
and ``E`` its total production (the sum of ``delta_eo_kwh``). Each mode returns the house
consumption price ``p_con`` and the PV delivery price ``p_pv`` actually paid, in ct/kWh.

``break_even`` (the seed's section 14.5, with the surplus cap)
    deficit (E < I):  p_con = p_grid_con + (E/I)(p_pv_policy - p_grid_con),  p_pv = p_pv_policy
    surplus (E >= I): p_con = p_grid_del + (E/I)(p_pv_policy - p_grid_del), p_pv = p_pv_policy,
                      unless that p_con exceeds p_grid_con: then p_con = p_grid_con and
                      p_pv = [I p_con + (E - I) p_grid_del] / E  (community profit 0)
    I = 0 (nobody buys): p_con = p_grid_con and p_pv = p_grid_del, the limit of the surplus cap as
    I -> 0: everything produced goes to the grid at p_grid_del, so the community never makes a loss.

``static`` (the seed's section 12.2): p_con = (p_pv + p_grid_con) / 2, p_pv as set.

``zev_proportional`` (Swiss ZEV practice): the locally covered share min(E, I) is traded at
    p_pv, consumption beyond it is priced at p_grid_con and production beyond it at p_grid_del,
    shared in proportion to each house's delta:
    p_con = [min(E,I) p_pv + (I - min(E,I)) p_grid_con] / I
    p_pv  = [min(E,I) p_pv + (E - min(E,I)) p_grid_del] / E
    (nobody buys: p_con = p_grid_con and p_pv = p_grid_del, as in break_even; nobody sells while
    houses buy: p_pv = p_pv_policy).

``leg`` (a Swiss LEG, StromVG Art. 17d): I and E are the LEG shares the grid operator allocated
    (SDAT-CH), the energy exchanged inside the community: producers are credited p_pv, consumers
    pay the version's p_con (default p_pv); p_con - p_pv per kWh is the LEG's margin. The grid
    shares are billed by the grid operator, not here.

"Nobody buys" (I = 0) means I <= MIN_KWH, likewise for E.

Break-even and zev_proportional leave the community with profit 0 in every interval with I > 0:
houses pay I p_con + grid pays (E-I)+ p_grid_del = producers get E p_pv + grid gets (I-E)+ p_grid_con.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from pricing.tariffs import PRICING_MODES, Tariff

MODE_CODES = {name: i for i, name in enumerate(PRICING_MODES)}
# Energies at or below this (1 mWh) count as nobody buying or selling in an interval: it keeps
# interpolation dust from turning E/I into huge ratios.
MIN_KWH = 1e-6


@dataclass
class TariffArrays:
    """Tariff in force per interval: policy prices (ct/kWh) and mode code, one entry per interval."""

    p_pv: np.ndarray
    p_grid_del: np.ndarray
    p_grid_con: np.ndarray
    mode: np.ndarray
    version: np.ndarray  # index into the sorted tariff list
    p_con: np.ndarray | None = None   # mode leg: the consumers' price (NaN: p_pv)


def tariffs_in_force(tariffs: list[Tariff], starts_s: np.ndarray) -> TariffArrays:
    """The version in force at each interval start (epoch seconds, UTC): the last with effective_from <= start."""
    if not tariffs:
        raise ValueError("no tariff version is defined")
    ordered = sorted(tariffs, key=lambda t: t.effective_from)
    eff = np.array([t.effective_from.timestamp() for t in ordered])
    idx = np.searchsorted(eff, np.asarray(starts_s, dtype=np.float64), side="right") - 1
    if len(idx) and idx.min() < 0:
        first = ordered[0].effective_from.isoformat()
        raise ValueError(f"no tariff version is in force before {first}")
    take = lambda attr: np.array([getattr(t, attr) for t in ordered], dtype=np.float64)[idx]
    modes = np.array([MODE_CODES[t.mode] for t in ordered], dtype=np.int8)[idx]
    p_con = np.array([np.nan if t.p_con is None else t.p_con for t in ordered], dtype=np.float64)[idx]
    return TariffArrays(take("p_pv"), take("p_grid_del"), take("p_grid_con"), modes, idx, p_con)


def interval_prices(I, E, t: TariffArrays) -> tuple[np.ndarray, np.ndarray]:
    """(p_con, p_pv) per interval in ct/kWh for consumption I and production E (kWh arrays)."""
    I = np.asarray(I, dtype=np.float64)
    E = np.asarray(E, dtype=np.float64)
    buyers = I > MIN_KWH
    sellers = E > MIN_KWH
    safe_I = np.where(buyers, I, 1.0)
    safe_E = np.where(sellers, E, 1.0)

    # break_even; the cap test is multiplied out so a tiny I cannot overflow E/I
    deficit = E < I
    capped = ~deficit & (E * (t.p_pv - t.p_grid_del) > I * (t.p_grid_con - t.p_grid_del))
    be_con = np.where(deficit, t.p_grid_con + E * (t.p_pv - t.p_grid_con) / safe_I,
                      np.where(capped, t.p_grid_con, t.p_grid_del + E * (t.p_pv - t.p_grid_del) / safe_I))
    pv_be = (I * t.p_grid_con + (E - I) * t.p_grid_del) / safe_E
    be_pv = np.where(capped, pv_be, t.p_pv)
    be_con = np.where(buyers, be_con, t.p_grid_con)
    be_pv = np.where(buyers, be_pv, t.p_grid_del)

    # static
    st_con = (t.p_pv + t.p_grid_con) / 2
    st_pv = t.p_pv

    # zev_proportional
    local = np.minimum(E, I)
    zev_con = np.where(buyers, (local * t.p_pv + (I - local) * t.p_grid_con) / safe_I, t.p_grid_con)
    zev_pv = np.where(sellers, (local * t.p_pv + (E - local) * t.p_grid_del) / safe_E,
                      np.where(buyers, t.p_pv, t.p_grid_del))

    conds = [t.mode == MODE_CODES["break_even"], t.mode == MODE_CODES["static"], t.mode == MODE_CODES["leg"]]
    leg_con = t.p_pv if t.p_con is None else np.where(np.isnan(t.p_con), t.p_pv, t.p_con)
    p_con = np.select(conds, [be_con, st_con, leg_con], zev_con)
    p_pv = np.select(conds, [be_pv, st_pv, t.p_pv], zev_pv)
    return p_con, p_pv


def grid_flows(I, E) -> tuple[np.ndarray, np.ndarray]:
    """(grid_import_kwh, grid_export_kwh): the community's net exchange with the grid per interval."""
    I = np.asarray(I, dtype=np.float64)
    E = np.asarray(E, dtype=np.float64)
    return np.maximum(I - E, 0.0), np.maximum(E - I, 0.0)
