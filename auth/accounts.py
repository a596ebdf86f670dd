"""Users, API tokens, login throttling and the audit log, kept in the ledger.

Passwords are hashed with Argon2id (argon2-cffi); API tokens (``leg_<id>_<secret>``, 190 bits of
randomness) are stored as SHA-256 of the secret, so neither can be read back. Repeated failed
logins lock the account and the address for a growing time (per account and per address).

Sessions carry the user's session generation (``session_epoch``); logging out and changing the
password raise it, which ends every session of that user on the server's side. A user name longer
than ``MAX_USERNAME_INPUT`` is refused before anything is written (failure counters, audit rows).
An audit row that cannot be written (a full disk) does not undo what it records: the event goes to
the server's log instead, at ERROR.
"""
from __future__ import annotations

import hashlib
import hmac
import logging
import re
import sqlite3
import secrets
import time
from datetime import datetime, timezone

from argon2 import PasswordHasher
from argon2.exceptions import InvalidHashError, VerificationError

from auth.principal import Principal

ROLES = ("manager", "member")
SCOPES = ("read", "write")
FREE_FAILURES = 5            # failed logins before throttling starts
LOCK_BASE_S = 30.0           # then 30 s, 60 s, 120 s, … per further failure
LOCK_MAX_S = 3600.0
FAILURE_WINDOW_S = 3600.0    # failures older than this are forgotten
MIN_PASSWORD = 10
MAX_USERNAME_INPUT = 100     # longer user names are refused before anything is stored
MAX_PASSWORD_INPUT = 1024    # bounds the hashing work one request can ask for
MAX_ADDRESS = 64             # an address as a throttling key (IPv6 text is at most 45)
_USERNAME = re.compile(r"^[A-Za-z0-9_.@-]{1,64}$")
_TOKEN = re.compile(r"^leg_([a-f0-9]{12})_([A-Za-z0-9_-]{20,})$")
log = logging.getLogger("leg.auth")


class AccountError(ValueError):
    """A request about accounts that cannot be done; the message says why."""


class Unavailable(Exception):
    """The ledger cannot record what a login needs recorded (a full disk, a broken file): the
    attempt is refused rather than left uncounted."""


class Throttled(Exception):
    def __init__(self, retry_after_s: float):
        super().__init__(f"too many failed logins; try again in {int(retry_after_s) + 1} s")
        self.retry_after_s = retry_after_s


def _now() -> str:
    return datetime.now(timezone.utc).isoformat()


def new_password() -> str:
    return secrets.token_urlsafe(12)


def login_input_error(username: str, password: str) -> AccountError | None:
    """Why a login's user name or password cannot be anyone's (too long), or None. Checked before
    the attempt touches the ledger, so such input is never stored anywhere."""
    if len(username or "") > MAX_USERNAME_INPUT:
        return AccountError(f"username: at most {MAX_USERNAME_INPUT} characters "
                            f"(got {len(username)})")
    if len(password or "") > MAX_PASSWORD_INPUT:
        return AccountError(f"password: at most {MAX_PASSWORD_INPUT} characters")
    return None


class Accounts:
    def __init__(self, ledger, clock=time.time, known_houses=None, communities=None):
        """``known_houses()`` (default: the ledger's houses) are the ids a member may be given; an
        instance of several communities names them ``<slug>:<house id>`` and passes its slugs as
        ``communities`` (a manager may be kept to some of them)."""
        self.ledger = ledger
        self.clock = clock
        self._known_houses = known_houses or (lambda: {h.house_id for h in self.ledger.houses(active_only=False)})
        self.communities = list(communities or [])
        self._hasher = PasswordHasher()
        self._dummy = self._hasher.hash(secrets.token_hex(8))   # equal work for unknown users

    # -- users -----------------------------------------------------------------------------
    def add_user(self, username: str, password: str, role: str, houses: list[str] | None = None,
                 by: str = "system", communities: list[str] | None = None) -> None:
        if not _USERNAME.match(username or ""):
            raise AccountError("username: 1–64 letters, digits or . _ @ -")
        if role not in ROLES:
            raise AccountError(f"role: one of {', '.join(ROLES)}")
        houses = [str(h) for h in (houses or [])]
        if role == "member" and not houses:
            raise AccountError("a member needs at least one house (--house)")
        known = self._known_houses()
        unknown = [h for h in houses if h not in known]
        if unknown:
            raise AccountError(f"house(s) {', '.join(unknown)} not in the registry")
        communities = list(dict.fromkeys(communities or []))
        if communities and role != "manager":
            raise AccountError("communities: a member belongs to the communities of their houses")
        if [c for c in communities if c not in self.communities]:
            raise AccountError(f"communities: {', '.join(c for c in communities if c not in self.communities)} "
                               f"not configured (the instance has {', '.join(self.communities) or 'one community'})")
        self._check_password(password)
        with self.ledger.transaction() as con:
            if con.execute("SELECT 1 FROM users WHERE username = ?", (username,)).fetchone():
                raise AccountError(f"user {username} exists already")
            con.execute("INSERT INTO users (username, password_hash, role, houses, created_at, password_changed_at, "
                        "communities) VALUES (?, ?, ?, ?, ?, ?, ?)",
                        (username, self._hasher.hash(password), role, ",".join(houses), _now(), _now(),
                         ",".join(communities)))
        self.audit(by, "user.add", f"{username} ({role}{': houses ' + ', '.join(houses) if houses else ''}"
                                   f"{': communities ' + ', '.join(communities) if communities else ''})")

    def set_password(self, username: str, password: str, by: str) -> int:
        """Set a password; every session of the user ends. Returns the new session generation
        (for the session that made the change, to go on)."""
        self._check_password(password)
        with self.ledger.transaction() as con:
            r = con.execute("UPDATE users SET password_hash = ?, password_changed_at = ?, "
                            "session_epoch = session_epoch + 1 WHERE username = ? RETURNING session_epoch",
                            (self._hasher.hash(password), _now(), username)).fetchone()
            if r is None:
                raise AccountError(f"no user {username}")
        self.audit(by, "user.password", username)
        return r["session_epoch"]

    def change_password(self, username: str, current: str, new: str, address: str | None = None) -> int:
        """A user's own change (the current password first); returns the new session generation."""
        if self.verify(username, current, address) is None:
            raise AccountError("the current password is wrong")
        return self.set_password(username, new, username)

    def end_sessions(self, username: str, by: str, address: str | None = None) -> None:
        """Log out: every session of the user ends, copies of its cookie included."""
        with self.ledger.transaction() as con:
            con.execute("UPDATE users SET session_epoch = session_epoch + 1 WHERE username = ?", (username,))
        self.audit(by, "logout", "", address)

    @staticmethod
    def _check_password(password: str) -> None:
        if len(password or "") < MIN_PASSWORD:
            raise AccountError(f"password: at least {MIN_PASSWORD} characters")
        if len(password) > MAX_PASSWORD_INPUT:
            raise AccountError(f"password: at most {MAX_PASSWORD_INPUT} characters")

    def users(self) -> list[dict]:
        with self.ledger.transaction() as con:
            rows = con.execute("SELECT username, role, houses, active, created_at, password_changed_at, communities "
                               "FROM users ORDER BY username").fetchall()
        return [{**dict(r), "houses": [h for h in r["houses"].split(",") if h],
                 "communities": [c for c in r["communities"].split(",") if c]} for r in rows]

    def has_users(self) -> bool:
        with self.ledger.transaction() as con:
            return con.execute("SELECT 1 FROM users LIMIT 1").fetchone() is not None

    def language(self, username: str) -> str | None:
        """The web app's language the user chose, or None."""
        with self.ledger.transaction() as con:
            r = con.execute("SELECT language FROM users WHERE username = ?", (username,)).fetchone()
        return r[0] if r else None

    def set_language(self, username: str, language: str | None) -> None:
        with self.ledger.transaction() as con:
            con.execute("UPDATE users SET language = ? WHERE username = ?", (language, username))

    def principal(self, username: str) -> Principal | None:
        with self.ledger.transaction() as con:
            r = con.execute("SELECT role, houses, session_epoch, communities FROM users WHERE username = ? AND active = 1",
                            (username,)).fetchone()
        return _principal(username, r) if r is not None else None

    def session_principal(self, username, epoch) -> Principal | None:
        """Who a session cookie names, if its generation is still the user's (not logged out, no
        password change since) and the account is active; None otherwise."""
        if not isinstance(username, str) or not isinstance(epoch, int) or isinstance(epoch, bool):
            return None
        p = self.principal(username)
        return p if p is not None and p.session_epoch == epoch else None

    # -- login with throttling -------------------------------------------------------------------
    def verify(self, username: str, password: str, address: str | None = None) -> Principal | None:
        """The user's principal when the password is right; None otherwise. Raises Throttled
        while the account or the address is locked (before looking at the password),
        AccountError for input no account can have (nothing is stored then), and Unavailable when
        a failed attempt cannot be counted (it would escape the throttling)."""
        error = login_input_error(username, password)
        if error is not None:
            log.warning("login refused before any lookup: %s (from %s)", error, address)
            raise error
        address = address[:MAX_ADDRESS] if address else None
        keys = [f"user:{username}"] + ([f"addr:{address}"] if address else [])
        now = self.clock()
        with self.ledger.transaction() as con:
            for k in keys:
                r = con.execute("SELECT locked_until FROM login_failures WHERE key = ?", (k,)).fetchone()
                if r and r["locked_until"] > now:
                    raise Throttled(r["locked_until"] - now)
            row = con.execute("SELECT password_hash, role, houses, session_epoch, communities FROM users "
                              "WHERE username = ? AND active = 1", (username,)).fetchone()
        ok = False
        try:
            ok = self._hasher.verify(row["password_hash"] if row else self._dummy, password or "") and row is not None
        except (VerificationError, InvalidHashError):
            ok = False
        try:
            with self.ledger.transaction() as con:
                for k in keys:
                    if ok:
                        con.execute("DELETE FROM login_failures WHERE key = ?", (k,))
                        continue
                    r = con.execute("SELECT failures, last_at FROM login_failures WHERE key = ?", (k,)).fetchone()
                    n = (r["failures"] if r and now - r["last_at"] < FAILURE_WINDOW_S else 0) + 1
                    lock = now + min(LOCK_MAX_S, LOCK_BASE_S * 2 ** (n - FREE_FAILURES - 1)) if n > FREE_FAILURES else 0
                    con.execute("INSERT INTO login_failures (key, failures, last_at, locked_until) VALUES (?, ?, ?, ?) "
                                "ON CONFLICT (key) DO UPDATE SET failures = excluded.failures, "
                                "last_at = excluded.last_at, locked_until = excluded.locked_until", (k, n, now, lock))
        except sqlite3.Error as exc:
            if not ok:                          # an uncounted failure would escape the throttling
                log.error("login of %r from %s refused: its failure cannot be counted in the ledger (%s)",
                          username, address, exc)
                raise Unavailable(f"the ledger cannot be written ({exc})") from None
            log.error("login of %r from %s: its earlier failures cannot be cleared in the ledger (%s)",
                      username, address, exc)
        self.audit(username if ok else "anonymous", "login" if ok else "login.failed",
                   "" if ok else f"user {username!r}", address)
        return _principal(username, row) if ok else None

    # -- API tokens --------------------------------------------------------------------------
    def create_token(self, scope: str, by: str, label: str = "") -> str:
        """A new token; the only time its text exists outside the caller is this return value."""
        if scope not in SCOPES:
            raise AccountError(f"scope: one of {', '.join(SCOPES)}")
        token_id, secret = secrets.token_hex(6), secrets.token_urlsafe(24)
        with self.ledger.transaction() as con:
            con.execute("INSERT INTO api_tokens (token_id, token_hash, scope, label, created_by, created_at) "
                        "VALUES (?, ?, ?, ?, ?, ?)",
                        (token_id, hashlib.sha256(secret.encode()).hexdigest(), scope, label, by, _now()))
        self.audit(by, "token.create", f"{token_id} ({scope}) {label}".strip())
        return f"leg_{token_id}_{secret}"

    def revoke_token(self, token_id: str, by: str) -> None:
        token_id = token_id.removeprefix("leg_").split("_")[0]
        with self.ledger.transaction() as con:
            cur = con.execute("UPDATE api_tokens SET revoked_at = ?, revoked_by = ? WHERE token_id = ? "
                              "AND revoked_at IS NULL", (_now(), by, token_id))
            if cur.rowcount == 0:
                raise AccountError(f"no active token {token_id}")
        self.audit(by, "token.revoke", token_id)

    def tokens(self) -> list[dict]:
        with self.ledger.transaction() as con:
            return [dict(r) for r in con.execute(
                "SELECT token_id, scope, label, created_by, created_at, revoked_at, revoked_by, last_used_at "
                "FROM api_tokens ORDER BY created_at").fetchall()]

    def token_principal(self, token: str) -> Principal | None:
        m = _TOKEN.match(token or "")
        if not m:
            return None
        with self.ledger.transaction() as con:
            r = con.execute("SELECT token_hash, scope, created_by FROM api_tokens WHERE token_id = ? "
                            "AND revoked_at IS NULL", (m.group(1),)).fetchone()
            if r is None or not hmac.compare_digest(r["token_hash"], hashlib.sha256(m.group(2).encode()).hexdigest()):
                return None
        try:                                    # bookkeeping only: a full disk must not stop the API
            with self.ledger.transaction() as con:
                con.execute("UPDATE api_tokens SET last_used_at = ? WHERE token_id = ?", (_now(), m.group(1)))
        except sqlite3.Error as exc:
            log.warning("token %s: last use not recorded (%s)", m.group(1), exc)
        return Principal(f"token:{m.group(1)}", "manager", via="token", scope=r["scope"])

    # -- audit -----------------------------------------------------------------------------
    def audit(self, actor: str, action: str, detail: str = "", address: str | None = None) -> bool:
        """Append an audit row; False when the ledger refused it (a full disk, a broken file): the
        event is then logged at ERROR with every field, and what it records stands."""
        at = _now()
        try:
            with self.ledger.transaction() as con:
                con.execute("INSERT INTO audit_log (at, actor, action, detail, address) VALUES (?, ?, ?, ?, ?)",
                            (at, actor, action, detail, address))
        except sqlite3.Error as exc:
            log.error("audit row not written (%s): at=%s actor=%r action=%s detail=%r address=%s",
                      exc, at, actor, action, detail, address)
            return False
        return True

    def audit_log(self, limit: int = 500) -> list[dict]:
        """Who did what, newest first: logins and account changes from the audit log, and the
        changes the ledger records where they happen (tariff versions, period closes, invoice
        status changes, mails, adopted meters), so each fact is written once."""
        sql = """
            SELECT at, actor, action, detail, address FROM audit_log
            UNION ALL SELECT created_at, created_by, 'tariff.add',
                mode || ': p_pv ' || p_pv || ', p_grid_del ' || p_grid_del || ', p_grid_con ' || p_grid_con
                || ' from ' || effective_from, NULL FROM tariff_versions
            UNION ALL SELECT created_at, created_by, 'tariff.add',
                mode || ': p_pv ' || p_pv || ', p_grid_del ' || p_grid_del || ', p_grid_con ' || p_grid_con
                || ' from ' || effective_from || ' (superseded by a later version from the same time)', NULL
                FROM tariff_versions_superseded
            UNION ALL SELECT closed_at, closed_by, 'period.close', period_id, NULL
                FROM settlement_periods WHERE status = 'closed'
            UNION ALL SELECT at, by, 'invoice.' || status, invoice_id || coalesce(': ' || note, ''), NULL
                FROM invoice_events WHERE status != 'issued'
            UNION ALL SELECT issued_at, issued_by, 'invoice.credit_note',
                credit_note_id || ' cancels ' || invoice_id || ': ' || reason, NULL FROM credit_notes
            UNION ALL SELECT at, by, 'invoice.mail.' || status, document_id || ' to ' || recipient, NULL
                FROM invoice_mails
            UNION ALL SELECT created_at, created_by, 'meter.adopt', meter_id || ' as house ' || house_id, NULL
                FROM meters WHERE origin = 'web'
            ORDER BY 1 DESC LIMIT ?"""
        with self.ledger.transaction() as con:
            return [dict(r) for r in con.execute(sql, (limit,)).fetchall()]


def _principal(username: str, row) -> Principal:
    return Principal(username, row["role"], frozenset(h for h in row["houses"].split(",") if h),
                     session_epoch=row["session_epoch"],
                     communities=frozenset(c for c in row["communities"].split(",") if c))


def bootstrap_manager(accounts: Accounts, env: dict) -> tuple[str, str] | None:
    """On a first start (no users): a manager named LEG_ADMIN_USER (default admin) with
    LEG_ADMIN_PASSWORD, or a random password. Returns (name, password) when one was made with a
    random password (to print once), else None."""
    if accounts.has_users():
        return None
    name = env.get("LEG_ADMIN_USER") or "admin"
    password = env.get("LEG_ADMIN_PASSWORD")
    accounts.add_user(name, password or (generated := new_password()), "manager", by="first start")
    return None if password else (name, generated)
