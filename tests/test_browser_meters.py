"""The Meters page in Debian's headless Chromium (Playwright, no downloaded browser): a manager adds
a Modbus meter through the form, presses "Test connection" and sees the value read from a real
pymodbus server; a wrong register shows the Modbus error by name; the new meter is in the table."""
import shutil
import threading

import pytest

from community import Community
from config import parse_config
from peers import free_port, wait_port
from webauth import MANAGER, add_users

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
pytestmark = pytest.mark.skipif(CHROMIUM is None, reason="chromium is not installed (apt-get install chromium)")
playwright = pytest.importorskip("playwright.sync_api", reason="playwright is not installed")


def test_add_a_modbus_meter_and_test_its_connection(tmp_path):
    import waitress

    from test_modbus import Server
    from web import create_app
    modbus = Server().start()
    port = free_port()
    c = Community.open(parse_config({"houses": {"AA-1": {"id": 1, "name": "House 1"}},
                                     "storage": {"data_dir": str(tmp_path)}, "mqtt": {"enabled": False}},
                                    source="test"))
    add_users(c)
    app = create_app(c)
    srv = waitress.create_server(app.server, host="127.0.0.1", port=port, threads=4)
    threading.Thread(target=srv.run, daemon=True).start()
    wait_port(port)
    problems = []
    try:
        with playwright.sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=["--no-sandbox"])
            page = browser.new_page()
            page.set_default_timeout(15_000)
            page.on("console", lambda m: m.type == "error" and problems.append(m.text))
            page.on("pageerror", lambda e: problems.append(str(e)))
            page.goto(f"http://127.0.0.1:{port}/login")
            page.fill("#username", MANAGER[0])
            page.fill("#password", MANAGER[1])
            page.click("button[type=submit]")
            page.goto(f"http://127.0.0.1:{port}/meters")
            page.wait_for_selector("#mf-id")
            page.fill("#mf-id", "heat-pump")
            page.fill("#mf-name", "Heat pump")
            page.select_option("#mf-house", "1")
            page.select_option("#mf-connection", "modbus")
            setting = lambda key: page.locator(f'[id*="\\"key\\":\\"{key}\\""][id*="modbus"]')
            setting("host").fill("127.0.0.1")
            setting("port").fill(str(modbus.port))
            setting("import-address").fill("0")
            page.click("#mf-test")
            result = page.locator("#mf-result")
            result.get_by_text("read import 1’234.500 kWh").wait_for()
            # a register the device does not have: the Modbus exception by name
            setting("import-address").fill("4000")
            page.click("#mf-test")
            result.get_by_text("ILLEGAL DATA ADDRESS").wait_for()
            setting("import-address").fill("0")
            page.click("#mf-add")
            result.get_by_text("Meter heat-pump saved.").wait_for()
            page.reload()
            page.locator("#meters-grid").get_by_text("heat-pump").wait_for()
            browser.close()
        m = c.ledger.meter("heat-pump")
        assert m.connection == "modbus" and m.settings["port"] == modbus.port and m.house_id == "1"
        assert not problems, problems
    finally:
        srv.close()
        app.server.config["LEG"] = None
        c.close()
        modbus.stop()
