"""Tariff versions and their validation: the one place for the tariff rules.

All prices are in ct/kWh (Rappen per kWh) and keep the seed's names: ``p_pv`` (a house delivers PV
energy to the community), ``p_grid_del`` (the community delivers to the grid), ``p_grid_con`` (the
community consumes from the grid). ``p_con`` (a house buys from the community) is derived per
interval by the pricing mode.

Prices are bounded (0 ≤ price ≤ ``MAX_PRICE_CT``): Swiss grid tariffs are tens of ct/kWh, so
anything above 10 CHF/kWh is a typing error (or an attempt to overflow the invoice arithmetic).
A community has at most one version per ``effective_from``: a version is never edited, a later
one replaces it from its own time on.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from datetime import datetime, timezone

PRICING_MODES = ("break_even", "static", "zev_proportional", "leg")   # leg: see pricing/engine.py
TARIFF_FIELDS = ("p_pv", "p_grid_del", "p_grid_con")
EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)
MAX_PRICE_CT = 1000.0        # ct/kWh (10 CHF/kWh), inclusive


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
    # mode leg: what a consumer pays for its LEG share (None: p_pv); p_con - p_pv is the LEG's margin
    p_con: float | None = None

    def __post_init__(self):
        errors = tariff_errors(
            {"p_pv": self.p_pv, "p_grid_del": self.p_grid_del, "p_grid_con": self.p_grid_con, "mode": self.mode,
             "p_con": self.p_con}
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
            errors.append(TariffError(name, f"must be a number (ct/kWh), got {_short(v)}"))
            continue
        if isinstance(v, float) and not math.isfinite(v):
            errors.append(TariffError(name, "must be a finite number"))
            continue
        if v < 0:
            errors.append(TariffError(name, f"must be 0 or more, got {_short(v)}"))
            continue
        if v > MAX_PRICE_CT:                   # compared exactly: a 400-digit integer never becomes a float
            errors.append(TariffError(name, f"must be at most {MAX_PRICE_CT:g} ct/kWh, got {_short(v)}"))
            continue
        clean[name] = float(v)
    mode = values.get("mode", "break_even")
    if mode not in PRICING_MODES:
        errors.append(TariffError("mode", f"must be one of {', '.join(PRICING_MODES)}, got {mode!r}"))
    p_con = values.get("p_con")
    if p_con is not None:
        if mode != "leg":
            errors.append(TariffError("p_con", "is set only with mode leg (the other modes derive it per interval)"))
        elif isinstance(p_con, bool) or not isinstance(p_con, (int, float)) or (
                isinstance(p_con, float) and not math.isfinite(p_con)):
            errors.append(TariffError("p_con", f"must be a finite number (ct/kWh), got {_short(p_con)}"))
        elif not errors and not clean["p_pv"] <= p_con <= clean["p_grid_con"]:
            errors.append(TariffError("p_con", f"must lie between p_pv and p_grid_con ({clean['p_pv']:g} to "
                                               f"{clean['p_grid_con']:g}: a member never pays more than the grid), "
                                               f"got {_short(p_con)}"))
    if not errors:
        if clean["p_grid_del"] > clean["p_pv"]:
            errors.append(TariffError(
                "p_grid_del", f"must not exceed p_pv ({clean['p_grid_del']} > {clean['p_pv']})"))
        if clean["p_pv"] > clean["p_grid_con"]:
            errors.append(TariffError(
                "p_pv", f"must not exceed p_grid_con ({clean['p_pv']} > {clean['p_grid_con']})"))
    return errors


class TariffConflict(TariffError):
    """A new version would share its ``effective_from`` with a stored one."""


def version_conflict(versions: list[Tariff], new: Tariff, tz=timezone.utc) -> TariffConflict | None:
    """The conflict when ``new`` takes effect at the same instant as one of ``versions`` (the
    community's stored versions), else None. Stored versions are never changed: a correction is a
    new version with its own ``effective_from``."""
    if any(t.effective_from == new.effective_from for t in versions):
        return TariffConflict("effective_from", (
            f"a tariff version in force from {new.effective_from.astimezone(tz).isoformat()} exists "
            "already; versions are never changed, give the new one another effective_from"))
    return None


def _short(v) -> str:
    """A value for an error message, at most 40 characters of it."""
    text = repr(v)
    return text if len(text) <= 40 else text[:20] + f"… ({len(text)} characters)"
