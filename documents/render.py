"""PDF rendering of invoice documents: a Jinja2 HTML template and a print stylesheet, laid out by
WeasyPrint.

* ``render_pdf(doc)`` gives the PDF bytes of one document. The same document always gives the same
  bytes: the PDF's dates come from ``issue_date`` and its file identifier from the invoice id.
* ``render_many(docs)`` renders many in a process pool (the ``forkserver`` start method, safe in
  a program with threads) and keeps their order.

Nothing is fetched from the network: the renderer's URL fetcher only serves ``data:`` URLs and
files inside this package (the chart and QR-bill are embedded as ``data:`` images), and every
value of the document is escaped by the template.
"""
from __future__ import annotations

import base64
import hashlib
import multiprocessing
import os
import re
import urllib.request
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass
from decimal import Decimal
from functools import lru_cache
from pathlib import Path
from typing import Callable, Iterable, Sequence

import jinja2
from markupsafe import Markup

from documents import i18n
from documents.chart import daily_chart_svg
from documents.model import KINDS, LANGUAGES, InvoiceDocument, Party
from documents.qr import amount_due, has_qr_bill, qr_svg

PACKAGE_DIR = Path(__file__).resolve().parent
TEMPLATES = PACKAGE_DIR / "templates"
CHART_MM = (98.0, 33.0)


class RenderError(RuntimeError):
    """A document could not be rendered; the message names it."""


# ---------------------------------------------------------------------------------------------
# resources: local files of this package and data: URLs only


def _weasyprint():
    import weasyprint  # imported on first use: it takes most of a second
    return weasyprint


class FetchRefused(ValueError):
    """A resource the renderer does not fetch (network, or a file outside its directory)."""


@lru_cache(maxsize=1)
def _fetcher_class():
    from weasyprint.urls import URLFetcher

    class LocalOnlyFetcher(URLFetcher):
        """Serves ``data:`` URLs and ``file:`` URLs inside ``roots``; refuses everything else."""

        def __init__(self, roots: Sequence[Path] = (TEMPLATES,)):
            super().__init__(allowed_protocols=("file", "data"), allow_redirects=False)
            self.roots = tuple(Path(r).resolve() for r in roots)

        def fetch(self, url, headers=None):
            scheme = url.split(":", 1)[0].lower() if ":" in url else ""
            if scheme == "data":
                return super().fetch(url, headers)
            if scheme == "file":
                path = Path(urllib.request.url2pathname(url.split("?", 1)[0].split("#", 1)[0][5:])).resolve()
                if any(path == root or root in path.parents for root in self.roots) and path.is_file():
                    return super().fetch(path.as_uri(), headers)
                raise FetchRefused(f"refused: {url} is outside the document resources")
            raise FetchRefused(f"refused: {url} (only local files and data: URLs are fetched)")

    return LocalOnlyFetcher


def url_fetcher(roots: Sequence[Path] = (TEMPLATES,)):
    """The renderer's URL fetcher (a ``weasyprint.urls.URLFetcher``): ``data:`` URLs and files in
    ``roots`` only. Calling it with any other URL raises ``FetchRefused``."""
    return _fetcher_class()(roots)


# ---------------------------------------------------------------------------------------------
# SVG drawings with their texts set as HTML
#
# WeasyPrint lays out SVG text one letter at a time, which makes a QR-bill's 35 lines of text cost
# more than the rest of the page. The QR-bill is therefore embedded without its <text> elements,
# and the texts are set in HTML at the same places, sizes and weights: texts that share
# a left (or right) edge become one absolutely positioned column whose lines are spaced by their
# baselines; centred texts on one baseline become one row. With line-height 1 a line's baseline
# is BASELINE_EM x its font size below its top.

SVG_NS = "http://www.w3.org/2000/svg"
BASELINE_EM = 0.8465   # Liberation Sans and DejaVu Sans: half-leading + ascent at line-height 1
CENTRED_WIDTH_MM = 16.0
_INHERITED = ("font-family", "font-size", "font-weight", "font-style", "fill", "text-anchor")
_SAFE_COLOUR = re.compile(r"^(#[0-9a-fA-F]{3,8}|[a-zA-Z]{1,20})$")
_SAFE_FAMILY = re.compile(r"^[A-Za-z0-9 ,\-]{1,80}$")
_NUMBER = re.compile(r"^\s*(-?[0-9.]+)\s*(px)?\s*$")


@dataclass(frozen=True)
class Drawing:
    """An SVG drawing (as a data: URL, its texts removed) and its texts as HTML blocks: each block
    has a ``cls``, a ``style`` and ``lines``, each line a ``cls``, a ``style`` and a ``text``."""

    src: str
    width_mm: float
    height_mm: float
    blocks: tuple[dict, ...]
    css: str = ""         # the font classes the blocks use


@dataclass(frozen=True)
class _Text:
    text: str
    x: float       # mm from the drawing's left edge
    y: float       # baseline, mm from the top
    size: float    # font size, mm
    anchor: str
    font: str      # CSS declarations of font and colour


def _num(value, default=None):
    m = _NUMBER.match(str(value)) if value is not None else None
    return float(m.group(1)) if m else default


def lift_text(svg: str, width_mm: float, height_mm: float, prefix: str = "t") -> Drawing:
    """Split an SVG drawing of ``width_mm`` x ``height_mm`` into the drawing without its texts and
    the texts as positioned HTML. A text under a transformed group stays in the drawing."""
    import xml.etree.ElementTree as ET

    ET.register_namespace("", SVG_NS)
    ET.register_namespace("xlink", "http://www.w3.org/1999/xlink")
    ET.register_namespace("ev", "http://www.w3.org/2001/xml-events")
    root = ET.fromstring(svg)
    view_box = [float(v) for v in re.split(r"[\s,]+", root.get("viewBox", "").strip()) if v]
    if len(view_box) != 4 or view_box[2] <= 0 or view_box[3] <= 0:
        return Drawing(_data_url(svg), width_mm, height_mm, ())
    sx, sy = width_mm / view_box[2], height_mm / view_box[3]
    texts: list[_Text] = []

    def walk(node, inherited, transformed):
        attrs = dict(inherited)
        for key in _INHERITED:
            if node.get(key) is not None:
                attrs[key] = node.get(key)
        transformed = transformed or (node is not root and node.get("transform") is not None)
        for child in list(node):
            if child.tag == f"{{{SVG_NS}}}text" and not transformed and len(child) == 0 \
                    and child.get("transform") is None:
                x, y = _num(child.get("x")), _num(child.get("y"))
                if x is None or y is None:
                    continue
                own = dict(attrs)
                for key in _INHERITED:
                    if child.get(key) is not None:
                        own[key] = child.get(key)
                texts.append(_text(child.text or "", (x - view_box[0]) * sx, (y - view_box[1]) * sy,
                                   own, sy))
                node.remove(child)
            else:
                walk(child, attrs, transformed)

    walk(root, {}, False)
    stripped = ET.tostring(root, encoding="unicode")
    blocks, css = _blocks(texts, width_mm, prefix)
    return Drawing(_data_url(stripped), width_mm, height_mm, blocks, css)


def _text(text: str, x: float, y: float, attrs: dict, scale: float) -> _Text:
    size = _num(attrs.get("font-size"), 16.0) * scale
    family = attrs.get("font-family", "sans-serif")
    family = family if _SAFE_FAMILY.match(family) else "sans-serif"
    weight = "bold" if str(attrs.get("font-weight", "")).strip() in ("bold", "700", "800", "900") else "normal"
    fill = attrs.get("fill", "#000")
    fill = fill if _SAFE_COLOUR.match(fill) else "#000"
    font = f"font-size:{size:.3f}mm;font-family:{family};font-weight:{weight};color:{fill}"
    if str(attrs.get("font-style", "")).strip() == "italic":
        font += ";font-style:italic"
    anchor = attrs.get("text-anchor", "start")
    anchor = anchor if anchor in ("start", "middle", "end") else "start"
    return _Text(text, x, y, size, anchor, font)


def _blocks(texts: list[_Text], width_mm: float, prefix: str) -> tuple[tuple[dict, ...], str]:
    """Columns of texts sharing an edge, rows of centred texts sharing a baseline; and the CSS of
    their fonts, one class per font (``{prefix}0``, ``{prefix}1``, ...)."""
    fonts: dict[str, str] = {}

    def font_class(font: str) -> str:
        return fonts.setdefault(font, f"{prefix}{len(fonts)}")

    groups: dict[tuple, list[_Text]] = {}
    for t in texts:
        key = ("row", round(t.y, 2), t.font) if t.anchor == "middle" else (t.anchor, round(t.x, 2))
        groups.setdefault(key, []).append(t)
    blocks = []
    for key, members in groups.items():
        if key[0] == "row":
            members.sort(key=lambda t: t.x)
            first = members[0]
            lines, edge = [], 0.0
            for t in members:
                left = t.x - CENTRED_WIDTH_MM / 2
                lines.append({"text": t.text, "cls": "", "style": Markup(f"margin-left:{left - edge:.3f}mm")})
                edge = left + CENTRED_WIDTH_MM
            blocks.append({"cls": f"lbl row {font_class(first.font)}", "lines": lines, "inline": True,
                           "style": Markup(f"top:{first.y - BASELINE_EM * first.size:.3f}mm;left:0;"
                                           f"width:{width_mm:.3f}mm")})
            continue
        anchor, x = key
        members.sort(key=lambda t: t.y)
        first = members[0]
        top = first.y - BASELINE_EM * first.size
        if anchor == "end":
            place = f"left:0;width:{max(x, 1):.3f}mm;text-align:right"
        else:
            place = f"left:{x:.3f}mm;width:{max(width_mm - x, 1):.3f}mm"
        lines, bottom = [], top
        for t in members:
            line_top = t.y - BASELINE_EM * t.size
            gap = line_top - bottom
            lines.append({"text": t.text, "cls": font_class(t.font),
                          "style": Markup(f"margin-top:{gap:.3f}mm" if abs(gap) >= 0.0005 else "")})
            bottom = line_top + t.size
        blocks.append({"cls": "lbl", "style": Markup(f"top:{top:.3f}mm;{place}"), "lines": lines,
                       "inline": False})
    css = "".join(f".{name}{{{font}}}" for font, name in fonts.items())
    return tuple(blocks), css


# ---------------------------------------------------------------------------------------------
# template context


@lru_cache(maxsize=1)
def _environment() -> jinja2.Environment:
    return jinja2.Environment(
        loader=jinja2.FileSystemLoader(str(TEMPLATES)),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
        trim_blocks=True,
        lstrip_blocks=True,
    )


# The user-agent stylesheet the documents are laid out with: only the display types of the
# elements the template uses. WeasyPrint's own HTML5 stylesheet (hundreds of rules, matched
# against every element) costs about a tenth of a document's rendering time.
UA_CSS = """
html, body, div, p, h1, h2 { display: block }
head, style, title, meta, script, link, template { display: none }
table { display: table; box-sizing: border-box }
thead { display: table-header-group }
tbody { display: table-row-group }
tfoot { display: table-footer-group }
tr { display: table-row }
td, th { display: table-cell }
sup { vertical-align: super; font-size: smaller }
"""


@lru_cache(maxsize=1)
def _stylesheet():
    weasyprint = _weasyprint()
    return weasyprint.CSS(filename=str(TEMPLATES / "invoice.css"), url_fetcher=url_fetcher())


@lru_cache(maxsize=1)
def _html_class():
    weasyprint = _weasyprint()
    ua = weasyprint.CSS(string=UA_CSS, url_fetcher=url_fetcher())

    class DocumentHTML(weasyprint.HTML):
        """An HTML document laid out with ``UA_CSS`` as its user-agent stylesheet."""

        def _ua_stylesheets(self, forms=False):
            return [ua]

    return DocumentHTML


@lru_cache(maxsize=1)
def _font_config():
    """One font configuration per process: the system fonts are looked up once, not per document."""
    from weasyprint.text.fonts import FontConfiguration
    return FontConfiguration()


def _data_url(svg: str) -> str:
    return "data:image/svg+xml;base64," + base64.b64encode(svg.encode("utf-8")).decode("ascii")


def _css_string(value: str) -> str:
    """``value`` as a CSS string literal: letters, digits and a few punctuation marks as they are,
    every other character as a CSS escape (so no value can end the string or the style)."""
    safe = " .,-:/_"
    return '"' + "".join(ch if ch.isalnum() or ch in safe else f"\\{ord(ch):x} " for ch in value) + '"'


def _address_lines(party: Party, language: str) -> list[str]:
    street = " ".join(x for x in ((party.street or "").strip(), (party.number or "").strip()) if x)
    town = " ".join(x for x in ((party.postcode or "").strip(), (party.town or "").strip()) if x)
    country = (party.country or "CH").strip().upper()
    lines = [x for x in (street, town) if x]
    if country not in ("CH", ""):
        lines.append(i18n.country_name(country, language))
    return lines


def validate(doc: InvoiceDocument) -> None:
    """Refuse a document the renderer cannot show truthfully (ValueError naming the problem)."""
    if doc.kind not in KINDS:
        raise ValueError(f"{doc.invoice_id}: kind {doc.kind!r} is not one of {', '.join(KINDS)}")
    if doc.language not in LANGUAGES:
        raise ValueError(f"{doc.invoice_id}: language {doc.language!r} is not one of {', '.join(LANGUAGES)}")
    for name in ("net_amount_chf", "import_cost_ct", "export_revenue_ct",
                 "energy_imported_kwh", "energy_exported_kwh"):
        value = getattr(doc, name)
        try:
            finite = Decimal(str(value)).is_finite()
        except Exception:
            finite = False
        if not finite:
            raise ValueError(f"{doc.invoice_id}: {name} is {value!r}, not a number")


def _decimals(value: float) -> int:
    """The decimals an axis value needs (its scale steps are 1, 2, 2.5 or 5 times a power of ten)."""
    for places in range(4):
        if abs(value * 10 ** places - round(value * 10 ** places)) < 1e-9:
            return places
    return 4


def _difference(start, end):
    if start is None or end is None:
        return None
    try:
        return Decimal(str(end)) - Decimal(str(start))
    except Exception:
        return None


def build_context(doc: InvoiceDocument) -> dict:
    """Everything the template shows, formatted for the document's language."""
    validate(doc)
    lang = doc.language
    t = {key: values[lang] for key, values in i18n.TEXTS.items()}
    title = t[f"title_{doc.kind}"]

    import_amount = i18n.chf(Decimal(str(doc.import_cost_ct)) / 100)
    export_amount = i18n.chf(Decimal(str(doc.export_revenue_ct)) / 100)
    net = i18n.chf(doc.net_amount_chf)
    owed = -net                                   # what the house owes; negative: a credit
    if doc.kind == "credit_note" and \
            abs(owed + (import_amount - export_amount)) < abs(owed - (import_amount - export_amount)):
        # the figures are those of the cancelled invoice: its charges are reversed
        import_amount, export_amount = -import_amount, -export_amount
    rounding = owed - (import_amount - export_amount)
    if net < 0:
        balance, words = "due", t["amount_due"]
    elif net > 0:
        balance, words = "credit", t["credit_to_you"]
    else:
        balance, words = "zero", t["balanced"]

    qr_drawing = qr_svg(doc, raster_code=True) if has_qr_bill(doc) else None
    qr = lift_text(qr_drawing, 210.0, 106.0, prefix="q") if qr_drawing else None
    if doc.kind == "draft":
        payment_note = ""
    elif doc.kind == "credit_note":
        payment_note = t["credit_paid"] if net > 0 else ""
    elif net < 0:
        payment_note = t["pay_with_qr"] if qr else t["pay_transfer"]
        if doc.due_date:
            payment_note += " " + t["due_date"] + ": " + i18n.fmt_date(doc.due_date, lang) + "."
    elif net > 0:
        payment_note = t["credit_paid"]
    else:
        payment_note = t["nothing_to_pay"]

    notes = []
    estimated_key = "note_estimated_dso" if doc.leg else "note_estimated"     # the DSO's estimate, not a gap filled
    for key, n in ((estimated_key, doc.estimated_intervals), ("note_reset", doc.reset_intervals),
                   ("note_missing", doc.missing_intervals)):
        if n and n > 0:
            notes.append(i18n.plural_text(key, int(n), lang))
    if doc.leg:
        notes.append(i18n.text("note_leg", lang,
                               grid_con=i18n.fmt_kwh(Decimal(str(doc.leg.get("grid_share_consumed_kwh", 0))), lang),
                               grid_fed=i18n.fmt_kwh(Decimal(str(doc.leg.get("grid_share_fed_in_kwh", 0))), lang),
                               saving=i18n.fmt_chf(Decimal(str(doc.leg.get("grid_fee_saving_ct", 0))) / 100, lang)))

    if doc.savings_ct is not None and doc.savings_ct > 0 and doc.kind != "credit_note" and doc.tariffs:
        last = doc.tariffs[-1]
        notes.append(i18n.text("note_savings", lang, saving=i18n.fmt_chf(doc.savings_ct / 100, lang),
                               grid_con=i18n.fmt_number(Decimal(str(last["p_grid_con"])), lang, 2),
                               grid_del=i18n.fmt_number(Decimal(str(last["p_grid_del"])), lang, 2)))

    readings = []
    for label, start, end in ((t["reading_import"], doc.counter_start_import_kwh, doc.counter_end_import_kwh),
                              (t["reading_export"], doc.counter_start_export_kwh, doc.counter_end_export_kwh)):
        readings.append({
            "label": label,
            "start": i18n.fmt_number(start, lang, 1),
            "end": i18n.fmt_number(end, lang, 1),
            "diff": i18n.fmt_number(_difference(start, end), lang, 1),
        })

    tariffs = []
    for row in doc.tariffs or ():
        row = row if isinstance(row, dict) else {}
        mode = str(row.get("mode", ""))
        tariffs.append({
            "effective_from": i18n.fmt_effective_from(row.get("effective_from", ""), lang),
            "mode": i18n.TEXTS.get(f"mode_{mode}", {}).get(lang, mode),
            "p_pv": i18n.fmt_ct_plain(row.get("p_pv"), lang),
            "p_grid_con": i18n.fmt_ct_plain(row.get("p_grid_con"), lang),
            "p_grid_del": i18n.fmt_ct_plain(row.get("p_grid_del"), lang),
        })

    # the chart's few short labels are cheaper as SVG text than as positioned HTML
    chart_svg = daily_chart_svg(
        doc.daily, doc.period_start, doc.period_end,
        import_label=t["chart_import"], export_label=t["chart_export"], unit="kWh",
        no_data_label=t["chart_no_data"],
        number_format=lambda v: i18n.fmt_number(v, lang, _decimals(v)),
        width_mm=CHART_MM[0], height_mm=CHART_MM[1],
    )
    chart = Drawing(_data_url(chart_svg), CHART_MM[0], CHART_MM[1], ())

    sender_town = " ".join(x for x in ((doc.sender.postcode or "").strip(), (doc.sender.town or "").strip()) if x)
    return_line = ", ".join(x for x in ((doc.sender.name or "").strip(), " ".join(
        x for x in ((doc.sender.street or "").strip(), (doc.sender.number or "").strip()) if x), sender_town) if x)
    # page numbers on every page; the document's title and number on the pages after the first
    page_css = ("@page { @top-right { content: " + _css_string(t["page"] + " ") + " counter(page) "
                + _css_string(" " + t["of"] + " ") + " counter(pages); } "
                + "@top-left { content: " + _css_string(f"{title} {doc.invoice_id}") + "; } } "
                + "@page :first { @top-left { content: none; } }"
                + chart.css + (qr.css if qr else ""))

    return {
        "doc": doc,
        "t": t,
        "lang_tag": i18n.LOCALES[lang].replace("_", "-"),
        "title": title,
        "is_draft": doc.kind == "draft",
        "number_label": t[f"number_{doc.kind}"],
        "cancels": (t["cancels"].format(ref=doc.refers_to)
                    if doc.kind == "credit_note" and doc.refers_to else ""),
        "created": doc.issue_date.isoformat(),
        "page_css": Markup(page_css),
        "sender_lines": _address_lines(doc.sender, lang),
        "recipient_lines": _address_lines(doc.recipient, lang),
        "return_line": return_line,
        "issue_date": i18n.fmt_date(doc.issue_date, lang),
        "due_date": i18n.fmt_date(doc.due_date, lang) if doc.due_date else "",
        "period_text": i18n.fmt_period(doc.period_start, doc.period_end, lang),
        "start_short": i18n.fmt_short_date(doc.period_start, lang),
        "end_short": i18n.fmt_short_date(doc.period_end, lang),
        "meters_label": t["meter"] if len(doc.meter_ids) == 1 else t["meters"],
        "meters": ", ".join(str(m) for m in doc.meter_ids) or i18n.DASH,
        "energy_imported": i18n.fmt_kwh(doc.energy_imported_kwh, lang),
        "energy_exported": i18n.fmt_kwh(doc.energy_exported_kwh, lang),
        "avg_con": i18n.fmt_ct(doc.avg_p_con_ct, lang),
        "avg_pv": i18n.fmt_ct(doc.avg_p_pv_ct, lang),
        "import_amount": i18n.fmt_chf_signed(import_amount, lang),
        "export_amount": i18n.fmt_chf_signed(-export_amount, lang),
        "rounding": i18n.fmt_chf_signed(rounding, lang) if rounding else "",
        "balance": balance,
        "total_words": words,
        "total_amount": i18n.fmt_chf(net, lang),
        "amount_due": amount_due(doc),
        "payment_note": payment_note,
        "readings": readings,
        "local_solar_share": i18n.fmt_percent(doc.local_solar_share, lang),
        "self_sufficiency": i18n.fmt_percent(doc.self_sufficiency, lang),
        "tariffs": tariffs,
        "ct_unit": i18n.UNITS["ct_kwh"][lang],
        "notes": notes,
        "note_numbers": list(range(1, len(notes) + 1)),
        "chart": chart,
        "qr": qr,
    }


def render_html(doc: InvoiceDocument) -> str:
    """The document as HTML (what ``render_pdf`` lays out)."""
    return _environment().get_template("invoice.html").render(build_context(doc))


# ---------------------------------------------------------------------------------------------
# PDF


def pdf_identifier(doc: InvoiceDocument) -> bytes:
    """The PDF file identifier: fixed per invoice id and kind, so repeated renders are identical."""
    return hashlib.md5(f"{doc.kind}:{doc.invoice_id}".encode("utf-8"), usedforsecurity=False).hexdigest().encode()


def render_pdf(doc: InvoiceDocument) -> bytes:
    """The document as PDF bytes; the same document always gives the same bytes."""
    html = _html_class()(string=render_html(doc), base_url=str(TEMPLATES) + os.sep,
                         url_fetcher=url_fetcher())
    return html.write_pdf(
        stylesheets=[_stylesheet()],
        font_config=_font_config(),
        pdf_identifier=pdf_identifier(doc),
        uncompressed_pdf=False,
        custom_metadata=False,
    )


def _render_indexed(item: tuple[int, InvoiceDocument]) -> tuple[int, bytes]:
    index, doc = item
    return index, render_pdf(doc)


def _warm_up() -> None:
    """Run in each worker when it starts: load WeasyPrint, the template and the stylesheet."""
    _html_class()
    _environment().get_template("invoice.html")
    _stylesheet()
    _font_config()


def default_workers() -> int:
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # not on Linux
        return max(1, os.cpu_count() or 1)


# What the fork server imports before it forks workers: they start with WeasyPrint loaded.
FORK_SERVER_PRELOAD = ["documents.render", "weasyprint"]


def _fork_server_context():
    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(FORK_SERVER_PRELOAD)
    return context


def start_fork_server() -> None:
    """Start the fork server that ``render_many``'s workers are forked from (it imports WeasyPrint,
    about a second), so that the first ``render_many`` does not wait for it. Optional: call it at
    start-up, from any thread. The server lives as long as this process."""
    from multiprocessing import forkserver

    _fork_server_context()
    forkserver.ensure_running()


def render_many(docs: Iterable[InvoiceDocument], workers: int | None = None,
                progress: Callable[[int, int], None] | None = None) -> list[bytes]:
    """PDF bytes of every document, in the order given.

    Renders in ``workers`` processes (default: one per available core) started with the
    ``forkserver`` method, so a caller with threads is safe; with one worker or one document it
    renders in this process. ``progress(done, total)`` is called in the calling thread after each
    document (and once with ``(0, total)`` before the first). A failing document raises
    ``RenderError`` naming it; the documents not yet started are cancelled.

    As always with the forkserver and spawn methods, the program's main module is imported once
    more (by the fork server), so its start-up code must sit under ``if __name__ == "__main__"``.
    """
    docs = list(docs)
    total = len(docs)
    if progress:
        progress(0, total)
    if total == 0:
        return []
    for doc in docs:  # refuse bad documents before starting processes
        try:
            validate(doc)
        except ValueError as exc:
            raise RenderError(str(exc)) from exc
    workers = default_workers() if workers is None else int(workers)
    workers = max(1, min(workers, total))
    results: list[bytes | None] = [None] * total

    if workers == 1:
        for i, doc in enumerate(docs):
            try:
                results[i] = render_pdf(doc)
            except Exception as exc:
                raise RenderError(f"{doc.invoice_id}: {type(exc).__name__}: {exc}") from exc
            if progress:
                progress(i + 1, total)
        return results  # type: ignore[return-value]

    context = _fork_server_context()
    done = 0
    with ProcessPoolExecutor(max_workers=workers, mp_context=context, initializer=_warm_up) as pool:
        futures = {pool.submit(_render_indexed, (i, doc)): i for i, doc in enumerate(docs)}
        try:
            for future in as_completed(futures):
                i = futures[future]
                try:
                    index, pdf = future.result()
                except Exception as exc:
                    raise RenderError(f"{docs[i].invoice_id}: {type(exc).__name__}: {exc}") from exc
                results[index] = pdf
                done += 1
                if progress:
                    progress(done, total)
        except BaseException:
            for future in futures:
                future.cancel()
            raise
    return results  # type: ignore[return-value]
