"""Texts and number, money and date formats of the invoice documents in German, French, Italian
and English, as a Swiss reader expects them (Babel locales de_CH, fr_CH, it_CH, en_CH)."""
from __future__ import annotations

import math
from datetime import date, datetime
from decimal import ROUND_HALF_UP, Decimal, InvalidOperation

from babel import Locale
from babel.dates import format_date as _babel_date
from babel.dates import format_time as _babel_time
from babel.numbers import format_currency, format_decimal, format_percent

LOCALES = {"de": "de_CH", "fr": "fr_CH", "it": "it_CH", "en": "en_CH"}
DASH = "–"
MINUS = "−"  # U+2212, reads better than a hyphen in front of an amount

TEXTS: dict[str, dict[str, str]] = {
    # document titles and numbers
    "title_invoice": {"de": "Rechnung", "fr": "Facture", "it": "Fattura", "en": "Invoice"},
    "title_draft": {"de": "Rechnungsentwurf", "fr": "Projet de facture", "it": "Bozza di fattura",
                    "en": "Draft invoice"},
    "title_credit_note": {"de": "Gutschrift", "fr": "Note de crédit", "it": "Nota di credito",
                          "en": "Credit note"},
    "number_invoice": {"de": "Rechnungsnummer", "fr": "N° de facture", "it": "N. fattura",
                       "en": "Invoice number"},
    "number_draft": {"de": "Entwurf Nr.", "fr": "N° de projet", "it": "N. bozza", "en": "Draft number"},
    "number_credit_note": {"de": "Gutschrift Nr.", "fr": "N° de note de crédit",
                           "it": "N. nota di credito", "en": "Credit note number"},
    "watermark": {"de": "ENTWURF", "fr": "PROJET", "it": "BOZZA", "en": "DRAFT"},
    "draft_banner": {
        "de": "Entwurf – diese Abrechnung ist noch nicht definitiv. Bitte nicht bezahlen.",
        "fr": "Projet – ce décompte n’est pas encore définitif. Merci de ne pas payer.",
        "it": "Bozza – questo conteggio non è ancora definitivo. Si prega di non pagare.",
        "en": "Draft – this statement is not final yet. Please do not pay.",
    },
    "cancels": {
        "de": "Diese Gutschrift storniert die Rechnung {ref}.",
        "fr": "Cette note de crédit annule la facture {ref}.",
        "it": "Questa nota di credito annulla la fattura {ref}.",
        "en": "This credit note cancels invoice {ref}.",
    },
    # the facts block
    "date": {"de": "Datum", "fr": "Date", "it": "Data", "en": "Date"},
    "due_date": {"de": "Zahlbar bis", "fr": "Payable jusqu’au", "it": "Pagabile entro il",
                 "en": "Payable by"},
    "period": {"de": "Abrechnungsperiode", "fr": "Période de décompte", "it": "Periodo di conteggio",
               "en": "Billing period"},
    "house": {"de": "Haus", "fr": "Maison", "it": "Casa", "en": "House"},
    "meter": {"de": "Zähler", "fr": "Compteur", "it": "Contatore", "en": "Meter"},
    "meters": {"de": "Zähler", "fr": "Compteurs", "it": "Contatori", "en": "Meters"},
    "email": {"de": "E-Mail", "fr": "E-mail", "it": "E-mail", "en": "E-mail"},
    "page": {"de": "Seite", "fr": "Page", "it": "Pagina", "en": "Page"},
    "of": {"de": "von", "fr": "sur", "it": "di", "en": "of"},
    # the statement
    "col_item": {"de": "Position", "fr": "Poste", "it": "Voce", "en": "Item"},
    "col_quantity": {"de": "Menge", "fr": "Quantité", "it": "Quantità", "en": "Quantity"},
    "col_avg_price": {"de": "Ø Preis", "fr": "Prix moyen", "it": "Prezzo medio", "en": "Average price"},
    "col_amount": {"de": "Betrag", "fr": "Montant", "it": "Importo", "en": "Amount"},
    "row_import": {"de": "Strom von der Gemeinschaft bezogen",
                   "fr": "Électricité achetée à la communauté",
                   "it": "Elettricità acquistata dalla comunità",
                   "en": "Electricity bought from the community"},
    "row_export": {"de": "Solarstrom an die Gemeinschaft geliefert",
                   "fr": "Électricité solaire livrée à la communauté",
                   "it": "Elettricità solare fornita alla comunità",
                   "en": "Solar electricity delivered to the community"},
    "row_rounding": {"de": "Rundungsdifferenz", "fr": "Différence d’arrondi",
                     "it": "Differenza d’arrotondamento", "en": "Rounding difference"},
    "amount_due": {"de": "Zu bezahlen", "fr": "Montant à payer", "it": "Importo da pagare",
                   "en": "Amount due"},
    "credit_to_you": {"de": "Ihr Guthaben", "fr": "Votre avoir", "it": "Il vostro credito",
                      "en": "Credit to you"},
    "balanced": {"de": "Saldo", "fr": "Solde", "it": "Saldo", "en": "Balance"},
    "pay_with_qr": {"de": "Bitte bezahlen Sie den Betrag mit dem beiliegenden QR-Zahlteil.",
                    "fr": "Merci de payer le montant avec la section paiement QR ci-jointe.",
                    "it": "Vi preghiamo di pagare l’importo con la sezione pagamento QR allegata.",
                    "en": "Please pay the amount with the attached QR payment part."},
    "pay_transfer": {"de": "Bitte überweisen Sie den Betrag an die Gemeinschaft.",
                     "fr": "Merci de verser le montant à la communauté.",
                     "it": "Vi preghiamo di versare l’importo alla comunità.",
                     "en": "Please transfer the amount to the community."},
    "credit_paid": {"de": "Die Gemeinschaft zahlt Ihnen das Guthaben aus oder verrechnet es.",
                    "fr": "La communauté vous verse cet avoir ou le compense.",
                    "it": "La comunità vi versa questo credito o lo compensa.",
                    "en": "The community pays this credit out to you or offsets it."},
    "nothing_to_pay": {"de": "Es ist nichts zu bezahlen.", "fr": "Il n’y a rien à payer.",
                       "it": "Non c’è nulla da pagare.", "en": "There is nothing to pay."},
    # meter readings
    "readings": {"de": "Zählerstände", "fr": "Relevés des compteurs", "it": "Letture dei contatori",
                 "en": "Meter readings"},
    "col_start": {"de": "Beginn", "fr": "Début", "it": "Inizio", "en": "Start"},
    "col_end": {"de": "Ende", "fr": "Fin", "it": "Fine", "en": "End"},
    "col_difference": {"de": "Differenz", "fr": "Différence", "it": "Differenza", "en": "Difference"},
    "reading_import": {"de": "Bezug", "fr": "Soutirage", "it": "Prelievo", "en": "Import"},
    "reading_export": {"de": "Einspeisung", "fr": "Injection", "it": "Immissione", "en": "Export"},
    # chart
    "chart_title": {"de": "Ihr Strom Tag für Tag", "fr": "Votre électricité jour par jour",
                    "it": "La vostra elettricità giorno per giorno", "en": "Your electricity day by day"},
    "chart_import": {"de": "bezogen", "fr": "acheté", "it": "acquistato", "en": "bought"},
    "chart_export": {"de": "geliefert", "fr": "livré", "it": "fornito", "en": "delivered"},
    "chart_no_data": {"de": "Keine Tageswerte", "fr": "Aucune valeur journalière",
                      "it": "Nessun valore giornaliero", "en": "No daily values"},
    # community context
    "context": {"de": "Solarstrom aus der Gemeinschaft", "fr": "Solaire de la communauté",
                "it": "Solare della comunità", "en": "Community solar power"},
    "local_solar_share": {"de": "Anteil an Ihrem Verbrauch", "fr": "Part de votre consommation",
                          "it": "Quota del vostro consumo", "en": "Share of your consumption"},
    "self_sufficiency": {"de": "Autarkiegrad der ganzen Gemeinschaft",
                         "fr": "Autonomie de toute la communauté",
                         "it": "Autosufficienza dell’intera comunità",
                         "en": "Self-sufficiency of the whole community"},
    # tariffs
    "tariffs": {"de": "Tarife in dieser Periode", "fr": "Tarifs en vigueur pendant la période",
                "it": "Tariffe in vigore nel periodo", "en": "Tariffs in force in this period"},
    "col_effective_from": {"de": "gültig ab", "fr": "valable dès", "it": "valido dal", "en": "from"},
    "col_mode": {"de": "Preismodell", "fr": "Modèle de prix", "it": "Modello di prezzo", "en": "Pricing"},
    "col_p_pv": {"de": "Solarstrom lokal", "fr": "Solaire local", "it": "Solare locale", "en": "Local solar"},
    "col_p_grid_con": {"de": "Netzbezug", "fr": "Achat au réseau", "it": "Acquisto dalla rete",
                       "en": "Grid purchase"},
    "col_p_grid_del": {"de": "Rücklieferung ins Netz", "fr": "Injection au réseau", "it": "Immissione in rete",
                       "en": "Grid feed-in"},
    "mode_break_even": {"de": "kostendeckend", "fr": "à prix coûtant", "it": "a copertura dei costi",
                        "en": "break-even"},
    "mode_static": {"de": "Festpreis", "fr": "prix fixe", "it": "prezzo fisso", "en": "fixed price"},
    "mode_zev_proportional": {"de": "ZEV anteilig", "fr": "RCP proportionnel", "it": "RCP proporzionale",
                              "en": "ZEV proportional"},
    "mode_leg": {"de": "LEG (Anteil LEG)", "fr": "CEL (part CEL)", "it": "CEL (quota CEL)", "en": "LEG (LEG share)"},
    # footnotes
    "note_leg": {
        "de": "Abgerechnet ist der Anteil LEG gemäss den Messdaten des Netzbetreibers. Den Anteil Netz "
              "(Bezug {grid_con}, Einspeisung {grid_fed}) und die Netznutzung rechnet der Netzbetreiber "
              "direkt ab; die reduzierten Netzentgelte auf dem Anteil LEG sparen Ihnen rund {saving}.",
        "fr": "La part CEL est facturée selon les données de mesure du gestionnaire de réseau. La part réseau "
              "(soutirage {grid_con}, injection {grid_fed}) et l’utilisation du réseau sont facturées directement "
              "par le gestionnaire de réseau ; la réduction du tarif d’utilisation du réseau sur la part CEL vous "
              "fait économiser environ {saving}.",
        "it": "È fatturata la quota CEL secondo i dati di misura del gestore di rete. La quota rete "
              "(prelievo {grid_con}, immissione {grid_fed}) e l’utilizzo della rete sono fatturati direttamente "
              "dal gestore di rete; la riduzione della tariffa di utilizzo della rete sulla quota CEL le fa "
              "risparmiare circa {saving}.",
        "en": "Billed is the LEG share from the grid operator's metering data. The grid share (consumed "
              "{grid_con}, fed in {grid_fed}) and grid use are billed by the grid operator directly; the "
              "reduced grid fees on the LEG share save you about {saving}.",
    },
    "note_savings": {
        "de": "Gegenüber Strombezug und Einspeisung nur über das Netz (Netztarif {grid_con} ct/kWh, "
              "Einspeisevergütung {grid_del} ct/kWh) sparen Sie in dieser Periode {saving}.",
        "fr": "Par rapport au soutirage et à l’injection uniquement via le réseau (tarif réseau {grid_con} ct/kWh, "
              "reprise {grid_del} ct/kWh), vous économisez {saving} sur cette période.",
        "it": "Rispetto al prelievo e all’immissione solo tramite la rete (tariffa di rete {grid_con} ct/kWh, "
              "rimunerazione {grid_del} ct/kWh), in questo periodo risparmia {saving}.",
        "en": "Compared with buying from and selling to the grid alone (grid tariff {grid_con} ct/kWh, feed-in "
              "{grid_del} ct/kWh), you save {saving} in this period.",
    },
    "note_estimated_1": {
        "de": "1 Messintervall dieser Periode ist geschätzt (ein fehlender Zählerwert wurde aus den Nachbarwerten ergänzt).",
        "fr": "1 intervalle de mesure de cette période est estimé (une valeur manquante a été complétée à partir des valeurs voisines).",
        "it": "1 intervallo di misura di questo periodo è stimato (un valore mancante è stato completato con i valori vicini).",
        "en": "1 metering interval in this period is estimated (a missing reading was filled in from its neighbours).",
    },
    "note_estimated_n": {
        "de": "{n} Messintervalle dieser Periode sind geschätzt (fehlende Zählerwerte wurden aus den Nachbarwerten ergänzt).",
        "fr": "{n} intervalles de mesure de cette période sont estimés (des valeurs manquantes ont été complétées à partir des valeurs voisines).",
        "it": "{n} intervalli di misura di questo periodo sono stimati (valori mancanti sono stati completati con i valori vicini).",
        "en": "{n} metering intervals in this period are estimated (missing readings were filled in from their neighbours).",
    },
    "note_estimated_dso_1": {
        "de": "1 Viertelstunde dieser Periode beruht auf einem vom Netzbetreiber geschätzten Wert; eine spätere Lieferung kann ihn korrigieren.",
        "fr": "1 quart d’heure de cette période repose sur une valeur estimée par le gestionnaire de réseau ; une livraison ultérieure peut la corriger.",
        "it": "1 quarto d’ora di questo periodo si basa su un valore stimato dal gestore di rete; una fornitura successiva può correggerlo.",
        "en": "1 quarter hour of this period is a value the grid operator estimated; a later delivery may revise it.",
    },
    "note_estimated_dso_n": {
        "de": "{n} Viertelstunden dieser Periode beruhen auf vom Netzbetreiber geschätzten Werten; eine spätere Lieferung kann sie korrigieren.",
        "fr": "{n} quarts d’heure de cette période reposent sur des valeurs estimées par le gestionnaire de réseau ; une livraison ultérieure peut les corriger.",
        "it": "{n} quarti d’ora di questo periodo si basano su valori stimati dal gestore di rete; una fornitura successiva può correggerli.",
        "en": "{n} quarter hours of this period are values the grid operator estimated; a later delivery may revise them.",
    },
    "note_reset_1": {
        "de": "1 Messintervall enthält einen Neustart oder Wechsel des Zählers; gezählt wurde ab dem neuen Zählerstand.",
        "fr": "1 intervalle de mesure comprend une remise à zéro ou un changement de compteur ; le calcul reprend au nouveau relevé.",
        "it": "1 intervallo di misura comprende un azzeramento o una sostituzione del contatore; il calcolo riprende dalla nuova lettura.",
        "en": "1 metering interval includes a meter reset or replacement; energy was counted from the new reading on.",
    },
    "note_reset_n": {
        "de": "{n} Messintervalle enthalten einen Neustart oder Wechsel des Zählers; gezählt wurde ab dem neuen Zählerstand.",
        "fr": "{n} intervalles de mesure comprennent une remise à zéro ou un changement de compteur ; le calcul reprend au nouveau relevé.",
        "it": "{n} intervalli di misura comprendono un azzeramento o una sostituzione del contatore; il calcolo riprende dalla nuova lettura.",
        "en": "{n} metering intervals include a meter reset or replacement; energy was counted from the new reading on.",
    },
    "note_missing_1": {
        "de": "Für 1 Messintervall fehlen die Daten; es ist in dieser Abrechnung nicht enthalten.",
        "fr": "Les données manquent pour 1 intervalle de mesure ; il n’est pas compris dans ce décompte.",
        "it": "Mancano i dati per 1 intervallo di misura; non è compreso in questo conteggio.",
        "en": "Data is missing for 1 metering interval; it is not included in this statement.",
    },
    "note_missing_n": {
        "de": "Für {n} Messintervalle fehlen die Daten; sie sind in dieser Abrechnung nicht enthalten.",
        "fr": "Les données manquent pour {n} intervalles de mesure ; ils ne sont pas compris dans ce décompte.",
        "it": "Mancano i dati per {n} intervalli di misura; non sono compresi in questo conteggio.",
        "en": "Data is missing for {n} metering intervals; they are not included in this statement.",
    },
}

UNITS = {
    "kwh": {"de": "kWh", "fr": "kWh", "it": "kWh", "en": "kWh"},
    "ct_kwh": {"de": "Rp./kWh", "fr": "ct./kWh", "it": "ct./kWh", "en": "ct/kWh"},
}

_CENT = Decimal("0.01")


def text(key: str, language: str, **values) -> str:
    """The text ``key`` in ``language``, with ``{name}`` placeholders filled from ``values``."""
    s = TEXTS[key][language]
    return s.format(**values) if values else s


def plural_text(key: str, n: int, language: str) -> str:
    """A footnote with a count: the ``_1`` variant for one, the ``_n`` variant otherwise."""
    return TEXTS[f"{key}_1"][language] if n == 1 else text(f"{key}_n", language, n=fmt_int(n, language))


def locale(language: str) -> str:
    return LOCALES[language]


def _finite(value) -> bool:
    if value is None:
        return False
    try:
        return math.isfinite(value) if isinstance(value, float) else Decimal(value).is_finite()
    except (InvalidOperation, TypeError, ValueError):
        return False


def fmt_number(value, language: str, decimals: int) -> str:
    """A number with the locale's separators and exactly ``decimals`` places; a dash for none."""
    if not _finite(value):
        return DASH
    pattern = "#,##0" + ("." + "0" * decimals if decimals else "")
    q = Decimal(1).scaleb(-decimals)
    return format_decimal(Decimal(str(value)).quantize(q, ROUND_HALF_UP), pattern, locale=LOCALES[language],
                          decimal_quantization=True)


def fmt_int(value: int, language: str) -> str:
    return fmt_number(value, language, 0)


def fmt_kwh(value, language: str, decimals: int = 1) -> str:
    """``1’234.5 kWh`` (de_CH), ``1 234,5 kWh`` (fr_CH); a dash for none."""
    if not _finite(value):
        return DASH
    return f"{fmt_number(value, language, decimals)}\u00a0{UNITS['kwh'][language]}"


def fmt_ct(value, language: str) -> str:
    """A price per kWh with two decimals: ``21.35 Rp./kWh``; a dash for none."""
    if not _finite(value):
        return DASH
    return f"{fmt_number(value, language, 2)}\u00a0{UNITS['ct_kwh'][language]}"


def fmt_ct_plain(value, language: str) -> str:
    """A price per kWh without its unit (for a column whose heading names it)."""
    return fmt_number(value, language, 2)


def chf(value) -> Decimal:
    """Round to the Rappen (half up), as CHF amounts are stated."""
    return Decimal(str(value)).quantize(_CENT, ROUND_HALF_UP)


def fmt_chf(value, language: str) -> str:
    """``CHF 1’234.50`` (de_CH, it_CH, en_CH) or ``1 234,50 CHF`` (fr_CH), of the absolute value."""
    if not _finite(value):
        return DASH
    return format_currency(abs(chf(value)), "CHF", locale=LOCALES[language], currency_digits=True)


def fmt_chf_signed(value, language: str) -> str:
    """As ``fmt_chf`` with a minus sign in front of a negative amount."""
    s = fmt_chf(value, language)
    return f"{MINUS}\u00a0{s}" if _finite(value) and chf(value) < 0 else s


def fmt_percent(value, language: str) -> str:
    """A share 0..1 as a whole percentage (``73 %``); a dash for none."""
    if not _finite(value):
        return DASH
    return format_percent(max(0.0, min(1.0, float(value))), locale=LOCALES[language])


def fmt_date(value: date, language: str) -> str:
    """``1. Juni 2026``, ``1 juin 2026``, ``1 giugno 2026``, ``1 June 2026``."""
    return _babel_date(value, "long", locale=LOCALES[language])


def fmt_short_date(value: date, language: str) -> str:
    """``01.06.2026`` in every Swiss locale."""
    return _babel_date(value, "dd.MM.yyyy", locale=LOCALES[language])


def fmt_period(start: date, end: date, language: str) -> str:
    """``1.–30. Juni 2026``-style ranges are locale-specific; keep the unambiguous long form."""
    return f"{fmt_date(start, language)} – {fmt_date(end, language)}"


def fmt_month(value: date, language: str) -> str:
    """``Juni 2026``."""
    return _babel_date(value, "LLLL yyyy", locale=LOCALES[language])


def fmt_effective_from(iso: str, language: str) -> str:
    """A tariff version's start: its date, with the time when it is not midnight; as given when unparsable."""
    try:
        when = datetime.fromisoformat(str(iso))
    except ValueError:
        return str(iso)
    s = fmt_short_date(when.date(), language)
    if (when.hour, when.minute, when.second) != (0, 0, 0):
        s += " " + _babel_time(when.time(), "HH:mm", locale=LOCALES[language])
    return s


def country_name(code: str, language: str) -> str:
    """The country's name in the language (``Deutschland``); the code itself when unknown."""
    code = (code or "").strip().upper()
    return Locale.parse(LOCALES[language]).territories.get(code, code)
