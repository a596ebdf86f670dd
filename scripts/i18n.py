"""The web app's catalogues: ``python scripts/i18n.py check`` lists the texts of the code
(``tr("...")`` and ``N_("...")``, extracted by Babel) that a catalogue lacks; ``python
scripts/i18n.py merge FILE.json...`` adds translations given as {msgid: {"de": .., "fr": .., "it": ..}}
to ``locale/<lang>/LC_MESSAGES/messages.po``, keeping what is there, sorted by msgid, and writes
``assets/plotly-locales.js`` again (the charts' month names, number symbols and mode bar texts;
``python scripts/i18n.py plotly`` writes only that)."""
from __future__ import annotations

import json
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from babel.messages.catalog import Catalog  # noqa: E402
from babel.messages.extract import extract_from_file  # noqa: E402
from babel.messages.pofile import read_po, write_po  # noqa: E402

from i18n import LANGUAGES, LOCALE_DIR  # noqa: E402

SOURCES = ("pages", "components", "auth", "web.py", "billing/mail.py")
KEYWORDS = {"tr": None, "N_": None}


def code_messages() -> dict[str, list[str]]:
    """msgid -> the places (file:line) of the code that use it."""
    out: dict[str, list[str]] = {}
    files = []
    for src in SOURCES:
        path = ROOT / src
        files += sorted(path.rglob("*.py")) if path.is_dir() else [path]
    for path in files:
        for line, msg, _comments, _ctx in extract_from_file("python", str(path), keywords=KEYWORDS):
            msgid = msg if isinstance(msg, str) else msg[0]
            out.setdefault(msgid, []).append(f"{path.relative_to(ROOT)}:{line}")
    return out


def po_path(lang: str) -> Path:
    return LOCALE_DIR / lang / "LC_MESSAGES" / "messages.po"


def load(lang: str) -> Catalog:
    path = po_path(lang)
    if path.exists():
        with path.open("rb") as fh:
            return read_po(fh, locale=lang)
    return Catalog(locale=lang, project="LEG-Invoicing", domain="messages")


def save(lang: str, cat: Catalog) -> None:
    path = po_path(lang)
    path.parent.mkdir(parents=True, exist_ok=True)
    ordered = Catalog(locale=lang, project="LEG-Invoicing", domain="messages")
    for m in sorted((m for m in cat if m.id), key=lambda m: m.id):
        ordered.add(m.id, m.string, locations=m.locations)
    with path.open("wb") as fh:
        write_po(fh, ordered, width=100, omit_header=False, sort_output=True, no_location=True)


def merge(files: list[str]) -> None:
    cats = {lang: load(lang) for lang in LANGUAGES if lang != "en"}
    for f in files:
        for msgid, texts in json.loads(Path(f).read_text(encoding="utf-8")).items():
            for lang, cat in cats.items():
                if texts.get(lang):
                    cat.add(msgid, texts[lang])
    for lang, cat in cats.items():
        save(lang, cat)


PLOTLY_LOCALES = ROOT / "assets" / "plotly-locales.js"


def write_plotly_locales() -> None:
    import subprocess
    # a fresh interpreter: the catalogues as just written (i18n.catalogue reads each once)
    js = subprocess.run([sys.executable, "-c", "from components.charts import plotly_locales_js; "
                         "import sys; sys.stdout.write(plotly_locales_js())"], cwd=ROOT, capture_output=True,
                        text=True, check=True).stdout
    PLOTLY_LOCALES.write_text(js, encoding="utf-8")


def missing() -> dict[str, list[str]]:
    """lang -> the msgids of the code its catalogue lacks."""
    code = code_messages()
    out = {}
    for lang in LANGUAGES:
        if lang == "en":
            continue
        have = {m.id for m in load(lang) if m.id and m.string}
        out[lang] = sorted(set(code) - have)
    return out


if __name__ == "__main__":
    if sys.argv[1:2] == ["merge"]:
        merge(sys.argv[2:])
        write_plotly_locales()
    elif sys.argv[1:2] == ["plotly"]:
        write_plotly_locales()
    elif sys.argv[1:2] == ["check"]:
        gaps = missing()
        for lang, ids in gaps.items():
            for i in ids:
                print(f"{lang}: {i!r}")
        sys.exit(1 if any(gaps.values()) else 0)
    else:
        print(__doc__)
        sys.exit(2)
