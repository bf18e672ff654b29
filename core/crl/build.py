"""Build CRLs whose signature is made elsewhere (the HSM actor), like core.x509.certificate does
for certificates: build with a throwaway key of the issuer's type, have the HSM sign
``tbs_der`` with ``mechanism``, then ``assemble_crl``.

Speed: cryptography builds (and signs with the throwaway key) only the CRL without its
entries; ``encode_revoked`` writes the revokedCertificates DER itself, the same bytes
cryptography's builder writes, and ``_insert_revoked`` puts them into that TBS. Through
cryptography, each entry cost a RevokedCertificate object (~2.5 us), then the builder
encoded them, the throwaway key signed megabytes and public_bytes re-encoded the whole CRL;
here an entry costs ~1.3 us of Python. Measured for 100k entries (2 cores, noisy):
encode_revoked ~0.13 s, the rest of build_tbs_crl a few ms, 4.5 MB; the SoftHSM signature
of that TBS ~0.065 s (bench/bench_x509.py: 0.68-0.81x cryptography's own builder).
"""
from __future__ import annotations

import datetime
from dataclasses import dataclass
from typing import Any

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization

from core.x509.certificate import (SignatureMismatch, X509RequestError, as_utc, assemble_signed,
                                   authority_key_identifier, der_length, der_read_tlv, der_tlv,
                                   hash_algorithm, issuer_public_key, mechanism_for, split_signed,
                                   throwaway_key)

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


def _reason_extension(code: int) -> bytes:
    """crlEntryExtensions with one reasonCode, as DER: SEQUENCE { SEQUENCE { OID 2.5.29.21,
    OCTET STRING { ENUMERATED code } } } (critical FALSE is the default, so not encoded).
    No extension for unspecified (0): RFC 5280 5.3.1 says not to encode it."""
    if code == REASON_CODES["unspecified"]:
        return b""
    return der_tlv(0x30, der_tlv(0x30, _REASON_CODE_OID + der_tlv(0x04, der_tlv(0x0A, bytes([code])))))


_REASON_CODE_OID = bytes.fromhex("0603551d15")  # id-ce-cRLReasons, 2.5.29.21
# The encoded extensions per reason code, looked up per entry.
_ENTRY_EXTENSIONS: dict[int | None, bytes] = {
    None: b"", **{code: _reason_extension(code) for code in REASON_NAMES
                  if code not in _DELTA_ONLY_REASONS}}
# An entry's SEQUENCE header and its serial's INTEGER header, indexed by serial length
# (1-20) * 64 + length of the rest (time and extensions: 15 to 31 bytes). An entry's
# content is at most 2 + 20 + 31 bytes long, so each length is one octet.
_ENTRY_HEADERS = tuple(bytes((0x30, 2 + n + rest, 0x02, n)) for n in range(21) for rest in range(64))
_UTC = datetime.timezone.utc


def _entry_extensions(reason: Any) -> bytes:
    """The slow path: names, booleans and invalid reasons (removeFromCRL included)."""
    return _ENTRY_EXTENSIONS[parse_reason(reason)]


def _before_1950(serial: int, revoked_at: datetime.datetime) -> CrlBuildFailed:
    return CrlBuildFailed(f"serial {serial:x} has a revocation date {revoked_at:%Y-%m-%d} "
                          "before 1950, which a CRL cannot encode")


def _in_utc(serial: int, revoked_at: datetime.datetime) -> datetime.datetime:
    """The slow path: naive (taken as UTC) or another time zone."""
    try:
        return as_utc(revoked_at)
    except OverflowError:  # 0001-01-01T00:00+01:00, 9999-12-31T23:00-05:00
        raise CrlBuildFailed(f"serial {serial:x} has a revocation date {revoked_at.isoformat()} "
                             "outside the years a CRL can encode") from None


def encode_revoked(revoked: list[tuple[int, datetime.datetime, int | None]]) -> bytes:
    """The content of revokedCertificates: each entry's DER, in the given order, as
    cryptography's CertificateRevocationListBuilder encodes it (tests/unit/test_crl.py
    compares the bytes): SEQUENCE { INTEGER serial, Time, [SEQUENCE { reasonCode }] }.
    Time is UTCTime (YYMMDDHHMMSSZ) for 1950-2049 and GeneralizedTime from 2050
    (RFC 5280 5.1.2.4); microseconds are dropped, naive datetimes are UTC (as cryptography
    does)."""
    # This loop runs once per revoked certificate (100k+): local names, dict lookups, one
    # bytes formatting for time and extensions, one join at the end.
    limit, utc, headers = _TWENTY_OCTETS_LIMIT, _UTC, _ENTRY_HEADERS
    known_reason = _ENTRY_EXTENSIONS.get
    parts: list[bytes] = []
    append = parts.append
    for serial, revoked_at, reason in revoked:
        if type(serial) is not int or not 0 < serial < limit:
            raise ValueError(f"serial {serial!r} is not a positive integer of at most 159 bits")
        if revoked_at.tzinfo is not utc:
            revoked_at = _in_utc(serial, revoked_at)
        # type(): True == 1 would otherwise find keyCompromise.
        extensions = known_reason(reason) if type(reason) is int or reason is None else None
        if extensions is None:
            extensions = _entry_extensions(reason)
        year = revoked_at.year
        if year < 2050:
            if year < 1950:
                raise _before_1950(serial, revoked_at)
            time_and_extensions = b"\x17\x0d%02d%02d%02d%02d%02d%02dZ%b" % (
                year % 100, revoked_at.month, revoked_at.day, revoked_at.hour, revoked_at.minute,
                revoked_at.second, extensions)
        else:
            time_and_extensions = b"\x18\x0f%04d%02d%02d%02d%02d%02dZ%b" % (
                year, revoked_at.month, revoked_at.day, revoked_at.hour, revoked_at.minute,
                revoked_at.second, extensions)
        length = (serial.bit_length() + 8) >> 3  # a leading zero octet when the top bit is set
        append(headers[length * 64 + len(time_and_extensions)])
        append(serial.to_bytes(length, "big"))
        append(time_and_extensions)
    return b"".join(parts)


@dataclass(frozen=True)
class PreparedCrl:
    tbs_der: bytes
    signature_algorithm_der: bytes
    mechanism: str
    number: int


def crl_extensions(issuer_cert: x509.Certificate, number: int, idp_url: str | None
                   ) -> list[x509.Extension[x509.ExtensionType]]:
    extensions = [x509.CRLNumber(number), authority_key_identifier(issuer_cert)]
    if idp_url is not None:
        # Critical per RFC 5280 5.2.5: a client that cannot read the scope must not use the CRL.
        extensions.append(x509.IssuingDistributionPoint(
            full_name=[x509.UniformResourceIdentifier(idp_url)], relative_name=None,
            only_contains_user_certs=False, only_contains_ca_certs=False,
            only_some_reasons=None, indirect_crl=False, only_contains_attribute_certs=False))
    return [x509.Extension(e.oid, isinstance(e, x509.IssuingDistributionPoint), e)
            for e in extensions]


def _insert_revoked(empty_tbs: bytes, revoked_der: bytes) -> bytes:
    """TBSCertList ::= SEQUENCE { version, signature, issuer, thisUpdate, nextUpdate,
    revokedCertificates SEQUENCE OF ... OPTIONAL, crlExtensions [0] OPTIONAL }: the entries
    go after nextUpdate, before the extensions. An empty list is left out, as cryptography
    does."""
    content_start, end = der_read_tlv(empty_tbs, 0)
    offset = content_start
    for _ in range(5):  # version ... nextUpdate
        offset = der_read_tlv(empty_tbs, offset)[1]
    if offset != end and empty_tbs[offset] != 0xA0:
        raise CrlBuildFailed(f"unexpected TBSCertList element (tag {empty_tbs[offset]:#x})")
    if not revoked_der:
        return empty_tbs
    content_length = end - content_start + 1 + len(der_length(len(revoked_der))) + len(revoked_der)
    return b"".join((b"\x30", der_length(content_length), empty_tbs[content_start:offset],
                     b"\x30", der_length(len(revoked_der)), revoked_der, empty_tbs[offset:end]))


def build_tbs_crl(issuer_cert: x509.Certificate, issuer_key_info: dict[str, Any],
                  revoked: list[tuple[int, datetime.datetime, int | None]], number: int,
                  this_update: datetime.datetime, next_update: datetime.datetime,
                  hash_name: str, idp_url: str | None) -> PreparedCrl:
    """cryptography builds and signs (throwaway key) the CRL without entries: version,
    signature algorithm, issuer, times and extensions; encode_revoked writes the entries,
    which go into that TBS (_insert_revoked)."""
    this_update, next_update = as_utc(this_update), as_utc(next_update)
    if next_update <= this_update:
        raise ValueError(f"next_update {next_update} is not after this_update {this_update}")
    if not 0 <= number < _TWENTY_OCTETS_LIMIT:
        raise ValueError(f"CRL number {number} does not fit in 20 octets")
    revoked_der = encode_revoked(revoked)
    builder = x509.CertificateRevocationListBuilder(
        issuer_name=issuer_cert.subject, last_update=this_update, next_update=next_update,
        extensions=crl_extensions(issuer_cert, number, idp_url))
    empty = builder.sign(throwaway_key(issuer_key_info), hash_algorithm(hash_name))
    empty_tbs, algorithm_der, _ = split_signed(empty.public_bytes(serialization.Encoding.DER))
    return PreparedCrl(_insert_revoked(empty_tbs, revoked_der), algorithm_der,
                       mechanism_for(issuer_key_info, hash_name), number)


def assemble_crl(prepared: PreparedCrl, signature: bytes) -> bytes:
    return assemble_signed(prepared.tbs_der, prepared.signature_algorithm_der, signature)


def verify_crl(crl_der: bytes, issuer_cert: x509.Certificate) -> x509.CertificateRevocationList:
    try:
        crl = x509.load_der_x509_crl(crl_der)
        valid = crl.issuer == issuer_cert.subject and crl.is_signature_valid(issuer_public_key(issuer_cert))
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
    this_update: datetime.datetime = latest["this_update"]
    next_update: datetime.datetime = latest["next_update"]
    return (now - this_update).total_seconds() >= max_age_s or next_update <= now
