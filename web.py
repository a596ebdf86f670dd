"""The web app: Dash pages and the REST API on one Flask server.

``create_app(community, runtime)`` wires things up; pages (``pages/``) and the API (``api/``) reach
the community through ``current()``, which reads it from the Flask app that serves the request —
no module-level state shared between users.

Requests are bounded (``MAX_REQUEST_BYTES``; larger ones get 413) and every error on an ``/api``
route or a Dash callback is answered as JSON ``{"error", "field"}``: 400 for bad input (a body that
is not JSON, or nested too deeply to read), 404, 413, and 500 without a traceback (which goes to
the server's log).
"""
from __future__ import annotations

import logging
from dataclasses import dataclass, field
from pathlib import Path

import dash
import dash_bootstrap_components as dbc
import flask
from flask.json.provider import DefaultJSONProvider
from werkzeug.exceptions import HTTPException

from i18n import N_
from jobs import Jobs

ROOT = Path(__file__).resolve().parent
MAX_REQUEST_BYTES = 20 * 1024 * 1024       # a request body larger than this gets 413
ROLE_NAMES = {"manager": N_("manager"), "member": N_("member")}
log = logging.getLogger("leg.web")


class _JSON(DefaultJSONProvider):
    """Flask's JSON, with a body nested too deeply to parse (RecursionError) read as what it is:
    bad JSON, so ``request.get_json`` answers 400 (or None when silent) for every caller, Dash's
    callback route included."""

    def loads(self, s, **kwargs):
        try:
            return super().loads(s, **kwargs)
        except RecursionError:
            raise ValueError("the JSON is nested too deeply") from None


@dataclass
class Services:
    community: object              # community.Community
    runtime: object | None = None  # ingest.runtime.IngestRuntime, when ingest runs in this process
    jobs: Jobs = field(default_factory=Jobs)   # background work started from pages (closing a period, …)
    slug: str | None = None        # the community's slug when the instance has several


def current() -> Services:
    """The services of the request's community (``auth.web`` chooses it when the instance has
    several communities), else the app's one community."""
    chosen = flask.g.get("leg_services") if flask.has_request_context() else None
    return chosen if chosen is not None else flask.current_app.config["LEG"]


def _community_paths(wsgi, base: str):
    """``{base}api/c/<slug>/...`` is ``{base}api/...`` of community ``slug``, and
    ``{base}c/<slug>/control/...`` the command line's ``{base}control/...`` of that community."""
    prefixes = ((base + "api/c/", base + "api/"), (base + "c/", base))

    def app(environ, start_response):
        path = environ.get("PATH_INFO", "")
        for prefix, to in prefixes:
            if path.startswith(prefix):
                slug, _, rest = path[len(prefix):].partition("/")
                if to == base and not rest.startswith("control/"):
                    continue
                environ["leg.community"] = slug
                environ["PATH_INFO"] = to + rest
                break
        return wsgi(environ, start_response)
    return app


def current_accounts():
    """The accounts (auth.accounts.Accounts) of the app serving the request."""
    return flask.current_app.config["LEG_ACCOUNTS"]


def normalise_base_path(path: str) -> str:
    path = "/" + path.strip("/") + "/"
    return "/" if path == "//" else path


def create_app(community, runtime=None, accounts=None, instance: dict[str, Services] | None = None,
               secret_dir: Path | None = None) -> dash.Dash:
    """The Dash app on its Flask server, with access control (``auth.web``); ``accounts``
    defaults to the community ledger's. ``instance`` (slug -> Services) serves several
    communities from one app (see instance.py); ``community`` is then the first of them."""
    from auth import web as auth_web
    from auth.accounts import Accounts
    cfg = community.cfg
    base = normalise_base_path(cfg.web.base_path)
    server = flask.Flask(__name__, static_folder=None)
    server.json = _JSON(server)
    server.config["MAX_CONTENT_LENGTH"] = MAX_REQUEST_BYTES
    server.config["LEG"] = next(iter(instance.values())) if instance else Services(community, runtime)
    if instance:
        server.config["LEG_INSTANCE"] = instance
        server.wsgi_app = _community_paths(server.wsgi_app, base)
    _error_handlers(server, base)
    from api.routes import api
    server.register_blueprint(api, url_prefix=base + "api")
    app = dash.Dash(__name__, server=server, use_pages=True, pages_folder=str(ROOT / "pages"),
                    url_base_pathname=base, assets_folder=str(ROOT / "assets"),
                    suppress_callback_exceptions=True, title=cfg.community.name)
    auth_web.install(app, accounts or Accounts(community.ledger), base, cfg.community.name,
                     cfg.web.frame_ancestors, secret_dir or cfg.data_dir)
    _metrics_route(server, base, "public" if cfg.web.metrics_public else "read")
    _language_route(server, base)
    app.layout = lambda: _layout(current().community.cfg.community.name, base)
    return app


def _error_handlers(server: flask.Flask, base: str) -> None:
    """JSON errors for the API and Dash callbacks, plain text for pages; never a traceback."""
    def wants_json() -> bool:
        path = flask.request.path
        return path.startswith(base + "api/") or path.startswith(base + "_dash-")

    @server.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code is None or exc.code < 400:             # routing redirects (a missing trailing slash)
            return exc
        if exc.code == 413:
            log.warning("%s %s: body over %d bytes refused", flask.request.method, flask.request.path,
                        MAX_REQUEST_BYTES)
            message = f"the request is larger than {MAX_REQUEST_BYTES // (1024 * 1024)} MB"
            if not wants_json():
                from i18n import tr
                return flask.Response(tr("The request is larger than {mb} MB.", mb=MAX_REQUEST_BYTES // (1024 * 1024))
                                      + "\n", 413, mimetype="text/plain")
        else:
            message = exc.description
            if exc.code == 400:
                log.warning("%s %s: %s", flask.request.method, flask.request.path, message)
        if wants_json():
            field = "body" if exc.code in (400, 413) else "path" if exc.code in (404, 405) else None
            return flask.jsonify({"error": message, "field": field}), exc.code
        return exc

    @server.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("%s %s failed", flask.request.method, flask.request.path)
        if wants_json():
            return flask.jsonify({"error": "internal error; the server's log has the details", "field": None}), 500
        from i18n import tr
        return flask.Response(tr("Internal error; the server's log has the details.") + "\n", 500,
                              mimetype="text/plain")


def _language_route(server: flask.Flask, base: str) -> None:
    """GET {base}language/<lang>: the visitor's language, as a cookie (a year) and, for a logged-in
    user, in the account; then back to the page it came from (its Referer, when that is a page of
    this app)."""
    from urllib.parse import urlsplit

    import i18n
    from auth.web import access, current_principal, safe_next

    @access("public")
    def choose(lang: str):
        if lang not in i18n.LANGUAGES:
            return flask.Response(f"Unknown language {lang[:20]!r}: one of {', '.join(i18n.LANGUAGES)}.\n", 404,
                                  mimetype="text/plain")
        accounts = current_accounts()           # a public route: the session's user, if any
        p = current_principal() or accounts.session_principal(flask.session.get("user"), flask.session.get("epoch"))
        if p is not None and p.via == "session":
            accounts.set_language(p.name, lang)
        ref = urlsplit(flask.request.headers.get("Referer", ""))
        same_host = not ref.netloc or ref.netloc == flask.request.host
        back = safe_next(ref.path + (f"?{ref.query}" if ref.query else ""), base) if same_host else None
        resp = flask.redirect(back or base, 303)
        resp.set_cookie(i18n.COOKIE, lang, max_age=365 * 24 * 3600, path=base, samesite="Lax", httponly=True,
                        secure=flask.request.is_secure)
        return resp
    server.add_url_rule(base + "language/<lang>", "language", choose)


def _metrics_route(server: flask.Flask, base: str, level: str) -> None:
    """GET {base}metrics in Prometheus' text format; a read token unless web.metrics_public. With
    several communities: those the caller may enter (all when public), labelled by slug."""
    import metrics
    from auth.web import access

    @access(level)
    def view():
        instance = server.config.get("LEG_INSTANCE")
        if not instance:
            services = {None: server.config["LEG"]}
        else:
            who = flask.g.get("leg_principal_all")
            slugs = list(instance) if who is None else who.community_slugs(list(instance))
            services = {slug: instance[slug] for slug in slugs}
        return flask.Response(metrics.render(metrics.registry_for(services)), mimetype="text/plain; version=0.0.4")
    server.add_url_rule(base + "metrics", "metrics", view)


def _layout(name: str, base: str):
    """The frame of every page: navigation for the visitor's role, who is logged in, log out."""
    from dash import dcc, html

    import i18n
    from auth.web import current_principal
    from i18n import tr
    p = current_principal()
    pages = [pg for pg in dash.page_registry.values() if pg.get("nav", True)
             and (p is not None and (p.is_manager or pg.get("members", False)))]
    titles = [pg["name"] for pg in pages]     # marked with N_ where each page registers
    nav = [dbc.NavItem(dbc.NavLink(tr(t), href=pg["relative_path"], active="exact")) for t, pg in zip(titles, pages)]
    instance = flask.current_app.config.get("LEG_INSTANCE")
    if instance and p is not None and flask.g.get("leg_principal_all") is not None:
        slugs = flask.g.leg_principal_all.community_slugs(list(instance))
        if len(slugs) > 1:                      # the community switcher
            nav.insert(0, dbc.DropdownMenu(
                [dbc.DropdownMenuItem(instance[s].community.cfg.community.name, href=f"{base}community/{s}",
                                      external_link=True, active=s == current().slug) for s in slugs],
                label=tr("Community"), nav=True, in_navbar=True, id="community-switcher"))
    lang = i18n.language()
    nav.append(dbc.DropdownMenu(
        [dbc.DropdownMenuItem(i18n.NAMES[code], href=f"{base}language/{code}", external_link=True,
                              active=code == lang, id=f"language-{code}") for code in i18n.LANGUAGES],
        label=i18n.NAMES[lang], nav=True, in_navbar=True, id="language-menu"))
    if p is not None:
        role = tr(ROLE_NAMES.get(p.role, p.role))
        nav += [dbc.NavItem(dbc.NavLink(f"{p.name} ({role})", href=base + "account", external_link=True)),
                dbc.NavItem(html.Form([dcc.Input(type="hidden", name="csrf_token", value=flask.session.get("csrf", "")),
                                       html.Button(tr("Log out"), type="submit", className="btn btn-link nav-link")],
                                      method="POST", action=base + "logout"))]
    return dbc.Container([
        dbc.NavbarSimple(nav, brand=name, color="dark", dark=True, className="mb-3"),
        dash.page_container,
    ], fluid=True)
