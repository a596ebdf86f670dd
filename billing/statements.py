"""The annual statement of one house: for a calendar year (community time zone) that has closed
billing periods, the year's issued invoices of the house (with their credit notes) and its energy
by month, as a PDF (de/fr/it/en) and a CSV.

    years_with_closed_periods(community)   -> [2027, 2026]          (newest first)
    st = statement(community, "3", 2026)   -> Statement
    statement_csv(st)                      -> bytes (UTF-8)
    statement_pdf(community, st, "fr")     -> bytes (WeasyPrint; default: the house's language)

The months. Every calendar month of the year that has begun and in which the house has stored
15-minute intervals, priced as the settlement prices them: ``compute_settlement`` over that
month (the community's intervals and the tariffs in force), its figures rounded once per month
as an invoice is (energies to 0.001 kWh, amounts to 0.01 ct from the unrounded interval values;
``cost_chf`` and ``credit_chf`` are those amounts in CHF to the Rappen, ``net_chf`` is
``(credit_ct - cost_ct) / 100`` to the Rappen, as an invoice's ``net_amount_chf``). For a
community that bills by month, a month's figures are therefore its invoice's figures, as long as
the stored intervals are those the period was closed with. For quarters and years the months add
up to the invoice up to the rounding of each month (a few Rappen at most). ``period_id`` names the
closed period that billed the month ('' while the month is not billed yet).

The invoices. The house's issued invoices of the year's closed periods (a period lies in one
calendar year), oldest first, each with its credit note when it was cancelled.

The CSV. One table with a ``kind`` column (``CSV_FIELDS``): ``month`` rows (one per month, in
order), then ``total`` (the months' sums), then per invoice an ``invoice`` row followed by its
``credit_note`` row if any. Amounts are decimals with a point; ``net_chf`` is signed as on the
invoices: negative, the house owes it; positive, a credit to the house.
"""
from __future__ import annotations

import csv
import hashlib
import io
import os
from dataclasses import dataclass, field
from datetime import date
from decimal import ROUND_HALF_UP, Decimal

import pandas as pd

from billing.settlement import compute_settlement, parse_period

CSV_FIELDS = ["kind", "house_id", "month", "period_id", "document_id", "refers_to", "date", "status",
              "imported_kwh", "exported_kwh", "cost_chf", "credit_chf", "net_chf"]

_CHF = Decimal("0.01")
_ZERO_KWH = Decimal("0.000")
_ZERO_CHF = Decimal("0.00")

# Texts of the statement (documents.i18n has those of the invoices; the shared ones come from there).
TEXTS: dict[str, dict[str, str]] = {
    "title": {"de": "Jahresabrechnung", "fr": "Décompte annuel", "it": "Conteggio annuale",
              "en": "Annual statement"},
    "year": {"de": "Jahr", "fr": "Année", "it": "Anno", "en": "Year"},
    "periods": {"de": "Perioden", "fr": "Périodes", "it": "Periodi", "en": "Periods"},
    "months_heading": {"de": "Ihr Strom Monat für Monat", "fr": "Votre électricité mois par mois",
                       "it": "La vostra elettricità mese per mese", "en": "Your electricity month by month"},
    "col_month": {"de": "Monat", "fr": "Mois", "it": "Mese", "en": "Month"},
    "col_bought": {"de": "Bezogen", "fr": "Acheté", "it": "Acquistato", "en": "Bought"},
    "col_delivered": {"de": "Geliefert", "fr": "Livré", "it": "Fornito", "en": "Delivered"},
    "col_cost": {"de": "Kosten", "fr": "Coût", "it": "Costo", "en": "Cost"},
    "col_credit": {"de": "Vergütung", "fr": "Rétribution", "it": "Rimunerazione", "en": "Credit"},
    "col_net": {"de": "Saldo", "fr": "Solde", "it": "Saldo", "en": "Balance"},
    "total": {"de": "Total", "fr": "Total", "it": "Totale", "en": "Total"},
    "no_months": {"de": "Für dieses Jahr sind keine Messwerte gespeichert.",
                  "fr": "Aucune valeur de mesure n’est enregistrée pour cette année.",
                  "it": "Per quest’anno non sono registrati valori di misura.",
                  "en": "No metering values are stored for this year."},
    "not_billed": {"de": "offen", "fr": "ouvert", "it": "aperto", "en": "open"},
    "invoices_heading": {"de": "Rechnungen und Gutschriften", "fr": "Factures et notes de crédit",
                         "it": "Fatture e note di credito", "en": "Invoices and credit notes"},
    "col_document": {"de": "Nummer", "fr": "Numéro", "it": "Numero", "en": "Number"},
    "col_period": {"de": "Periode", "fr": "Période", "it": "Periodo", "en": "Period"},
    "col_status": {"de": "Status", "fr": "Statut", "it": "Stato", "en": "Status"},
    "col_due": {"de": "Zu bezahlen", "fr": "À payer", "it": "Da pagare", "en": "Due"},
    "col_credited": {"de": "Guthaben", "fr": "Avoir", "it": "Credito", "en": "Credit"},
    "no_invoices": {"de": "In diesem Jahr wurden für dieses Haus keine Rechnungen ausgestellt.",
                    "fr": "Aucune facture n’a été émise pour cette maison cette année.",
                    "it": "Quest’anno non sono state emesse fatture per questa casa.",
                    "en": "No invoices were issued for this house in this year."},
    "credit_note_for": {"de": "Gutschrift zu {ref}", "fr": "Note de crédit pour {ref}",
                        "it": "Nota di credito per {ref}", "en": "Credit note for {ref}"},
    "credit_note_date": {"de": "vom {date}", "fr": "du {date}", "it": "del {date}", "en": "of {date}"},
    "status_issued": {"de": "ausgestellt", "fr": "émise", "it": "emessa", "en": "issued"},
    "status_partially_paid": {"de": "teilweise bezahlt", "fr": "partiellement payée",
                              "it": "parzialmente pagata", "en": "partly paid"},
    "status_paid": {"de": "bezahlt", "fr": "payée", "it": "pagata", "en": "paid"},
    "status_cancelled": {"de": "storniert", "fr": "annulée", "it": "annullata", "en": "cancelled"},
    "invoiced_net": {"de": "Saldo der Rechnungen und Gutschriften", "fr": "Solde des factures et notes de crédit",
                     "it": "Saldo delle fatture e note di credito", "en": "Balance of invoices and credit notes"},
    "note_rounding": {
        "de": "Die Monatsbeträge sind aus den 15-Minuten-Werten mit den gültigen Tarifen berechnet und je Monat "
              "gerundet. Bei Rechnungen über mehrere Monate können sie um Rundungsrappen von der Rechnung abweichen.",
        "fr": "Les montants mensuels sont calculés à partir des valeurs au quart d’heure avec les tarifs en vigueur "
              "et arrondis par mois. Pour une facture de plusieurs mois, ils peuvent s’en écarter de quelques "
              "centimes d’arrondi.",
        "it": "Gli importi mensili sono calcolati dai valori al quarto d’ora con le tariffe in vigore e arrotondati "
              "per mese. Per una fattura di più mesi possono scostarsene di qualche centesimo d’arrotondamento.",
        "en": "Monthly amounts are computed from the 15-minute values with the tariffs in force and rounded per "
              "month. For an invoice covering several months they can differ from it by a few Rappen of rounding.",
    },
    "note_sign": {
        "de": "Saldo: negativ ist von Ihnen zu bezahlen, positiv ist Ihr Guthaben.",
        "fr": "Solde : négatif, montant à payer ; positif, votre avoir.",
        "it": "Saldo: negativo, importo da pagare; positivo, il vostro credito.",
        "en": "Balance: negative is due from you, positive is a credit to you.",
    },
    "note_missing": {
        "de": "In {months} fehlen Messintervalle; sie sind nicht enthalten.",
        "fr": "Des intervalles de mesure manquent en {months} ; ils ne sont pas compris.",
        "it": "Mancano intervalli di misura in {months}; non sono compresi.",
        "en": "Metering intervals are missing in {months}; they are not included.",
    },
    "note_open": {
        "de": "Offene Monate sind noch nicht abgerechnet; ihre Beträge sind vorläufig.",
        "fr": "Les mois ouverts ne sont pas encore décomptés ; leurs montants sont provisoires.",
        "it": "I mesi aperti non sono ancora conteggiati; i loro importi sono provvisori.",
        "en": "Open months are not billed yet; their amounts are provisional.",
    },
}


@dataclass
class Statement:
    house_id: str
    house_name: str
    year: int
    months: list[dict]        # month 'YYYY-MM', imported_kwh, exported_kwh, cost_chf, credit_chf, net_chf, ...
    invoices: list[dict]      # invoice_id, period_id, period_start, period_end, status, net_amount_chf, ...
    totals: dict              # the months' sums and the invoices' balance
    closed_periods: list[str] = field(default_factory=list)   # the year's closed periods, oldest first
    created: date | None = None                               # local date the statement was made


# ---------------------------------------------------------------------------------------------
# figures


def _chf(x) -> Decimal:
    return (Decimal(str(x)) + 0).quantize(_CHF, rounding=ROUND_HALF_UP)


def _closed_periods(community) -> list[dict]:
    return [p for p in community.ledger.periods() if p["status"] == "closed"]


def _year_of(period: dict, tz) -> int:
    return pd.Timestamp(period["start_utc"]).tz_convert(tz).year


def years_with_closed_periods(community) -> list[int]:
    """The calendar years (community time zone) with at least one closed period, newest first."""
    return sorted({_year_of(p, community.tz) for p in _closed_periods(community)}, reverse=True)


def _check_year(community, year) -> tuple[int, list[dict]]:
    try:
        y = int(year)
    except (TypeError, ValueError):
        raise ValueError(f"year {str(year)[:20]!r}: expected a calendar year, e.g. 2026") from None
    periods = sorted((p for p in _closed_periods(community) if _year_of(p, community.tz) == y),
                     key=lambda p: p["start_utc"])
    if not periods:
        years = years_with_closed_periods(community)
        have = (f"statements exist for {', '.join(str(v) for v in years)}" if years
                else "no period has been closed yet")
        raise ValueError(f"year {y} has no closed billing period; {have}")
    return y, periods


def _house(community, house_id):
    hid = str(house_id)
    h = next((h for h in community.ledger.houses(active_only=False) if h.house_id == hid), None)
    if h is None:
        raise ValueError(f"house {hid[:40]!r} is not a house of this community")
    return h


def _monthly(community, year: int, periods: list[dict], house_ids: set[str]) -> dict[str, list[dict]]:
    """House id -> its month rows of ``year``: one settlement per month, as the period's would price it."""
    now = pd.Timestamp(community.clock())
    houses = community.ledger.houses(active_only=False)
    tariffs = community.ledger.tariff_versions()
    billed = [(pd.Timestamp(p["start_utc"]), pd.Timestamp(p["end_utc"]), p["period_id"]) for p in periods]
    out: dict[str, list[dict]] = {h: [] for h in house_ids}
    for m in range(1, 13):
        period = parse_period(f"{year}-{m:02d}", community.tz)
        if period.start >= now:
            break
        s = compute_settlement(community.store, houses, tariffs, period, community.interval_s,
                               allow_incomplete=True, now=now)
        by = next((pid for a, b, pid in billed if a <= period.start and period.end <= b), "")
        for inv in s.invoices:
            hid, d = inv["house_id"], inv["details"]
            if hid not in house_ids or not d.get("intervals"):
                continue
            cost_ct, credit_ct = inv["import_cost_ct"], inv["export_revenue_ct"]
            out[hid].append({
                "month": period.period_id,
                "period_id": by,
                "imported_kwh": inv["energy_imported_kwh"],
                "exported_kwh": inv["energy_exported_kwh"],
                "cost_ct": cost_ct,
                "credit_ct": credit_ct,
                "cost_chf": _chf(cost_ct / 100),
                "credit_chf": _chf(credit_ct / 100),
                "net_chf": inv["net_amount_chf"],
                "intervals": int(d.get("intervals", 0)),
                "missing_intervals": int(d.get("missing_intervals", 0) or 0),
            })
    return out


def _invoices(community, house_id: str, period_ids: set[str]) -> list[dict]:
    notes = {n["invoice_id"]: n for n in community.ledger.credit_notes()}
    tz = community.tz
    rows = []
    for inv in community.ledger.invoices_of([house_id]):
        if inv["period_id"] not in period_ids:
            continue
        note = notes.get(inv["invoice_id"])
        rows.append({
            "invoice_id": inv["invoice_id"],
            "period_id": inv["period_id"],
            "period_start": inv["period_start"][:10],
            "period_end": inv["period_end"][:10],
            "issued_on": pd.Timestamp(inv["issued_at"]).tz_convert(tz).date().isoformat(),
            "status": inv["status"],
            "energy_imported_kwh": Decimal(str(inv["energy_imported_kwh"])),
            "energy_exported_kwh": Decimal(str(inv["energy_exported_kwh"])),
            "import_cost_chf": _chf(Decimal(str(inv["import_cost_ct"])) / 100),
            "export_revenue_chf": _chf(Decimal(str(inv["export_revenue_ct"])) / 100),
            "net_amount_chf": Decimal(str(inv["net_amount_chf"])),
            "credit_note_id": note["credit_note_id"] if note else None,
            "credit_note_on": (pd.Timestamp(note["issued_at"]).tz_convert(tz).date().isoformat()
                               if note else None),
            "credit_note_chf": Decimal(note["net_amount_chf"]) + 0 if note else None,
        })
    rows.sort(key=lambda r: (r["period_start"], r["invoice_id"]))
    return rows


def _totals(months: list[dict], invoices: list[dict]) -> dict:
    def total(rows, key, zero):
        return sum((r[key] for r in rows if r[key] is not None), zero)
    invoiced = total(invoices, "net_amount_chf", _ZERO_CHF)
    credited = total(invoices, "credit_note_chf", _ZERO_CHF)
    return {
        "imported_kwh": total(months, "imported_kwh", _ZERO_KWH),
        "exported_kwh": total(months, "exported_kwh", _ZERO_KWH),
        "cost_chf": total(months, "cost_chf", _ZERO_CHF),
        "credit_chf": total(months, "credit_chf", _ZERO_CHF),
        "net_chf": total(months, "net_chf", _ZERO_CHF),
        "invoiced_chf": invoiced,                 # the invoices' net amounts
        "credit_notes_chf": credited,             # their credit notes (the opposite sign)
        "balance_chf": invoiced + credited,       # what stands after cancellations
    }


def statements(community, year: int, house_ids: list[str] | None = None) -> list[Statement]:
    """The statements of several houses (default: every house) for ``year``, the months priced once."""
    y, periods = _check_year(community, year)
    houses = [_house(community, h) for h in house_ids] if house_ids is not None else \
        community.ledger.houses(active_only=False)
    monthly = _monthly(community, y, periods, {h.house_id for h in houses})
    ids = {p["period_id"] for p in periods}
    created = pd.Timestamp(community.clock()).tz_convert(community.tz).date()
    out = []
    for h in houses:
        invoices = _invoices(community, h.house_id, ids)
        months = monthly[h.house_id]
        out.append(Statement(h.house_id, h.name, y, months, invoices, _totals(months, invoices),
                             [p["period_id"] for p in periods], created))
    return out


def statement(community, house_id: str, year: int) -> Statement:
    """The annual statement of one house. ValueError when the year has no closed period or the
    house is unknown."""
    y, _ = _check_year(community, year)
    _house(community, house_id)
    return statements(community, y, [str(house_id)])[0]


# ---------------------------------------------------------------------------------------------
# CSV


def _s(x) -> str:
    return "" if x is None else str(x)


def statement_csv(st: Statement) -> bytes:
    """The statement as CSV (UTF-8, ``CSV_FIELDS``; see the module's docstring)."""
    buf = io.StringIO()
    w = csv.DictWriter(buf, fieldnames=CSV_FIELDS, lineterminator="\n")
    w.writeheader()
    base = {k: "" for k in CSV_FIELDS} | {"house_id": st.house_id}
    for m in st.months:
        w.writerow(base | {"kind": "month", "month": m["month"], "period_id": m["period_id"],
                           "imported_kwh": _s(m["imported_kwh"]), "exported_kwh": _s(m["exported_kwh"]),
                           "cost_chf": _s(m["cost_chf"]), "credit_chf": _s(m["credit_chf"]),
                           "net_chf": _s(m["net_chf"])})
    t = st.totals
    w.writerow(base | {"kind": "total", "month": str(st.year), "imported_kwh": _s(t["imported_kwh"]),
                       "exported_kwh": _s(t["exported_kwh"]), "cost_chf": _s(t["cost_chf"]),
                       "credit_chf": _s(t["credit_chf"]), "net_chf": _s(t["net_chf"])})
    for inv in st.invoices:
        w.writerow(base | {"kind": "invoice", "period_id": inv["period_id"], "document_id": inv["invoice_id"],
                           "date": inv["issued_on"], "status": inv["status"],
                           "imported_kwh": _s(inv["energy_imported_kwh"]),
                           "exported_kwh": _s(inv["energy_exported_kwh"]),
                           "cost_chf": _s(inv["import_cost_chf"]), "credit_chf": _s(inv["export_revenue_chf"]),
                           "net_chf": _s(inv["net_amount_chf"])})
        if inv["credit_note_id"]:
            w.writerow(base | {"kind": "credit_note", "period_id": inv["period_id"],
                               "document_id": inv["credit_note_id"], "refers_to": inv["invoice_id"],
                               "date": inv["credit_note_on"], "net_chf": _s(inv["credit_note_chf"])})
    return buf.getvalue().encode("utf-8")


def csv_name(st: Statement) -> str:
    return f"statement-{st.year}-house-{st.house_id}.csv"


def pdf_name(st: Statement) -> str:
    return f"statement-{st.year}-house-{st.house_id}.pdf"


# ---------------------------------------------------------------------------------------------
# PDF


def statement_language(community, house_id: str, language: str | None = None) -> str:
    """``language`` if given (checked), else the house's language, else the community's."""
    from billing.invoice_documents import recipient
    from documents.model import LANGUAGES
    if language is not None:
        if language not in LANGUAGES:
            raise ValueError(f"language {str(language)[:10]!r}: expected one of {', '.join(LANGUAGES)}")
        return language
    return recipient(community.cfg, house_id, house_id)[1]


def _month_name(month_id: str, lang: str) -> str:
    from babel.dates import format_date
    from documents import i18n
    return format_date(date(int(month_id[:4]), int(month_id[5:7]), 1), "LLLL", locale=i18n.locale(lang)).capitalize()


def _period_text(inv: dict, lang: str) -> str:
    from documents import i18n
    start, end = date.fromisoformat(inv["period_start"]), date.fromisoformat(inv["period_end"])
    return f"{i18n.fmt_short_date(start, lang)} – {i18n.fmt_short_date(end, lang)}"


def _due_credit(net: Decimal, lang: str) -> tuple[str, str]:
    """(due, credit) cells of an amount signed as on invoices (negative: the house owes it)."""
    from documents import i18n
    if net < 0:
        return i18n.fmt_number(-net, lang, 2), ""
    if net > 0:
        return "", i18n.fmt_number(net, lang, 2)
    return i18n.fmt_number(net, lang, 2), ""


def build_context(community, st: Statement, language: str | None = None) -> dict:
    """Everything ``documents/templates/statement.html`` shows, formatted for the language."""
    from markupsafe import Markup

    from billing.invoice_documents import recipient, sender
    from documents import i18n
    from documents.render import _address_lines, _css_string

    lang = statement_language(community, st.house_id, language)
    t = {k: v[lang] for k, v in TEXTS.items()}
    shared = {k: i18n.TEXTS[k][lang] for k in ("date", "house", "page", "of")}
    num = lambda x, places: i18n.fmt_number(x, lang, places)
    who, _ = recipient(community.cfg, st.house_id, st.house_name)
    frm = sender(community.cfg)
    title = f"{t['title']} {st.year}"

    months = [{"name": _month_name(m["month"], lang), "imported": num(m["imported_kwh"], 1),
               "exported": num(m["exported_kwh"], 1), "cost": num(m["cost_chf"], 2),
               "credit": num(m["credit_chf"], 2), "net": i18n.fmt_number(m["net_chf"], lang, 2).replace("-", i18n.MINUS),
               "period": m["period_id"] or t["not_billed"], "open": not m["period_id"]} for m in st.months]
    tt = st.totals
    totals = {"imported": num(tt["imported_kwh"], 1), "exported": num(tt["exported_kwh"], 1),
              "cost": num(tt["cost_chf"], 2), "credit": num(tt["credit_chf"], 2),
              "net": num(tt["net_chf"], 2).replace("-", i18n.MINUS)}
    rows = []
    for inv in st.invoices:
        due, credit = _due_credit(inv["net_amount_chf"], lang)
        rows.append({"document": inv["invoice_id"], "period": _period_text(inv, lang),
                     "status": t.get(f"status_{inv['status']}", inv["status"]), "due": due, "credit": credit,
                     "note": False})
        if inv["credit_note_id"]:
            due, credit = _due_credit(inv["credit_note_chf"], lang)
            rows.append({"document": inv["credit_note_id"],
                         "period": t["credit_note_for"].format(ref=inv["invoice_id"]),
                         "status": t["credit_note_date"].format(
                             date=i18n.fmt_short_date(date.fromisoformat(inv["credit_note_on"]), lang)),
                         "due": due, "credit": credit, "note": True})
    balance_due, balance_credit = _due_credit(tt["balance_chf"], lang)

    notes = [t["note_sign"], t["note_rounding"]]
    missing = [_month_name(m["month"], lang) for m in st.months if m["missing_intervals"]]
    if missing:
        notes.append(t["note_missing"].format(months=", ".join(missing)))
    if any(not m["period_id"] for m in st.months):
        notes.append(t["note_open"])

    house_label = f"{st.house_id} ({st.house_name})" if st.house_name and st.house_name != st.house_id \
        else st.house_id
    sender_town = " ".join(x for x in ((frm.postcode or "").strip(), (frm.town or "").strip()) if x)
    return_line = ", ".join(x for x in ((frm.name or "").strip(), " ".join(
        x for x in ((frm.street or "").strip(), (frm.number or "").strip()) if x), sender_town) if x)
    page_css = ("@page { @top-right { content: " + _css_string(shared["page"] + " ") + " counter(page) "
                + _css_string(" " + shared["of"] + " ") + " counter(pages); } "
                + "@top-left { content: " + _css_string(f"{title}, {shared['house']} {st.house_id}") + "; } } "
                + "@page :first { @top-left { content: none; } }")
    created = st.created or pd.Timestamp(community.clock()).tz_convert(community.tz).date()
    return {
        "t": t, "shared": shared, "lang_tag": i18n.LOCALES[lang].replace("_", "-"), "title": title,
        "page_css": Markup(page_css), "created": created.isoformat(), "issue_date": i18n.fmt_date(created, lang),
        "sender": frm, "sender_lines": _address_lines(frm, lang), "recipient": who,
        "recipient_lines": _address_lines(who, lang), "return_line": return_line,
        "year": st.year, "house_label": house_label, "periods": ", ".join(st.closed_periods),
        "months": months, "totals": totals, "invoices": rows,
        "balance_due": balance_due, "balance_credit": balance_credit, "notes": notes,
    }


def statement_html(community, st: Statement, language: str | None = None) -> str:
    """The statement as HTML (what ``statement_pdf`` lays out)."""
    from documents.render import _environment
    return _environment().get_template("statement.html").render(build_context(community, st, language))


def statement_pdf(community, st: Statement, language: str | None = None) -> bytes:
    """The statement as PDF (A4, the invoices' fonts and stylesheet); language: ``language``, else
    the house's, else the community's. The same statement gives the same bytes."""
    from documents.render import TEMPLATES, _font_config, _html_class, _stylesheet, url_fetcher
    html = _html_class()(string=statement_html(community, st, language), base_url=str(TEMPLATES) + os.sep,
                         url_fetcher=url_fetcher())
    ident = hashlib.md5(f"statement:{st.house_id}:{st.year}".encode("utf-8"), usedforsecurity=False)
    return html.write_pdf(stylesheets=[_stylesheet()], font_config=_font_config(),
                          pdf_identifier=ident.hexdigest().encode(), uncompressed_pdf=False, custom_metadata=False)
