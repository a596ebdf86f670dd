"""Tariff versions and their validation: the one place for the tariff rules.

All prices are in ct/kWh (Rappen per kWh) and keep the seed's names: ``p_pv`` (a house delivers PV
energy to the community), ``p_grid_del`` (the community delivers to the grid), ``p_grid_con`` (the
community consumes from the grid). ``p_con`` (a house buys from the community) is derived per
interval by the pricing mode.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

PRICING_MODES = ("break_even", "static", "zev_proportional")
TARIFF_FIELDS = ("p_pv", "p_grid_del", "p_grid_con")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


class TariffError(ValueError):
    """A rejected tariff: ``field`` names the offending key."""

    def __init__(self, field: str, message: str):
        self.field = field
        self.message = message
        super().__init__(f"{field}: {message}")


@dataclass(frozen=True)
class Tariff:
    """One tariff version, in force from ``effective_from`` (UTC) until the next version."""

    p_pv: float
    p_grid_del: float
    p_grid_con: float
    mode: str = "break_even"
    effective_from: datetime = EPOCH

    def __post_init__(self):
        errors = tariff_errors(
            {"p_pv": self.p_pv, "p_grid_del": self.p_grid_del, "p_grid_con": self.p_grid_con, "mode": self.mode}
        )
        if errors:
            raise errors[0]
        if self.effective_from.tzinfo is None:
            raise TariffError("effective_from", "must carry a time zone")
        object.__setattr__(self, "effective_from", self.effective_from.astimezone(timezone.utc))

    @property
    def p_con_static(self) -> float:
        """The seed's house tariff of section 12.2: the mean of p_pv and p_grid_con."""
        return (self.p_pv + self.p_grid_con) / 2


def tariff_errors(values: dict) -> list[TariffError]:
    """Every problem with a set of tariff values, each naming its field (empty list: valid)."""
    errors: list[TariffError] = []
    clean: dict[str, float] = {}
    for name in TARIFF_FIELDS:
        if name not in values or values[name] is None:
            errors.append(TariffError(name, "is required"))
            continue
        v = values[name]
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            errors.append(TariffError(name, f"must be a number (ct/kWh), got {v!r}"))
            continue
        if not math.isfinite(v):
            errors.append(TariffError(name, "must be a finite number"))
            continue
        if v < 0:
            errors.append(TariffError(name, f"must be 0 or more, got {v}"))
            continue
        clean[name] = float(v)
    mode = values.get("mode", "break_even")
    if mode not in PRICING_MODES:
        errors.append(TariffError("mode", f"must be one of {', '.join(PRICING_MODES)}, got {mode!r}"))
    if not errors:
        if clean["p_grid_del"] > clean["p_pv"]:
            errors.append(TariffError(
                "p_grid_del", f"must not exceed p_pv ({clean['p_grid_del']} > {clean['p_pv']})"))
        if clean["p_pv"] > clean["p_grid_con"]:
            errors.append(TariffError(
                "p_pv", f"must not exceed p_grid_con ({clean['p_pv']} > {clean['p_grid_con']})"))
    return errors
