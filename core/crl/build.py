"""Build CRLs whose signature is made elsewhere (the HSM actor), like core.x509.certificate does
for certificates: build with a throwaway key of the issuer's type, have the HSM sign
``tbs_der`` with ``mechanism``, then ``assemble_crl``.

Speed: the revoked list goes to CertificateRevocationListBuilder in one piece
(add_revoked_certificate copies the list on every call: quadratic). Each entry is made
with RevokedCertificateBuilder's constructor instead of its chained setters (three builder
copies and checks per entry), and entries with the same reason share one extension list.
Measured for 100k entries (2 cores, noisy): entries ~0.4 s, build and throwaway signature
~0.15 s, DER ~0.1 s: 0.7 to 0.9 s in all, 4.4 MB.
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from core.x509.certificate import (SignatureMismatch, X509RequestError, as_utc, assemble_signed,
                            authority_key_identifier, hash_algorithm, mechanism_for,
                            split_signed, throwaway_key)

# Revocation times: shared by revoke_x509 (actors/handlers/revoker.py) and the check of a peer's
# revocation events (core/sync/peer_validation.py), so that both signers agree.
# A revocation may be dated back (the key was compromised earlier), never ahead.
MAX_CLOCK_SKEW = datetime.timedelta(minutes=5)
# CRLs encode times before 1950 in a form cryptography refuses; no CAcert certificate is
# older than 2000, so an earlier revocation date is a mistake.
EARLIEST_REVOCATION = datetime.datetime(2000, 1, 1, tzinfo=datetime.timezone.utc)

# RFC 5280 5.3.1 CRLReason. 7 is unassigned.
REASON_CODES: dict[str, int] = {
    "unspecified": 0, "keyCompromise": 1, "cACompromise": 2, "affiliationChanged": 3,
    "superseded": 4, "cessationOfOperation": 5, "certificateHold": 6, "removeFromCRL": 8,
    "privilegeWithdrawn": 9, "aACompromise": 10}
REASON_NAMES: dict[int, str] = {code: name for name, code in REASON_CODES.items()}
# removeFromCRL only has a meaning in delta CRLs (RFC 5280 5.3.1); we publish full CRLs.
_DELTA_ONLY_REASONS = {REASON_CODES["removeFromCRL"]}
_UNIX_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.timezone.utc)
# RFC 5280 5.2.3 and 4.1.2.2: CRL numbers and serials are positive and fit in 20 octets.
_TWENTY_OCTETS_LIMIT = 1 << 159


class InvalidReason(X509RequestError):
    code = "invalid_reason"


class CrlBuildFailed(X509RequestError):
    code = "crl_build_failed"


def parse_reason(value: Any) -> int:
    """A reason code from its RFC 5280 name ("keyCompromise") or its number."""
    code = None
    if isinstance(value, str) and value in REASON_CODES:
        code = REASON_CODES[value]
    # bool is an int: True must not pass as keyCompromise.
    elif isinstance(value, int) and not isinstance(value, bool) and value in REASON_NAMES:
        code = value
    if code in _DELTA_ONLY_REASONS:
        raise InvalidReason("removeFromCRL (8) belongs in delta CRLs only; revocations cannot use it")
    if code is not None:
        return code
    raise InvalidReason(f"not a CRL reason: {value!r}; use one of {', '.join(REASON_CODES)} "
                        "or their codes")


def crl_number_for(now: datetime.datetime, previous: int | None) -> int:
    """Boulder style: nanoseconds since the Unix epoch, so numbers follow time without
    stored state, but never below previous + 1 (two CRLs in one tick, or a clock set back)."""
    nanoseconds = (as_utc(now) - _UNIX_EPOCH) // datetime.timedelta(microseconds=1) * 1000
    number = max(nanoseconds, 1 if previous is None else previous + 1)
    if number >= _TWENTY_OCTETS_LIMIT:
        raise ValueError("CRL number exceeds 20 octets")
    return number


def _reason_extensions(code: int) -> list[x509.Extension]:
    """No extension for unspecified (0): RFC 5280 5.3.1 says not to encode it."""
    if code == REASON_CODES["unspecified"]:
        return []
    flag = x509.ReasonFlags(REASON_NAMES[code])   # ReasonFlags values are the RFC names
    return [x509.Extension(x509.CRLReason.oid, False, x509.CRLReason(flag))]


# One shared list per reason (cryptography only reads them), looked up per entry.
_ENTRY_EXTENSIONS: dict[int | None, list[x509.Extension]] = {
    None: [], **{code: _reason_extensions(code) for code in REASON_NAMES
                 if code not in _DELTA_ONLY_REASONS}}


def _entry_extensions(reason: Any) -> list[x509.Extension]:
    """The slow path: names, booleans and invalid reasons."""
    code = parse_reason(reason)
    if code in _DELTA_ONLY_REASONS:
        raise InvalidReason("removeFromCRL belongs in delta CRLs only")
    return _ENTRY_EXTENSIONS[code]


def revoked_entries(revoked: list[tuple[int, datetime.datetime, int | None]]
                    ) -> list[x509.RevokedCertificate]:
    # This loop runs once per revoked certificate (100k+): local names, dict lookups.
    # The builder's constructor skips its setters' per-call checks (the serial is checked
    # here; cryptography converts aware datetimes to UTC itself).
    new_entry, known_reason, entries = x509.RevokedCertificateBuilder, _ENTRY_EXTENSIONS.get, []
    for serial, revoked_at, reason in revoked:
        if revoked_at.year < 1950:  # cryptography panics (a BaseException) on these dates
            raise CrlBuildFailed(f"serial {serial:x} has a revocation date {revoked_at:%Y-%m-%d} "
                                 "before 1950, which a CRL cannot encode")
        if type(serial) is not int or not 0 < serial < _TWENTY_OCTETS_LIMIT:
            raise ValueError(f"serial {serial!r} is not a positive integer of at most 159 bits")
        # type(): True == 1 would otherwise find keyCompromise.
        extensions = known_reason(reason) if type(reason) is int or reason is None else None
        if extensions is None:
            extensions = _entry_extensions(reason)
        entries.append(new_entry(serial, revoked_at, extensions).build())
    return entries


@dataclass(frozen=True)
class PreparedCrl:
    tbs_der: bytes
    signature_algorithm_der: bytes
    mechanism: str
    number: int
    throwaway_crl: x509.CertificateRevocationList


def crl_extensions(issuer_cert: x509.Certificate, number: int, idp_url: str | None
                   ) -> list[x509.Extension]:
    extensions = [x509.CRLNumber(number), authority_key_identifier(issuer_cert)]
    if idp_url is not None:
        # Critical per RFC 5280 5.2.5: a client that cannot read the scope must not use the CRL.
        extensions.append(x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(idp_url)], relative_name=None,
            only_contains_user_certs=False, only_contains_ca_certs=False,
            only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False))
    return [x509.Extension(e.oid, isinstance(e, x509.IssuingDistributionPoint), e)
            for e in extensions]


def build_tbs_crl(issuer_cert: x509.Certificate, issuer_key_info: dict[str, Any],
                  revoked: list[tuple[int, datetime.datetime, int | None]], number: int,
                  this_update: datetime.datetime, next_update: datetime.datetime,
                  hash_name: str, idp_url: str | None) -> PreparedCrl:
    this_update, next_update = as_utc(this_update), as_utc(next_update)
    if next_update <= this_update:
        raise ValueError(f"next_update {next_update} is not after this_update {this_update}")
    if not 0 <= number < _TWENTY_OCTETS_LIMIT:
        raise ValueError(f"CRL number {number} does not fit in 20 octets")
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer_cert.subject, last_update=this_update, next_update=next_update,
        extensions=crl_extensions(issuer_cert, number, idp_url),
        revoked_certificates=revoked_entries(revoked))
    crl = builder.sign(throwaway_key(issuer_key_info), hash_algorithm(hash_name))
    tbs_der, algorithm_der, _ = split_signed(crl.public_bytes(serialization.Encoding.DER))
    return PreparedCrl(tbs_der, algorithm_der, mechanism_for(issuer_key_info, hash_name),
                       number, crl)


def assemble_crl(prepared: PreparedCrl, signature: bytes) -> bytes:
    return assemble_signed(prepared.tbs_der, prepared.signature_algorithm_der, signature)


def verify_crl(crl_der: bytes, issuer_cert: x509.Certificate) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_der_x509_crl(crl_der)
        valid = crl.issuer == issuer_cert.subject and crl.is_signature_valid(issuer_cert.public_key())
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SignatureMismatch(f"the CRL does not parse: {exc!r}") from None
    if not valid:
        raise SignatureMismatch("the CRL's issuer or signature does not match the issuer certificate")
    return crl


def needs_rebuild(latest: dict[str, Any] | None, revocation_digest: str,
                  now: datetime.datetime, max_age_s: float) -> bool:
    """A CRL is rebuilt only when there is none, its revocation set changed, or it is older
    than max_age_s (a configured fraction of its lifetime); otherwise no signature is made."""
    if latest is None or latest["revocation_digest"] != revocation_digest:
        return True
    return (now - latest["this_update"]).total_seconds() >= max_age_s or latest["next_update"] <= now
