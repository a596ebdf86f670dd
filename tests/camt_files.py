"""camt.054 / camt.053 files as Swiss banks send them, for tests.

The structure follows the bank samples studied in tests/fixtures/payments/SOURCES.md (PostFinance
camt.054.001.04 and .08): the default namespace without prefix, ``GrpHdr/AddtlInf`` with the SPS
version, entries with ``NtryRef``, ``Amt Ccy="CHF"``, ``CdtDbtInd``, ``RvslInd``, ``Sts`` (text in
.04, ``Sts/Cd`` in .08), ``BookgDt/Dt``, ``ValDt/Dt``, an entry ``AcctSvcrRef``, ``BkTxCd``, and
``NtryDtls/Btch/NbOfTxs`` with one ``TxDtls`` per payment (``Refs/AcctSvcrRef``, ``Amt``,
``RltdPties/Dbtr/Nm`` in .04 or ``Dbtr/Pty/Nm`` in .08, ``RmtInf/Strd/CdtrRefInf``).
"""
from __future__ import annotations

from dataclasses import dataclass, field


@dataclass
class Tx:
    amount: str
    reference: str | None
    debtor: str = "Hans Muster"
    acct_svcr_ref: str | None = None
    credit: bool = True
    ref_type: str = "QRR"            # QRR (Prtry) or SCOR (Cd)


@dataclass
class Entry:
    txs: list[Tx]
    booking_date: str = "2026-04-10"
    reversal: bool = False
    acct_svcr_ref: str | None = None
    ntry_ref: str | None = None
    credit: bool = True
    amount: str | None = None        # default: the sum of the transactions


def _tx(t: Tx, version: str) -> str:
    debtor = (f"<Dbtr><Nm>{t.debtor}</Nm></Dbtr>" if version == "04"
              else f"<Dbtr><Pty><Nm>{t.debtor}</Nm></Pty></Dbtr>")
    if t.reference is None:
        rmt = "<RmtInf><Ustrd>Zahlung</Ustrd></RmtInf>"
    else:
        tp = ("<Tp><CdOrPrtry><Prtry>QRR</Prtry></CdOrPrtry></Tp>" if t.ref_type == "QRR"
              else "<Tp><CdOrPrtry><Cd>SCOR</Cd></CdOrPrtry></Tp>")
        rmt = f"<RmtInf><Strd><CdtrRefInf>{tp}<Ref>{t.reference}</Ref></CdtrRefInf></Strd></RmtInf>"
    refs = (f"<Refs><AcctSvcrRef>{t.acct_svcr_ref}</AcctSvcrRef><EndToEndId>NOTPROVIDED</EndToEndId></Refs>"
            if t.acct_svcr_ref else "<Refs><EndToEndId>NOTPROVIDED</EndToEndId></Refs>")
    return (f"<TxDtls>{refs}<Amt Ccy=\"CHF\">{t.amount}</Amt><CdtDbtInd>{'CRDT' if t.credit else 'DBIT'}</CdtDbtInd>"
            "<BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd><SubFmlyCd>VCOM</SubFmlyCd></Fmly></Domn></BkTxCd>"
            f"<RltdPties>{debtor}<DbtrAcct><Id><IBAN>CH9300762011623852957</IBAN></Id></DbtrAcct></RltdPties>"
            f"{rmt}</TxDtls>")


def _entry(e: Entry, version: str) -> str:
    from decimal import Decimal
    amount = e.amount or f"{sum(Decimal(t.amount) for t in e.txs):.2f}"
    sts = "<Sts>BOOK</Sts>" if version == "04" else "<Sts><Cd>BOOK</Cd></Sts>"
    return ("<Ntry>" + (f"<NtryRef>{e.ntry_ref}</NtryRef>" if e.ntry_ref else "")
            + f"<Amt Ccy=\"CHF\">{amount}</Amt><CdtDbtInd>{'CRDT' if e.credit else 'DBIT'}</CdtDbtInd>"
            f"<RvslInd>{'true' if e.reversal else 'false'}</RvslInd>{sts}"
            f"<BookgDt><Dt>{e.booking_date}</Dt></BookgDt><ValDt><Dt>{e.booking_date}</Dt></ValDt>"
            + (f"<AcctSvcrRef>{e.acct_svcr_ref}</AcctSvcrRef>" if e.acct_svcr_ref else "")
            + "<BkTxCd><Domn><Cd>PMNT</Cd><Fmly><Cd>RCDT</Cd><SubFmlyCd>AUTT</SubFmlyCd></Fmly></Domn></BkTxCd>"
            f"<NtryDtls><Btch><NbOfTxs>{len(e.txs)}</NbOfTxs></Btch>" + "".join(_tx(t, version) for t in e.txs)
            + "</NtryDtls></Ntry>")


def camt(entries: list[Entry], kind: str = "054", version: str = "08", iban: str = "CH4431999123000889012",
         msg_id: str = "MSG-2026-04-10") -> bytes:
    ns = f"urn:iso:std:iso:20022:tech:xsd:camt.{kind}.001.{version}"
    body, report = ("BkToCstmrDbtCdtNtfctn", "Ntfctn") if kind == "054" else ("BkToCstmrStmt", "Stmt")
    sps = "SPS/2.0/PROD" if version == "08" else "SPS/1.7/PROD"
    bal = ("" if kind == "054" else
           "<Bal><Tp><CdOrPrtry><Cd>OPBD</Cd></CdOrPrtry></Tp><Amt Ccy=\"CHF\">1000.00</Amt>"
           "<CdtDbtInd>CRDT</CdtDbtInd><Dt><Dt>2026-04-10</Dt></Dt></Bal>")
    return (f'<?xml version="1.0" encoding="UTF-8"?>\n<Document xmlns="{ns}" '
            'xmlns:xsi="http://www.w3.org/2001/XMLSchema-instance">'
            f"<{body}><GrpHdr><MsgId>{msg_id}</MsgId><CreDtTm>2026-04-10T23:00:57</CreDtTm>"
            "<MsgPgntn><PgNb>1</PgNb><LastPgInd>true</LastPgInd></MsgPgntn>"
            f"<AddtlInf>{sps}</AddtlInf></GrpHdr><{report}><Id>{msg_id}-1</Id>"
            "<CreDtTm>2026-04-10T23:00:57</CreDtTm>"
            f"<Acct><Id><IBAN>{iban}</IBAN></Id><Ccy>CHF</Ccy><Ownr><Nm>LEG Sonnenhalde</Nm></Ownr></Acct>{bal}"
            + "".join(_entry(e, version) for e in entries)
            + f"</{report}></{body}></Document>").encode()
