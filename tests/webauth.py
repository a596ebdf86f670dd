"""Logging test clients in: a manager and one member per house, with known passwords."""
from auth.accounts import Accounts

MANAGER = ("boss", "manager-secret-1")


def member(house_id: str) -> tuple[str, str]:
    return f"member{house_id}", f"member-secret-{house_id}"


def add_users(community) -> Accounts:
    a = Accounts(community.ledger)
    a.add_user(*MANAGER, "manager")
    for h in community.houses():
        a.add_user(*member(h.house_id), "member", [h.house_id])
    return a


def login(client, base: str, username: str, password: str):
    """Log a Flask test client in; later POSTs carry the CSRF header as Dash's renderer does."""
    r = client.post(base + "login", data={"username": username, "password": password})
    assert r.status_code == 303, r.data[:300]
    token = client.get_cookie("_csrf_token", path=base.rstrip("/") or "/") or client.get_cookie("_csrf_token", path=base)
    client.environ_base["HTTP_X_CSRFTOKEN"] = token.value
    return client
