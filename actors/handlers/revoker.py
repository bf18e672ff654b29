"""Revoker handler: `revoke_x509` marks a certificate revoked in the repository (with an
event). CRLs are not built here: the CRL handler builds them when a client fetches one.
The first revocation of a serial wins; revoking again returns it unchanged."""
from __future__ import annotations

import re
from datetime import datetime, timezone
from typing import Any

from actors.handlers.handler import HandlerActor, Job
from core.crl.build import EARLIEST_REVOCATION, MAX_CLOCK_SKEW, parse_reason
from core.x509.issuers import utc_now
from core.wire.protocol import SignerError, field
from messages.repository import RevokeCertificate



SERIAL_FORM = re.compile(r"(0x)?[0-9a-f]+(:[0-9a-f]+)*")


def parse_serial(value: str) -> str:
    if not SERIAL_FORM.fullmatch(value.lower()):
        raise SignerError("bad_request", f"field 'serial': {value!r} is not a hexadecimal serial "
                                         "(digits, optional 0x, or colon-separated octets)")
    text = value.lower().removeprefix("0x").replace(":", "")
    try:
        serial = int(text, 16)
    except ValueError:
        raise SignerError("bad_request", f"field 'serial': {value!r} is not a hexadecimal serial") from None
    if serial <= 0 or serial.bit_length() > 159:
        raise SignerError("bad_request", "field 'serial': must be a positive integer of at most 20 octets")
    return format(serial, "x")


def parse_time(value: Any, now: datetime) -> datetime:
    if value is None:
        return now.replace(microsecond=0)
    try:
        moment = (datetime.fromtimestamp(value, timezone.utc) if isinstance(value, int)
                  else datetime.fromisoformat(value.replace("Z", "+00:00")))
    except (ValueError, OverflowError, OSError, AttributeError):
        raise SignerError("bad_request", f"field 'time': {value!r} is not an ISO 8601 time or Unix seconds") from None
    if moment.tzinfo is None:
        raise SignerError("bad_request", "field 'time': needs a time zone (e.g. Z)")
    try:
        moment = moment.astimezone(timezone.utc).replace(microsecond=0)
    except OverflowError:
        raise SignerError("bad_request", f"field 'time': {value!r} is out of range") from None
    if moment > now + MAX_CLOCK_SKEW:
        raise SignerError("bad_request", "field 'time': a revocation cannot be dated in the future")
    if moment < EARLIEST_REVOCATION:
        raise SignerError("bad_request", f"field 'time': a revocation cannot be dated before {EARLIEST_REVOCATION:%Y-%m-%d}")
    return moment


class Revoker(HandlerActor):
    actor_name = "revoker"
    body_fields = frozenset({"issuer", "serial", "reason", "time"})

    def configure(self, config: Any) -> None:
        super().configure(config)
        self.issuer_ids = {i.id for i in config.issuers}

    def start(self, job: Job) -> None:
        issuer = field(job.body, "issuer", str)
        if issuer not in self.issuer_ids:
            raise SignerError("unknown_issuer", f"no issuer {issuer!r} (known: {sorted(self.issuer_ids)})")
        serial = parse_serial(field(job.body, "serial", str))
        reason_value = field(job.body, "reason", (str, int), required=False)
        reason = None if reason_value is None else parse_reason(reason_value)
        revoked_at = parse_time(field(job.body, "time", (str, int), required=False), utc_now())
        self.ask(job, "repository",
                 lambda tag: RevokeCertificate(tag, issuer, serial, reason, revoked_at, str(job.request_id)),
                 self.revoked)

    def revoked(self, job: Job, value: dict[str, Any]) -> None:
        body = dict(value)
        if isinstance(body.get("revoked_at"), datetime):
            body["revoked_at"] = body["revoked_at"].isoformat()
        self.finish(job, body)
