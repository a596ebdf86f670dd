"""The web app in four languages: every text of the code is in the German, French and Italian
catalogues (with the same placeholders), the language is chosen by the rule of i18n.py, and no
page shows an English text in another language (each page's layout rendered in each language)."""
from __future__ import annotations

import importlib.util
import re
import string
from pathlib import Path

import pandas as pd
import pytest

import i18n
from community import Community
from config import parse_config

ROOT = Path(__file__).resolve().parent.parent
core = i18n
_spec = importlib.util.spec_from_file_location("i18n_script", ROOT / "scripts" / "i18n.py")
script = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(script)

HOUSES = {"M1": {"id": 1, "name": "Meier"}, "M2": {"id": 2, "name": "Keller", "pv_kwp": 10}}
# texts that read the same in every language (units, brand names, formats)
SAME_EVERYWHERE = {"kWh", "kW", "CHF", "ct", "ct/kWh", "PDF", "CSV", "ZIP", "XML", "API", "MQTT", "Modbus", "Loxone",
                   "UDP", "HTTP", "ID", "IBAN", "OK", "p_pv", "p_con", "p_grid_con", "p_grid_del", "Deutsch",
                   "Français", "Italiano", "English", "Total", "Status", "Min", "Max", "Email", "E-Mail", "E-mail", "Info",
                   "Page"}


def placeholders(text: str) -> set[str]:
    return {f for _, f, _, _ in string.Formatter().parse(text) if f}


def test_every_text_of_the_code_is_in_every_catalogue():
    code = script.code_messages()
    assert len(code) > 150, len(code)                         # the pages' texts are marked
    for lang in ("de", "fr", "it"):
        cat = core.catalogue(lang)
        missing = sorted(m for m in code if not cat.get(m))
        assert not missing, f"{lang} lacks {len(missing)}: " + "; ".join(f"{m!r} ({code[m][0]})" for m in missing[:20])
        for m in code:
            assert placeholders(cat[m]) == placeholders(m), (lang, m, cat[m])


def test_the_language_rule():
    from werkzeug.datastructures import LanguageAccept
    accept = LanguageAccept([("fr-CH", 1), ("de", 0.5)])
    assert i18n.choose("it", accept, "de") == "it"              # the user's choice first
    assert i18n.choose(None, accept, "de") == "fr"              # then the browser's
    assert i18n.choose(None, LanguageAccept([("es", 1)]), "de") == "de"   # then the community's
    assert i18n.choose("xx", None, None) == "en"
    assert i18n.chf(1234.5, "de") == "1’234.50" and i18n.chf(1234.5, "fr").replace("\u202f", " ") == "1 234,50"
    assert i18n.chf(-3, "it", sign=True) == "-3.00"
    # rounded half up like every amount (Babel alone gives 0.12 and 0.14)
    assert i18n.chf(0.125, "de") == "0.13" and i18n.chf(0.135, "de") == "0.14" and i18n.chf(-0.125, "de") == "-0.13"


@pytest.fixture
def app(tmp_path):
    from web import create_app
    from webauth import add_users
    cfg = parse_config({"houses": HOUSES, "storage": {"data_dir": str(tmp_path)}, "mqtt": {"enabled": False}},
                       source="test")
    c = Community.open(cfg)
    df = pd.DataFrame({"meter_id": ["M1", "M1", "M2", "M2"],
                       "ts": pd.to_datetime(["2026-02-01T00:00+01:00", "2026-03-01T00:00+01:00"] * 2, utc=True),
                       "import_kwh": [0.0, 2688.0, 0.0, 0.0], "export_kwh": [0.0, 0.0, 0.0, 5376.0]})
    df["ts"] = df["ts"].astype("datetime64[us, UTC]")
    df["power_in_kw"] = df["power_out_kw"] = float("nan")
    c.store_readings(df)
    add_users(c)
    yield c, create_app(c)
    c.close()


def texts(node, out: list[str]) -> list[str]:
    """Every string a person reads in a Dash component tree (children, labels, placeholders,
    grid headers, option labels, titles)."""
    if node is None:
        return out
    if isinstance(node, str):
        out.append(node)
    elif isinstance(node, (list, tuple)):
        for n in node:
            texts(n, out)
    elif isinstance(node, dict):
        for k in ("label", "headerName", "title", "children", "text"):
            if k in node:
                texts(node[k], out)
        if isinstance(node.get("localeText"), dict):          # AG Grid's own texts (an empty table, ...)
            texts(list(node["localeText"].values()), out)
    elif hasattr(node, "to_plotly_json"):
        props = node.to_plotly_json().get("props", {})
        for k in ("children", "label", "placeholder", "title", "header", "brand", "options", "columnDefs",
                  "tooltip", "marks", "dashGridOptions"):
            v = props.get(k)
            if isinstance(v, dict) and k == "marks":
                v = list(v.values())
            texts(v, out)
    return out


def render(app, lang: str) -> dict[str, list[str]]:
    """page path -> its texts, rendered for a manager in ``lang`` (with the navigation)."""
    import dash
    import flask

    from webauth import MANAGER
    c, dash_app = app
    server = dash_app.server
    out = {}
    with server.test_request_context("/", headers={"Accept-Language": lang}):
        flask.g.principal = server.config["LEG_ACCOUNTS"].principal(MANAGER[0])
        out["frame"] = texts(dash_app.layout(), [])
        for page in dash.page_registry.values():
            layout = page["layout"]
            kwargs = {"house_id": "1"} if "<house_id>" in (page.get("path_template") or "") else {}
            tree = layout(**kwargs) if callable(layout) else layout
            out[page["path"]] = texts(tree, []) + [page["name"]]
    return out


def month_of_the_language(text: str, lang: str) -> bool:
    """A month as Babel names it in ``lang`` ("April 2026" is German too): localised, not English."""
    from babel.dates import get_month_names
    names = set(get_month_names("wide", locale=i18n.LOCALES[lang]).values())
    m = re.fullmatch(r"(\w+) (\d{4})", text)
    return bool(m) and m.group(1) in names


def words(text: str) -> bool:
    """A text with at least one word of four letters or more (not a number, id, unit or name)."""
    return bool(re.search(r"[A-Za-z]{4,}", text))


@pytest.mark.parametrize("lang", ["de", "fr", "it"])
def test_no_page_shows_an_english_text_in_another_language(app, lang):
    english, other = render(app, "en"), render(app, lang)
    data = {h["name"] for h in HOUSES.values()} | {app[0].cfg.community.name}
    assert set(english) == set(other)
    untranslated = {}
    for path, en_texts in english.items():
        same = {t.strip() for t in set(en_texts) & set(other[path])}
        left = sorted(t for t in same if t and words(t) and t not in SAME_EVERYWHERE
                      and not any(d and d in t for d in data) and core.catalogue(lang).get(t, t) == t
                      and not month_of_the_language(t, lang))
        if left:
            untranslated[path] = left
    assert not untranslated, untranslated
    assert sum(len(v) for v in english.values()) > 100            # the pages were rendered with their texts
    # the navigation and the language menu speak the language
    assert "No rows to show" in english["/settlement"]              # AG Grid's texts are read too
    nav = " ".join(other["frame"])
    assert i18n.NAMES[lang] in nav and core.catalogue(lang)["Log out"] in nav


def test_the_language_menu_is_remembered_per_account(app):
    from webauth import MANAGER, login
    c, dash_app = app
    server = dash_app.server
    client = login(server.test_client(), "/", *MANAGER)
    r = client.get("/language/fr", headers={"Referer": "http://localhost/settlement?period=2026-02"})
    assert r.status_code == 303 and r.headers["Location"].endswith("/settlement?period=2026-02")
    assert server.config["LEG_ACCOUNTS"].language(MANAGER[0]) == "fr"
    # another browser of the same user, English by its header: the account's choice wins
    other = login(server.test_client(), "/", *MANAGER)
    with server.test_request_context("/", headers={"Accept-Language": "en"}):
        import flask
        flask.g.principal = server.config["LEG_ACCOUNTS"].principal(MANAGER[0])
        assert i18n.language() == "fr"
    assert other.get("/language/xx").status_code == 404
    # a Referer of another site never leads there
    r = other.get("/language/de", headers={"Referer": "https://evil.example/settlement"})
    assert r.status_code == 303 and r.headers["Location"] in ("/", "http://localhost/")
    # the login page follows Accept-Language (nobody is logged in)
    anon = server.test_client()
    page = anon.get("/login", headers={"Accept-Language": "it-CH,it;q=0.9"}).get_data(as_text=True)
    assert 'lang="it"' in page and core.catalogue("it")["Log in"] in page and ">Log in<" not in page


@pytest.mark.parametrize("lang,expected", [("de", "teilweise bezahlt"), ("fr", "partiellement payée"),
                                           ("it", "parzialmente pagata"), ("en", "partially paid")])
def test_tables_show_states_in_the_language_and_keep_the_code(app, lang, expected):
    """The settlement, periods and My invoices tables show an invoice's or a period's state in the
    reader's language (status_text); the rows keep the code under ``status`` for the page's logic."""
    import flask

    from components.views import period_rows, settlement_view, status_text
    from webauth import MANAGER
    c, dash_app = app
    server = dash_app.server
    with server.test_request_context("/", headers={"Accept-Language": lang}):
        flask.g.principal = server.config["LEG_ACCOUNTS"].principal(MANAGER[0])
        assert status_text("partially_paid") == expected and status_text("unknown-code") == "unknown-code"
        _alert, rows, _ = settlement_view(c, "2026-02")
        assert rows and {r["status"] for r in rows} == {"draft"}
        assert {r["status_text"] for r in rows} == {status_text("draft")}
        # energy sorts as a number and shows in the language's format (2’688.000, 2 688,000)
        one = next(r for r in rows if r["house_id"] == "1")
        assert one["energy_imported_kwh"] == 2688.0
        assert one["shown"]["energy_imported_kwh"] == i18n.number(2688, 3, lang)
        feb = next(p for p in period_rows(c) if p["period_id"] == "2026-02")
        assert feb["status"] == "open" and feb["status_text"] == i18n.catalogue(lang).get("open", "open")


def test_the_charts_locale_file_is_current_and_swiss():
    """assets/plotly-locales.js is what Babel and the catalogues give today (``python
    scripts/i18n.py plotly`` writes it), with Swiss number symbols and the texts translated."""
    from components.charts import PLOTLY_TEXTS, plotly_locale, plotly_locales_js
    assert (ROOT / "assets" / "plotly-locales.js").read_text(encoding="utf-8") == plotly_locales_js()
    de, fr = plotly_locale("de"), plotly_locale("fr")
    assert de["format"]["shortMonths"][2] == "März" and de["format"]["days"][0] == "Sonntag"
    assert (de["format"]["decimal"], de["format"]["thousands"]) == (".", "\u2019")
    assert (fr["format"]["decimal"], fr["format"]["thousands"]) == (",", "\u202f")
    assert set(de["dictionary"]) == set(PLOTLY_TEXTS) and de["dictionary"]["Zoom in"] == "Vergrössern"


def test_the_mailing_summary_is_translated_when_shown(app):
    """A mailing runs in a worker thread (no request, no language); its summary is translated when
    the settlement page shows it."""
    from billing.mail import MailRun
    from components.views import mail_summary
    run = MailRun(sent=["INV-2026-001", "INV-2026-002"], skipped={"INV-2026-003": "already sent"})
    text = mail_summary(run)
    assert str(text) == "2 sent, 1 not sent, 0 failed (INV-2026-003: already sent)"      # no request: English
    server = app[1].server
    with server.test_request_context("/", headers={"Accept-Language": "de"}):
        assert str(text) == "2 versendet, 1 nicht versendet, 0 fehlgeschlagen (INV-2026-003: already sent)"
        assert str(mail_summary(MailRun(sent=["INV-2026-001"]))) == "1 versendet"
