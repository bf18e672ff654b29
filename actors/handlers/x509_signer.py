"""X509Signer handler: `sign_x509`. The order of the checks and steps is the issuance flow
in docs/ISSUANCE-CYCLE.md:

  1. body fields, profile and issuer (one the profile names; typed errors name the field):
     core.x509.requests.SignX509Request.parse
  2. key request (a CSR, or an SPKAC: core/x509/spkac.py) parsed, its signature (proof of
     possession) and key policy checked
  3. subject and SANs from the web side's verified values, checked against the profile;
     the CSR's own subject and extensions are ignored: the profile is the only source of
     extensions
  4. TBS built with a throwaway key of the issuer's type, linted (pkilint RFC 5280);
     steps 2-4: SignX509Request.prepare
  5. one repository transaction (LookupOrReserve): request id known? same content -> the
     stored result; other content -> request_id_conflict; else the serial is reserved
     (before any real signature). When steps 2-4 refuse the request, the request id is
     looked up first all the same: a stored result is answered again rather than refused
  6. TBS signed by the Hsm actor; certificate assembled and verified against the issuer
  7. certificate, request result and event stored in one transaction; answered

Steps 2-4 are the CPU-bound part (pkilint most of it) and need no state but the
configuration, so the Supervisor runs `x509.workers` of these actors and the Dispatcher
spreads `sign_x509` over them (docs/actors.md, "The X509Signer pool").
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from actors.handlers.handler import Envelope, HandlerActor, Job
from core.wire.protocol import SignerError
from core.wire.requests import request_digest
from core.x509.certificate import PkixLinter, assemble_certificate, key_info_of, throwaway_key, verify_issued
from core.x509.lint_cache import DecodedValues
from core.x509.issuers import Issuer, load_issuers, utc_now
from core.x509.profiles import check_issuers, load_profiles
from core.x509.requests import PreparedIssuance, SignX509Request
from messages import HsmSignRequest
from messages.repository import CompleteCertificate, DiscardReservation, LookupOrReserve, StoredRequest

COMMAND = SignX509Request.COMMAND


@dataclass
class X509State:
    """What a sign_x509 job carries between replies."""
    issuer: Issuer
    prepared: PreparedIssuance | None = None  # steps 2-4 done: the TBS and the reserved serial


X509Job = Job[SignX509Request, X509State]


class X509Signer(HandlerActor[SignX509Request, X509State]):
    actor_name = "x509_signer"

    def configure(self, config: Any) -> None:
        super().configure(config)
        self.profiles = check_issuers(load_profiles(config.x509.profiles), {i.id for i in config.issuers})
        self.issuers = load_issuers(config)
        self.key_infos = {i: key_info_of(issuer.certificate.public_key()) for i, issuer in self.issuers.items()}
        for key_info in self.key_infos.values():
            # Made now, not on a first request (an EC key; RSA issuers get a placeholder
            # that costs nothing: core/x509/placeholder_key.py).
            throwaway_key(key_info)
        # Nested values the same in every certificate (issuer name, AKI, CRL DP, policies)
        # decoded once: same findings, ~0.4 ms less per lint (core/x509/lint_cache.py).
        self.linter = PkixLinter(DecodedValues()) if config.x509.lint else None

    def parse(self, envelope: Envelope) -> SignX509Request:
        return SignX509Request.parse(envelope.body, self.profiles, self.issuers)

    def new_state(self, request: SignX509Request) -> X509State:
        return X509State(self.issuers[request.issuer])

    def start(self, job: X509Job) -> None:
        job.request_digest = request_digest(job.command, job.envelope.body)
        try:
            job.state.prepared = job.request.prepare(job.state.issuer, self.key_infos[job.request.issuer],
                                                     self.linter, utc_now())
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - re-raised inside HandlerActor.step
            # A request that would be refused now (or that fails) may have been answered
            # before (another configuration, the peer signer): its stored result wins, as
            # for any replay; else the refusal is answered as it would have been.
            refusal = exc
            self.unless_replayed(job, lambda job: self.refuse(refusal))
            return
        self.reserve(job, job.state.prepared)

    @staticmethod
    def refuse(refusal: BaseException) -> None:
        raise refusal

    def reserve(self, job: X509Job, prepared: PreparedIssuance) -> None:
        self.ask_repository(job, lambda tag: LookupOrReserve(
            tag, prepared.issuer, prepared.serial_hex, str(job.request_id), prepared.profile, prepared.subject,
            prepared.not_before, prepared.not_after), self.after_reserve)

    def after_reserve(self, job: X509Job, stored: StoredRequest | None) -> None:
        if stored is not None:  # the request id is known: nothing was reserved
            self.answer_stored(job, stored)
            return
        prepared = self.prepared(job)
        self.ask_hsm(job, lambda tag: HsmSignRequest(tag, job.state.issuer.key_label, prepared.tbs.mechanism,
                                                     prepared.tbs.tbs_der),
                     self.after_signature, on_error=self.discard)

    def after_signature(self, job: X509Job, signature: bytes) -> None:
        prepared = self.prepared(job)
        try:
            der = assemble_certificate(prepared.tbs, signature)
            verify_issued(der, job.state.issuer.certificate)
        except SignerError:
            self.discard(job, None)
            raise
        result = prepared.answer(der)
        digest = job.request_digest or ""
        self.ask_repository(job, lambda tag: CompleteCertificate(
            tag, prepared.issuer, prepared.serial_hex, der, str(job.request_id), COMMAND, digest, result),
            lambda job, _: self.finish(job, result), on_error=self.discard)

    def discard(self, job: X509Job, error: Any) -> None:
        """The serial was reserved but no certificate exists: free the reservation."""
        prepared = self.prepared(job)
        self.send(self.peer("repository"), DiscardReservation(0, prepared.issuer, prepared.serial_hex))

    def figures(self) -> dict[str, Any]:
        figures = super().figures()
        values = self.linter.decoded_values if self.linter is not None else None
        if values is not None:
            figures["lint_decoded_values"] = {"held": len(values), "hits": values.hits, "misses": values.misses}
        return figures

    @staticmethod
    def prepared(job: X509Job) -> PreparedIssuance:
        assert job.state.prepared is not None, "steps after the reservation need the prepared certificate"
        return job.state.prepared
