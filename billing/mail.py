"""Mailing issued invoices (and credit notes) to their houses over SMTP (``smtp`` in config.yaml).

Each document is claimed in the ledger before it is sent and marked sent or failed after, so a
second click, a second manager or a restart never mails it twice; a send that was interrupted
(claimed, outcome unknown) is left for a person to decide (``release``). The result is recorded
per document and shown on the settlement page.
"""
from __future__ import annotations

import logging
import smtplib
import ssl
from dataclasses import dataclass, field
from email.message import EmailMessage
from email.utils import make_msgid

from billing.invoice_documents import house_config
from billing.lifecycle import document_pdf

log = logging.getLogger(__name__)

SUBJECTS = {"de": "Ihre Stromabrechnung {id} ({period})", "fr": "Votre facture d'électricité {id} ({period})",
            "it": "La sua fattura dell'elettricità {id} ({period})", "en": "Your electricity invoice {id} ({period})"}
BODIES = {"de": "Guten Tag\n\nIm Anhang finden Sie die Abrechnung {id} für {period}.\n\nFreundliche Grüsse\n{community}\n",
          "fr": "Bonjour,\n\nVous trouverez ci-joint le document {id} pour {period}.\n\nMeilleures salutations\n{community}\n",
          "it": "Buongiorno\n\nIn allegato trova il documento {id} per {period}.\n\nCordiali saluti\n{community}\n",
          "en": "Hello\n\nAttached is document {id} for {period}.\n\nKind regards\n{community}\n"}


@dataclass
class MailRun:
    sent: list[str] = field(default_factory=list)
    skipped: dict[str, str] = field(default_factory=dict)    # document -> why not sent now
    failed: dict[str, str] = field(default_factory=dict)     # document -> SMTP error

    def summary(self) -> str:
        parts = [f"{len(self.sent)} sent"]
        if self.skipped:
            parts.append(f"{len(self.skipped)} not sent (" + "; ".join(
                f"{k}: {v}" for k, v in list(self.skipped.items())[:5]) + ("…" if len(self.skipped) > 5 else "") + ")")
        if self.failed:
            parts.append(f"{len(self.failed)} failed (" + "; ".join(
                f"{k}: {v}" for k, v in list(self.failed.items())[:5]) + ")")
        return ", ".join(parts)


def configured(cfg) -> bool:
    return bool(cfg.smtp.host)


def _connect(cfg):
    s = cfg.smtp
    if s.security == "ssl":
        smtp = smtplib.SMTP_SSL(s.host, s.port, timeout=s.timeout_s, context=ssl.create_default_context())
    else:
        smtp = smtplib.SMTP(s.host, s.port, timeout=s.timeout_s)
        if s.security == "starttls":
            smtp.starttls(context=ssl.create_default_context())
    if s.username:
        smtp.login(s.username, s.password or "")
    return smtp


def send_period(c, period_id: str, by: str, progress=None) -> MailRun:
    """Mail every issued document of a closed period that has not been mailed yet."""
    cfg = c.cfg
    if not configured(cfg):
        raise ValueError("smtp.host is not configured: invoices cannot be mailed")
    invoices = c.ledger.issued_invoices(period_id)
    if not invoices:
        raise ValueError(f"period {period_id} has no issued invoices (close it first)")
    docs = [(inv["invoice_id"], inv["house_id"], inv["details"].get("house_name", "")) for inv in invoices]
    by_id = {inv["invoice_id"]: inv for inv in invoices}
    docs += [(n["credit_note_id"], by_id[n["invoice_id"]]["house_id"], "") for n in c.ledger.credit_notes(period_id)]
    run = MailRun()
    step = progress or (lambda *a: None)
    smtp = None
    try:
        for k, (doc_id, house_id, _name) in enumerate(docs):
            step(k, len(docs), f"mailing {doc_id}")
            h = house_config(cfg, house_id)
            if h is None or not h.email:
                run.skipped[doc_id] = f"house {house_id} has no e-mail address"
                continue
            if not c.ledger.claim_mail(doc_id, h.email, by):
                state = c.ledger.mails([doc_id])[doc_id]["status"]
                run.skipped[doc_id] = "already sent" if state == "sent" else "a send was interrupted; check, then release it"
                continue
            try:
                if smtp is None:
                    smtp = _connect(cfg)
                msg_id = _send(smtp, cfg, doc_id, period_id, h, document_pdf(c, doc_id))
            except (smtplib.SMTPException, OSError) as exc:
                c.ledger.finish_mail(doc_id, False, f"{type(exc).__name__}: {exc}")
                run.failed[doc_id] = str(exc) or type(exc).__name__
                log.warning("mailing %s to %s failed: %s", doc_id, h.email, exc)
                if isinstance(exc, (smtplib.SMTPServerDisconnected, OSError)):
                    smtp = None
                continue
            c.ledger.finish_mail(doc_id, True, message_id=msg_id)
            run.sent.append(doc_id)
        step(len(docs), len(docs), "done")
    finally:
        if smtp is not None:
            try:
                smtp.quit()
            except (smtplib.SMTPException, OSError):
                pass
    log.info("period %s mailed by %s: %s", period_id, by, run.summary())
    return run


def _send(smtp, cfg, doc_id: str, period_id: str, h, pdf: bytes) -> str:
    lang = h.language or cfg.community.language
    msg = EmailMessage()
    msg["From"] = cfg.smtp.sender
    msg["To"] = h.email
    msg["Subject"] = SUBJECTS[lang].format(id=doc_id, period=period_id)
    msg_id = make_msgid(domain="leg-invoicing")
    msg["Message-ID"] = msg_id
    msg.set_content(BODIES[lang].format(id=doc_id, period=period_id, community=cfg.community.name))
    msg.add_attachment(pdf, maintype="application", subtype="pdf", filename=f"{doc_id}.pdf")
    smtp.send_message(msg)
    return msg_id


def release(c, document_id: str, by: str) -> None:
    """After checking that an interrupted send did not arrive: allow sending it again."""
    state = c.ledger.mails([document_id]).get(document_id)
    if state is None or state["status"] != "sending":
        raise ValueError(f"{document_id}: no interrupted send to release")
    c.ledger.finish_mail(document_id, False, f"released for another attempt by {by}")
