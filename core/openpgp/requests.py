"""`sign_openpgp`: its request body parsed once into a typed, frozen value, the CA's OpenPGP
key as the handler holds it, and what a request turns into before the HSM signs: the key
validated by gpg, the requested user ids chosen, one v4 certification prepared per user id
(docs/OPENPGP.md)."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, ClassVar, Mapping

from cryptography.exceptions import InvalidSignature

from core.hsm.session import verify_signature
from core.openpgp import certify
from core.openpgp.packets import TAG_PUBLIC_KEY, PublicKeyInfo, armor, dearmor, parse_packets, parse_public_key_body
from core.openpgp.validate import ValidatedKey, select_user_ids, validate_public_key
from core.wire.protocol import SignerError, check_count, field
from core.wire.requests import refuse_unknown_fields

HASHES = ("sha256", "sha384", "sha512")


@dataclass(frozen=True)
class OpenPgpCa:
    """The CA's OpenPGP public key (`openpgp.public_key`), its creation time checked against
    `openpgp.created` (part of the fingerprint)."""
    key_body: bytes
    info: PublicKeyInfo
    fingerprint: bytes
    public_key: certify.PublicKey
    default_hash: str

    @classmethod
    def load(cls, settings: Any) -> OpenPgpCa:
        packets = parse_packets(dearmor(Path(settings.public_key).read_text()))
        body = next(p.body for p in packets if p.tag == TAG_PUBLIC_KEY)
        info = parse_public_key_body(body)
        if info.created != settings.created:
            raise ValueError(f"openpgp.created {settings.created} is not the creation time of "
                             f"{settings.public_key} ({info.created})")
        public_key = certify.public_key_from_body(body)
        return cls(body, info, certify.fingerprint_v4(body), public_key, certify.default_hash(public_key))


@dataclass(frozen=True)
class SignOpenPgpRequest:
    """A `sign_openpgp` body: the user's key (armoured or binary), the user ids to certify,
    the certifications' lifetime in days and their hash."""
    key: bytes | str
    uids: tuple[str, ...]
    days: int
    digest: str
    COMMAND: ClassVar[str] = "sign_openpgp"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"key", "uids", "days", "digest"})

    @classmethod
    def parse(cls, body: dict[str, Any], settings: Any | None, ca: OpenPgpCa | None) -> SignOpenPgpRequest:
        """`settings`: the `openpgp` section (None: not configured, `unknown_command`)."""
        refuse_unknown_fields(cls.COMMAND, body, cls.FIELDS)
        if settings is None or ca is None:
            raise SignerError("unknown_command", "this signer has no OpenPGP CA key configured")
        key = field(body, "key", (bytes, str))
        uids = field(body, "uids", list)
        # Each certified uid costs one HSM signature, and the only Hsm actor serves everyone.
        check_count("uids", uids, settings.max_uids, "openpgp.max_uids")
        if not uids or not all(isinstance(u, str) and u for u in uids):
            raise SignerError("bad_request", "field 'uids' must be a non-empty list of user id strings")
        days = field(body, "days", int, required=False, default=settings.default_days)
        if not 0 < days <= settings.max_days:
            raise SignerError("validity_too_long" if days > 0 else "bad_request",
                              f"field 'days': {days} is outside 1..{settings.max_days}")
        digest = field(body, "digest", str, required=False, default=ca.default_hash)
        if digest not in HASHES:
            raise SignerError("hash_not_allowed", f"field 'digest': {digest!r} is not one of {HASHES}")
        return cls(key, tuple(uids), days, digest)

    def prepare(self, settings: Any, ca: OpenPgpCa, now: datetime) -> PreparedCertifications:
        """The key validated by gpg (core.openpgp.validate), the requested uids that are on
        it, and one certification per uid, waiting for the HSM."""
        validated = validate_public_key(self.key, gpg=settings.gpg, max_bytes=settings.max_key_bytes)
        chosen = select_user_ids(validated, list(self.uids))
        user_key = certify.split_transferable_key(validated.binary, max_bytes=settings.max_key_bytes)
        created = int(now.timestamp())
        try:
            prepared = {uid: certify.prepare_certification(
                ca.key_body, ca.info.algorithm, user_key.primary_key, uid.encode(),
                settings.signature_type, created, self.days * 86400, self.digest,
                settings.policy_url, ca.fingerprint) for uid in chosen}
        except ValueError as exc:  # e.g. a hash weaker than the CA's curve
            raise SignerError("hash_not_allowed", str(exc)) from None
        return PreparedCertifications(validated, user_key, prepared,
                                      datetime.fromtimestamp(created, timezone.utc) + timedelta(days=self.days))


@dataclass(frozen=True)
class PreparedCertifications:
    """A `sign_openpgp` request made ready for the HSM: one prepared certification per
    certified uid (in the key's order), and when they expire."""
    validated: ValidatedKey
    user_key: certify.TransferableKey
    certifications: Mapping[str, certify.PreparedSignature]
    expires_at: datetime

    def signature_packet(self, ca: OpenPgpCa, uid: str, hsm_signature: bytes) -> bytes:
        """The certification of `uid` from the HSM's signature, which must verify with the CA
        key: nothing is stored or answered that it does not."""
        prepared = self.certifications[uid]
        try:
            verify_signature(ca.public_key, prepared.mechanism, hsm_signature, prepared.hashed_data)
        except InvalidSignature:
            raise SignerError("signature_invalid", f"the HSM's signature on {uid!r} does not verify "
                                                   "with the OpenPGP CA key") from None
        return certify.assemble_signature_packet(prepared, hsm_signature)

    def signed_key(self, packets: Mapping[str, bytes]) -> bytes:
        """The user's key with each uid's certification inserted after it."""
        return certify.insert_certifications(self.user_key, {u.encode(): p for u, p in packets.items()})

    def answer(self, signed_key: bytes, ca: OpenPgpCa) -> dict[str, Any]:
        """The answer to the client, and the request's stored result (docs/protocol.md)."""
        return {"key": armor(signed_key), "fingerprint": self.validated.fingerprint,
                "certified_uids": list(self.certifications), "expires_at": self.expires_at.isoformat(),
                "signer_fingerprint": ca.fingerprint.hex().upper()}
