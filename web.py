"""The web app: Dash pages and the REST API on one Flask server.

``create_app(community, runtime)`` wires things up; pages (``pages/``) and the API (``api/``) reach
the community through ``current()``, which reads it from the Flask app that serves the request —
no module-level state shared between users.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from pathlib import Path

import dash
import dash_bootstrap_components as dbc
import flask

from jobs import Jobs

ROOT = Path(__file__).resolve().parent


@dataclass
class Services:
    community: object              # community.Community
    runtime: object | None = None  # ingest.runtime.IngestRuntime, when ingest runs in this process
    jobs: Jobs = field(default_factory=Jobs)   # background work started from pages (closing a period, …)


def current() -> Services:
    return flask.current_app.config["LEG"]


def normalise_base_path(path: str) -> str:
    path = "/" + path.strip("/") + "/"
    return "/" if path == "//" else path


def create_app(community, runtime=None) -> dash.Dash:
    base = normalise_base_path(community.cfg.web.base_path)
    server = flask.Flask(__name__)
    server.config["LEG"] = Services(community, runtime)
    from api.routes import api
    server.register_blueprint(api, url_prefix=base + "api")
    app = dash.Dash(__name__, server=server, use_pages=True, pages_folder=str(ROOT / "pages"),
                    url_base_pathname=base, assets_folder=str(ROOT / "assets"),
                    suppress_callback_exceptions=True, title=community.cfg.community.name)
    nav = [dbc.NavItem(dbc.NavLink(p["name"], href=p["relative_path"], active="exact"))
           for p in dash.page_registry.values() if p.get("nav", True)]
    app.layout = dbc.Container([
        dbc.NavbarSimple(nav, brand=community.cfg.community.name, color="dark", dark=True, className="mb-3"),
        dash.page_container,
    ], fluid=True)
    return app
