"""camt.054 / camt.053 reading (versions .04 and .08, structures as Swiss banks send them, see
tests/camt_files.py) and the pain.001.001.09 payout file's structure."""
from __future__ import annotations

from datetime import date, datetime, timezone
from decimal import Decimal
from xml.etree import ElementTree as ET

import pytest

from billing.camt import CamtError, parse_camt
from billing.pain001 import NS, Payout, credit_transfer
from camt_files import Entry, Tx, camt

QRR = "000000000000000020260000012"


@pytest.mark.parametrize("kind", ["054", "053"])
@pytest.mark.parametrize("version", ["04", "08"])
def test_a_batch_entry_gives_one_transaction_per_payment(kind, version):
    data = camt([Entry([Tx("60.00", QRR, "Anna Meier", "TX-1"),
                        Tx("40.50", "RF18 5390 0754 7034", "Beat Keller", "TX-2", ref_type="SCOR")],
                       acct_svcr_ref="E-1")], kind=kind, version=version)
    f = parse_camt(data, "bank.xml")
    assert f.message == f"camt.{kind}.001.{version}" and f.account_iban == "CH4431999123000889012"
    a, b = f.transactions
    assert (a.tx_id, a.amount_chf, a.reference, a.debtor, a.credit, a.reversal, a.booked) == \
        ("TX-1", Decimal("60.00"), QRR, "Anna Meier", True, False, True)
    assert (b.tx_id, b.amount_chf, b.reference, b.debtor) == ("TX-2", Decimal("40.50"), "RF18539007547034", "Beat Keller")
    assert a.booking_date == date(2026, 4, 10)


def test_without_its_own_reference_a_transaction_is_identified_by_entry_amount_date_and_position():
    data = camt([Entry([Tx("10.00", QRR), Tx("10.00", QRR)], ntry_ref="N-7")])
    ids = [t.tx_id for t in parse_camt(data).transactions]
    assert ids == ["N-7|10.00|2026-04-10|1", "N-7|10.00|2026-04-10|2"]
    assert ids == [t.tx_id for t in parse_camt(data).transactions]          # the same file: the same ids


def test_reversals_and_debits_are_marked():
    data = camt([Entry([Tx("60.00", QRR, acct_svcr_ref="R-1", credit=False)], reversal=True, credit=False),
                 Entry([Tx("5.00", None, acct_svcr_ref="D-1", credit=False)], credit=False)])
    r, d = parse_camt(data).transactions
    assert r.reversal and not r.credit and d.reference is None and not d.credit


@pytest.mark.parametrize("data, message", [
    (b"<x/>", "not a camt.054 notification or camt.053 statement"),
    (b"<Document xmlns='urn:iso:std:iso:20022:tech:xsd:pain.001.001.09'><CstmrCdtTrfInitn/></Document>",
     "not a camt.054 notification or camt.053 statement"),
    (b"garbage", "not well-formed XML"),
    (camt([Entry([Tx("abc", QRR)], amount="abc")]), "amount 'abc' is not a number"),
])
def test_other_files_are_refused_with_the_reason(data, message):
    with pytest.raises(CamtError, match=message):
        parse_camt(data, "f.xml")


def test_the_payout_file_has_the_structure_swiss_banks_take():
    payouts = [Payout("3", "Keller Anna", "CH9300762011623852957", Decimal("131.58"), "INV-2026-003",
                      "Sonnenweg", "4", "3000", "Bern"),
               Payout("5", "Müller & Söhne", "CH5604835012345678009", Decimal("20.05"), "INV-2026-005")]
    xml = credit_transfer("PAYOUT-2026-03", datetime(2026, 4, 2, 8, 0, tzinfo=timezone.utc), date(2026, 4, 3),
                          "LEG Sonnenhalde", "CH4431999123000889012", payouts)
    root = ET.fromstring(xml)
    n = {"p": NS}
    assert root.tag == f"{{{NS}}}Document"
    assert root.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:NbOfTxs", namespaces=n) == "2"
    assert root.findtext("p:CstmrCdtTrfInitn/p:GrpHdr/p:CtrlSum", namespaces=n) == "151.63"
    pmt = root.find("p:CstmrCdtTrfInitn/p:PmtInf", n)
    order = [child.tag.split("}")[1] for child in pmt]
    assert order[:10] == ["PmtInfId", "PmtMtd", "BtchBookg", "NbOfTxs", "CtrlSum", "ReqdExctnDt", "Dbtr",
                          "DbtrAcct", "DbtrAgt", "CdtTrfTxInf"]
    assert pmt.findtext("p:ReqdExctnDt/p:Dt", namespaces=n) == "2026-04-03"
    txs = pmt.findall("p:CdtTrfTxInf", n)
    assert [t.findtext("p:Amt/p:InstdAmt", namespaces=n) for t in txs] == ["131.58", "20.05"]
    assert txs[0].find("p:Amt/p:InstdAmt", n).get("Ccy") == "CHF"
    assert [c.tag.split("}")[1] for c in txs[0]] == ["PmtId", "Amt", "Cdtr", "CdtrAcct", "RmtInf"]
    assert txs[0].findtext("p:Cdtr/p:PstlAdr/p:TwnNm", namespaces=n) == "Bern"
    assert txs[1].findtext("p:Cdtr/p:Nm", namespaces=n) == "Müller & Söhne"
    assert txs[1].findtext("p:PmtId/p:EndToEndId", namespaces=n) == "INV-2026-005"
    assert txs[1].findtext("p:CdtrAcct/p:Id/p:IBAN", namespaces=n) == "CH5604835012345678009"
