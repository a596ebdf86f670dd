"""Screenshots of every page of the embedded demo, for the README (docs/screenshots/).

    .venv/bin/python scripts/screenshots.py [OUTDIR]

Starts the demo (simulated houses, 90 days of history) in a temporary folder, serves it on a
free port and photographs each page in Debian's headless Chromium (/usr/bin/chromium) with
Playwright (logged in as a manager; "my.png" as the member of house 2); no browser is downloaded.
The browser asks for English; the community and settlement pages are photographed again in German
and French (``community-de.png``, ``settlement-fr.png``, ...), as a browser set to that language
sees them.
"""
from __future__ import annotations

import sys
import tempfile
import threading
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))

PAGES = {"community": "", "grid": "grid", "houses-2": "houses/2", "tariffs": "tariffs",
         "settlement": "settlement", "year": "year", "meters": "meters", "quality": "quality", "audit": "audit"}
LANGUAGE_PAGES = {"community": "", "settlement": "settlement"}


def login(page, port: int, user: str, password: str) -> None:
    page.goto(f"http://127.0.0.1:{port}/login")
    page.fill("#username", user)
    page.fill("#password", password)
    page.click("button[type=submit]")
    page.wait_for_load_state("networkidle")


def shoot(page, port: int, path: str, out: Path, name: str | None = None) -> None:
    page.goto(f"http://127.0.0.1:{port}/{path}")
    page.wait_for_load_state("networkidle")
    page.wait_for_timeout(1500)
    page.screenshot(path=str(out / f"{name or path}.png"), full_page=True)
    print("wrote", out / f"{name or path}.png")


def main(out: Path) -> None:
    import waitress
    from playwright.sync_api import sync_playwright

    from community import Community
    from config import demo_config
    from ingest.runtime import IngestRuntime
    from peers import free_port, wait_port
    from web import create_app
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory() as tmp:
        cfg = demo_config(tmp)
        c = Community.open(cfg)
        from auth.accounts import Accounts
        accounts = Accounts(c.ledger)
        accounts.add_user("admin", "screenshot-manager", "manager")
        accounts.add_user("house2", "screenshot-member", "member", ["2"])
        runtime = IngestRuntime(c, simulate=True).start()
        port = free_port()
        srv = waitress.create_server(create_app(c, runtime).server, host="127.0.0.1", port=port, threads=4)
        threading.Thread(target=srv.run, daemon=True).start()
        wait_port(port)
        time.sleep(12)                   # a live reading or two from every simulated house
        try:
            with sync_playwright() as p:
                browser = p.chromium.launch(executable_path="/usr/bin/chromium", args=["--no-sandbox"])
                page = browser.new_page(viewport={"width": 1400, "height": 900}, locale="en-GB")
                login(page, port, "house2", "screenshot-member")
                shoot(page, port, "my", out)
                page.context.clear_cookies()
                login(page, port, "admin", "screenshot-manager")
                for name, path in PAGES.items():
                    shoot(page, port, path, out, name)
                for lang in ("de", "fr"):
                    page = browser.new_page(viewport={"width": 1400, "height": 900}, locale=f"{lang}-CH")
                    login(page, port, "admin", "screenshot-manager")
                    for name, path in LANGUAGE_PAGES.items():
                        shoot(page, port, path, out, f"{name}-{lang}")
                browser.close()
        finally:
            srv.close()
            runtime.stop()
            c.close()


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "screenshots")
