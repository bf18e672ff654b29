"""SPKAC key requests (Netscape SignedPublicKeyAndChallenge, the HTML <keygen> format;
CAcert rows with keytype 'NS'): parse, check the proof of possession and the key policy,
exactly as a PKCS#10 CSR is checked (core.x509.certificate.check_csr), with the same errors.

    SignedPublicKeyAndChallenge ::= SEQUENCE {
        publicKeyAndChallenge PublicKeyAndChallenge,
        signatureAlgorithm    AlgorithmIdentifier,
        signature             BIT STRING }
    PublicKeyAndChallenge ::= SEQUENCE {
        spki      SubjectPublicKeyInfo,
        challenge IA5String }

cryptography has no SPKAC parser, so the structure is decoded with pyasn1 (which pkilint,
the signer's linter, depends on), re-encoded and compared with the input: only canonical
DER is accepted, so the bytes whose signature is checked are exactly the bytes received.
The challenge is not checked: the web application compared it with the one it issued
before the request reached the signer.

Only the signer imports this module (the WebDB box has no pyasn1).
"""
from __future__ import annotations

import base64
import binascii
import re
from typing import Any

from cryptography.exceptions import InvalidSignature, UnsupportedAlgorithm
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.x509.oid import ObjectIdentifier
from pyasn1.codec.der import decoder, encoder
from pyasn1.error import PyAsn1Error
from pyasn1.type import char, namedtype, univ

from core.x509.profiles import Profile
from core.x509.certificate import (BadCsrSignature, MalformedCsr, check_key_algorithm, check_proof_hash,
                            check_public_key, request_public_key)

WHAT = "SPKAC"
_BASE64_TEXT = re.compile(r"[A-Za-z0-9+/]+={0,2}")  # after white space is removed

# Signature algorithms of a proof of possession: (key family, hash name or None for one
# that proves nothing). Anything else is refused as an unknown hash, like a CSR's.
_SIGNATURE_ALGORITHMS: dict[str, tuple[str, str | None]] = {
    "1.2.840.113549.1.1.2": ("rsa", None),            # md2WithRSAEncryption
    "1.2.840.113549.1.1.3": ("rsa", None),            # md4WithRSAEncryption
    "1.2.840.113549.1.1.4": ("rsa", "md5"),           # md5WithRSAEncryption (old browsers)
    "1.2.840.113549.1.1.5": ("rsa", "sha1"),
    "1.2.840.113549.1.1.14": ("rsa", "sha224"),
    "1.2.840.113549.1.1.11": ("rsa", "sha256"),
    "1.2.840.113549.1.1.12": ("rsa", "sha384"),
    "1.2.840.113549.1.1.13": ("rsa", "sha512"),
    "1.2.840.10045.4.1": ("ec", "sha1"),
    "1.2.840.10045.4.3.1": ("ec", "sha224"),
    "1.2.840.10045.4.3.2": ("ec", "sha256"),
    "1.2.840.10045.4.3.3": ("ec", "sha384"),
    "1.2.840.10045.4.3.4": ("ec", "sha512"),
}
_HASHES: dict[str, type[hashes.SHA224 | hashes.SHA256 | hashes.SHA384 | hashes.SHA512]] = {
    "sha224": hashes.SHA224, "sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


class _AlgorithmIdentifier(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("algorithm", univ.ObjectIdentifier()),
        namedtype.OptionalNamedType("parameters", univ.Any()))


class _PublicKeyAndChallenge(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("spki", univ.Any()),        # kept as its DER: cryptography reads it
        namedtype.NamedType("challenge", char.IA5String()))


class _SubjectPublicKeyInfo(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("algorithm", _AlgorithmIdentifier()),
        namedtype.NamedType("subjectPublicKey", univ.BitString()))


class _SignedPublicKeyAndChallenge(univ.Sequence):
    componentType = namedtype.NamedTypes(
        namedtype.NamedType("publicKeyAndChallenge", univ.Any()),   # the signed bytes, verbatim
        namedtype.NamedType("signatureAlgorithm", _AlgorithmIdentifier()),
        namedtype.NamedType("signature", univ.BitString()))


def _decode_der(data: bytes, spec: univ.Sequence, what: str) -> Any:
    try:
        value, rest = decoder.decode(data, asn1Spec=spec)
        canonical = encoder.encode(value) == data
    except (PyAsn1Error, ValueError, TypeError) as exc:
        raise MalformedCsr(f"the {WHAT} is not DER {what}: {type(exc).__name__}: {exc}") from None
    if rest or not canonical:
        raise MalformedCsr(f"the {WHAT} is not DER {what}: " + ("trailing bytes" if rest else "not canonical DER"))
    return value


def spkac_der(text: str) -> bytes:
    """The DER of the base64 text after CAcert's ``SPKAC=`` (white space ignored)."""
    compact = "".join(text.split())
    if not _BASE64_TEXT.fullmatch(compact):
        raise MalformedCsr(f"the {WHAT} must be base64 text (the value after 'SPKAC='), got "
                           f"{text[:40]!r}{'...' if len(text) > 40 else ''}")
    try:
        return base64.b64decode(compact, validate=True)
    except binascii.Error as exc:
        raise MalformedCsr(f"invalid base64 in the {WHAT}: {exc}") from None


def check_spkac(text: str, profile: Profile) -> Any:
    """The public key of a valid SPKAC for `profile`; the checks and their order are
    check_csr's: structure, key algorithm, the signature's hash, the key, the signature,
    the profile's key policy (docs/protocol.md, SPKAC)."""
    der = spkac_der(text)
    signed = _decode_der(der, _SignedPublicKeyAndChallenge(), "SignedPublicKeyAndChallenge")
    signed_bytes = bytes(signed["publicKeyAndChallenge"])
    content = _decode_der(signed_bytes, _PublicKeyAndChallenge(), "PublicKeyAndChallenge")
    spki = bytes(content["spki"])
    spki_algorithm = _decode_der(spki, _SubjectPublicKeyInfo(), "SubjectPublicKeyInfo")["algorithm"]["algorithm"]
    check_key_algorithm(ObjectIdentifier(str(spki_algorithm)))
    signature_algorithm = ObjectIdentifier(str(signed["signatureAlgorithm"]["algorithm"]))
    family, hash_name = _SIGNATURE_ALGORITHMS.get(signature_algorithm.dotted_string, (None, None))
    check_proof_hash(signature_algorithm, hash_name, WHAT)
    key = request_public_key(lambda: serialization.load_der_public_key(spki),
                             ObjectIdentifier(str(spki_algorithm)), lambda: (spki, 0), WHAT)
    _verify(key, family, hash_name, signed["signature"], signed_bytes)
    check_public_key(key, profile)
    return key


def _verify(key: Any, family: str | None, hash_name: str | None, signature: univ.BitString,
            signed_bytes: bytes) -> None:
    if len(signature) % 8:
        raise MalformedCsr(f"the {WHAT}'s signature is not a whole number of octets")
    # check_proof_hash let only the algorithms of _SIGNATURE_ALGORITHMS with these hashes pass
    assert family is not None and hash_name in _HASHES
    algorithm = _HASHES[hash_name]()
    try:
        if family == "rsa" and isinstance(key, rsa.RSAPublicKey):
            key.verify(signature.asOctets(), signed_bytes, padding.PKCS1v15(), algorithm)
        elif family == "ec" and isinstance(key, ec.EllipticCurvePublicKey):
            key.verify(signature.asOctets(), signed_bytes, ec.ECDSA(algorithm))
        else:
            raise BadCsrSignature(f"the {WHAT} is signed with a {family.upper()} algorithm, "
                                  f"but its key is {type(key).__name__}")
    except (InvalidSignature, UnsupportedAlgorithm):
        raise BadCsrSignature(f"the {WHAT}'s signature does not match its public key") from None
