"""Who is asking, and the one place that decides what they may see.

Every read of member data in pages, callbacks and the API goes through ``can_see_house`` /
``visible_houses`` / ``visible_invoices`` with the request's ``Principal``.
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(frozen=True)
class Principal:
    name: str
    role: str                                   # manager | member
    houses: frozenset[str] = field(default_factory=frozenset)   # a member's own houses
    via: str = "session"                        # session | token
    scope: str = "write"                        # a token's scope: read | write
    session_epoch: int = field(default=0, compare=False)   # the user's session generation when read

    @property
    def is_manager(self) -> bool:
        return self.role == "manager"

    @property
    def may_write(self) -> bool:
        return self.via == "session" or self.scope == "write"


def can_see_house(p: Principal | None, house_id: str | None) -> bool:
    if p is None or house_id is None:
        return False
    return p.is_manager or str(house_id) in p.houses


def visible_houses(p: Principal | None, houses: list) -> list:
    """The houses (objects with ``house_id``) the principal may see."""
    return [h for h in houses if can_see_house(p, h.house_id)]


def visible_invoices(p: Principal | None, invoices: list[dict]) -> list[dict]:
    return [inv for inv in invoices if can_see_house(p, inv["house_id"])]
