"""Who is asking, and the one place that decides what they may see.

Every read of member data in pages, callbacks and the API goes through ``can_see_house`` /
``visible_houses`` / ``visible_invoices`` with the request's ``Principal``.
"""
from __future__ import annotations

from dataclasses import dataclass, field, replace


@dataclass(frozen=True)
class Principal:
    name: str
    role: str                                   # manager | member
    houses: frozenset[str] = field(default_factory=frozenset)   # a member's own houses
    via: str = "session"                        # session | token
    scope: str = "write"                        # a token's scope: read | write
    session_epoch: int = field(default=0, compare=False)   # the user's session generation when read
    # several communities in one instance: the communities a manager is kept to (empty: all); a
    # member's houses are named <slug>:<house id> until ``within`` narrows them to one community
    communities: frozenset[str] = field(default_factory=frozenset)

    def within(self, slug: str) -> "Principal | None":
        """This principal inside community ``slug`` (a member's houses there, unqualified), or
        None when it has nothing there."""
        if self.is_manager:
            return self if not self.communities or slug in self.communities else None
        own = frozenset(h.split(":", 1)[1] for h in self.houses if h.startswith(slug + ":"))
        return replace(self, houses=own, communities=frozenset({slug})) if own else None

    def community_slugs(self, configured: list[str]) -> list[str]:
        """The configured communities this principal may enter, in configured order."""
        return [s for s in configured if self.within(s) is not None]

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
