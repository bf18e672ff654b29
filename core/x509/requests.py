"""The X.509 commands' request bodies, parsed once into typed, frozen values, and what a
`sign_x509` request turns into before the HSM signs (docs/ISSUANCE-CYCLE.md, steps 5-24).

The checks run in the documented order, so a body with several faults gets the error of
the first; each raises the SignerError the client is answered (codes: docs/protocol.md).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from datetime import datetime, timezone
from typing import Any, ClassVar, Collection, Mapping

from cryptography.hazmat.primitives.serialization import Encoding

from core.crl.build import EARLIEST_REVOCATION, MAX_CLOCK_SKEW, parse_reason
from core.wire.protocol import SignerError, check_count, field
from core.wire.requests import refuse_unknown_fields
from core.x509.certificate import (PkixLinter, PreparedCertificate, build_sans, build_subject,
                                   build_tbs_certificate, check_csr, new_serial, validity_window)
from core.x509.issuers import Issuer
from core.x509.profiles import Profile
from core.x509.spkac import check_spkac

Pairs = tuple[tuple[str, str], ...]


def parse_pairs(value: Any, name: str) -> Pairs:
    """[[k, v], ...], {k: v} or ["k:v", ...] -> ((k, v), ...)."""
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
    return tuple(pairs)


@dataclass(frozen=True)
class SignX509Request:
    """A `sign_x509` body (docs/protocol.md): the profile (resolved), the issuer id, exactly
    one key request, the verified subject and SANs as (type, value) pairs, hash and days."""
    profile: Profile
    issuer: str
    csr: bytes | None
    spkac: str | None
    subject: Pairs
    sans: Pairs
    hash: str
    days: int | None
    COMMAND: ClassVar[str] = "sign_x509"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"issuer", "profile", "csr", "spkac", "subject", "sans",
                                                  "hash", "days"})

    @classmethod
    def parse(cls, body: dict[str, Any], profiles: Mapping[str, Profile],
              issuers: Collection[str]) -> SignX509Request:
        """Steps 5-8a: fields, profile, issuer, counts (before anything whose cost grows with
        them: parsing, the request digest, the CSR's signature, building, linting, the HSM),
        key request, names, hash, days."""
        refuse_unknown_fields(cls.COMMAND, body, cls.FIELDS)
        profile_name = field(body, "profile", str)
        profile = profiles.get(profile_name)
        if profile is None:
            raise SignerError("unknown_profile", f"no profile {profile_name!r} (known: {sorted(profiles)})")
        issuer = field(body, "issuer", str)
        if issuer not in issuers:
            raise SignerError("unknown_issuer", f"no issuer {issuer!r} (known: {sorted(issuers)})")
        if issuer not in profile.issuers:
            raise SignerError("unknown_issuer", f"profile {profile_name!r} is not issued by {issuer!r} "
                                                f"(its issuers: {list(profile.issuers)})")
        subject = field(body, "subject", (dict, list), required=False, default={})
        sans = field(body, "sans", list, required=False, default=[])
        check_count("subject", subject, profile.max_subject_attributes,
                    f"max_subject_attributes of profile {profile.name!r}")
        check_count("sans", sans, profile.max_sans, f"max_sans of profile {profile.name!r}")
        if (body.get("csr") is None) == (body.get("spkac") is None):
            raise SignerError("bad_request", "give exactly one of the fields 'csr' and 'spkac'")
        csr = field(body, "csr", bytes, required=False)
        spkac = field(body, "spkac", str, required=False)
        subject_pairs, san_pairs = parse_pairs(subject, "subject"), parse_pairs(sans, "sans")
        hash_name = field(body, "hash", str, required=False, default="sha256")
        days = field(body, "days", int, required=False)
        if days is not None and days <= 0:
            raise SignerError("bad_request", "field 'days' must be positive")
        if days is not None and days > profile.max_validity_days:
            raise SignerError("validity_too_long", f"profile {profile.name!r} allows at most "
                                                   f"{profile.max_validity_days} days, not {days}")
        return cls(profile, issuer, csr, spkac, subject_pairs, san_pairs, hash_name, days)

    def prepare(self, issuer: Issuer, issuer_key_info: dict[str, Any], linter: PkixLinter | None,
                now: datetime) -> PreparedIssuance:
        """Steps 11-24: the key request checked (proof of possession, key policy), subject
        and SANs built from the verified values (the key request's own are ignored), the
        TBS built with a throwaway key of the issuer's type and linted. Nothing is stored."""
        profile = self.profile
        if self.spkac is not None:
            subject_key = check_spkac(self.spkac, profile)
        else:
            assert self.csr is not None  # parse: exactly one of them
            subject_key = check_csr(self.csr, profile).public_key()
        subject = build_subject(list(self.subject), profile)
        sans = build_sans(list(self.sans), profile)
        not_before, not_after = validity_window(profile, now, self.days)
        serial = new_serial()
        tbs = build_tbs_certificate(profile, issuer.id, issuer.certificate, issuer_key_info, subject_key,
                                    subject, sans, serial, not_before, not_after, self.hash)
        if linter is not None:
            linter.check(tbs.throwaway_certificate.public_bytes(Encoding.DER))
        return PreparedIssuance(tbs, issuer.id, profile.name, format(serial, "x"), subject.rfc4514_string(),
                                not_before, not_after)


@dataclass(frozen=True)
class PreparedIssuance:
    """A checked `sign_x509` request made ready for the HSM: the TBS, and what the serial's
    reservation records (steps 25-29 use it)."""
    tbs: PreparedCertificate
    issuer: str
    profile: str
    serial_hex: str
    subject: str  # RFC 4514
    not_before: datetime
    not_after: datetime

    def answer(self, certificate_der: bytes) -> dict[str, Any]:
        """The answer to the client, and the request's stored result (docs/protocol.md)."""
        return {"certificate": certificate_der, "serial": self.serial_hex, "issuer": self.issuer,
                "profile": self.profile, "not_before": self.not_before.isoformat(),
                "not_after": self.not_after.isoformat()}


SERIAL_FORM = re.compile(r"(0x)?[0-9a-f]+(:[0-9a-f]+)*")


def parse_serial(value: str) -> str:
    """A serial as a client may write it -> lowercase hex without leading zeros."""
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
    """A revocation time (ISO 8601 with a zone, or Unix seconds; default now), whole seconds,
    not more than MAX_CLOCK_SKEW ahead of `now`, not before EARLIEST_REVOCATION."""
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


@dataclass(frozen=True)
class RevokeX509Request:
    """A `revoke_x509` body: the issuer id, the serial normalised, the CRLReason code (None:
    no reason) and the revocation time (UTC, whole seconds)."""
    issuer: str
    serial_hex: str
    reason: int | None
    revoked_at: datetime
    COMMAND: ClassVar[str] = "revoke_x509"
    FIELDS: ClassVar[frozenset[str]] = frozenset({"issuer", "serial", "reason", "time"})

    @classmethod
    def parse(cls, body: dict[str, Any], issuers: Collection[str], now: datetime) -> RevokeX509Request:
        refuse_unknown_fields(cls.COMMAND, body, cls.FIELDS)
        issuer = field(body, "issuer", str)
        if issuer not in issuers:
            raise SignerError("unknown_issuer", f"no issuer {issuer!r} (known: {sorted(issuers)})")
        serial = parse_serial(field(body, "serial", str))
        reason_value = field(body, "reason", (str, int), required=False)
        reason = None if reason_value is None else parse_reason(reason_value)
        revoked_at = parse_time(field(body, "time", (str, int), required=False), now)
        return cls(issuer, serial, reason, revoked_at)
