"""X509Signer handler: `sign_x509`. The order of the checks and steps is the issuance flow
in docs/ISSUANCE-CYCLE.md:

  1. body fields, profile and issuer (one the profile names; typed errors name the field)
  2. key request (a CSR, or an SPKAC: core/x509/spkac.py) parsed, its signature (proof of
     possession) and key policy checked
  3. subject and SANs from the web side's verified values, checked against the profile;
     the CSR's own subject and extensions are ignored: the profile is the only source of
     extensions
  4. TBS built with a throwaway key of the issuer's type, linted (pkilint RFC 5280)
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

from typing import Any

from cryptography.hazmat.primitives.serialization import Encoding

from actors.handlers.handler import HandlerActor, Job, request_digest
from core.x509.issuers import load_issuers, utc_now
from core.x509.profiles import check_issuers, load_profiles
from core.wire.protocol import SignerError, check_count, field
from core.x509.spkac import check_spkac
from core.x509.certificate import (PkixLinter, assemble_certificate, build_sans, build_subject,
                            build_tbs_certificate, check_csr, key_info_of, new_serial,
                            throwaway_key, validity_window, verify_issued)
from messages import HsmSignRequest
from messages.repository import CompleteCertificate, DiscardReservation, LookupOrReserve

COMMAND = "sign_x509"


def parse_pairs(value: Any, name: str) -> list[tuple[str, str]]:
    """[[k, v], ...], {k: v} or ["k:v", ...] -> [(k, v), ...]."""
    if isinstance(value, dict):
        value = list(value.items())
    pairs = []
    for item in value:
        if isinstance(item, str) and ":" in item:
            item = item.split(":", 1)
        if not (isinstance(item, (list, tuple)) and len(item) == 2
                and all(isinstance(part, str) for part in item)):
            raise SignerError("bad_request", f"field '{name}': each entry must be a [type, value] pair of strings")
        pairs.append((item[0], item[1]))
    return pairs


class X509Signer(HandlerActor):
    actor_name = "x509_signer"
    body_fields = frozenset({"issuer", "profile", "csr", "spkac", "subject", "sans", "hash", "days"})

    def configure(self, config: Any) -> None:
        super().configure(config)
        self.profiles = check_issuers(load_profiles(config.x509.profiles), {i.id for i in config.issuers})
        self.issuers = load_issuers(config)
        self.key_infos = {i: key_info_of(issuer.certificate.public_key()) for i, issuer in self.issuers.items()}
        for key_info in self.key_infos.values():
            # Made now, not on a first request: an RSA-4096 key takes ~1 s to generate, and
            # every worker of the pool (and every restarted one) needs its own.
            throwaway_key(key_info)
        self.linter = PkixLinter() if config.x509.lint else None

    def start(self, job: Job) -> None:
        body = job.body
        profile_name = field(body, "profile", str)
        profile = self.profiles.get(profile_name)
        if profile is None:
            raise SignerError("unknown_profile", f"no profile {profile_name!r} (known: {sorted(self.profiles)})")
        issuer_id = field(body, "issuer", str)
        if issuer_id not in self.issuers:
            raise SignerError("unknown_issuer", f"no issuer {issuer_id!r} (known: {sorted(self.issuers)})")
        if issuer_id not in profile.issuers:
            raise SignerError("unknown_issuer", f"profile {profile_name!r} is not issued by {issuer_id!r} "
                                                f"(its issuers: {list(profile.issuers)})")
        subject = field(body, "subject", (dict, list), required=False, default={})
        sans = field(body, "sans", list, required=False, default=[])
        # Counted before anything whose cost grows with them (parsing, the request digest,
        # the CSR's signature, building, linting, the HSM).
        check_count("subject", subject, profile.max_subject_attributes,
                    f"max_subject_attributes of profile {profile.name!r}")
        check_count("sans", sans, profile.max_sans, f"max_sans of profile {profile.name!r}")
        if (body.get("csr") is None) == (body.get("spkac") is None):
            raise SignerError("bad_request", "give exactly one of the fields 'csr' and 'spkac'")
        job.state.update(profile=profile, issuer=self.issuers[issuer_id],
                         csr_der=field(body, "csr", bytes, required=False),
                         spkac=field(body, "spkac", str, required=False),
                         subject=parse_pairs(subject, "subject"), sans=parse_pairs(sans, "sans"),
                         hash=field(body, "hash", str, required=False, default="sha256"),
                         days=field(body, "days", int, required=False))
        days = job.state["days"]
        if days is not None and days <= 0:
            raise SignerError("bad_request", "field 'days' must be positive")
        if days is not None and days > profile.max_validity_days:
            raise SignerError("validity_too_long", f"profile {profile.name!r} allows at most "
                                                   f"{profile.max_validity_days} days, not {days}")
        job.state["request_digest"] = request_digest(job.command, job.body)
        try:
            self.build(job)
        except (KeyboardInterrupt, SystemExit, GeneratorExit):
            raise
        except BaseException as exc:  # noqa: BLE001 - re-raised inside HandlerActor.step
            # A request that would be refused now (or that fails) may have been answered
            # before (another configuration, the peer signer): its stored result wins, as
            # for any replay; else the refusal is answered as it would have been.
            self.unless_replayed(job, lambda job, refusal=exc: self.refuse(refusal))
            return
        self.reserve(job)

    @staticmethod
    def refuse(refusal: BaseException) -> None:
        raise refusal

    def build(self, job: Job) -> None:
        state = job.state
        profile, issuer = state["profile"], state["issuer"]
        if state["spkac"] is not None:
            subject_key = check_spkac(state["spkac"], profile)
        else:
            subject_key = check_csr(state["csr_der"], profile).public_key()
        subject = build_subject(state["subject"], profile)
        sans = build_sans(state["sans"], profile)
        not_before, not_after = validity_window(profile, utc_now(), state["days"])
        serial = new_serial()
        prepared = build_tbs_certificate(profile, issuer.id, issuer.certificate, self.key_infos[issuer.id],
                                         subject_key, subject, sans, serial, not_before, not_after,
                                         state["hash"])
        if self.linter is not None:
            self.linter.check(prepared.throwaway_certificate.public_bytes(Encoding.DER))
        state.update(prepared=prepared, serial_hex=format(serial, "x"), subject_text=subject.rfc4514_string(),
                     not_before=not_before, not_after=not_after)

    def reserve(self, job: Job) -> None:
        state = job.state
        self.ask(job, "repository",
                 lambda tag: LookupOrReserve(tag, state["issuer"].id, state["serial_hex"], str(job.request_id),
                                             state["profile"].name, state["subject_text"],
                                             state["not_before"], state["not_after"]),
                 self.after_reserve)

    def after_reserve(self, job: Job, stored: dict[str, Any] | None) -> None:
        if stored is not None:  # the request id is known: nothing was reserved
            self.answer_stored(job, stored)
            return
        self.ask(job, "hsm", lambda tag: HsmSignRequest(tag, job.state["issuer"].key_label,
                                                        job.state["prepared"].mechanism,
                                                        job.state["prepared"].tbs_der),
                 self.after_signature, on_error=self.discard)

    def after_signature(self, job: Job, signature: bytes) -> None:
        state = job.state
        try:
            der = assemble_certificate(state["prepared"], signature)
            verify_issued(der, state["issuer"].certificate)
        except SignerError:
            self.discard(job, None)
            raise
        result = {"certificate": der, "serial": state["serial_hex"], "issuer": state["issuer"].id,
                  "profile": state["profile"].name, "not_before": state["not_before"].isoformat(),
                  "not_after": state["not_after"].isoformat()}
        state["result"] = result
        self.ask(job, "repository",
                 lambda tag: CompleteCertificate(tag, state["issuer"].id, state["serial_hex"], der,
                                                 str(job.request_id), COMMAND, state["request_digest"], result),
                 lambda job, _: self.finish(job, result), on_error=self.discard)

    def discard(self, job: Job, error: Any) -> None:
        """The serial was reserved but no certificate exists: free the reservation."""
        self.send(self.peer("repository"),
                  DiscardReservation(0, job.state["issuer"].id, job.state["serial_hex"]))

