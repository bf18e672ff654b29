"""Revoker handler: `revoke_x509` marks a certificate revoked in the repository (with an
event). CRLs are not built here: the CRL handler builds them when a client fetches one.
The first revocation of a serial wins; revoking again returns it unchanged. The body is
parsed by core.x509.requests.RevokeX509Request."""
from __future__ import annotations

from typing import Any

from actors.handlers.handler import Envelope, HandlerActor, Job
from core.x509.issuers import utc_now
from core.x509.requests import RevokeX509Request
from messages.repository import Revocation, RevokeCertificate

RevokeJob = Job[RevokeX509Request, None]


class Revoker(HandlerActor[RevokeX509Request, None]):
    actor_name = "revoker"

    def configure(self, config: Any) -> None:
        super().configure(config)
        self.issuer_ids = {i.id for i in config.issuers}

    def parse(self, envelope: Envelope) -> RevokeX509Request:
        return RevokeX509Request.parse(envelope.body, self.issuer_ids, utc_now())

    def new_state(self, request: RevokeX509Request) -> None:
        return None  # one ask, nothing to carry

    def start(self, job: RevokeJob) -> None:
        request = job.request
        self.ask_repository(job, lambda tag: RevokeCertificate(tag, request.issuer, request.serial_hex, request.reason,
                                                               request.revoked_at, str(job.request_id)),
                            self.revoked)

    def revoked(self, job: RevokeJob, revocation: Revocation) -> None:
        self.finish(job, revocation.body())
