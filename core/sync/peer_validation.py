"""Every event that arrives from a peer is checked as if this signer had made it, before
anything is applied (docs/sync.md#what-a-peer-event-must-prove).

A signed event proves who made it, not that it is right: a peer with a bug, a stolen
event key or a bad snapshot must still not put into this repository a certificate our CA
never signed, a revocation dated where no CRL can hold it, a CRL number floor that ends
CRL numbering, or an OpenPGP key without our certification. `PeerValidator.check` raises
PeerEventRefused naming what is wrong; the repository then parks the event in its
quarantine (core/repository/peer_apply.py) and goes on with the next one.

| Event | Checked |
|---|---|
| every one | the Ed25519 signature of its origin_node (core/sync/event_signing.py); a body origin_node equal to the event's |
| x509_issued | the DER parses and verifies against the configured certificate of `issuer`; serial, not_before, not_after and subject equal the certificate's; the request record is a sign_x509 whose result names the same issuer and serial, and whose certificate is nil (the body's der) or that same DER |
| x509_revoked | the issuer is configured; an RFC 5280 reason code other than removeFromCRL (8); revoked_at from 2000-01-01 to now + 5 min (the local revoke_x509 rule); the certificate must be issued here (else the event waits: UnknownCertificate) |
| crl_issued | the issuer is configured; 1 <= number <= the clock-derived number a day from now |
| x509_imported | imported_from is a known source; with a DER: as x509_issued (signed by the issuer, serial, dates and subject equal the certificate's); without: a positive serial of at most 159 bits, not_before the "unknown" mark, a not_after and a subject; a revocation it carries: as x509_revoked, not removeFromCRL |
| openpgp_signed | signed_key is one v4 public key with that fingerprint, and each listed uid carries a certification that verifies with our CA's OpenPGP key; the request record is a sign_openpgp whose result names the same fingerprint and key |
"""
from __future__ import annotations

import hashlib
from collections.abc import Callable, Mapping
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any, TypeVar

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey
from cryptography.hazmat.primitives.asymmetric.utils import encode_dss_signature

from core.openpgp import certify as openpgp
from core.crl.build import EARLIEST_REVOCATION, MAX_CLOCK_SKEW, crl_number_for
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.sync.event_signing import EventSignatureError, canonical_bytes, parse_public_key, verify_event
from core.sync.signature_worker import Item, SignatureWorkers, Verdicts, default_count
from core.x509.certificate import X509_PARSE_ERRORS
from core.repository.schema import (CRL_REASON_CODES, IMPORT_SOURCES, UNKNOWN_NOT_BEFORE,
                                    from_db_time, normalise_serial)

# The local revoke_x509 rules (EARLIEST_REVOCATION, MAX_CLOCK_SKEW of core/crl/build.py)
# apply to the peer's revocations too, so a revocation either signer accepts, the other
# accepts as well.
# A CRL number is nanoseconds since 1970 (core/crl/build.py); a peer's floor may run ahead of this
# clock by the clock difference between the signers, never by more than a day.
MAX_CRL_NUMBER_LEAD = timedelta(days=1)
_HASHES: dict[int, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    8: hashes.SHA256, 9: hashes.SHA384, 10: hashes.SHA512}
REMOVE_FROM_CRL = 8  # RFC 5280 CRLReason: delta CRLs only; a CRL built here cannot list it


MIN_AHEAD = 16  # events of a batch worth handing to the workers (a live batch is a few)
_CERTIFIED_TYPES = ("x509_issued", "x509_imported")  # bodies whose der the issuer signed


class PeerEventRefused(ValueError):
    """A peer event that this signer would not have made; the message says why."""


class Ahead:
    """The signatures of a batch being verified by the workers (PeerValidator.verify_ahead):
    check(event, ahead) takes the verdicts of that event, waiting for them if need be."""

    def __init__(self, verdicts: Verdicts, index: dict[Any, int]) -> None:
        self.verdicts, self.index = verdicts, index

    def _get(self, key: Any) -> bool | None:
        position = self.index.get(key)
        return None if position is None else self.verdicts.get(position)

    def signature(self, event: Mapping[str, Any]) -> bool | None:
        """Whether the event's signature verifies with its origin's key (None: check inline)."""
        return self._get(id(event))

    def certificate(self, body: Mapping[str, Any]) -> bool | None:
        """Whether the body's der is signed by the body's issuer (None: check inline)."""
        issuer, der = body.get("issuer"), body.get("der")
        return self._get((issuer, der)) if isinstance(issuer, str) and isinstance(der, bytes) else None


class PeerValidator:
    def __init__(self, event_keys: Mapping[str, Ed25519PublicKey],
                 issuers: Mapping[str, x509.Certificate], openpgp_ca_key: bytes | None,
                 clock: Callable[[], datetime] = lambda: datetime.now(timezone.utc),
                 workers: int = 0) -> None:
        """event_keys: node id -> its event key (this signer's own included: its events
        come back from the peer); issuers: issuer id -> CA certificate; openpgp_ca_key: the
        CA's v4 public-key packet body, None when OpenPGP is not configured; workers: worker
        processes verifying the signatures of a large batch ahead (verify_ahead; 0: none,
        every check inline)."""
        self.event_keys, self.issuers, self.clock = dict(event_keys), dict(issuers), clock
        self.openpgp_ca_key = openpgp_ca_key
        self.openpgp_ca = None if openpgp_ca_key is None else openpgp.public_key_from_body(openpgp_ca_key)
        self.workers = SignatureWorkers(workers) if workers > 0 else None
        self._raw_keys = {node: key.public_bytes(Encoding.Raw, PublicFormat.Raw)
                          for node, key in self.event_keys.items()}
        self._issuer_ders = {issuer_id: certificate.public_bytes(Encoding.DER)
                             for issuer_id, certificate in self.issuers.items()}

    def close(self) -> None:
        """Stop the worker processes (they also stop when this process ends)."""
        if self.workers is not None:
            self.workers.close()

    def verify_ahead(self, events: list[Mapping[str, Any]]) -> Ahead | None:
        """Start verifying the event signatures, and the certificate signatures of
        x509_issued and x509_imported bodies, of `events` in the worker processes; pass the
        answer to check(). None (all inline): no workers, or too few events to be worth it.
        What cannot be handed over (no signature, an unknown origin, no canonical form) is
        left to check(), which refuses it as before."""
        if self.workers is None or len(events) < MIN_AHEAD:
            return None
        items: list[Item] = []
        index: dict[Any, int] = {}
        for event in events:
            signature, origin = event.get("signature"), event.get("origin_node")
            raw_key = self._raw_keys.get(origin) if isinstance(origin, str) else None
            if isinstance(signature, bytes) and raw_key is not None:
                try:
                    message = canonical_bytes(event)
                except (KeyError, TypeError, ValueError):
                    message = None
                if message is not None:
                    index[id(event)] = len(items)
                    items.append(("ed25519", raw_key, signature, message))
            body = event.get("body")
            if event.get("type") in _CERTIFIED_TYPES and isinstance(body, dict):
                issuer, der = body.get("issuer"), body.get("der")
                if isinstance(issuer, str) and isinstance(der, bytes) and issuer in self._issuer_ders \
                        and (issuer, der) not in index:
                    index[(issuer, der)] = len(items)
                    items.append(("x509", self._issuer_ders[issuer], der))
        return Ahead(self.workers.submit(items), index)

    @classmethod
    def from_config(cls, config: Any, own_key: Ed25519PublicKey,
                    workers: int | None = None) -> "PeerValidator":
        """workers: None for signature_worker.default_count() (one per CPU beyond the first,
        at most 2)."""
        keys = {entry.node_id: parse_public_key(entry.key) for entry in config.sync.peer_event_keys}
        keys[config.node_id] = own_key
        issuers = {issuer.id: x509.load_pem_x509_certificate(Path(issuer.certificate).read_bytes())
                   for issuer in config.issuers}
        ca_key = None
        if config.openpgp is not None:
            block = openpgp.dearmor(Path(config.openpgp.public_key).read_text())
            ca_key = next(p.body for p in openpgp.parse_packets(block) if p.tag == openpgp.TAG_PUBLIC_KEY)
        return cls(keys, issuers, ca_key, workers=default_count() if workers is None else workers)

    def check(self, event: Mapping[str, Any], ahead: Ahead | None = None) -> None:
        """Raises PeerEventRefused unless the event is signed by its origin and its body is
        one this signer would have written itself. ahead: verify_ahead's answer for a batch
        holding this event (the signatures it verified are not verified again)."""
        try:
            verify_event(self.event_keys, event, None if ahead is None else ahead.signature(event))
        except EventSignatureError as exc:
            raise PeerEventRefused(f"signature: {exc}") from None
        body, kind = event.get("body"), event.get("type")
        if not isinstance(body, dict):
            raise PeerEventRefused("the body is not a map")
        check = _CHECKS.get(kind) if kind is not None else None
        if check is None:
            raise PeerEventRefused(f"unknown event type {kind!r}")
        if body.get("origin_node", event["origin_node"]) != event["origin_node"]:
            raise PeerEventRefused("the body's origin_node differs from the event's")
        try:
            check(self, body, ahead)
        except PeerEventRefused:
            raise
        except (KeyError, TypeError, IndexError, *X509_PARSE_ERRORS) as exc:
            what = f"missing {exc.args[0]!r}" if isinstance(exc, KeyError) else f"{type(exc).__name__}: {exc}"
            raise PeerEventRefused(f"{kind}: {what}") from None

    # -- per event type -----------------------------------------------------------------
    def _issuer(self, body: Mapping[str, Any]) -> x509.Certificate:
        issuer = self.issuers.get(body["issuer"])
        if issuer is None:
            raise PeerEventRefused(f"issuer {body['issuer']!r} is not configured here")
        return issuer

    def _x509_issued(self, body: Mapping[str, Any], ahead: Ahead | None) -> None:
        _check_certificate(body, self._issuer(body), None if ahead is None else ahead.certificate(body))
        result = _request_result(body, "sign_x509")
        # The result's certificate is nil (it is the body's der: events since repository
        # migration 7 carry the DER once) or, in older events, the DER itself.
        if result is not None and (result.get("issuer") != body["issuer"]
                                   or "certificate" not in result
                                   or result["certificate"] not in (None, body["der"])
                                   or normalise_serial(str(result.get("serial"))) != normalise_serial(body["serial"])):
            raise PeerEventRefused("the request record's result is not this certificate")

    def _x509_revoked(self, body: Mapping[str, Any], ahead: Ahead | None) -> None:
        self._issuer(body)
        normalise_serial(_typed(body, "serial", str))
        _check_revocation(body, self.clock())

    def _x509_imported(self, body: Mapping[str, Any], ahead: Ahead | None) -> None:
        check_imported(body, self._issuer(body), self.clock(),
                       None if ahead is None else ahead.certificate(body))

    def _crl_issued(self, body: Mapping[str, Any], ahead: Ahead | None) -> None:
        self._issuer(body)
        number = _typed(body, "number", int)
        ceiling = crl_number_for(self.clock() + MAX_CRL_NUMBER_LEAD, None)
        if isinstance(number, bool) or not 1 <= number <= ceiling:
            raise PeerEventRefused(f"CRL number {number} is not between 1 and {ceiling}"
                                   " (the clock-derived number a day from now)")

    def _openpgp_signed(self, body: Mapping[str, Any], ahead: Ahead | None) -> None:
        if self.openpgp_ca_key is None:
            raise PeerEventRefused("no OpenPGP CA key is configured here")
        signed_key = _typed(body, "signed_key", bytes)
        key = openpgp.split_transferable_key(signed_key)
        fingerprint = _typed(body, "fingerprint", str)
        if key.fingerprint.hex() != fingerprint.lower():
            raise PeerEventRefused("fingerprint differs from the signed key's")
        uids = _typed(body, "uids", list)
        if not uids:
            raise PeerEventRefused("no uid was certified")
        components = {component.body: component for component in key.user_ids}
        for uid in uids:
            component = components.get(_typed({"uid": uid}, "uid", str).encode())
            if component is None or not any(self._is_our_certification(key.primary_key, component.body, sig)
                                             for sig in component.signatures):
                raise PeerEventRefused(f"uid {uid!r} carries no certification by our OpenPGP CA key")
        result = _request_result(body, "sign_openpgp")
        if result is not None and (str(result.get("fingerprint", "")).lower() != fingerprint.lower()
                                   or openpgp.dearmor(result.get("key", "")) != signed_key):
            raise PeerEventRefused("the request record's result is not this key")

    def _is_our_certification(self, key_body: bytes, user_id: bytes, signature: bytes) -> bool:
        """Whether `signature` (a signature packet body) is a v4 certification of user_id on
        the key that verifies with our CA's key (RFC 4880 section 5.2.4, as core.openpgp.certify
        builds it)."""
        if len(signature) < 6 or signature[0] != 4 or signature[1] not in openpgp.CERTIFICATION_TYPES:
            return False
        hash_class = _HASHES.get(signature[3])
        hashed_end = 6 + int.from_bytes(signature[4:6], "big")
        unhashed_end = hashed_end + 2 + int.from_bytes(signature[hashed_end:hashed_end + 2], "big")
        if hash_class is None or unhashed_end + 2 > len(signature):
            return False
        signed_part = signature[:hashed_end]
        data = (openpgp._key_hash_material(key_body) + openpgp._user_id_hash_material(user_id)
                + signed_part + b"\x04\xff" + len(signed_part).to_bytes(4, "big"))
        algorithm = hash_class()
        if hashlib.new(algorithm.name, data).digest()[:2] != signature[unhashed_end:unhashed_end + 2]:
            return False
        offset = unhashed_end + 2
        try:
            if isinstance(self.openpgp_ca, rsa.RSAPublicKey) and signature[2] == openpgp.PUBKEY_RSA:
                value, _ = openpgp.read_mpi(signature, offset)
                size = (self.openpgp_ca.key_size + 7) // 8
                self.openpgp_ca.verify(value.rjust(size, b"\0"), data, padding.PKCS1v15(), algorithm)
            elif isinstance(self.openpgp_ca, ec.EllipticCurvePublicKey) and signature[2] == openpgp.PUBKEY_ECDSA:
                r, offset = openpgp.read_mpi(signature, offset)
                s, _ = openpgp.read_mpi(signature, offset)
                der = encode_dss_signature(int.from_bytes(r, "big"), int.from_bytes(s, "big"))
                self.openpgp_ca.verify(der, data, ec.ECDSA(algorithm))
            else:
                return False
        except (InvalidSignature, ValueError, openpgp.OpenPgpError):
            return False
        return True


_CHECKS: dict[str, Callable[[PeerValidator, Mapping[str, Any], Ahead | None], None]] = {
    "x509_issued": PeerValidator._x509_issued,
    "x509_revoked": PeerValidator._x509_revoked,
    "crl_issued": PeerValidator._crl_issued,
    "openpgp_signed": PeerValidator._openpgp_signed,
    "x509_imported": PeerValidator._x509_imported,
}


class NotSignedByIssuer(PeerEventRefused):
    """The certificate does not verify with the issuer's key."""


def _check_certificate(body: Mapping[str, Any], issuer: x509.Certificate,
                       signed: bool | None = None) -> None:
    """The body's DER is signed by `issuer`, and its serial, not_before, not_after and
    (when present) subject are the certificate's. signed: whether a worker found the DER
    signed by `issuer` (verify_ahead); None: verify here."""
    certificate = x509.load_der_x509_certificate(_typed(body, "der", bytes))
    if signed is None:
        try:
            certificate.verify_directly_issued_by(issuer)
            signed = True
        except (ValueError, TypeError, InvalidSignature):
            signed = False
    if not signed:
        raise NotSignedByIssuer(f"the certificate is not signed by issuer {body['issuer']!r}")
    if int(normalise_serial(_typed(body, "serial", str)), 16) != certificate.serial_number:
        raise PeerEventRefused("serial differs from the certificate's")
    for name, actual in (("not_before", certificate.not_valid_before_utc),
                         ("not_after", certificate.not_valid_after_utc)):
        if from_db_time(_typed(body, name, str)) != actual:
            raise PeerEventRefused(f"{name} differs from the certificate's")
    subject = body.get("subject")
    if subject is not None and subject != certificate.subject.rfc4514_string():
        raise PeerEventRefused("subject differs from the certificate's")


def _check_revocation(body: Mapping[str, Any], now: datetime) -> None:
    """The local revoke_x509 rules: an RFC 5280 reason code other than removeFromCRL,
    revoked_at from EARLIEST_REVOCATION to now + MAX_CLOCK_SKEW."""
    reason = body.get("reason")
    if reason is not None and (isinstance(reason, bool) or reason not in CRL_REASON_CODES):
        raise PeerEventRefused(f"reason {reason!r} is not an RFC 5280 CRLReason code")
    if reason == REMOVE_FROM_CRL:  # revoke_x509 refuses it too (core.crl.build.parse_reason)
        raise PeerEventRefused("reason removeFromCRL (8) is for delta CRLs only: a CRL built"
                               " here cannot list it")
    revoked_at = from_db_time(_typed(body, "revoked_at", str))
    if revoked_at.tzinfo is None:
        raise PeerEventRefused("revoked_at has no time zone")
    latest = now + MAX_CLOCK_SKEW
    if not EARLIEST_REVOCATION <= revoked_at <= latest:
        raise PeerEventRefused(f"revoked_at {revoked_at.isoformat()} is outside"
                               f" {EARLIEST_REVOCATION:%Y-%m-%d} .. now + {MAX_CLOCK_SKEW}")


def check_imported(body: Mapping[str, Any], issuer: x509.Certificate, now: datetime,
                   signed: bool | None = None) -> None:
    """An x509_imported body as the peer accepts it; the importer runs the same check before
    it stores anything (core/repository/openssl_ca_import.py), so every imported record replicates.
    signed: as for _check_certificate.

    What it cannot prove: a record without DER is the old CA's index line, signed by no
    one. It can only make a serial revocable and keep it on CRLs; it never makes a
    certificate trusted (there is none), and a serial taken that way is never issued here."""
    source = _typed(body, "imported_from", str)
    if source not in IMPORT_SOURCES:
        raise PeerEventRefused(f"imported_from {source!r} is not a known source")
    serial = int(normalise_serial(_typed(body, "serial", str)), 16)
    if not 0 < serial < 1 << 159:
        raise PeerEventRefused(f"serial {serial:x} is not a positive integer of at most 159 bits")
    _typed(body, "subject", str)
    if body.get("der") is not None:
        _check_certificate(body, issuer, signed)
    else:
        if _typed(body, "not_before", str) != UNKNOWN_NOT_BEFORE:
            raise PeerEventRefused("a record without its certificate claims a not_before")
        if from_db_time(_typed(body, "not_after", str)).tzinfo is None:
            raise PeerEventRefused("not_after has no time zone")
    if body.get("revoked_at") is not None:
        _check_revocation(body, now)
    elif body.get("reason") is not None:
        raise PeerEventRefused("a reason without revoked_at")


_Value = TypeVar("_Value")


def _typed(fields: Mapping[str, Any], name: str, kind: type[_Value]) -> _Value:
    value = fields[name]
    if not isinstance(value, kind):
        raise TypeError(f"{name} is a {type(value).__name__}, not a {kind.__name__}")
    return value


def _request_result(body: Mapping[str, Any], command: str) -> dict[str, Any] | None:
    """The result of the request record the event carries (None: the event has none)."""
    record = body.get("request")
    if record is None:
        return None
    if not isinstance(record, dict) or record.get("command") != command:
        raise PeerEventRefused(f"the request record is not a {command}")
    return _typed(record, "result", dict)
