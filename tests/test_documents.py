"""Invoice documents: real PDFs rendered with WeasyPrint and read back with poppler's pdftotext,
the Swiss QR-bill's payload, the creditor checks, determinism, hostile text, the process pool and
the URL fetcher."""
from __future__ import annotations

import base64
import io
import re
import shutil
import subprocess
import xml.etree.ElementTree as ET
from dataclasses import replace
from datetime import date, timedelta
from decimal import Decimal

import pytest
from stdnum import iso11649
from stdnum.ch import esr

from documents import Creditor, InvoiceDocument, Party, creditor_errors, qr_bill, qr_payload, render_pdf
from documents.chart import daily_chart_svg
from documents.i18n import fmt_chf, fmt_kwh
from documents.qr import qr_matrix, qr_reference_from_id, qr_svg, qr_text, rf_reference_from_id
from documents.render import FetchRefused, RenderError, render_many, start_fork_server, url_fetcher
from documents.sample import SAMPLE_IBAN, SAMPLE_QR_IBAN

QR_IBAN = SAMPLE_QR_IBAN              # CH44 3199 9123 0008 8901 2, institution id 31999
IBAN = SAMPLE_IBAN                    # CH93 0076 2011 6238 5295 7, an ordinary account
COMMUNITY = Party("LEG Sonnenhalde", "Sonnenhaldenstrasse", "12", "8610", "Uster",
                  email="abrechnung@leg-sonnenhalde.ch")
OWNER = Party("Anna Muster", "Rebweg", "7a", "8610", "Uster")
A4_HEIGHT_PT = 841.89
QR_TOP_PT = A4_HEIGHT_PT - 105 / 25.4 * 72   # the payment part's top edge

needs_poppler = pytest.mark.skipif(not shutil.which("pdftotext"),
                                   reason="pdftotext (Debian package poppler-utils) is not installed")


def make_doc(**changes) -> InvoiceDocument:
    """A June 2026 invoice of house H007: it bought 1234.567 kWh for 264.6553 CHF and delivered
    456.78 kWh for 62.8086 CHF, so it owes 201.85 CHF."""
    start = date(2026, 6, 1)
    daily = tuple((start + timedelta(days=k), 30.0 + k % 7, 10.0 + k % 5) for k in range(30))
    doc = InvoiceDocument(
        kind="invoice", invoice_id="INV-2026-007", issue_date=date(2026, 7, 3), period_id="2026-06",
        period_start=start, period_end=date(2026, 6, 30), language="de",
        sender=COMMUNITY, recipient=OWNER, house_id="H007", meter_ids=("AA-11-BB-22-CC-07",),
        counter_start_import_kwh=Decimal("18271.6"), counter_end_import_kwh=Decimal("19506.167"),
        counter_start_export_kwh=Decimal("4332.61"), counter_end_export_kwh=Decimal("4789.39"),
        energy_imported_kwh=Decimal("1234.567"), import_cost_ct=Decimal("26465.53"),
        avg_p_con_ct=Decimal("21.4372"),
        energy_exported_kwh=Decimal("456.78"), export_revenue_ct=Decimal("6280.86"),
        avg_p_pv_ct=Decimal("13.7503"),
        net_amount_chf=Decimal("-201.85"), daily=daily, self_sufficiency=0.624, local_solar_share=0.538,
        tariffs=({"effective_from": "2026-01-01T00:00:00+01:00", "mode": "break_even",
                  "p_pv": 14.0, "p_grid_del": 6.5, "p_grid_con": 29.8},
                 {"effective_from": "2026-06-16T00:00:00+02:00", "mode": "static",
                  "p_pv": 13.5, "p_grid_del": 6.0, "p_grid_con": 29.85}),
        estimated_intervals=3, reset_intervals=1, missing_intervals=2,
        creditor=Creditor(QR_IBAN, COMMUNITY),
    )
    return replace(doc, **changes)


def pdf_text(pdf: bytes, *args: str) -> str:
    """pdftotext -layout of the PDF, with no-break and narrow no-break spaces as plain spaces."""
    out = subprocess.run(["pdftotext", "-layout", *args, "-", "-"], input=pdf, capture_output=True,
                         check=True).stdout.decode("utf-8")
    return out.replace("\u202f", " ").replace("\u00a0", " ")


def flat(text: str) -> str:
    return re.sub(r"\s+", " ", text)


def pages(pdf: bytes) -> int:
    info = subprocess.run(["pdfinfo", "-"], input=pdf, capture_output=True, check=True).stdout.decode()
    return int(re.search(r"^Pages:\s+(\d+)", info, re.M).group(1))


def words(pdf: bytes, page: int = 1) -> list[tuple[str, float, float, float]]:
    """(word, xMin, yMin, yMax) in points of one page, from pdftotext -bbox."""
    out = subprocess.run(["pdftotext", "-bbox", "-f", str(page), "-l", str(page), "-", "-"], input=pdf,
                         capture_output=True, check=True).stdout.decode("utf-8")
    return [(m.group(4), float(m.group(1)), float(m.group(2)), float(m.group(3))) for m in re.finditer(
        r'<word xMin="([\d.]+)" yMin="([\d.]+)" xMax="[\d.]+" yMax="([\d.]+)">([^<]*)</word>', out)]


def payload_lines(doc: InvoiceDocument) -> list[str]:
    return qr_payload(doc).split("\r\n")


# --------------------------------------------------------------------------------------------
# the figures in every language

EXPECTED = {
    "de": ["Rechnung", "Rechnungsnummer", "INV-2026-007", "3. Juli 2026", "1. Juni 2026 – 30. Juni 2026",
           "H007", "AA-11-BB-22-CC-07", "1’234.6 kWh", "21.44 Rp./kWh", "456.8 kWh", "13.75 Rp./kWh",
           "CHF 264.66", "− CHF 62.81", "Zu bezahlen", "CHF 201.85", "18’271.6", "19’506.2", "1’234.6",
           "4’332.6", "4’789.4", "456.8", "Autarkiegrad der ganzen Gemeinschaft", "62%",
           "Anteil an Ihrem Verbrauch", "54%", "01.01.2026", "16.06.2026", "kostendeckend", "Festpreis",
           "14.00", "29.80", "29.85", "6.50", "3 Messintervalle dieser Periode sind geschätzt",
           "1 Messintervall enthält einen Neustart", "Für 2 Messintervalle fehlen die Daten",
           "Sonnenhaldenstrasse 12", "8610 Uster", "abrechnung@leg-sonnenhalde.ch", "Anna Muster",
           "Rebweg 7a", "Strom von der Gemeinschaft bezogen", "Solarstrom an die Gemeinschaft geliefert",
           "Zahlteil", "Empfangsschein"],
    "fr": ["Facture", "N° de facture", "INV-2026-007", "3 juillet 2026", "1 juin 2026 – 30 juin 2026",
           "1 234,6 kWh", "21,44 ct./kWh", "456,8 kWh", "13,75 ct./kWh", "264,66 CHF", "− 62,81 CHF",
           "Montant à payer", "201,85 CHF", "18 271,6", "19 506,2", "4 332,6", "4 789,4",
           "Autonomie de toute la communauté", "62%", "54%", "à prix coûtant", "prix fixe",
           "14,00", "29,80", "6,50", "3 intervalles de mesure de cette période sont estimés",
           "Électricité achetée à la communauté", "Section paiement", "Récépissé"],
    "it": ["Fattura", "N. fattura", "INV-2026-007", "3 luglio 2026", "1 giugno 2026 – 30 giugno 2026",
           "1’234.6 kWh", "21.44 ct./kWh", "456.8 kWh", "13.75 ct./kWh", "CHF 264.66", "− CHF 62.81",
           "Importo da pagare", "CHF 201.85", "18’271.6", "19’506.2", "Autosufficienza dell’intera comunità",
           "62%", "54%", "a copertura dei costi", "prezzo fisso", "14.00", "29.80",
           "3 intervalli di misura di questo periodo sono stimati", "Sezione pagamento", "Ricevuta"],
    "en": ["Invoice", "Invoice number", "INV-2026-007", "3 July 2026", "1 June 2026 – 30 June 2026",
           "1’234.6 kWh", "21.44 ct/kWh", "456.8 kWh", "13.75 ct/kWh", "CHF 264.66", "− CHF 62.81",
           "Amount due", "CHF 201.85", "18’271.6", "19’506.2", "Self-sufficiency of the whole community",
           "62%", "54%", "break-even", "fixed price", "14.00", "29.80",
           "3 metering intervals in this period are estimated", "Payment part", "Receipt"],
}


@needs_poppler
@pytest.mark.parametrize("language", ["de", "fr", "it", "en"])
def test_every_language_shows_the_figures_in_its_format(language, caplog):
    with caplog.at_level("INFO", logger="weasyprint"):
        pdf = render_pdf(make_doc(language=language))
    # WeasyPrint understood every rule and fetched nothing it could not
    assert not [r for r in caplog.records if r.name.startswith("weasyprint") and r.levelno >= 20
                and r.name != "weasyprint.progress"], caplog.text
    assert pdf.startswith(b"%PDF-")
    text = flat(pdf_text(pdf))
    missing = [s for s in EXPECTED[language] if s not in text]
    assert not missing, f"{language}: not in the PDF: {missing}\n{text}"


def test_babel_formats_per_locale():
    assert fmt_kwh(Decimal("1234.567"), "de") == "1’234.6\u00a0kWh"
    assert fmt_kwh(Decimal("1234.567"), "fr") == "1\u202f234,6\u00a0kWh"
    assert fmt_chf(Decimal("-1234.5"), "de") == "CHF\u00a01’234.50"
    assert fmt_chf(Decimal("1234.5"), "fr") == "1\u202f234,50\u00a0CHF"
    assert fmt_chf(Decimal("0.005"), "it") == "CHF\u00a00.01"   # half up to the Rappen
    assert fmt_kwh(None, "en") == "–" and fmt_kwh(float("nan"), "en") == "–"


@needs_poppler
def test_credit_to_you_has_no_qr_bill():
    doc = make_doc(net_amount_chf=Decimal("45.10"), import_cost_ct=Decimal("1000"),
                   export_revenue_ct=Decimal("5510"))
    assert qr_bill(doc) is None and qr_payload(doc) is None and qr_svg(doc) is None
    text = flat(pdf_text(render_pdf(doc)))
    assert "Ihr Guthaben CHF 45.10" in text
    assert "Zu bezahlen" not in text
    assert "Zahlteil" not in text and "Empfangsschein" not in text
    en = flat(pdf_text(render_pdf(replace(doc, language="en"))))
    assert "Credit to you CHF 45.10" in en and "Payment part" not in en


@needs_poppler
@pytest.mark.parametrize("changes", [
    {"kind": "draft", "invoice_id": "DRAFT-2026-06-7"},
    {"kind": "credit_note", "invoice_id": "INV-2026-107", "refers_to": "INV-2026-007"},
    {"creditor": None},
], ids=["draft", "credit-note", "no-creditor"])
def test_no_qr_bill_for_drafts_credit_notes_or_without_creditor(changes):
    doc = make_doc(**changes)
    assert qr_bill(doc) is None
    text = flat(pdf_text(render_pdf(doc)))
    assert "Zahlteil" not in text and "Empfangsschein" not in text and "Referenz" not in text
    if doc.creditor is None:
        assert "Bitte überweisen Sie den Betrag an die Gemeinschaft." in text


@needs_poppler
def test_draft_is_marked_and_credit_note_names_the_cancelled_invoice():
    pdf = render_pdf(make_doc(kind="draft", invoice_id="DRAFT-2026-06-7", language="it"))
    draft = flat(pdf_text(pdf))
    assert "Bozza di fattura" in draft
    assert "BOZZA" in pdf_text(pdf, "-raw")          # the watermark (rotated: not in the layout text)
    assert "questo conteggio non è ancora definitivo" in draft and "DRAFT-2026-06-7" in draft

    # a credit note carries the cancelled invoice's figures and the opposite balance
    credit = make_doc(kind="credit_note", invoice_id="INV-2026-107", refers_to="INV-2026-007",
                      language="fr", net_amount_chf=Decimal("201.85"))
    text = flat(pdf_text(render_pdf(credit)))
    assert "Note de crédit" in text and "INV-2026-107" in text
    assert "Cette note de crédit annule la facture INV-2026-007." in text
    assert "Votre avoir 201,85 CHF" in text
    assert "− 264,66 CHF" in text and " 62,81 CHF" in text      # the invoice's charges reversed
    assert "arrondi" not in text                                  # and they add up


@needs_poppler
def test_rounding_difference_is_shown_when_the_lines_do_not_add_up():
    text = flat(pdf_text(render_pdf(make_doc(net_amount_chf=Decimal("-201.86")))))
    assert "Rundungsdifferenz CHF 0.01" in text and "Zu bezahlen CHF 201.86" in text


# --------------------------------------------------------------------------------------------
# the QR-bill


def test_qr_payload_is_a_valid_swiss_payments_code_with_the_amount_due():
    doc = make_doc()
    lines = payload_lines(doc)
    assert len(lines) == 31
    assert lines[0:3] == ["SPC", "0200", "1"]
    assert lines[3] == "CH4431999123000889012"
    # creditor: structured address
    assert lines[4:11] == ["S", "LEG Sonnenhalde", "Sonnenhaldenstrasse", "12", "8610", "Uster", "CH"]
    assert lines[11:18] == [""] * 7                       # ultimate creditor: not used
    assert re.fullmatch(r"\d{1,9}\.\d{2}", lines[18]) and Decimal(lines[18]) == -doc.net_amount_chf
    assert lines[18] == "201.85" and lines[19] == "CHF"
    assert lines[20:27] == ["S", "Anna Muster", "Rebweg", "7a", "8610", "Uster", "CH"]
    # a QR-IBAN takes a QR reference: 27 digits with a valid check digit, made of the invoice id
    assert lines[27] == "QRR"
    assert re.fullmatch(r"\d{27}", lines[28]) and esr.is_valid(lines[28])
    assert lines[28] == qr_reference_from_id("INV-2026-007") == "000000000000000000020260073"
    assert lines[29] == "INV-2026-007"                     # the unstructured message
    assert lines[30] == "EPD"


def test_ordinary_iban_takes_an_rf_reference_and_the_given_message():
    doc = make_doc(creditor=Creditor(IBAN, COMMUNITY), reference="Strom Juni 2026, Haus 7",
                   net_amount_chf=Decimal("-1234567.5"))
    lines = payload_lines(doc)
    assert lines[3] == "CH9300762011623852957"
    assert lines[18] == "1234567.50"
    assert lines[27] == "SCOR" and iso11649.is_valid(lines[28])
    assert lines[28] == rf_reference_from_id("INV-2026-007") and lines[28].endswith("INV2026007")
    assert lines[29] == "Strom Juni 2026, Haus 7"


def test_the_embedded_qr_code_is_the_code_of_the_payload():
    """The PDF's QR code is a 1-bit PNG: its pixels are the modules qrbill draws as vector squares,
    i.e. the standard encoding of the payload."""
    doc = make_doc()
    raster = qr_svg(doc, raster_code=True)
    png = base64.b64decode(re.search(r'href="data:image/png;base64,([^"]+)"', raster).group(1))
    from PIL import Image
    image = Image.open(io.BytesIO(png))
    n = image.size[0]
    pixels = [[image.getpixel((x, y)) == 0 for x in range(n)] for y in range(n)]
    assert pixels == qr_matrix(qr_payload(doc))
    # qrbill's own drawing: one unit square per dark module
    vector = qr_svg(doc)
    path = max(re.findall(r'<path d="(M0,0H1V1H0z[^"]*)"', vector), key=len)
    dark = {(int(x), int(y)) for x, y in re.findall(r"M(\d+),(\d+)H", path)}
    assert dark == {(x, y) for y in range(n) for x in range(n) if pixels[y][x]}
    ET.fromstring(raster)   # well-formed


@needs_poppler
def test_qr_bill_is_the_bottom_105_mm_of_the_page_receipt_left_payment_part_right():
    pdf = render_pdf(make_doc())
    assert pages(pdf) == 1
    page = words(pdf)
    straddling = [w for w in page if w[2] < QR_TOP_PT < w[3]]
    assert not straddling, straddling
    by_word = {w[0]: w for w in page}
    for label in ("Empfangsschein", "Zahlteil", "Annahmestelle"):
        assert by_word[label][2] > QR_TOP_PT, label
    # the receipt is the left 62 mm, the payment part starts right of it
    assert by_word["Empfangsschein"][1] < 62 / 25.4 * 72 < by_word["Zahlteil"][1]
    # the invoice's last line is above the payment part
    assert max(w[3] for w in page if w[2] < QR_TOP_PT) < QR_TOP_PT
    assert "00 00000 00000 00000 00202 60073" in pdf_text(pdf)     # the reference, formatted


@needs_poppler
def test_a_long_invoice_puts_the_qr_bill_at_the_bottom_of_a_page_of_its_own():
    tariffs = tuple({"effective_from": f"2026-06-{d:02d}T00:00:00+02:00", "mode": "break_even",
                     "p_pv": 14.0, "p_grid_del": 6.5, "p_grid_con": 29.8 + d / 100} for d in range(1, 25))
    pdf = render_pdf(make_doc(tariffs=tariffs))
    assert pages(pdf) == 2
    first, second = pdf_text(pdf, "-f", "1", "-l", "1"), pdf_text(pdf, "-f", "2", "-l", "2")
    assert "Empfangsschein" not in first and "Empfangsschein" in second
    assert "Rechnung INV-2026-007" in second                  # the continuation page says what it is
    page2 = words(pdf, 2)
    assert not [w for w in page2 if w[2] < QR_TOP_PT < w[3]]
    assert min(w[2] for w in page2 if w[0] == "Zahlteil") > QR_TOP_PT


@needs_poppler
def test_qr_bill_texts_set_as_html_land_where_qrbill_draws_them(tmp_path):
    """The PDF sets the QR-bill's texts as HTML lines; rasterised, they cover the same pixels as
    qrbill's own SVG text."""
    import weasyprint
    from PIL import Image, ImageChops

    from documents.render import _environment, _data_url, lift_text

    svg = qr_svg(make_doc(), raster_code=True)
    drawing = lift_text(svg, 210.0, 106.0, prefix="q")
    assert len(drawing.blocks) == 6 and "<text" not in base64.b64decode(drawing.src.split(",")[1]).decode()
    page = "@page { size: 210mm 106mm; margin: 0 } body { margin: 0 } img { display: block }"
    lifted = _environment().from_string(
        "<style>{{ page }} .drawing { position: relative } .lbl { position: absolute; white-space: pre; "
        "line-height: 1 } {{ d.css }}</style><div class='drawing'><img src='{{ d.src }}' "
        "style='width:210mm;height:106mm'>{% for b in d.blocks %}<div class='{{ b.cls }}' style='{{ b.style }}'>"
        "{% for l in b.lines %}<div class='{{ l.cls }}' style='{{ l.style }}'>{{ l.text }}</div>{% endfor %}"
        "</div>{% endfor %}</div>").render(d=drawing, page=page)
    original = f"<style>{page}</style><img src='{_data_url(svg)}' style='width:210mm;height:106mm'>"
    images = []
    for name, html in (("lifted", lifted), ("original", original)):
        (tmp_path / f"{name}.pdf").write_bytes(weasyprint.HTML(string=html).write_pdf())
        subprocess.run(["pdftoppm", "-png", "-r", "100", "-singlefile", str(tmp_path / f"{name}.pdf"),
                        str(tmp_path / name)], check=True)
        images.append(Image.open(tmp_path / f"{name}.png").convert("L").point(lambda v: 255 if v > 128 else 0))
    diff = ImageChops.difference(*images)
    differing = diff.width * diff.height - diff.histogram()[0]
    dark = images[1].histogram()[0]
    assert differing < 0.02 * dark, (differing, dark)


def test_fast_mask_choice_is_the_qrcode_packages_choice():
    """qr_matrix scores the 8 masks with numpy; it must pick what qrcode.make picks (and score
    each mask as qrcode.util.lost_point does), for payloads of every size."""
    import random
    import string

    import qrcode
    import qrcode.util

    from documents.qr import lost_point

    rng = random.Random(7)
    payloads = [qr_payload(make_doc(invoice_id=f"INV-2026-{k:03d}", recipient=replace(OWNER, name=f"Anna {k}")))
                for k in range(5)]
    payloads += ["".join(rng.choice(string.printable + "äöüéàè’") for _ in range(rng.randint(1, 700)))
                 for _ in range(40)]
    for payload in payloads:
        reference = qrcode.QRCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0)
        reference.add_data(payload)
        reference.make(fit=True)
        assert qr_matrix(payload) == reference.get_matrix()
    for mask in range(8):
        reference.makeImpl(True, mask)
        assert lost_point(reference.modules) == qrcode.util.lost_point(reference.modules)


def test_qr_text_keeps_the_latin_character_set():
    assert qr_text("Zoë Łukasz Ștefan, Straße 5") == "Zoë Łukasz Ștefan, Straße 5"
    assert qr_text("李小龙 Anna\n😀 Muster") == "Anna Muster"
    assert qr_text("x" * 300, 70) == "x" * 70


# --------------------------------------------------------------------------------------------
# creditor configuration


def test_creditor_errors_accepts_a_complete_configuration():
    assert creditor_errors(QR_IBAN, COMMUNITY) == []
    assert creditor_errors("CH93 0076 2011 6238 5295 7", COMMUNITY) == []
    assert creditor_errors(QR_IBAN, COMMUNITY, reference="210000000003139471430009017") == []
    assert creditor_errors(IBAN, COMMUNITY, reference="RF18539007547034") == []


def test_creditor_errors_finds_a_bad_iban():
    errors = creditor_errors("CH44 3199 9123 0008 8901 3", COMMUNITY)   # wrong check digits
    assert len(errors) == 1 and "not a valid IBAN" in errors[0]
    assert "Swiss (CH) or Liechtenstein" in creditor_errors("DE89 3704 0044 0532 0130 00", COMMUNITY)[0]
    assert "missing" in creditor_errors("", COMMUNITY)[0]


def test_creditor_errors_finds_a_missing_or_unusable_address():
    errors = creditor_errors(QR_IBAN, Party("LEG Sonnenhalde"))
    assert errors == ["creditor street: missing (the QR-bill needs the full address)",
                      "creditor postcode: missing (the QR-bill needs the full address)",
                      "creditor town: missing (the QR-bill needs the full address)"]
    assert any("name: missing" in e for e in creditor_errors(QR_IBAN, replace(COMMUNITY, name=" ")))
    assert any("town: 36 characters" in e for e in creditor_errors(QR_IBAN, replace(COMMUNITY, town="x" * 36)))
    assert any("not an ISO 3166" in e for e in creditor_errors(QR_IBAN, replace(COMMUNITY, country="XX")))
    assert any("does not allow" in e for e in creditor_errors(QR_IBAN, replace(COMMUNITY, name="太阳能社区")))


def test_creditor_errors_checks_the_reference_against_the_kind_of_iban():
    assert "QR-IBAN needs a 27-digit QR reference" in creditor_errors(
        QR_IBAN, COMMUNITY, reference="RF18539007547034")[0]
    assert "needs a QR-IBAN" in creditor_errors(IBAN, COMMUNITY, reference="210000000003139471430009017")[0]
    assert "neither" in creditor_errors(IBAN, COMMUNITY, reference="12345")[0]


def test_a_render_with_an_unusable_creditor_fails_loudly():
    doc = make_doc(creditor=Creditor("CH00 0000 0000 0000 0000 0", COMMUNITY))
    with pytest.raises(ValueError, match="INV-2026-007: no QR-bill possible"):
        render_pdf(doc)


# --------------------------------------------------------------------------------------------
# determinism, hostile text, fetching


def test_rendering_is_deterministic():
    doc = make_doc()
    first, second = render_pdf(doc), render_pdf(doc)
    assert first == second
    assert render_pdf(make_doc(kind="draft", invoice_id="DRAFT-1")) == render_pdf(
        make_doc(kind="draft", invoice_id="DRAFT-1"))
    assert render_pdf(make_doc(invoice_id="INV-2026-008")) != first


@needs_poppler
def test_pdf_metadata_comes_from_the_document():
    info = subprocess.run(["pdfinfo", "-isodates", "-"], input=render_pdf(make_doc()), capture_output=True,
                          check=True).stdout.decode()
    assert re.search(r"^Title:\s+Rechnung INV-2026-007$", info, re.M)
    assert re.search(r"^Author:\s+LEG Sonnenhalde$", info, re.M)
    assert re.search(r"^CreationDate:\s+2026-07-03T00:00:00", info, re.M)
    assert re.search(r"^Page size:\s+595.\d+ x 841.\d+ pts \(A4\)", info, re.M)


HOSTILE = Party(
    name="<script>alert(1)</script> 李小龙 مرحبا 😀",
    street="</td><b>",
    number="{{ 7*7 }}",
    postcode="8000",
    town="Zürich ☀",
)


@needs_poppler
def test_hostile_text_is_shown_as_text():
    long_name = "Überlange Eigentümergemeinschaft " + "A" * 267
    assert len(long_name) == 300
    doc = make_doc(
        recipient=HOSTILE, house_id=long_name, meter_ids=("<img src=x onerror=alert(1)>", "M-2"),
        sender=replace(COMMUNITY, name='LEG "Sonne" & <Wind>'),
        creditor=Creditor(QR_IBAN, replace(COMMUNITY, name='LEG "Sonne" & <Wind>')),
        invoice_id='INV-2026-007"; } body { display: none',
        tariffs=({"effective_from": "not a date", "mode": "<b>bold</b>", "p_pv": "x",
                  "p_grid_del": float("nan"), "p_grid_con": None},),
        daily=((date(2026, 6, 3), float("nan"), -5), (date(2026, 6, 4), float("inf"), "x"), ("no", 1, 2)),
    )
    pdf = render_pdf(doc)
    text = pdf_text(pdf)
    assert "<script>alert(1)</script>" in text
    assert "</td><b>" in text and "{{ 7*7 }}" in text
    assert "<img src=x onerror=alert(1)>" in flat(text)
    assert 'LEG "Sonne" & <Wind>' in text
    assert 'INV-2026-007"; } body { display: none' in text
    assert "<b>bold</b>" in text and "not a date" in text
    assert "李小龙" in text and "😀" in text and "Zürich ☀" in text
    assert "مرحبا" in text or "ابحرم" in text     # in logical or visual order
    raw = re.sub(r"\s+", "", pdf_text(pdf, "-raw"))
    assert long_name.replace(" ", "") in raw       # wrapped, but all there
    # the QR-bill gets what its character set and field lengths allow
    lines = payload_lines(doc)
    assert lines[20:27] == ["S", "<script>alert(1)</script>", "</td><b>", "{{ 7*7 }}", "8000", "Zürich", "CH"]
    assert lines[4:6] == ["S", 'LEG "Sonne" & <Wind>']


def test_a_300_character_recipient_is_cut_to_70_on_the_qr_bill():
    doc = make_doc(recipient=replace(OWNER, name="N" * 300, street="S" * 300, town="T" * 300))
    lines = payload_lines(doc)
    assert lines[20:27] == ["S", "N" * 70, "S" * 70, "7a", "8610", "T" * 35, "CH"]
    assert render_pdf(doc).startswith(b"%PDF-")


def test_chart_is_well_formed_for_any_input():
    svg = daily_chart_svg(((date(2026, 6, 1), float("nan"), float("inf")), (date(2026, 6, 2), -3, 5),
                           (date(2026, 7, 9), 1, 1), ("x",), None),
                          date(2026, 6, 1), date(2026, 6, 30),
                          import_label="</text><script>", export_label="a & b", no_data_label="<none>")
    root = ET.fromstring(svg)
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    assert "</text><script>" in texts and "a & b" in texts
    assert not list(root.iter("{http://www.w3.org/2000/svg}script"))
    bars = root.findall("{http://www.w3.org/2000/svg}path")
    assert len(bars) == 1 and bars[0].get("d").count("M") == 1    # one day with a delivery
    # its labels can be set as HTML too: the day numbers as one row, the axis values as one column
    from documents.render import lift_text
    lifted = lift_text(daily_chart_svg(tuple((date(2026, 6, d), 5, 2) for d in range(1, 31)), date(2026, 6, 1),
                                       date(2026, 6, 30)), 120.0, 44.0)
    row = [b for b in lifted.blocks if b["inline"]]
    assert len(row) == 1 and [line["text"] for line in row[0]["lines"]] == ["1", "5", "10", "15", "20", "25", "30"]
    huge = daily_chart_svg(tuple((date(2026, 6, 1), 1e308, 1e308) for _ in range(3)), date(2026, 6, 1),
                           date(2026, 6, 30))
    ET.fromstring(huge)
    empty = ET.fromstring(daily_chart_svg((), date(2026, 6, 1), date(2026, 6, 30), no_data_label="leer"))
    assert "leer" in [t.text for t in empty.iter("{http://www.w3.org/2000/svg}text")]


def test_url_fetcher_refuses_the_network_and_foreign_files():
    fetcher = url_fetcher()
    for url in ("http://example.invalid/logo.png", "https://example.invalid/a.css",
                "ftp://example.invalid/x", "file:///etc/passwd", "file:///etc/../etc/hostname"):
        with pytest.raises(FetchRefused):
            fetcher(url)
    assert fetcher("data:text/plain;base64,aGk=").read() == b"hi"
    from documents.render import TEMPLATES
    response = fetcher((TEMPLATES / "invoice.css").as_uri())
    assert b"@page" in response.read()
    response.close()


def test_bad_documents_are_refused():
    with pytest.raises(ValueError, match="kind 'bill'"):
        render_pdf(make_doc(kind="bill"))
    with pytest.raises(ValueError, match="language 'rm'"):
        render_pdf(make_doc(language="rm"))
    with pytest.raises(ValueError, match="net_amount_chf"):
        render_pdf(make_doc(net_amount_chf=Decimal("NaN")))


# --------------------------------------------------------------------------------------------
# many documents


def test_render_many_keeps_the_order_and_reports_progress():
    docs = [make_doc(invoice_id=f"INV-2026-{k:03d}", net_amount_chf=Decimal(f"{(-1) ** k * (k + 1)}.05"),
                     language=("de", "fr", "it", "en")[k % 4]) for k in range(6)]
    start_fork_server()      # optional: what the app may do at start-up
    reports = []
    pdfs = render_many(docs, workers=2, progress=lambda done, total: reports.append((done, total)))
    assert len(pdfs) == 6
    assert pdfs == [render_pdf(d) for d in docs]           # byte for byte, in the input order
    assert reports[0] == (0, 6) and reports[-1] == (6, 6)
    assert [d for d, _ in reports] == list(range(7))
    assert render_many([], workers=2) == []


def test_render_many_names_the_failing_document():
    docs = [make_doc(invoice_id="INV-2026-001"),
            make_doc(invoice_id="INV-2026-002", creditor=Creditor("CH00 0000 0000 0000 0000 0", COMMUNITY))]
    with pytest.raises(RenderError, match="INV-2026-002"):
        render_many(docs, workers=2)
    with pytest.raises(RenderError, match="INV-2026-002"):
        render_many(docs, workers=1)
    with pytest.raises(RenderError, match="INV-2026-003: language 'xx'"):
        render_many([docs[0], make_doc(invoice_id="INV-2026-003", language="xx")], workers=2)
