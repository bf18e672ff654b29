"""Notification mails (docs/webdb-client.md#notification-mails): what client.pl mailed
after issuing, revoking and certifying, through SMTP to a configured host (the local MTA).

A mail that cannot be sent is logged and counted; it never undoes or retries the row's
work (the certificate is issued and written back whatever the MTA does), as with client.pl.
"""
from __future__ import annotations

import logging
import smtplib
from email.message import EmailMessage
from email.utils import formataddr, formatdate, make_msgid
from typing import Any

from tools.webdb.config import MailConfig
from tools.webdb.mail_templates import render

log = logging.getLogger("signer-client")


class Mailer:
    def __init__(self, config: MailConfig) -> None:
        self.config = config

    def send(self, kind: str, recipients: list[dict[str, Any]], **values: str) -> list[str]:
        """One mail per member (`users` rows: email, fname, language), in the member's
        language. Returns the error lines (empty: all sent, or mails are off)."""
        if not self.config.enabled:
            return []
        errors = []
        for user in recipients:
            address = str(user.get("email") or "").strip()
            if not address:
                errors.append(f"{kind} mail: member {user.get('id')} has no e-mail address")
                continue
            subject, body = render(kind, user.get("language"), fname=str(user.get("fname") or ""), **values)
            try:
                self._deliver(address, subject, body)
                log.info("%s mail sent to member %s", kind, user.get("id"))
            except Exception as exc:  # SMTP, network, or an address no header may hold: never the row's
                errors.append(f"{kind} mail to member {user.get('id')} not sent: {type(exc).__name__}: {exc}")
        for line in errors:
            log.error("%s", line)
        return errors

    def _deliver(self, to: str, subject: str, body: str) -> None:
        config = self.config
        message = EmailMessage()
        message["From"] = formataddr(("CAcert Support", config.sender))
        message["To"] = to
        message["Reply-To"] = config.sender
        message["Sender"] = config.envelope_from
        message["Errors-To"] = config.envelope_from
        message["Subject"] = subject
        message["Date"] = formatdate(localtime=False)
        message["Message-ID"] = make_msgid(domain=config.sender.rpartition("@")[2] or None)
        message["X-Mailer"] = "CAcert signer-client"
        message.set_content(body, charset="utf-8")
        with smtplib.SMTP(config.host, config.port, timeout=config.timeout_s) as smtp:
            smtp.send_message(message, from_addr=config.envelope_from, to_addrs=[to])
