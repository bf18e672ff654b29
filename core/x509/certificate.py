"""Build end-entity certificates whose signature is made elsewhere (the HSM actor).

The HSM cannot be called synchronously from an actor, so issuing is split in three steps:
``build_tbs_certificate`` lets cryptography build the certificate signed by a throwaway
key of the issuer's key type and hash (the TBS bytes and the signature algorithm do not
depend on which key signs; for RSA a placeholder that signs with zero bytes), the HSM
signs ``tbs_der`` with ``mechanism``, and ``assemble_certificate`` puts tbsCertificate,
signatureAlgorithm and the HSM's signature together. ``verify_issued`` then checks the
result against the real issuer certificate.

Only the profile decides extensions: the CSR contributes its public key and nothing else
(its subject and requested extensions are ignored; the web side's verified attributes
arrive separately).
"""
from __future__ import annotations

import base64
import binascii
import datetime
import re
import warnings
import secrets
import typing
from dataclasses import dataclass
from typing import Any, TypeGuard

from cryptography import x509
from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.types import (CertificateIssuerPublicKeyTypes,
                                                             CertificatePublicKeyTypes)
from cryptography.x509.oid import (AuthorityInformationAccessOID, NameOID, ObjectIdentifier,
                                   PublicKeyAlgorithmOID)

from core.x509.lint_cache import DecodedValues, cache_decoded_values
from core.x509.lint_index import index_validators
from core.x509.placeholder_key import PlaceholderRsaKey
from core.x509.profiles import SUBJECT_ATTRIBUTE_NAMES, Profile
from core.wire.protocol import SignerError


class X509RequestError(SignerError):
    """A request the signer refuses; `code` goes to the client as the error code."""
    code = "x509_request_error"

    def __init__(self, message: str) -> None:
        super().__init__(self.code, message)


class BadCsrSignature(X509RequestError): code = "bad_csr_signature"
class MalformedCsr(X509RequestError): code = "malformed_csr"
class KeyTooWeak(X509RequestError): code = "key_too_weak"
class KeyTypeNotAllowed(X509RequestError): code = "key_type_not_allowed"
class AttributeNotAllowed(X509RequestError): code = "attribute_not_allowed"
class SanTypeNotAllowed(X509RequestError): code = "san_type_not_allowed"
class ValidityTooLong(X509RequestError): code = "validity_too_long"
class HashNotAllowed(X509RequestError): code = "hash_not_allowed"
class SignatureMismatch(X509RequestError): code = "signature_invalid"
class LimitExceeded(X509RequestError): code = "limit_exceeded"
# A value of an allowed kind that is itself unusable (a malformed DNS name, a 3-letter
# country); the protocol's existing "bad_request" code means exactly that.
class InvalidValue(X509RequestError): code = "bad_request"


class LintFailed(X509RequestError):
    code = "lint_failed"

    def __init__(self, findings: list[Finding]) -> None:
        super().__init__("; ".join(map(str, findings)))
        self.findings = findings


# --- DER: just enough to split and join Certificate / CertificateList structures -----

def der_length(length: int) -> bytes:
    if length < 0x80:
        return bytes([length])
    encoded = length.to_bytes((length.bit_length() + 7) // 8, "big")
    return bytes([0x80 | len(encoded)]) + encoded


def der_tlv(tag: int, content: bytes) -> bytes:
    return bytes([tag]) + der_length(len(content)) + content


def der_read_tlv(der: bytes, offset: int) -> tuple[int, int]:
    """Return (start of content, end of element) of the element at `offset`."""
    first = der[offset + 1]
    if first < 0x80:
        return offset + 2, offset + 2 + first
    count = first & 0x7F
    start = offset + 2 + count
    return start, start + int.from_bytes(der[offset + 2:start], "big")


def split_signed(der: bytes) -> tuple[bytes, bytes, bytes]:
    """SEQUENCE { tbs, signatureAlgorithm, signatureValue } -> the three element encodings."""
    content_start, _ = der_read_tlv(der, 0)
    tbs_end = der_read_tlv(der, content_start)[1]
    algorithm_end = der_read_tlv(der, tbs_end)[1]
    signature_end = der_read_tlv(der, algorithm_end)[1]
    return (der[content_start:tbs_end], der[tbs_end:algorithm_end],
            der[algorithm_end:signature_end])


def assemble_signed(tbs_der: bytes, signature_algorithm_der: bytes, signature: bytes) -> bytes:
    # BIT STRING content: a leading byte counting unused bits (none), then the signature.
    signature_value = der_tlv(0x03, b"\x00" + signature)
    return der_tlv(0x30, tbs_der + signature_algorithm_der + signature_value)


# --- keys, hashes, throwaway signers --------------------------------------------------

HASHES: dict[str, type[hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}
_CURVES: dict[str, type[ec.EllipticCurve]] = {
    "secp256r1": ec.SECP256R1, "secp384r1": ec.SECP384R1, "secp521r1": ec.SECP521R1}
_THROWAWAY_KEYS: dict[tuple[str, Any], rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey] = {}


def key_info_of(public_key: Any) -> dict[str, Any]:
    if isinstance(public_key, rsa.RSAPublicKey):
        return {"type": "rsa", "bits": public_key.key_size, "curve": None}
    if isinstance(public_key, ec.EllipticCurvePublicKey):
        return {"type": "ec", "bits": public_key.curve.key_size, "curve": public_key.curve.name}
    raise KeyTypeNotAllowed(f"unsupported key type {type(public_key).__name__}")


def throwaway_key(key_info: dict[str, Any]) -> rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey:
    """A key of the issuer's type for building a TBS, made once per type: for RSA a
    placeholder that signs with zero bytes of the key's length (core/x509/placeholder_key.py:
    a real RSA-4096 signature cost ~1.7 ms per certificate), for EC an in-memory key."""
    kind = key_info["type"]
    size = key_info["bits"] if kind == "rsa" else key_info["curve"]
    cached = _THROWAWAY_KEYS.get((kind, size))
    if cached is None:
        if kind == "rsa":
            cached = PlaceholderRsaKey(size)
        elif kind == "ec" and size in _CURVES:
            cached = ec.generate_private_key(_CURVES[size]())
        else:
            raise ValueError(f"unsupported issuer key {key_info!r}")
        _THROWAWAY_KEYS[(kind, size)] = cached
    return cached


def mechanism_for(key_info: dict[str, Any], hash_name: str) -> str:
    """The HSM mechanism that produces the signature cryptography's builder would."""
    return f"{hash_name}-rsa-pkcs1" if key_info["type"] == "rsa" else f"{hash_name}-ecdsa"


def hash_algorithm(hash_name: str) -> hashes.SHA256 | hashes.SHA384 | hashes.SHA512:
    if hash_name not in HASHES:
        raise HashNotAllowed(f"unknown hash {hash_name!r}")
    return HASHES[hash_name]()


def as_utc(moment: datetime.datetime) -> datetime.datetime:
    """Naive datetimes are UTC (as cryptography treats them); aware ones are converted."""
    if moment.tzinfo is None:
        return moment.replace(tzinfo=datetime.timezone.utc)
    return moment.astimezone(datetime.timezone.utc)


def authority_key_identifier(issuer_cert: x509.Certificate) -> x509.AuthorityKeyIdentifier:
    try:
        ski = issuer_cert.extensions.get_extension_for_class(x509.SubjectKeyIdentifier).value
    except x509.ExtensionNotFound:
        # The key identifier from_issuer_public_key would compute, for any type of key.
        ski = x509.SubjectKeyIdentifier.from_public_key(issuer_cert.public_key())
    return x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski)


_SIGNING_KEY_TYPES = typing.get_args(CertificateIssuerPublicKeyTypes)


def _can_sign(key: CertificatePublicKeyTypes) -> TypeGuard[CertificateIssuerPublicKeyTypes]:
    return isinstance(key, _SIGNING_KEY_TYPES)


def issuer_public_key(issuer_cert: x509.Certificate) -> CertificateIssuerPublicKeyTypes:
    """The certificate's key, to check a signature with; TypeError (what cryptography's own
    checks raise) when it is a key that cannot sign (X25519, X448, ML-KEM)."""
    key = issuer_cert.public_key()
    if not _can_sign(key):
        raise TypeError(f"a {type(key).__name__} cannot have made a signature")
    return key


# --- request checks --------------------------------------------------------------------

_PLAIN_KEY_ALGORITHMS = (PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5, PublicKeyAlgorithmOID.EC_PUBLIC_KEY)
# What cryptography raises on a CSR, certificate or CRL it cannot read: ValueError for bad
# DER, InvalidVersion (not a ValueError) for a version it does not know, UnsupportedAlgorithm
# for unknown algorithms. Every parser of untrusted X.509 input catches all three.
X509_PARSE_ERRORS = (ValueError, UnsupportedAlgorithm, x509.InvalidVersion)
# A proof of possession made with a broken hash proves nothing: MD5 and SHA-1 collisions
# are practical. cryptography itself reports such signatures as not valid.
_CSR_SIGNATURE_HASHES = frozenset({"sha224", "sha256", "sha384", "sha512",
                                   "sha3-224", "sha3-256", "sha3-384", "sha3-512"})
_CSR_PEM = re.compile(rb"-----BEGIN (?:NEW )?CERTIFICATE REQUEST-----(.*?)-----END (?:NEW )?CERTIFICATE REQUEST-----",
                      re.DOTALL)


def csr_der(data: bytes) -> bytes:
    """A CSR file's bytes as DER: PEM (also the old "NEW CERTIFICATE REQUEST" label, also
    after explanatory text) is unwrapped, anything else is taken as DER. The content is not
    judged here."""
    if data.lstrip()[:1] == b"\x30":  # a DER SEQUENCE
        return data
    # RFC 7468 5.2: text may precede the PEM block (certtool writes a description there).
    match = _CSR_PEM.search(data)
    if match is None:
        if data.lstrip().startswith(b"-----"):
            raise MalformedCsr("PEM text without a CERTIFICATE REQUEST block")
        return data  # neither DER nor PEM: the parser says what is wrong
    try:
        return base64.b64decode(b"".join(match[1].split()), validate=True)
    except binascii.Error:
        raise MalformedCsr("invalid base64 in the PEM CERTIFICATE REQUEST block") from None


def parse_csr(der: bytes) -> x509.CertificateSigningRequest:
    """A DER CSR; every parse failure is MalformedCsr."""
    try:
        return x509.load_der_x509_csr(der)
    except X509_PARSE_ERRORS as exc:
        raise MalformedCsr(f"cannot parse the CSR: {type(exc).__name__}: {exc}") from None


def load_csr(data: bytes) -> x509.CertificateSigningRequest:
    """A CSR from PEM or DER bytes; every failure is MalformedCsr."""
    return parse_csr(csr_der(data))


def _rsa_exponent(spki: bytes, offset: int = 0) -> int | None:
    """The RSA public exponent read from the DER SubjectPublicKeyInfo at `offset` of `spki`,
    for a key cryptography refuses to load; None when the structure is not an RSA key's."""
    try:
        spki_start = der_read_tlv(spki, offset)[0]
        bits_start, bits_end = der_read_tlv(spki, der_read_tlv(spki, spki_start)[1])
        key = spki[bits_start + 1:bits_end]               # after the unused-bits octet
        n_end = der_read_tlv(key, der_read_tlv(key, 0)[0])[1]
        e_start, e_end = der_read_tlv(key, n_end)
        return int.from_bytes(key[e_start:e_end], "big", signed=True)
    except (IndexError, ValueError):
        return None


def _csr_spki_offset(csr: x509.CertificateSigningRequest) -> tuple[bytes, int]:
    info = csr.tbs_certrequest_bytes
    offset = der_read_tlv(info, 0)[0]
    for _ in range(2):                                    # version, subject
        offset = der_read_tlv(info, offset)[1]
    return info, offset


def request_public_key(load: Any, algorithm: ObjectIdentifier, spki: Any, what: str) -> Any:
    """`load()`'s public key of a key request (a CSR or an SPKAC); a key cryptography cannot
    read is MalformedCsr, unless it is an RSA key with an exponent below 3 (KeyTooWeak).
    `spki()` gives (DER bytes, offset of the SubjectPublicKeyInfo in them)."""
    try:
        return load()
    except (ValueError, UnsupportedAlgorithm) as exc:
        exponent = _rsa_exponent(*spki()) if algorithm == PublicKeyAlgorithmOID.RSAES_PKCS1_v1_5 else None
        if exponent is not None and exponent < 3:
            raise KeyTooWeak(f"RSA public exponent {exponent} is not an odd number >= 3") from None
        raise MalformedCsr(f"cannot read the {what}'s public key: {exc}") from None


def check_key_algorithm(algorithm: ObjectIdentifier) -> None:
    """cryptography reads an RSASSA-PSS key as plain RSA; the certificate would drop its
    PSS-only restriction, so such keys are refused by their SPKI algorithm, as are DSA keys
    and anything else that is neither RSA nor EC."""
    if algorithm not in _PLAIN_KEY_ALGORITHMS:
        raise KeyTypeNotAllowed(f"unsupported public key algorithm {algorithm._name} ({algorithm.dotted_string})")


def check_proof_hash(algorithm: ObjectIdentifier, hash_name: str | None, what: str) -> None:
    """A key request's own signature (its proof of possession) must use a hash that still
    proves something: not MD5, not SHA-1, not one the signer does not know."""
    name = _OLD_SIGNATURE_NAMES.get(algorithm.dotted_string, algorithm._name)
    if hash_name not in _CSR_SIGNATURE_HASHES:
        raise HashNotAllowed(f"the {what} is signed with {name} ({algorithm.dotted_string}): "
                             f"{hash_name or 'an unknown hash'} is no proof of possession; sign the {what} "
                             f"with SHA-224 or stronger (SHA-2 or SHA-3; SHA-256 is the usual choice)")


def check_csr(csr_der: bytes, profile: Profile) -> x509.CertificateSigningRequest:
    """Parse, then key type, the CSR's own signature hash, its key, its signature, the
    profile's key policy: each refusal names what it refuses (a DSA key is refused as a key
    type whatever hash signed it)."""
    csr = parse_csr(csr_der)
    # present at run time, missing from cryptography's type stubs
    key_algorithm: ObjectIdentifier = csr.public_key_algorithm_oid  # type: ignore[attr-defined]
    check_key_algorithm(key_algorithm)
    _check_csr_signature_hash(csr)
    key = request_public_key(csr.public_key, key_algorithm, lambda: _csr_spki_offset(csr), "CSR")
    try:
        signature_valid = csr.is_signature_valid
    except (ValueError, UnsupportedAlgorithm) as exc:
        raise MalformedCsr(f"cannot check the CSR's signature: {exc}") from None
    if not signature_valid:
        raise BadCsrSignature("the CSR's signature does not match its public key")
    check_public_key(key, profile)
    return csr


# Names cryptography does not know, for the refusal message.
_OLD_SIGNATURE_NAMES = {"1.2.840.113549.1.1.2": "md2WithRSAEncryption", "1.2.840.113549.1.1.3": "md4WithRSAEncryption"}


def _check_csr_signature_hash(csr: x509.CertificateSigningRequest) -> None:
    try:
        hash_name = csr.signature_hash_algorithm.name if csr.signature_hash_algorithm else None
    except UnsupportedAlgorithm:
        hash_name = None
    check_proof_hash(csr.signature_algorithm_oid, hash_name, "CSR")


def check_public_key(key: Any, profile: Profile) -> None:
    policy = profile.allowed_keys
    if isinstance(key, rsa.RSAPublicKey) and policy.rsa_min_bits is not None:
        if key.key_size < policy.rsa_min_bits:
            raise KeyTooWeak(f"RSA-{key.key_size} is below the minimum of {policy.rsa_min_bits} bits")
        if policy.rsa_max_bits is not None and key.key_size > policy.rsa_max_bits:  # set with min
            raise KeyTypeNotAllowed(f"RSA-{key.key_size} is above the maximum of {policy.rsa_max_bits} bits")
        exponent = key.public_numbers().e
        if exponent < 3 or exponent % 2 == 0:
            raise KeyTooWeak(f"RSA public exponent {exponent} is not an odd number >= 3")
    elif not (isinstance(key, ec.EllipticCurvePublicKey) and key.curve.name in policy.ec_curves):
        described = getattr(getattr(key, "curve", None), "name", type(key).__name__)
        raise KeyTypeNotAllowed(f"profile {profile.name!r} does not allow {described} keys")


# name: (OID, short name, upper bound from RFC 5280 appendix A; countryName is exactly 2)
_ATTRIBUTES = {
    "countryName": (NameOID.COUNTRY_NAME, "C", 2),
    "stateOrProvinceName": (NameOID.STATE_OR_PROVINCE_NAME, "ST", 128),
    "localityName": (NameOID.LOCALITY_NAME, "L", 128),
    "organizationName": (NameOID.ORGANIZATION_NAME, "O", 64),
    "organizationalUnitName": (NameOID.ORGANIZATIONAL_UNIT_NAME, "OU", 64),
    "commonName": (NameOID.COMMON_NAME, "CN", 64),
    "emailAddress": (NameOID.EMAIL_ADDRESS, "E", 255)}
_ATTRIBUTE_ALIASES = {"email": "emailAddress", **{short: name for name, (_, short, _) in _ATTRIBUTES.items()}}


def build_subject(attrs: list[tuple[str, str]] | dict[str, str], profile: Profile) -> x509.Name:
    """Subject from verified attributes, in a fixed order (C, ST, L, O, OU, CN, email)."""
    pairs = list(attrs.items()) if isinstance(attrs, dict) else list(attrs)
    named: list[tuple[str, str]] = []
    for key, value in pairs:
        name = _ATTRIBUTE_ALIASES.get(key, key)
        if name not in profile.allowed_subject_attributes:
            raise AttributeNotAllowed(f"profile {profile.name!r} does not allow subject attribute {key!r}")
        named.append((name, _checked_attribute_value(name, value)))
    named.sort(key=lambda pair: SUBJECT_ATTRIBUTE_NAMES.index(pair[0]))
    # Lengths are checked above in characters, as RFC 5280's upper bounds count them;
    # cryptography's own check counts UTF-8 bytes (33 x "ü" in a CN was an internal_error),
    # and warns even when told not to check.
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", "Attribute's length must be", UserWarning)
        return x509.Name([x509.NameAttribute(_ATTRIBUTES[n][0], v, _validate=False) for n, v in named])


def _checked_attribute_value(name: str, value: Any) -> str:
    if not isinstance(value, str) or not value.strip() or not value.isprintable():
        raise InvalidValue(f"{name} must be a non-empty printable string, got {value!r}")
    if len(value) > _ATTRIBUTES[name][2]:
        raise InvalidValue(f"{name} is longer than {_ATTRIBUTES[name][2]} characters")
    if name == "countryName" and not re.fullmatch(r"[A-Z]{2}", value):
        raise InvalidValue(f"countryName must be two capital letters, got {value!r}")
    # Normalised like the rfc822Name SAN it must match (RFC 5280 4.1.2.6).
    return _check_email(value) if name == "emailAddress" else value


XMPP_ADDR_OID = ObjectIdentifier("1.3.6.1.5.5.7.8.5")
_DNS_LABEL = r"(?!-)[a-z0-9-]{1,63}(?<!-)"
_DNS_NAME = re.compile(rf"(\*\.)?({_DNS_LABEL}\.)+{_DNS_LABEL}")
_EMAIL_LOCAL_PART = re.compile(r"[A-Za-z0-9!#$%&'*+/=?^_`{|}~.-]{1,64}")


def _check_dns_name(value: str, wildcard_allowed: bool = True) -> str:
    lowered = value.lower()
    # An all-digit last label is an IP address, which has its own SAN type.
    if (len(lowered) > 253 or not _DNS_NAME.fullmatch(lowered) or lowered.rpartition(".")[2].isdigit()
            or (not wildcard_allowed and lowered.startswith("*."))):
        raise InvalidValue(f"not a DNS name in A-label form: {value!r}")
    for label in lowered.split("."):
        if label.startswith("xn--"):
            try:  # Punycode that decodes and encodes back to the same label (RFC 5890 A-label)
                label.encode("ascii").decode("idna")
            except UnicodeError:
                raise InvalidValue(f"{label!r} in {value!r} is not a valid IDNA A-label") from None
    return lowered


def _check_email(value: str) -> str:
    local, _, domain = value.rpartition("@")
    if not _EMAIL_LOCAL_PART.fullmatch(local):
        raise InvalidValue(f"not an ASCII e-mail address: {value!r}")
    return f"{local}@{_check_dns_name(domain, wildcard_allowed=False)}"


def _xmpp_address(value: str) -> x509.OtherName:
    if not value or len(value.encode()) > 3071 or any(c.isspace() or not c.isprintable() for c in value):
        raise InvalidValue(f"not a Jabber ID: {value!r}")
    # RFC 6120 13.7.1.4: id-on-xmppAddr's value is a UTF8String (tag 12).
    return x509.OtherName(XMPP_ADDR_OID, der_tlv(0x0C, value.encode("utf-8")))


_SAN_BUILDERS = {
    "dns": lambda value: x509.DNSName(_check_dns_name(value)),
    "email": lambda value: x509.RFC822Name(_check_email(value)),
    "xmpp": _xmpp_address,
}


def build_sans(sans: list[tuple[str, str]], profile: Profile) -> list[x509.GeneralName]:
    """General names in request order, duplicates dropped."""
    names: dict[x509.GeneralName, None] = {}   # a dict keeps the order and finds duplicates in O(1)
    for kind, value in sans:
        if kind not in profile.allowed_san_types:
            raise SanTypeNotAllowed(f"profile {profile.name!r} does not allow SAN type {kind!r}")
        if not isinstance(value, str):
            raise InvalidValue(f"{kind} SAN must be a string, got {type(value).__name__}")
        names.setdefault(_SAN_BUILDERS[kind](value))
    return list(names)


def new_serial() -> int:
    """128-bit serial: 127 random bits from `secrets` with the top bit set. CA/B Forum wants
    >= 64 random bits; a fixed bit length gives a fixed 17-byte INTEGER (16 bytes plus the
    0x00 that keeps it positive), well under RFC 5280's 20-octet limit."""
    return secrets.randbits(127) | (1 << 127)


def validity_window(profile: Profile, now: datetime.datetime,
                    days: int | None = None) -> tuple[datetime.datetime, datetime.datetime]:
    """notBefore now (whole seconds); notAfter `days` later less one second: both ends are
    inclusive (RFC 5280 4.1.2.5), so the validity period is exactly `days` days."""
    not_before = as_utc(now).replace(microsecond=0)
    period = datetime.timedelta(days=days or profile.default_validity_days)
    return not_before, not_before + period - ONE_SECOND


ONE_SECOND = datetime.timedelta(seconds=1)


# --- building --------------------------------------------------------------------------

@dataclass(frozen=True)
class PreparedCertificate:
    tbs_der: bytes                     # what the HSM signs
    signature_algorithm_der: bytes     # AlgorithmIdentifier, as in the TBS
    mechanism: str                     # e.g. "sha256-rsa-pkcs1", "sha384-ecdsa"
    throwaway_certificate: x509.Certificate   # same TBS, throwaway signature: for linting


# Key usages a key type can never perform (RFC 4055 1.2, RFC 8813 3).
_IMPOSSIBLE_KEY_USAGES = {"rsa": {"keyAgreement", "encipherOnly", "decipherOnly"},
                          "ec": {"keyEncipherment", "dataEncipherment"}}
_KEY_USAGE_ARGUMENTS = {
    "digitalSignature": "digital_signature", "nonRepudiation": "content_commitment",
    "keyEncipherment": "key_encipherment", "dataEncipherment": "data_encipherment",
    "keyAgreement": "key_agreement", "encipherOnly": "encipher_only",
    "decipherOnly": "decipher_only"}


def key_usage_for(profile: Profile, subject_key: Any) -> x509.KeyUsage:
    key_type = key_info_of(subject_key)["type"]
    usable = [name for name in profile.extensions.key_usage
              if name not in _IMPOSSIBLE_KEY_USAGES[key_type]]
    if not usable:
        raise KeyTypeNotAllowed(f"profile {profile.name!r} has no key usage an {key_type} key can do")
    flags = {argument: False for argument in _KEY_USAGE_ARGUMENTS.values()}
    flags.update({_KEY_USAGE_ARGUMENTS[name]: True for name in usable})
    return x509.KeyUsage(key_cert_sign=False, crl_sign=False, **flags)


def profile_extensions(profile: Profile, subject_key: Any, issuer_cert: x509.Certificate,
                       issuer_id: str) -> list[tuple[x509.ExtensionType, bool]]:
    """(extension, critical) pairs: exactly what the profile says for the issuer `issuer_id`
    (one the profile names), plus SKI and AKI."""
    spec, urls = profile.extensions, profile.urls_for(issuer_id)
    result: list[tuple[x509.ExtensionType, bool]] = [
        (x509.BasicConstraints(ca=False, path_length=None), True),
        (key_usage_for(profile, subject_key), True),
        (x509.SubjectKeyIdentifier.from_public_key(subject_key), False),
        (authority_key_identifier(issuer_cert), False)]
    if spec.extended_key_usage:
        usages = [ObjectIdentifier(oid) for oid in spec.extended_key_usage]
        result.append((x509.ExtendedKeyUsage(usages), spec.extended_key_usage_critical))
    if spec.certificate_policies:
        result.append((x509.CertificatePolicies([
            x509.PolicyInformation(ObjectIdentifier(p.oid), [p.cps_url] if p.cps_url else None)
            for p in spec.certificate_policies]), False))
    if urls.crl_distribution_point:
        point = x509.DistributionPoint([x509.UniformResourceIdentifier(urls.crl_distribution_point)],
                                       None, None, None)
        result.append((x509.CRLDistributionPoints([point]), False))
    if urls.ocsp_url:
        result.append((x509.AuthorityInformationAccess([x509.AccessDescription(
            AuthorityInformationAccessOID.OCSP,
            x509.UniformResourceIdentifier(urls.ocsp_url))]), False))
    if spec.ocsp_no_check:
        result.append((x509.OCSPNoCheck(), False))
    return result


def _with_subject_email(subject: x509.Name, sans: list[x509.GeneralName]) -> list[x509.GeneralName]:
    # RFC 5280 4.1.2.6: an emailAddress in the subject must also be an rfc822Name SAN.
    emails = [x509.RFC822Name(a.value) for a in subject.get_attributes_for_oid(NameOID.EMAIL_ADDRESS)
              if isinstance(a.value, str)]  # always: only bit-string attributes hold bytes
    return list(dict.fromkeys([*sans, *emails]))


def _check_validity(profile: Profile, issuer_cert: x509.Certificate,
                    not_before: datetime.datetime, not_after: datetime.datetime) -> None:
    if not_after <= not_before:
        raise InvalidValue(f"not_after {not_after} is not after not_before {not_before}")
    # The period includes both ends (RFC 5280 4.1.2.5): notAfter - notBefore + 1 s.
    if not_after - not_before + ONE_SECOND > datetime.timedelta(days=profile.max_validity_days):
        raise ValidityTooLong(f"profile {profile.name!r} allows at most {profile.max_validity_days} days")
    if not_after > issuer_cert.not_valid_after_utc:
        raise ValidityTooLong(f"the issuer expires {issuer_cert.not_valid_after_utc}, before {not_after}")


def build_tbs_certificate(profile: Profile, issuer_id: str, issuer_cert: x509.Certificate,
                          issuer_key_info: dict[str, Any], subject_key: Any,
                          subject: x509.Name, sans: list[x509.GeneralName], serial: int,
                          not_before: datetime.datetime, not_after: datetime.datetime,
                          hash_name: str) -> PreparedCertificate:
    """`subject_key`: the public key of a checked key request (`check_csr(...).public_key()`
    or `core.x509.spkac.check_spkac`); `issuer_id`: an issuer the profile names."""
    if hash_name not in profile.allowed_hashes:
        raise HashNotAllowed(f"profile {profile.name!r} does not allow {hash_name!r}")
    not_before, not_after = as_utc(not_before), as_utc(not_after)
    _check_validity(profile, issuer_cert, not_before, not_after)
    check_public_key(subject_key, profile)   # the request may have been checked for another profile
    sans = _with_subject_email(subject, sans)
    if len(sans) > profile.max_sans:   # the subject's e-mail addresses count too
        raise LimitExceeded(f"the certificate would have {len(sans)} SANs; at most {profile.max_sans} are "
                            f"allowed (max_sans of profile {profile.name!r})")
    if not sans and not subject:
        raise InvalidValue("a certificate needs a subject attribute or a SAN")
    builder = (x509.CertificateBuilder().subject_name(subject).issuer_name(issuer_cert.subject)
               .public_key(subject_key).serial_number(serial)
               .not_valid_before(not_before).not_valid_after(not_after))
    extensions = profile_extensions(profile, subject_key, issuer_cert, issuer_id)
    if sans:
        # RFC 5280 4.2.1.6: with an empty subject the SAN carries the identity: critical.
        extensions.append((x509.SubjectAlternativeName(sans), not subject))
    for extension, critical in extensions:
        builder = builder.add_extension(extension, critical)
    certificate = builder.sign(throwaway_key(issuer_key_info), hash_algorithm(hash_name))
    tbs_der, algorithm_der, _ = split_signed(certificate.public_bytes(serialization.Encoding.DER))
    return PreparedCertificate(tbs_der, algorithm_der, mechanism_for(issuer_key_info, hash_name),
                               certificate)


def assemble_certificate(prepared: PreparedCertificate, signature: bytes) -> bytes:
    """`signature` as X.509 wants it: PKCS#1 v1.5 bytes, or a DER Ecdsa-Sig-Value (what
    core.hsm.session's sign returns; not PKCS#11's raw r||s)."""
    return assemble_signed(prepared.tbs_der, prepared.signature_algorithm_der, signature)


def verify_issued(cert_der: bytes, issuer_cert: x509.Certificate) -> x509.Certificate:
    try:
        certificate = x509.load_der_x509_certificate(cert_der)
        certificate.verify_directly_issued_by(issuer_cert)
    except (ValueError, TypeError, InvalidSignature) as exc:
        raise SignatureMismatch(f"the certificate does not verify against its issuer: {exc!r}") from None
    return certificate


# --- linting ---------------------------------------------------------------------------

@dataclass(frozen=True)
class Finding:
    severity: str       # FATAL, ERROR, WARNING, NOTICE, INFO or DEBUG
    code: str           # e.g. "pkix.subject_email_address_not_in_san"
    message: str | None
    path: str           # node of the document, e.g. "certificate.tbsCertificate.extensions"

    def __str__(self) -> str:
        return f"{self.severity} {self.code} at {self.path}" + (f": {self.message}" if self.message else "")


def _is_wildcard_dns_finding(result: Any, description: Any) -> bool:
    """pkilint's RFC 5280 lint judges a dNSName with the `validators` package's domain syntax,
    which knows no wildcard, so `*.example.org` is an ERROR there. RFC 6125 6.4.3 and the
    CA/B Forum allow `*` as the whole leftmost label: exactly that finding, on exactly such a
    name, is dropped, and only when the rest of the name passes the same syntax check
    (`a*.example.org`, `*.*.example.org` and `www.*.example.org` are still findings)."""
    if description.finding.code != "pkix.invalid_domain_name_syntax":
        return False
    import validators
    from pkilint.pkix.general_name import validators_predicate
    value = str(result.node.pdu)
    return value.startswith("*.") and validators_predicate(validators.domain, value[2:])


class PkixLinter:
    """pkilint's RFC 5280 certificate lint, as `lint_pkix_cert` runs it, set up once
    (~0.2 s) and then ~2 ms per certificate. `decoded_values`: nested values decoded once
    per distinct value (core/x509/lint_cache.py); None decodes every one each time."""

    def __init__(self, decoded_values: DecodedValues | None = None) -> None:
        from pkilint import loader
        from pkilint.pkix import certificate, extension, name
        self._loader = loader.RFC5280CertificateDocumentLoader()
        self._validator = certificate.create_pkix_certificate_validator_container(
            certificate.create_decoding_validators(name.ATTRIBUTE_TYPE_MAPPINGS,
                                                   extension.EXTENSION_MAPPINGS),
            [certificate.create_issuer_validator_container([]),
             certificate.create_validity_validator_container(),
             certificate.create_subject_validator_container([]),
             certificate.create_extensions_validator_container([]),
             certificate.create_spki_validator_container([])])
        index_validators(self._validator)  # same findings, fewer match calls (lint_index.py)
        self.decoded_values = decoded_values
        if decoded_values is not None:  # same findings, fewer decodings (lint_cache.py)
            cache_decoded_values(self._validator, decoded_values)

    def lint(self, cert_der: bytes, worst_ignored: str = "WARNING") -> list[Finding]:
        """Findings more severe than `worst_ignored`: by default ERROR and FATAL only;
        pass "DEBUG" to see everything."""
        from pkilint.validation import ValidationFindingSeverity as Severity
        threshold = Severity[worst_ignored]
        try:
            document = self._loader.load_der_document(cert_der, "certificate")
            results = self._validator.validate(document.root)
        except Exception as exc:  # pkilint raises assorted errors on undecodable input
            return [Finding("FATAL", "decoding_failed", str(exc), "certificate")]
        return [Finding(d.finding.severity.name, d.finding.code, d.message, result.node.path)
                for result in results for d in result.finding_descriptions
                if d.finding.severity < threshold and not _is_wildcard_dns_finding(result, d)]

    def check(self, cert_der: bytes) -> None:
        findings = self.lint(cert_der)
        if findings:
            raise LintFailed(findings)
