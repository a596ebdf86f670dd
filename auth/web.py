"""Access control for the web app: login, logout and password change, who is asking on every
request, which route and which Dash callback they may use, CSRF protection and security headers.

Every Flask route declares its access level with ``@access(level)``; Dash's own routes are
classified here by name. Anything undeclared is refused to everyone but managers (and fails the
access matrix test). Levels:

- ``public``: anyone (health, login page, static assets);
- ``user``: any logged-in person (members see only their own houses: the view filters with
  ``auth.principal``);
- ``read``: managers, and API tokens of either scope;
- ``write``: managers in the browser, and ``write`` tokens;
- ``manager``: managers in the browser only;
- ``control``: the command line on this host (loopback, with the secret of ``data_dir/control.json``).

Dash callbacks run through one route; a callback whose outputs are all listed in a page module's
``MEMBER_OUTPUTS`` is open to members (the callback itself filters by house), every other one
needs a manager; a callback request that is not shaped as Dash's renderer sends it is refused
with 400 before it reaches Dash.

A session cookie names the user and their session generation (``auth.accounts``); every request
compares it with the ledger, so a logout or a password change ends copies of the cookie too.
After a login the visitor goes to ``next`` only when it is, once decoded, a plain path under the
app's base path (``safe_next``).
"""
from __future__ import annotations

import logging
import re
import secrets
import sqlite3
import sys
import unicodedata
from datetime import timedelta
from pathlib import Path
from urllib.parse import quote, unquote, urlparse, urlsplit

import dash
import flask
from flask.sessions import SecureCookieSessionInterface

from auth.accounts import MIN_PASSWORD, AccountError, Throttled, Unavailable
from auth.principal import Principal
from i18n import N_, language, tr

LEVELS = ("public", "user", "read", "write", "manager", "control")
CSRF_COOKIE = "_csrf_token"          # read by Dash's renderer, sent back as X-CSRFToken
CSRF_HEADER = "X-CSRFToken"
PAGES_OUTPUTS = {"_pages_content", "_pages_store", "_pages_dummy"}   # Dash's page router
MAX_NEXT = 2000                      # characters of a ``next`` target
UNAVAILABLE = N_("The server cannot write its ledger at the moment (the disk may be full), so logins and "
                 "logouts cannot be recorded. Try again later; the server's log says more.")
# what auth.accounts refuses (its messages are English, for the command line too): the message
# shown on the login and password pages, in the visitor's language
ACCOUNT_ERRORS = [
    (re.compile(r"username: at most (?P<max>\d+) characters \(got (?P<n>\d+)\)"),
     N_("Username: at most {max} characters (got {n}).")),
    (re.compile(r"password: at most (?P<max>\d+) characters"), N_("Password: at most {max} characters.")),
    (re.compile(r"password: at least (?P<min>\d+) characters"), N_("Password: at least {min} characters.")),
    (re.compile(r"the current password is wrong"), N_("The current password is wrong.")),
    (re.compile(r"no user (?P<name>.+)"), N_("No user {name}.")),
]
log = logging.getLogger("leg.auth")


def access(level: str):
    """Declare who may use a Flask view."""
    if level not in LEVELS:
        raise ValueError(level)

    def mark(view):
        view._leg_access = level
        return view
    return mark


def current_principal() -> Principal | None:
    return flask.g.get("principal")


def actor() -> str:
    p = current_principal()
    return p.name if p else "anonymous"


def route_level(server: flask.Flask, endpoint: str | None, base: str) -> str:
    """The access level of a route: its declaration, or Dash's routes by what they serve."""
    view = server.view_functions.get(endpoint or "")
    if view is not None and hasattr(view, "_leg_access"):
        return view._leg_access
    name = endpoint or ""
    if name.endswith(".static") or name.startswith(base + "_dash-component-suites") or name == base + "_favicon.ico":
        return "public"
    if name in {base, base + "<path:path>", base + "_dash-layout", base + "_dash-dependencies",
                base + "_dash-update-component", base + "_reload-hash"}:
        return "user"
    return "manager"


def safe_next(target, base: str) -> str | None:
    """Where to go after logging in: ``target`` as a path under ``base`` (quoted anew), or None
    when it is anything else. Judged after decoding it (repeatedly: ``%2509`` is a TAB too) and
    stripping it: whitespace and control characters anywhere (browsers drop TAB, CR and LF, so
    ``/%09/evil.example`` becomes ``//evil.example``), backslashes (read as ``/``), a leading
    ``//``, a scheme or a host, and ``.``/``..`` segments are refused."""
    if not isinstance(target, str) or not target or len(target) > MAX_NEXT:
        return None
    text = target
    for _ in range(5):
        decoded = unquote(text)
        if decoded == text:
            break
        text = decoded
    else:
        return None                                      # still encoded after five rounds
    text = text.strip()
    if any(c.isspace() or unicodedata.category(c)[0] in "CZ" for c in text) or "\\" in text:
        return None
    if not text.startswith(base) or text.startswith("//"):
        return None
    parts = urlsplit(text)
    if parts.scheme or parts.netloc:
        return None
    if any(seg in (".", "..") for seg in parts.path.split("/")):
        return None
    return quote(text, safe="/?&=;:@+,!$'()*-._~")


def callback_body_error(body, callbacks: dict) -> tuple[str, str] | None:
    """(what is wrong, the field) when a Dash callback request is not shaped as the renderer
    sends it (``output`` of a known callback, its ``inputs`` and ``state`` as lists of
    ``{"id", "property", "value"}``, ``changedPropIds`` as a list of text); None when it is."""
    if not isinstance(body, dict):
        return "a callback request is a JSON object with output, inputs and state", "body"
    output = body.get("output")
    if not isinstance(output, str) or output not in callbacks:
        return "output: no callback has these outputs", "output"
    cb = callbacks[output]
    for key in ("inputs", "state"):
        items = body.get(key, [])
        if not isinstance(items, list) or not all(_callback_item_ok(i) for i in items):
            return f"{key}: a list of {{id, property, value}} objects", key
        if len(items) != len(cb.get(key, [])):
            return f"{key}: this callback takes {len(cb.get(key, []))}, got {len(items)}", key
    outputs = body.get("outputs", [])
    if not isinstance(outputs, (dict, list)):
        return "outputs: an object or a list of objects", "outputs"
    changed = body.get("changedPropIds", [])
    if not isinstance(changed, list) or not all(isinstance(c, str) for c in changed):
        return "changedPropIds: a list of text", "changedPropIds"
    return None


def _callback_item_ok(item) -> bool:
    if isinstance(item, list):                          # a pattern-matching input: one entry per match
        return all(_callback_item_ok(i) for i in item if not isinstance(i, list)) and \
            not any(isinstance(i, list) for i in item)
    return isinstance(item, dict) and isinstance(item.get("id"), (str, dict)) and isinstance(item.get("property"), str)


def member_outputs() -> set[str]:
    """Output ids of callbacks members may run: each page module's MEMBER_OUTPUTS, and the page router."""
    out = set(PAGES_OUTPUTS)
    for page in dash.page_registry.values():
        out |= set(getattr(sys.modules.get(page["module"]), "MEMBER_OUTPUTS", ()))
    return out


def output_ids(output: str) -> list[str]:
    """Component ids of a callback's ``output`` field (``a.children`` or ``..a.x...b.y..``)."""
    parts = [p for p in output.strip(".").split("...") if p] if output.startswith("..") else [output]
    ids = []
    for p in parts:
        cid = p.rsplit(".", 1)[0] if not p.startswith("{") else p[:p.rindex("}") + 1]
        ids.append(cid)
    return ids


def callback_allowed(p: Principal, output: str) -> bool:
    if p.is_manager:
        return p.via == "session"
    allowed = member_outputs()
    return all(i in allowed for i in output_ids(output))


def _enter_community(instance: dict, p: Principal) -> tuple[int, str, str] | None:
    """Choose the request's community (several in one instance) and narrow the principal to it:
    the path ``api/c/<slug>/``, ``?community=``, or the switcher's link name it explicitly (an
    unknown or forbidden one is refused); else the session's choice, else the first one the
    principal may enter. None when the request may go on, else (status, message, field)."""
    args = flask.request.view_args or {}
    explicit = (flask.request.environ.get("leg.community") or flask.request.args.get("community")
                or (args.get("slug") if flask.request.endpoint == "switch_community" else None))
    allowed = p.community_slugs(list(instance))
    if explicit is not None:
        if explicit not in instance:
            return 404, f"no community {explicit[:50]!r}", "community"
        slug = explicit
    else:
        chosen = flask.session.get("community") if p.via == "session" else None
        slug = chosen if chosen in allowed else (allowed[0] if allowed else None)
    narrowed = p.within(slug) if slug else None
    if narrowed is None:
        return 403, "your account has no access to this community", "community"
    flask.g.leg_principal_all = p
    flask.g.principal = narrowed
    flask.g.leg_services = instance[slug]
    return None


def page_denied(level: str = "manager"):
    """For a page's layout: None when the visitor may see it, else what to show instead."""
    from dash import html
    p = current_principal()
    if level == "manager" and (p is None or not p.is_manager):
        return html.Div([html.H3(tr("Not available")),
                         html.P(tr("This page is for the community's managers.")),
                         html.A(tr("Your invoices"), href=dash.get_relative_path("/my"))])
    return None


class _Session(SecureCookieSessionInterface):
    """Session cookies: HttpOnly, SameSite=Lax, Secure whenever the request came over TLS
    (directly or through the trusted proxy)."""

    def get_cookie_secure(self, app) -> bool:
        return flask.request.is_secure


def secret_key(data_dir: Path) -> bytes:
    """The session signing key, made once per data folder (mode 0600)."""
    path = Path(data_dir) / "secret_key"
    if not path.exists():
        path.write_bytes(secrets.token_bytes(32))
        path.chmod(0o600)
    return path.read_bytes()


def account_message(exc: Exception) -> str:
    """What a refusal of ``auth.accounts`` says to a person, as a sentence in their language."""
    text = str(exc)
    for pattern, msgid in ACCOUNT_ERRORS:
        m = pattern.fullmatch(text)
        if m:
            return tr(msgid, **m.groupdict())
    return text[:1].upper() + text[1:] + ("" if text.endswith(".") else ".")


def throttled_message(exc: Throttled) -> str:
    return tr("Too many failed logins; try again in {seconds} s.", seconds=int(exc.retry_after_s) + 1)


LOGIN_PAGE = """<!doctype html><html lang="{{ lang }}"><head><meta charset="utf-8"><title>{{ page_title }}</title>
<meta name="viewport" content="width=device-width, initial-scale=1">
<link rel="stylesheet" href="{{ base }}assets/00-bootstrap-5.3.8.min.css"></head>
<body class="bg-light"><main class="container" style="max-width: 26rem; margin-top: 10vh">
<h1 class="h4 mb-3">{{ title }}</h1>
{% if message %}<div class="alert alert-{{ level }}" role="alert">{{ message }}</div>{% endif %}
<form method="post" action="{{ base }}{{ action }}">
<input type="hidden" name="csrf_token" value="{{ csrf }}">
{% if next %}<input type="hidden" name="next" value="{{ next }}">{% endif %}
{% for name, label, kind, auto in fields %}
<div class="mb-3"><label class="form-label" for="{{ name }}">{{ label }}</label>
<input class="form-control" id="{{ name }}" name="{{ name }}" type="{{ kind }}" autocomplete="{{ auto }}" required></div>
{% endfor %}
<button class="btn btn-primary" type="submit">{{ button }}</button>
{% if back %}<a class="btn btn-link" href="{{ base }}">{{ back_label }}</a>{% endif %}
</form></main></body></html>"""

LOGIN_FIELDS = [("username", N_("User name"), "text", "username"),
                ("password", N_("Password"), "password", "current-password")]
PASSWORD_FIELDS = [("current", N_("Current password"), "password", "current-password"),
                   ("new", N_("New password (at least {min} characters)"), "password", "new-password"),
                   ("confirm", N_("New password again"), "password", "new-password")]


def install(app: dash.Dash, accounts, base: str, title: str, frame_ancestors: list[str], data_dir: Path) -> None:
    """Wire access control into the Dash app's Flask server."""
    server = app.server
    server.secret_key = secret_key(data_dir)
    server.session_interface = _Session()
    server.config.update(SESSION_COOKIE_HTTPONLY=True, SESSION_COOKIE_SAMESITE="Lax", SESSION_COOKIE_PATH=base,
                         SESSION_COOKIE_NAME="leg_session", PERMANENT_SESSION_LIFETIME=timedelta(hours=12))
    server.config["LEG_ACCOUNTS"] = accounts

    def csrf_token() -> str:
        if "csrf" not in flask.session:
            flask.session["csrf"] = secrets.token_urlsafe(24)
        return flask.session["csrf"]

    def form(action, fields, button, message="", level="danger", status=200, back=False):
        """The login or password page; ``fields``' labels are msgids, the other texts translated."""
        page_title = tr("{title}: log in", title=title) if action == "login" else \
            tr("{title}: change password", title=title)
        labels = [(name, tr(label, min=MIN_PASSWORD), kind, auto) for name, label, kind, auto in fields]
        html = flask.render_template_string(LOGIN_PAGE, lang=language(), page_title=page_title, title=title,
                                            base=base, action=action, fields=labels, button=button,
                                            message=message, level=level, csrf=csrf_token(), back=back,
                                            back_label=tr("Back"),
                                            next=safe_next(flask.request.values.get("next"), base))
        return flask.Response(html, status=status, mimetype="text/html")

    def login_form(message="", **kw):
        return form("login", LOGIN_FIELDS, tr("Log in"), message, **kw)

    def password_form(message="", **kw):
        return form("account", PASSWORD_FIELDS, tr("Change password"), message, back=True, **kw)

    def start_session(p) -> None:
        flask.session.clear()
        flask.session.permanent = True
        flask.session["user"] = p.name
        flask.session["epoch"] = p.session_epoch
        flask.session["csrf"] = secrets.token_urlsafe(24)

    def same_origin() -> bool:
        origin = flask.request.headers.get("Origin")
        return origin is None or urlparse(origin).netloc == flask.request.host

    @access("public")
    def login():
        if flask.request.method == "GET":
            return login_form()
        if not same_origin():
            return login_form(tr("The login form was sent from another site."), status=403)
        username = flask.request.form.get("username", "")
        try:
            p = accounts.verify(username, flask.request.form.get("password", ""), flask.request.remote_addr)
        except Throttled as exc:
            r = login_form(throttled_message(exc), status=429)
            r.headers["Retry-After"] = str(int(exc.retry_after_s) + 1)
            return r
        except AccountError as exc:             # input no account can have; nothing was stored
            return login_form(account_message(exc), status=400)
        except Unavailable:
            return login_form(tr(UNAVAILABLE), status=503)
        if p is None:
            return login_form(tr("Wrong user name or password."), status=401)
        start_session(p)
        target = safe_next(flask.request.values.get("next"), base)
        if target is None:
            if flask.request.values.get("next"):
                log.warning("login of %s: next %r is not a path under %s; going to the start page",
                            p.name, flask.request.values["next"][:200], base)
            target = base if p.is_manager else base + "my"
        r = flask.redirect(target, 303)
        r.set_cookie(CSRF_COOKIE, flask.session["csrf"], path=base, samesite="Lax", secure=flask.request.is_secure)
        return r

    @access("user")
    def logout():
        name = current_principal().name
        flask.session.clear()                   # this browser's cookie goes in any case
        try:
            accounts.end_sessions(name, name, flask.request.remote_addr)
        except sqlite3.Error as exc:            # other copies of the cookie would stay valid: say so
            log.error("logout of %s: its sessions cannot be ended in the ledger (%s)", name, exc)
            r = login_form(tr("You are logged out in this browser, but the server cannot write its ledger at the "
                              "moment (the disk may be full), so logins and logouts cannot be recorded. Try again "
                              "later; the server's log says more."), status=503)
        else:
            r = flask.redirect(base + "login", 303)
        r.delete_cookie(CSRF_COOKIE, path=base)
        return r

    @access("user")
    def account():
        p = current_principal()
        if p.via != "session":
            return flask.jsonify({"error": "log in with a password to change it", "field": "Authorization"}), 403
        if flask.request.method == "GET":
            return password_form()
        f = flask.request.form
        if f.get("new", "") != f.get("confirm", ""):
            return password_form(tr("The new passwords differ."), status=400)
        try:
            epoch = accounts.change_password(p.name, f.get("current", ""), f.get("new", ""), flask.request.remote_addr)
        except Throttled as exc:
            return password_form(throttled_message(exc), status=429)
        except AccountError as exc:
            return password_form(account_message(exc), status=400)
        except (Unavailable, sqlite3.Error) as exc:
            log.error("password change of %s not stored (%s)", p.name, exc)
            return password_form(tr(UNAVAILABLE), status=503)
        flask.session["epoch"] = epoch          # this session goes on; every other one has ended
        return password_form(tr("Password changed."), level="success")

    @access("user")
    def switch_community(slug: str):
        """The community switcher's links: the chosen community is kept in the session."""
        flask.session["community"] = slug
        return flask.redirect(base, 303)
    if server.config.get("LEG_INSTANCE"):
        server.add_url_rule(base + "community/<slug>", "switch_community", switch_community, methods=["GET"])

    server.add_url_rule(base + "login", "login", login, methods=["GET", "POST"])
    server.add_url_rule(base + "logout", "logout", logout, methods=["POST"])
    server.add_url_rule(base + "account", "account", account, methods=["GET", "POST"])

    def deny(status: int, message: str, field: str = "Authorization"):
        path = flask.request.path
        if status == 401 and flask.request.method == "GET" and not path.startswith(base + "api/") \
                and not path.startswith(base + "_dash") and path != base + "metrics":
            return flask.redirect(base + "login?next=" + quote(flask.request.full_path.rstrip("?"), safe="/"), 303)
        return flask.jsonify({"error": message, "field": field}), status

    @server.before_request
    def check_access():
        flask.g.principal = None
        if flask.request.path.startswith(base + "api/") and flask.request.routing_exception is None \
                and not flask.request.endpoint.startswith("api."):   # Dash's catch-all page route matched
            return flask.jsonify({"error": f"no API route {flask.request.path}", "field": "path"}), 404
        level = route_level(server, flask.request.endpoint, base)
        if level == "public":
            instance = server.config.get("LEG_INSTANCE")
            slug = flask.request.environ.get("leg.community") or flask.request.args.get("community")
            if instance and slug is not None:            # e.g. api/c/<slug>/health
                if slug not in instance:
                    return deny(404, f"no community {slug[:50]!r}", "community")
                flask.g.leg_services = instance[slug]
            return None
        if level == "control":
            secret = server.config.get("LEG_CONTROL_SECRET")
            sent = flask.request.headers.get("X-Control-Secret", "")
            if not (secret and flask.request.remote_addr in ("127.0.0.1", "::1")
                    and secrets.compare_digest(sent, secret)):
                return deny(403, "only the command line on this host may do this", "X-Control-Secret")
            instance = server.config.get("LEG_INSTANCE")
            if instance:                                 # the community's control.json names it in the path
                slug = flask.request.environ.get("leg.community")
                if slug not in instance:
                    return deny(404, f"name one of the communities {', '.join(instance)} in the path "
                                     f"(c/<slug>/control/... or api/c/<slug>/backup)", "community")
                flask.g.leg_services = instance[slug]
            return None
        auth = flask.request.headers.get("Authorization", "")
        p = None
        if auth.startswith("Bearer "):
            p = accounts.token_principal(auth[7:].strip())
            if p is None:
                return deny(401, "the API token is unknown or revoked")
            if not (flask.request.path.startswith(base + "api/") or flask.request.path == base + "metrics"):
                return deny(403, "API tokens are for /api/ and /metrics only")
        elif "user" in flask.session:
            p = accounts.session_principal(flask.session["user"], flask.session.get("epoch"))
            if p is None:                       # logged out elsewhere, password changed, account gone
                flask.session.clear()
        flask.g.principal = p
        if p is None:
            return deny(401, "log in first (or send an API token: Authorization: Bearer …)")
        instance = server.config.get("LEG_INSTANCE")
        if instance:
            refused = _enter_community(instance, p)
            if refused is not None:
                return deny(*refused)
            p = flask.g.principal
        if flask.request.method not in ("GET", "HEAD", "OPTIONS") and p.via == "session":
            sent = flask.request.headers.get(CSRF_HEADER) or flask.request.form.get("csrf_token", "")
            if not sent or not secrets.compare_digest(sent, flask.session.get("csrf", "")):
                return deny(403, "missing or wrong CSRF token (reload the page)", CSRF_HEADER)
        if level == "user":
            ok = True
            if flask.request.endpoint == base + "_dash-update-component":
                body = flask.request.get_json(silent=True)
                error = callback_body_error(body, app.callback_map)
                if error is not None:
                    log.warning("callback request refused (%s) from %s", error[0], flask.request.remote_addr)
                    return flask.jsonify({"error": error[0], "field": error[1]}), 400
                ok = callback_allowed(p, body["output"])
            elif p.via == "token" and flask.request.method != "GET" and not p.may_write:
                ok = False
        elif level == "read":
            ok = p.is_manager and (p.via == "session" or flask.request.method == "GET")
        elif level == "write":
            ok = p.is_manager and p.may_write
        else:                                   # manager
            ok = p.is_manager and p.via == "session"
        if not ok:
            return deny(403, "not allowed for " + ("this token" if p.via == "token" else "your account"))
        return None

    csp = None

    @server.after_request
    def headers(response):
        nonlocal csp
        if csp is None:
            csp = "; ".join([
                "default-src 'self'",
                "script-src 'self' 'unsafe-eval' " + " ".join(app.csp_hashes()),
                "style-src 'self' 'unsafe-inline'",
                "img-src 'self' data: blob:", "font-src 'self' data:", "connect-src 'self'",
                "object-src 'none'", "base-uri 'self'", "form-action 'self'",
                "frame-ancestors " + " ".join(frame_ancestors),
            ])
        response.headers["Content-Security-Policy"] = csp
        response.headers["X-Content-Type-Options"] = "nosniff"
        response.headers["Referrer-Policy"] = "same-origin"
        if current_principal() is not None and current_principal().via == "session":
            response.headers["Cache-Control"] = "private, no-store"
            if flask.request.cookies.get(CSRF_COOKIE) != flask.session.get("csrf") and "csrf" in flask.session:
                response.set_cookie(CSRF_COOKIE, flask.session["csrf"], path=base, samesite="Lax",
                                    secure=flask.request.is_secure, httponly=False)
        return response
