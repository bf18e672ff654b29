"""OpenPgpSigner handler: `sign_openpgp` certifies user ids of a user's OpenPGP key with
the CA's OpenPGP key on the HSM. See docs/OPENPGP.md for the flow and who checks what:

  1. body fields (core.openpgp.requests.SignOpenPgpRequest.parse); request id known ->
     the stored result (or request_id_conflict)
  2. the key is validated by gpg in a throwaway home (core.openpgp.validate): one public
     primary key, not revoked or expired, strong enough; the requested user ids that are
     on the key, none of them revoked
  3. our code splits the validated packets and prepares one v4 certification per user id
     (RFC 4880 5.2.4; steps 2-3: SignOpenPgpRequest.prepare), each signed by the Hsm actor,
     then inserts them after their uids
  4. the signed key, the request result and an openpgp_signed event are stored together
"""
from __future__ import annotations

import functools
from dataclasses import dataclass, field
from datetime import datetime, timezone
from typing import Any

from actors.handlers.handler import Envelope, HandlerActor, Job
from core.openpgp.certify import PreparedSignature
from core.openpgp.requests import OpenPgpCa, PreparedCertifications, SignOpenPgpRequest
from messages import HsmSignRequest
from messages.repository import StoreOpenPgpSignature

COMMAND = SignOpenPgpRequest.COMMAND


@dataclass
class OpenPgpState:
    """What a sign_openpgp job carries between replies."""
    prepared: PreparedCertifications | None = None
    packets: dict[str, bytes] = field(default_factory=dict)  # uid -> its signature packet, as they come
    failed: bool = False  # answered with an error: later HSM replies are ignored


OpenPgpJob = Job[SignOpenPgpRequest, OpenPgpState]


class OpenPgpSigner(HandlerActor[SignOpenPgpRequest, OpenPgpState]):
    actor_name = "openpgp_signer"

    def configure(self, config: Any) -> None:
        super().configure(config)
        self.pgp = config.openpgp
        self.ca: OpenPgpCa | None = None if self.pgp is None else OpenPgpCa.load(self.pgp)

    def parse(self, envelope: Envelope) -> SignOpenPgpRequest:
        return SignOpenPgpRequest.parse(envelope.body, self.pgp, self.ca)

    def new_state(self, request: SignOpenPgpRequest) -> OpenPgpState:
        return OpenPgpState()

    def start(self, job: OpenPgpJob) -> None:
        self.unless_replayed(job, self.certify)

    def certify(self, job: OpenPgpJob) -> None:
        assert self.ca is not None  # parse refuses every request without one
        prepared = job.state.prepared = job.request.prepare(self.pgp, self.ca, datetime.now(timezone.utc))
        for uid, signature in prepared.certifications.items():
            self.ask_hsm(job, functools.partial(self.sign_request, signature), functools.partial(self.after_signature, uid))

    def sign_request(self, signature: PreparedSignature, tag: int) -> HsmSignRequest:
        return HsmSignRequest(tag, self.pgp.key_label, signature.mechanism, signature.hashed_data)

    def after_signature(self, uid: str, job: OpenPgpJob, hsm_signature: bytes) -> None:
        state, prepared = job.state, job.state.prepared
        if state.failed:
            return
        assert prepared is not None and self.ca is not None
        state.packets[uid] = prepared.signature_packet(self.ca, uid, hsm_signature)
        if len(state.packets) < len(prepared.certifications):
            return
        signed = prepared.signed_key(state.packets)
        result = prepared.answer(signed, self.ca)
        digest = job.request_digest or ""
        self.ask_repository(job, lambda tag: StoreOpenPgpSignature(
            tag, str(job.request_id), prepared.validated.fingerprint, signed, list(prepared.certifications),
            prepared.expires_at, COMMAND, digest, result), lambda job, _: self.finish(job, result))

    def fail(self, job: OpenPgpJob | Envelope, error: dict[str, str]) -> None:
        # One failed HSM signature ends the job; later replies for its other uids are ignored.
        if isinstance(job, Job):
            if job.state.failed:
                return
            job.state.failed = True
        super().fail(job, error)
