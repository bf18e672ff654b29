"""OpenPgpSigner handler: `sign_openpgp` certifies user ids of a user's OpenPGP key with
the CA's OpenPGP key on the HSM. See docs/OPENPGP.md for the flow and who checks what:

  1. body fields; request id known -> the stored result (or request_id_conflict)
  2. the key is validated by gpg in a throwaway home (core.openpgp.validate): one public
     primary key, not revoked or expired, strong enough; the requested user ids that are
     on the key, none of them revoked
  3. our code splits the validated packets and prepares one v4 certification per user id
     (RFC 4880 5.2.4), each signed by the Hsm actor, then inserts them after their uids
  4. the signed key, the request result and an openpgp_signed event are stored together
"""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature

from actors.handlers.handler import HandlerActor, Job
from core.openpgp import certify as openpgp
from core.hsm.session import verify_signature
from core.openpgp.validate import select_user_ids, validate_public_key
from core.wire.protocol import SignerError, check_count, field
from messages import HsmSignRequest
from messages.repository import StoreOpenPgpSignature

COMMAND = "sign_openpgp"
HASHES = ("sha256", "sha384", "sha512")


class OpenPgpSigner(HandlerActor):
    actor_name = "openpgp_signer"
    body_fields = frozenset({"key", "uids", "days", "digest"})

    def configure(self, config: Any) -> None:
        super().configure(config)
        self.pgp = config.openpgp
        if self.pgp is None:
            return
        packets = openpgp.parse_packets(openpgp.dearmor(Path(self.pgp.public_key).read_text()))
        self.ca_key_body = next(p.body for p in packets if p.tag == openpgp.TAG_PUBLIC_KEY)
        self.ca_info = openpgp.parse_public_key_body(self.ca_key_body)
        self.ca_fingerprint = openpgp.fingerprint_v4(self.ca_key_body)
        self.ca_public_key = openpgp.public_key_from_body(self.ca_key_body)
        if self.ca_info.created != self.pgp.created:
            raise ValueError(f"openpgp.created {self.pgp.created} is not the creation time of "
                             f"{self.pgp.public_key} ({self.ca_info.created})")
        self.default_hash = openpgp.default_hash(self.ca_public_key)

    def start(self, job: Job) -> None:
        if self.pgp is None:
            raise SignerError("unknown_command", "this signer has no OpenPGP CA key configured")
        body = job.body
        key = field(body, "key", (bytes, str))
        uids = field(body, "uids", list)
        # Each certified uid costs one HSM signature, and the only Hsm actor serves everyone.
        check_count("uids", uids, self.pgp.max_uids, "openpgp.max_uids")
        if not uids or not all(isinstance(u, str) and u for u in uids):
            raise SignerError("bad_request", "field 'uids' must be a non-empty list of user id strings")
        days = field(body, "days", int, required=False, default=self.pgp.default_days)
        if not 0 < days <= self.pgp.max_days:
            raise SignerError("validity_too_long" if days > 0 else "bad_request",
                              f"field 'days': {days} is outside 1..{self.pgp.max_days}")
        digest = field(body, "digest", str, required=False, default=self.default_hash)
        if digest not in HASHES:
            raise SignerError("hash_not_allowed", f"field 'digest': {digest!r} is not one of {HASHES}")
        job.state.update(key=key, uids=uids, days=days, digest=digest)
        self.unless_replayed(job, self.certify)

    def certify(self, job: Job) -> None:
        state = job.state
        validated = validate_public_key(state["key"], gpg=self.pgp.gpg, max_bytes=self.pgp.max_key_bytes)
        chosen = select_user_ids(validated, state["uids"])
        user_key = openpgp.split_transferable_key(validated.binary, max_bytes=self.pgp.max_key_bytes)
        created = int(datetime.now(timezone.utc).timestamp())
        try:
            prepared = {uid: openpgp.prepare_certification(
                self.ca_key_body, self.ca_info.algorithm, user_key.primary_key, uid.encode(),
                self.pgp.signature_type, created, state["days"] * 86400, state["digest"],
                self.pgp.policy_url, self.ca_fingerprint) for uid in chosen}
        except ValueError as exc:  # e.g. a hash weaker than the CA's curve
            raise SignerError("hash_not_allowed", str(exc)) from None
        state.update(user_key=user_key, validated=validated, prepared=prepared, signatures={},
                     expires_at=datetime.fromtimestamp(created, timezone.utc) + timedelta(days=state["days"]))
        for uid, signature in prepared.items():
            self.ask(job, "hsm", lambda tag, s=signature: HsmSignRequest(tag, self.pgp.key_label, s.mechanism,
                                                                         s.hashed_data),
                     lambda job, value, uid=uid: self.after_signature(job, uid, value))

    def after_signature(self, job: Job, uid: str, hsm_signature: bytes) -> None:
        state = job.state
        if state.get("failed"):
            return
        prepared = state["prepared"][uid]
        try:  # nothing is stored or answered that the CA key does not verify
            verify_signature(self.ca_public_key, prepared.mechanism, hsm_signature, prepared.hashed_data)
        except InvalidSignature:
            raise SignerError("signature_invalid", f"the HSM's signature on {uid!r} does not verify "
                                                   "with the OpenPGP CA key") from None
        state["signatures"][uid] = openpgp.assemble_signature_packet(prepared, hsm_signature)
        if len(state["signatures"]) < len(state["prepared"]):
            return
        signed = openpgp.insert_certifications(state["user_key"], {u.encode(): p for u, p in state["signatures"].items()})
        fingerprint = state["validated"].fingerprint
        result = {"key": openpgp.armor(signed), "fingerprint": fingerprint,
                  "certified_uids": list(state["prepared"]), "expires_at": state["expires_at"].isoformat(),
                  "signer_fingerprint": self.ca_fingerprint.hex().upper()}
        self.ask(job, "repository",
                 lambda tag: StoreOpenPgpSignature(tag, str(job.request_id), fingerprint, signed,
                                                   list(state["prepared"]), state["expires_at"],
                                                   COMMAND, state["request_digest"], result),
                 lambda job, _: self.finish(job, result))

    def fail(self, job: Job, error: dict[str, str]) -> None:
        # One failed HSM signature ends the job; later replies for its other uids are ignored.
        if not job.state.get("failed"):
            job.state["failed"] = True
            super().fail(job, error)
