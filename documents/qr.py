"""The Swiss QR-bill (payment part and receipt) of an invoice, built with the ``qrbill`` package.

An invoice carries a QR-bill only when the community has a creditor account, the house owes money
(``net_amount_chf < 0``) and the document is a final invoice (not a draft or credit note).

Payment reference:

* ``InvoiceDocument.payment_reference`` when set (a 27-digit QR reference or an RF creditor
  reference; checked by ``qrbill``);
* otherwise, with a QR-IBAN (institution id 30000-31999), a QR reference (QRR) is mandatory: it is
  made of the invoice id's digits, zero-padded to 26, plus the modulo-10 check digit
  (``INV-2026-001`` -> ``00 00000 00000 00000 00202 60010``);
* otherwise, with an ordinary IBAN, an RF creditor reference (ISO 11649) made of the invoice id's
  letters and digits (``INV-2026-001`` -> ``RF10 INV2 0260 01``), or no reference when the id has
  more than 21 of them.

The unstructured message ("additional information") is ``InvoiceDocument.reference`` or, by
default, the invoice id.

Addresses go into the QR code as structured addresses (type "S"). Texts are reduced to the
character set the QR-bill allows (Latin script); fields longer than the standard's limits are cut.
The debtor is left out (the bill then shows the empty "Payable by (name/address)" box) when the
house's address has no postcode or town.
"""
from __future__ import annotations

import base64
import io
import re
import unicodedata
from decimal import Decimal

import qrbill
import qrcode
import qrcode.constants
from qrbill.bill import IBAN_ALLOWED_COUNTRIES, QR_IID, Address
from stdnum import iban as std_iban
from stdnum import iso11649
from stdnum.iso7064 import mod_97_10
from stdnum.ch import esr

from documents.i18n import chf
from documents.model import Creditor, InvoiceDocument, Party

# field limits of the QR-bill's structured address
LIMITS = {"name": 70, "street": 70, "number": 16, "postcode": 16, "town": 35}
MAX_MESSAGE = 140
MAX_AMOUNT = Decimal("999999999.99")


def _allowed(ch: str) -> bool:
    """The QR-bill character set: Basic Latin, Latin-1 Supplement, Latin Extended-A, Ș ș Ț ț, €."""
    o = ord(ch)
    return (0x20 <= o <= 0x7E or 0xA0 <= o <= 0x17F or 0x218 <= o <= 0x21B or o == 0x20AC)


def qr_text(value: str | None, limit: int | None = None) -> str:
    """``value`` reduced to the QR-bill's characters: letters outside it lose their accents or are
    dropped, control characters and line breaks become spaces; cut to ``limit`` characters."""
    if not value:
        return ""
    out = []
    for ch in unicodedata.normalize("NFC", str(value)):
        if _allowed(ch):
            out.append(ch)
        elif unicodedata.category(ch)[0] in "CZ":
            out.append(" ")
        else:
            base = "".join(c for c in unicodedata.normalize("NFKD", ch) if _allowed(c))
            out.append(base)
    s = re.sub(r"\s+", " ", "".join(out).replace("\u00a0", " ")).strip()
    return s[:limit].rstrip() if limit else s


def _address(party: Party) -> dict:
    return {
        "name": qr_text(party.name, LIMITS["name"]),
        "street": qr_text(party.street, LIMITS["street"]),
        "house_num": qr_text(party.number, LIMITS["number"]),
        "pcode": qr_text(party.postcode, LIMITS["postcode"]),
        "city": qr_text(party.town, LIMITS["town"]),
        "country": (party.country or "CH").strip().upper(),
    }


def is_qr_iban(iban: str) -> bool:
    compact = std_iban.compact(iban or "")
    return compact[:2] in IBAN_ALLOWED_COUNTRIES and compact[4:9].isdigit() and \
        QR_IID["start"] <= int(compact[4:9]) <= QR_IID["end"]


def creditor_errors(iban: str, party: Party, reference: str | None = None) -> list[str]:
    """Every problem of a creditor configuration, as messages for the operator (empty: usable).

    Checks the IBAN (format, check digits, Swiss or Liechtenstein account), the community's
    address as the QR-bill needs it (name, street, postcode and town present and within the
    standard's lengths, a valid country code, the QR-bill's Latin character set) and, when a fixed
    ``reference`` is given, that it suits the account: a QR-IBAN needs a 27-digit QR reference, an
    ordinary IBAN takes an RF creditor reference or none.
    """
    errors: list[str] = []
    compact = std_iban.compact(iban or "")
    if not compact:
        errors.append("IBAN: missing")
    elif not std_iban.is_valid(compact):
        errors.append(f"IBAN {iban!r}: not a valid IBAN (wrong length or check digits)")
    elif compact[:2] not in IBAN_ALLOWED_COUNTRIES:
        errors.append(f"IBAN {iban!r}: a QR-bill needs a Swiss (CH) or Liechtenstein (LI) account")

    labels = {"name": "name", "street": "street", "number": "house number", "postcode": "postcode",
              "town": "town"}
    for attr, label in labels.items():
        value = (getattr(party, attr, "") or "").strip() if party is not None else ""
        if not value and attr != "number":
            errors.append(f"creditor {label}: missing (the QR-bill needs the full address)")
        elif len(value) > LIMITS[attr]:
            errors.append(f"creditor {label}: {len(value)} characters, the QR-bill allows {LIMITS[attr]}")
        elif value and qr_text(value) != re.sub(r"\s+", " ", value):
            bad = sorted({c for c in value if not _allowed(c) and not c.isspace()})
            errors.append(f"creditor {label}: characters the QR-bill does not allow: {' '.join(bad)}")
    if party is not None:
        try:
            Address.parse_country(party.country)
        except ValueError:
            errors.append(f"creditor country {party.country!r}: not an ISO 3166 country code")

    if reference and not any(e.startswith("IBAN") for e in errors):
        ref = re.sub(r"\s", "", reference)
        if ref[:2].upper() == "RF":
            if not iso11649.is_valid(ref):
                errors.append(f"reference {reference!r}: not a valid RF creditor reference")
            elif is_qr_iban(compact):
                errors.append("reference: a QR-IBAN needs a 27-digit QR reference, not an RF reference")
        elif esr.is_valid(ref):
            if not is_qr_iban(compact):
                errors.append("reference: a 27-digit QR reference needs a QR-IBAN (institution id 30000-31999)")
        else:
            errors.append(f"reference {reference!r}: neither a QR reference nor an RF creditor reference")
    return errors


def qr_reference_from_id(invoice_id: str) -> str:
    """The QR reference (QRR) made of an invoice id's digits: 26 digits, zero-padded, and the check digit."""
    digits = re.sub(r"\D", "", invoice_id or "")
    if not digits or len(digits) > 26:
        raise ValueError(f"invoice id {invoice_id!r}: a QR reference needs 1 to 26 digits in the id")
    body = digits.rjust(26, "0")
    return body + esr.calc_check_digit(body)


def rf_reference_from_id(invoice_id: str) -> str | None:
    """The RF creditor reference made of an invoice id's letters and digits; None if there are none
    or more than 21."""
    body = re.sub(r"[^A-Za-z0-9]", "", invoice_id or "").upper()
    if not body or len(body) > 21:
        return None
    check = mod_97_10.calc_check_digits(body + "RF")
    return f"RF{check}{body}"


def payment_reference(doc: InvoiceDocument) -> str | None:
    """The payment reference the document's QR-bill carries (see the module's description)."""
    if doc.payment_reference:
        return re.sub(r"\s", "", doc.payment_reference)
    if doc.creditor is None:
        return None
    if is_qr_iban(doc.creditor.iban):
        return qr_reference_from_id(doc.invoice_id)
    return rf_reference_from_id(doc.invoice_id)


def amount_due(doc: InvoiceDocument) -> Decimal:
    """What the house owes, >= 0 (0 when it has a credit)."""
    net = chf(doc.net_amount_chf)
    return -net if net < 0 else Decimal("0.00")


def has_qr_bill(doc: InvoiceDocument) -> bool:
    return doc.kind == "invoice" and doc.creditor is not None and amount_due(doc) > 0


def _bill_arguments(doc: InvoiceDocument) -> dict | None:
    if not has_qr_bill(doc):
        return None
    amount = amount_due(doc)
    if amount > MAX_AMOUNT:
        raise ValueError(f"{doc.invoice_id}: amount {amount} is above the QR-bill's maximum")
    creditor: Creditor = doc.creditor
    debtor = _address(doc.recipient)
    if not debtor["name"] or not debtor["pcode"] or not debtor["city"]:
        debtor = None
    else:
        try:
            Address.create(**debtor)
        except ValueError:
            debtor = None
    message = qr_text(doc.reference if doc.reference is not None else doc.invoice_id, MAX_MESSAGE)
    return dict(
        account=std_iban.compact(creditor.iban),
        creditor=_address(creditor.party),
        amount=str(amount),
        currency="CHF",
        debtor=debtor,
        reference_number=payment_reference(doc),
        additional_information=message,
        language=doc.language if doc.language in ("de", "fr", "it", "en") else "en",
    )


def qr_bill(doc: InvoiceDocument) -> qrbill.QRBill | None:
    """The document's QR-bill, or None when it has none. Raises ValueError when the creditor or
    amount cannot go on a QR-bill (``creditor_errors`` finds those problems up front)."""
    return _make(qrbill.QRBill, doc)


def _make(cls, doc: InvoiceDocument):
    arguments = _bill_arguments(doc)
    if arguments is None:
        return None
    try:
        return cls(**arguments)
    except ValueError as exc:
        raise ValueError(f"{doc.invoice_id}: no QR-bill possible: {exc}") from exc


def qr_payload(doc: InvoiceDocument) -> str | None:
    """The text encoded in the QR code (Swiss Payments Code, lines separated by CR LF), or None."""
    bill = qr_bill(doc)
    return bill.qr_data() if bill else None


def qr_matrix(payload: str) -> list[list[bool]]:
    """The QR code's modules (True: dark), as ``qrbill`` encodes a payload: error correction
    level M, the smallest version that fits, the mask with the lowest penalty, no quiet zone.

    The same code as ``qrcode.make``; only the choice among the 8 masks is computed with numpy
    (``_FastMaskCode``), which halves the time to encode a QR-bill's payload."""
    code = _FastMaskCode(error_correction=qrcode.constants.ERROR_CORRECT_M, border=0)
    code.add_data(payload)
    code.make(fit=True)
    return code.get_matrix()


_FINDER_LIKE = ((1, 0, 1, 1, 1, 0, 1, 0, 0, 0, 0), (0, 0, 0, 0, 1, 0, 1, 1, 1, 0, 1))


def _mask(pattern: int, i, j):
    """``qrcode.util.mask_func(pattern)`` on index arrays (i: row, j: column): True where a data
    module is inverted."""
    if pattern == 0:
        return (i + j) % 2 == 0
    if pattern == 1:
        return i % 2 == 0
    if pattern == 2:
        return j % 3 == 0
    if pattern == 3:
        return (i + j) % 3 == 0
    if pattern == 4:
        return (i // 2 + j // 3) % 2 == 0
    if pattern == 5:
        return (i * j) % 2 + (i * j) % 3 == 0
    if pattern == 6:
        return ((i * j) % 2 + (i * j) % 3) % 2 == 0
    return ((i * j) % 3 + (i + j) % 2) % 2 == 0


def lost_point(modules) -> int:
    """``qrcode.util.lost_point`` (the mask penalty of ISO/IEC 18004) of a square bool array."""
    import numpy as np

    m = np.asarray(modules, dtype=bool)
    n = m.shape[0]
    points = 0
    # 1: runs of 5 or more modules of one colour in a row or column, length - 2 each
    for lines in (m, m.T):
        sep = np.full((n, 1), 2, dtype=np.int8)
        flat = np.hstack([lines.astype(np.int8), sep]).ravel()
        starts = np.flatnonzero(np.r_[True, flat[1:] != flat[:-1]])
        lengths = np.diff(np.r_[starts, flat.size])
        runs = lengths[(flat[starts] != 2) & (lengths >= 5)]
        points += int((runs - 2).sum())
    # 2: 2 x 2 blocks of one colour, 3 each
    top = m[:-1, :-1]
    same = (top == m[:-1, 1:]) & (top == m[1:, :-1]) & (top == m[1:, 1:])
    points += 3 * int(same.sum())
    # 3: 1:1:3:1:1 finder-like patterns with 4 light modules on one side, 40 each
    if n > 10:
        from numpy.lib.stride_tricks import sliding_window_view

        for lines in (m, m.T):
            windows = sliding_window_view(lines, 11, axis=1)
            for pattern in _FINDER_LIKE:
                points += 40 * int((windows == np.array(pattern, dtype=bool)).all(axis=2).sum())
    # 4: the share of dark modules, 10 per 5 % away from half
    percent = float(int(m.sum())) / (n ** 2)
    points += int(abs(percent * 100 - 50) / 5) * 10
    return points


class _FastMaskCode(qrcode.QRCode):
    """``qrcode.QRCode`` whose mask choice scores the 8 candidates with numpy: the data modules are
    placed once, each mask is applied to them as an array and scored by ``lost_point``; the
    lowest score wins, the first on a tie, as in ``QRCode.best_mask_pattern``."""

    _data_positions = None

    def map_data(self, data, mask_pattern):
        if self._data_positions is None:   # the modules not yet set are the data modules
            self._data_positions = [[m is None for m in row] for row in self.modules]
        super().map_data(data, mask_pattern)

    def best_mask_pattern(self):
        import numpy as np

        self._data_positions = None
        self.makeImpl(True, 0)
        placed = np.array(self.modules, dtype=bool)
        data = np.array(self._data_positions, dtype=bool)
        i, j = np.indices(placed.shape)
        unmasked = placed ^ (_mask(0, i, j) & data)
        best, pattern = None, 0
        for candidate in range(8):
            score = lost_point(unmasked ^ (_mask(candidate, i, j) & data))
            if best is None or score < best:
                best, pattern = score, candidate
        return pattern


def qr_png(matrix: list[list[bool]]) -> bytes:
    """The modules as a 1-bit PNG, one pixel per module."""
    from PIL import Image  # Pillow, a WeasyPrint dependency

    size = len(matrix)
    image = Image.new("1", (size, size), 1)
    image.putdata([0 if dark else 1 for row in matrix for dark in row])
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


class _Placeholder:
    """Stands in for the QR code image while ``qrbill`` draws the bill: one square path of the
    code's size, which ``_RasterBill.as_svg`` replaces by the PNG."""

    def __init__(self, size: int):
        self.width = size

    def save(self, buf):
        n = self.width
        buf.write(f'<svg><path d="M0,0H{n}V{n}H0z" /></svg>'.encode())


class _RasterBill(qrbill.QRBill):
    """A QR-bill whose QR code is drawn as one PNG image instead of a vector square per module."""

    def qr_image(self):
        self.matrix = qr_matrix(self.qr_data())
        return _Placeholder(len(self.matrix))


_PLACEHOLDER = re.compile(r'<path d="M0,0H(\d+)V\1H0z"([^>]*)/>')


def qr_svg(doc: InvoiceDocument, raster_code: bool = False) -> str | None:
    """The payment part with the receipt, 210 x 106 mm (A4 width, with the perforation line at the
    top), as an SVG document; None when the document has no QR-bill.

    With ``raster_code`` the QR code is one embedded 1-bit PNG (one pixel per module, drawn
    without smoothing) instead of a vector square per module: the same code, far quicker to lay
    out in a PDF. Everything else stays vector.
    """
    bill = _make(_RasterBill if raster_code else qrbill.QRBill, doc)
    if bill is None:
        return None
    out = io.StringIO()
    bill.as_svg(out, full_page=False)
    svg = out.getvalue()
    if not raster_code:
        return svg
    match = _PLACEHOLDER.search(svg)
    if not match:
        raise ValueError("the QR code was not found in the QR-bill drawing")
    size = int(match.group(1))
    href = "data:image/png;base64," + base64.b64encode(qr_png(bill.matrix)).decode("ascii")
    transform = re.search(r'transform="([^"]*)"', match.group(2))
    element = (f'<image x="0" y="0" width="{size}" height="{size}" preserveAspectRatio="none" '
               'image-rendering="pixelated" '
               + (f'transform="{transform.group(1)}" ' if transform else "")
               + f'xlink:href="{href}" />')
    return svg[:match.start()] + element + svg[match.end():]
