"""Every page in a real headless Chromium (Debian's package), with the app served by waitress on a
free port: the page renders its content and the browser logs no JavaScript error. The same under a
base path, as behind a reverse proxy."""
import re
import shutil
import subprocess
import threading
import time
from pathlib import Path

import pandas as pd
import pytest

from community import Community
from config import parse_config
from peers import free_port, wait_port

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
PAGES = {"": ["Energy flow", "Self-sufficiency", "Price signal"], "grid": ["Grid energy", "Grid value"],
         "meters": ["AA-1", "Store: embedded"], "quality": ["Quarantined readings", "issing intervals"],
         "houses/2": ["House", "Energy flow"], "tariffs": ["House price p_con", "History"],
         "settlement": ["Download CSV", "DRAFT-"]}


def serve(base_path, tmp_path):
    import waitress
    from simulator.profiles import profiles_for, simulate_counters
    from web import create_app
    port = free_port()
    cfg = parse_config({"houses": {"AA-1": {"id": 1, "name": "House 1"},
                                   "AA-2": {"id": 2, "name": "House 2", "pv_kwp": 10}},
                        "storage": {"data_dir": str(tmp_path / "data")}, "mqtt": {"enabled": False},
                        "web": {"base_path": base_path, "port": port}}, source="test")
    c = Community.open(cfg)
    now = pd.Timestamp.now(tz="UTC").floor("h")
    c.store_readings(simulate_counters(profiles_for(cfg.houses), now - pd.Timedelta(days=40), now, 900, c.tz))
    app = create_app(c)
    srv = waitress.create_server(app.server, host="127.0.0.1", port=port, threads=4)
    threading.Thread(target=srv.run, daemon=True).start()
    wait_port(port)
    srv.leg_app = app
    return c, srv, f"http://127.0.0.1:{port}{base_path}"


def render(url, tmp_path):
    r = subprocess.run([CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run",
                        "--disable-background-networking", "--disable-component-update", "--disable-sync",
                        f"--user-data-dir={tmp_path / 'chromium'}", "--enable-logging=stderr", "--v=0",
                        "--virtual-time-budget=10000", "--dump-dom", url],
                       capture_output=True, text=True, timeout=90)
    console = [line for line in r.stderr.splitlines() if "CONSOLE" in line or "Uncaught" in line]
    return r.stdout, console


@pytest.mark.parametrize("base_path", ["/", "/invoicing/"])
def test_every_page_renders_without_console_errors(tmp_path, base_path):
    c, srv, url = serve(base_path, tmp_path)
    try:
        for page, texts in PAGES.items():
            dom, console = render(url + page, tmp_path)
            for text in texts:
                assert text in dom, f"{url + page}: {text!r} not rendered"
            errors = [line for line in console if re.search(r"error|uncaught", line, re.I)]
            assert not errors, f"{url + page}: {errors}"
            assert "Error loading layout" not in dom and "Callback error" not in dom
    finally:
        srv.close()
        srv.leg_app.server.config["LEG"] = None    # no store handle outlives the test
        c.close()
