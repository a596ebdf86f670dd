"""The web app's texts in German, French, Italian and English, and numbers, dates and CHF amounts
formatted per language (Babel, Swiss locales).

Texts are written in English in the code, wrapped in ``tr("...")`` (placeholders as
``tr("{n} houses", n=3)``); the catalogues ``locale/<lang>/LC_MESSAGES/messages.po`` (gettext, one
per language) translate them. English is the code's own text; a message a catalogue lacks shows in
English (``tests/test_i18n.py`` makes sure none lacks one).

The language of a request (``language()``): the one its user chose (the language menu, kept in the
account), else the browser's ``Accept-Language``, else ``community.language``. Outside a request
(commands, unit tests of the view functions) it is English.
"""
from __future__ import annotations

import functools
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal
from pathlib import Path

LANGUAGES = ("de", "fr", "it", "en")
NAMES = {"de": "Deutsch", "fr": "Français", "it": "Italiano", "en": "English"}
LOCALES = {"de": "de_CH", "fr": "fr_CH", "it": "it_CH", "en": "en_CH"}
LOCALE_DIR = Path(__file__).resolve().parent / "locale"
COOKIE = "leg_language"


@functools.lru_cache(maxsize=None)
def catalogue(lang: str) -> dict[str, str]:
    """msgid -> translation of one language's catalogue (read once; read-only afterwards)."""
    from babel.messages.pofile import read_po
    path = LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"
    if lang == "en" or not path.exists():
        return {}
    with path.open("rb") as fh:
        cat = read_po(fh, locale=lang)
    return {m.id: m.string for m in cat if m.id and isinstance(m.id, str) and m.string}


def choose(chosen: str | None, accept_languages=None, community_language: str | None = None) -> str:
    """The language by the rule of the module docstring."""
    if chosen in LANGUAGES:
        return chosen
    for tag, _quality in accept_languages or ():      # werkzeug's LanguageAccept: best first
        primary = str(tag).split("-")[0].split("_")[0].lower()
        if primary in LANGUAGES:
            return primary
    return community_language if community_language in LANGUAGES else "en"


def language() -> str:
    """The current request's language (``en`` outside a request)."""
    import flask
    if not flask.has_request_context():
        return "en"
    lang = flask.g.get("leg_language")
    if lang is None:
        lang = _request_language()
        flask.g.leg_language = lang
    return lang


def _request_language() -> str:
    import flask
    chosen = flask.request.cookies.get(COOKIE)
    accounts = flask.current_app.config.get("LEG_ACCOUNTS")
    principal = flask.g.get("principal")
    if principal is not None and accounts is not None and principal.via == "session":
        try:
            chosen = accounts.language(principal.name) or chosen
        except Exception:           # noqa: BLE001  a ledger that cannot answer: the cookie, the browser
            pass
    community_language = None
    svc = flask.g.get("leg_services") or flask.current_app.config.get("LEG")
    if svc is not None and getattr(svc, "community", None) is not None:
        community_language = svc.community.cfg.community.language
    return choose(chosen, flask.request.accept_languages, community_language)


def tr(msgid: str, **values) -> str:
    """``msgid`` in the current language, its ``{placeholders}`` filled in from ``values``."""
    lang = language()
    text = catalogue(lang).get(msgid, msgid) if lang != "en" else msgid
    return text.format(**values) if values else text


def N_(msgid: str) -> str:
    """Marks a text for the catalogues where it is defined (a module-level constant, a page's
    name) without translating it there: ``tr(CONSTANT)`` translates it where it is shown."""
    return msgid


def chf(amount, lang: str | None = None, sign: bool = False) -> str:
    """An amount in CHF with two decimals in the language's number format (1’234.50, 1 234,50),
    rounded half up as every amount of the product is (Babel alone would round half to even)."""
    from babel.numbers import format_decimal
    pattern = "+#,##0.00;-#,##0.00" if sign else "#,##0.00"
    rounded = Decimal(str(amount)).quantize(Decimal("0.01"), ROUND_HALF_UP)
    return format_decimal(rounded, pattern, locale=LOCALES[lang or language()])


def number(value, digits: int = 1, lang: str | None = None) -> str:
    from babel.numbers import format_decimal
    pattern = "#,##0" + ("." + "0" * digits if digits else "")
    return format_decimal(Decimal(str(value)), pattern, locale=LOCALES[lang or language()])


def day(value: date | datetime, lang: str | None = None) -> str:
    from babel.dates import format_date
    return format_date(value, "medium", locale=LOCALES[lang or language()])
