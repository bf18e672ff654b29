"""Stateless helpers for token keys: signing mechanisms, the attributes a CA key pair has
on the token, public keys from token attributes, and cryptography key adapters.

:class:`HsmRsaPrivateKey` and :class:`HsmEcPrivateKey` are real subclasses of
cryptography's private key classes (the X.509 builders reject duck typing); their
``sign()`` receives the whole to-be-signed bytes and hands them to the session, so
``x509.CertificateBuilder().sign(key, hashes.SHA256())`` signs on the token. Only
signing and the public half work: the private half cannot leave the token.

No session state and no HSM errors live here: :mod:`core.hsm.session` imports this module and
turns its ValueError/TypeError into typed errors. The key classes need only an object
with ``sign(key_label, mechanism, data) -> bytes``.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, NoReturn

import PyKCS11
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa
from cryptography.hazmat.primitives.asymmetric.padding import (MGF1, PSS, AsymmetricPadding,
                                                               PKCS1v15)
from cryptography.hazmat.primitives.asymmetric.utils import (NoDigestInfo, Prehashed,
                                                             encode_dss_signature)
from cryptography.hazmat.primitives.serialization import (Encoding, KeySerializationEncryption,
                                                          PrivateFormat)

if TYPE_CHECKING:
    from core.hsm.session import HsmSession

RSA_PKCS1, RSA_PSS, ECDSA = "rsa-pkcs1", "rsa-pss", "ecdsa"
FAMILIES = (RSA_PKCS1, RSA_PSS, ECDSA)

# Curve name -> DER of its OID, the value of CKA_EC_PARAMS.
EC_PARAMS: dict[str, bytes] = {
    "secp256r1": bytes.fromhex("06082a8648ce3d030107"),
    "secp384r1": bytes.fromhex("06052b81040022"),
}
_CURVES: dict[bytes, type[ec.EllipticCurve]] = {EC_PARAMS["secp256r1"]: ec.SECP256R1,
                                                EC_PARAMS["secp384r1"]: ec.SECP384R1}
_RSA_PUBLIC_EXPONENT = (0x01, 0x00, 0x01)
MIN_RSA_BITS = 2048  # a CA key; smaller keys are refused at generation


def mechanism_name(hash_name: str, family: str) -> str:
    """E.g. ("sha256", "rsa-pss") -> "sha256-rsa-pss", the names HsmSession.sign takes."""
    return f"{hash_name}-{family}"


# -- signing mechanisms ------------------------------------------------------------------

@dataclass(frozen=True)
class HashSpec:
    name: str  # hashlib and cryptography name
    size: int  # digest bytes, also the PSS salt length
    ckm_rsa_pkcs: int
    ckm_rsa_pss: int
    ckm_hash: int
    mgf: int
    algorithm: type[hashes.HashAlgorithm]


HASHES: dict[str, HashSpec] = {h.name: h for h in (
    HashSpec("sha256", 32, PyKCS11.CKM_SHA256_RSA_PKCS, PyKCS11.CKM_SHA256_RSA_PKCS_PSS,
             PyKCS11.CKM_SHA256, PyKCS11.CKG_MGF1_SHA256, hashes.SHA256),
    HashSpec("sha384", 48, PyKCS11.CKM_SHA384_RSA_PKCS, PyKCS11.CKM_SHA384_RSA_PKCS_PSS,
             PyKCS11.CKM_SHA384, PyKCS11.CKG_MGF1_SHA384, hashes.SHA384),
    HashSpec("sha512", 64, PyKCS11.CKM_SHA512_RSA_PKCS, PyKCS11.CKM_SHA512_RSA_PKCS_PSS,
             PyKCS11.CKM_SHA512, PyKCS11.CKG_MGF1_SHA512, hashes.SHA512),
)}


@dataclass(frozen=True)
class MechanismSpec:
    name: str
    family: str  # one of FAMILIES
    hash: HashSpec

    def pkcs11(self) -> PyKCS11.Mechanism | PyKCS11.RSA_PSS_Mechanism:
        if self.family == RSA_PKCS1:
            return PyKCS11.Mechanism(self.hash.ckm_rsa_pkcs)
        if self.family == RSA_PSS:
            return PyKCS11.RSA_PSS_Mechanism(self.hash.ckm_rsa_pss, self.hash.ckm_hash,
                                             self.hash.mgf, self.hash.size)
        return PyKCS11.Mechanism(PyKCS11.CKM_ECDSA)  # over a digest computed by the caller

    def verify(self, public_key: object, signature: bytes, data: bytes) -> None:
        """Raise InvalidSignature if bad, TypeError if the key does not fit."""
        algorithm = self.hash.algorithm()
        if self.family == ECDSA and isinstance(public_key, ec.EllipticCurvePublicKey):
            public_key.verify(signature, data, ec.ECDSA(algorithm))
        elif self.family != ECDSA and isinstance(public_key, rsa.RSAPublicKey):
            pad = PKCS1v15() if self.family == RSA_PKCS1 else PSS(MGF1(algorithm),
                                                                  self.hash.size)
            public_key.verify(signature, data, pad, algorithm)
        else:
            raise TypeError(f"{self.name} does not apply to {type(public_key).__name__}")


# Every mechanism name HsmSession.sign accepts, e.g. "sha384-rsa-pss".
MECHANISMS: dict[str, MechanismSpec] = {
    mechanism_name(h, f): MechanismSpec(mechanism_name(h, f), f, HASHES[h])
    for f in FAMILIES for h in HASHES}


# -- attributes of a CA key pair -------------------------------------------------------

def rsa_public_attributes(bits: int) -> list[tuple[int, Any]]:
    if bits < MIN_RSA_BITS:
        raise ValueError(f"RSA keys need at least {MIN_RSA_BITS} bits, not {bits}")
    return [(PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_RSA), (PyKCS11.CKA_MODULUS_BITS, bits),
            (PyKCS11.CKA_PUBLIC_EXPONENT, _RSA_PUBLIC_EXPONENT)]


def ec_public_attributes(curve: str) -> list[tuple[int, Any]]:
    if curve not in EC_PARAMS:
        raise ValueError(f"unsupported curve {curve!r}; supported: {sorted(EC_PARAMS)}")
    return [(PyKCS11.CKA_KEY_TYPE, PyKCS11.CKK_EC),
            (PyKCS11.CKA_EC_PARAMS, tuple(EC_PARAMS[curve]))]


def key_pair_templates(label: str, key_id: bytes, key_type: int,
                       public_attributes: list[tuple[int, Any]],
                       ) -> tuple[list[tuple[int, Any]], list[tuple[int, Any]]]:
    """(public, private) templates: a token key pair whose private half can only sign."""
    shared = [(PyKCS11.CKA_TOKEN, True), (PyKCS11.CKA_LABEL, label),
              (PyKCS11.CKA_ID, tuple(key_id))]
    public = [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PUBLIC_KEY), *shared, *public_attributes,
              (PyKCS11.CKA_PRIVATE, False), (PyKCS11.CKA_VERIFY, True),
              (PyKCS11.CKA_ENCRYPT, False), (PyKCS11.CKA_WRAP, False),
              (PyKCS11.CKA_DERIVE, False)]
    # SoftHSM allows decrypt/unwrap/derive unless they are explicitly set to False.
    private = [(PyKCS11.CKA_CLASS, PyKCS11.CKO_PRIVATE_KEY), *shared,
               (PyKCS11.CKA_KEY_TYPE, key_type), (PyKCS11.CKA_PRIVATE, True),
               (PyKCS11.CKA_SENSITIVE, True), (PyKCS11.CKA_EXTRACTABLE, False),
               (PyKCS11.CKA_SIGN, True), (PyKCS11.CKA_DECRYPT, False),
               (PyKCS11.CKA_UNWRAP, False), (PyKCS11.CKA_DERIVE, False)]
    return public, private


# -- public keys from token attributes ---------------------------------------------------

def rsa_public_key(modulus: bytes, exponent: bytes) -> rsa.RSAPublicKey:
    return rsa.RSAPublicNumbers(int.from_bytes(exponent, "big"),
                                int.from_bytes(modulus, "big")).public_key()


def ec_public_key(ec_params: bytes, ec_point: bytes) -> ec.EllipticCurvePublicKey:
    """From CKA_EC_PARAMS and CKA_EC_POINT; ValueError on a curve we do not support."""
    if ec_params not in _CURVES:
        raise ValueError(f"unsupported curve (CKA_EC_PARAMS {ec_params.hex()})")
    return ec.EllipticCurvePublicKey.from_encoded_point(_CURVES[ec_params](),
                                                        _unwrap_octet_string(ec_point))


def ecdsa_der_signature(raw: bytes) -> bytes:
    """CKM_ECDSA returns r || s (each the curve's size); X.509 wants DER Ecdsa-Sig-Value."""
    half = len(raw) // 2
    return encode_dss_signature(int.from_bytes(raw[:half], "big"),
                                int.from_bytes(raw[half:], "big"))


def _unwrap_octet_string(ec_point: bytes) -> bytes:
    """CKA_EC_POINT is a DER OCTET STRING around the point; some tokens omit the wrapper.
    An uncompressed point also starts with 0x04, so the wrapper is recognised only when
    its length field matches the rest exactly."""
    if len(ec_point) < 2 or ec_point[0] != 0x04:
        return ec_point
    length, offset = ec_point[1], 2
    if length & 0x80:  # long form: the low bits count the length bytes that follow
        count = length & 0x7F
        length, offset = int.from_bytes(ec_point[2:2 + count], "big"), 2 + count
    return ec_point[offset:] if offset + length == len(ec_point) else ec_point


# -- private keys that sign on the token -------------------------------------------------

def _hash_name(algorithm: object) -> str:
    # The token hashes (RSA) or we hash the whole data (ECDSA): a digest is not enough.
    if isinstance(algorithm, (Prehashed, NoDigestInfo)):
        raise TypeError("an HSM key signs the whole data; Prehashed/NoDigestInfo "
                        "are not supported")
    if not isinstance(algorithm, hashes.HashAlgorithm):
        raise TypeError(f"expected a hash algorithm, got {type(algorithm).__name__}")
    return algorithm.name


def _check_pss(pss: PSS, algorithm: hashes.HashAlgorithm) -> None:
    """The token signs with MGF1 of the same hash and a salt as long as the digest."""
    mgf_hash = pss.mgf._algorithm if isinstance(pss.mgf, MGF1) else None
    if mgf_hash is None or mgf_hash.name != algorithm.name:
        raise ValueError("HSM PSS signatures use MGF1 with the signature's hash")
    salt = pss._salt_length  # no public accessor in cryptography 50
    if not (salt is PSS.DIGEST_LENGTH or salt == algorithm.digest_size):
        raise ValueError("HSM PSS signatures use a salt as long as the digest "
                         "(PSS.DIGEST_LENGTH)")


def _not_extractable(*_: object) -> NoReturn:
    raise TypeError("the private key is on the HSM and cannot be exported")


def _sign_only(*_: object) -> NoReturn:
    raise NotImplementedError("HSM keys of the signer are for signing only")


class HsmRsaPrivateKey(rsa.RSAPrivateKey):
    """An RSA key on the token; sign() makes a PKCS#1 v1.5 or PSS signature there."""

    def __init__(self, session: HsmSession, key_label: str, public_key: rsa.RSAPublicKey,
                 hash_name: str = "sha256") -> None:
        self._session = session
        self.key_label = key_label
        self.hash_name = hash_name  # the configured default, checked by core.hsm.session
        self._public_key = public_key

    def sign(self, data: bytes, padding: AsymmetricPadding, algorithm: Any) -> bytes:
        hash_name = _hash_name(algorithm)
        if isinstance(padding, PKCS1v15):
            family = RSA_PKCS1
        elif isinstance(padding, PSS):
            _check_pss(padding, algorithm)
            family = RSA_PSS
        else:
            raise TypeError(f"unsupported RSA padding {type(padding).__name__}")
        return self._session.sign(self.key_label, mechanism_name(hash_name, family),
                                  bytes(data))

    def public_key(self) -> rsa.RSAPublicKey:
        return self._public_key

    @property
    def key_size(self) -> int:
        return self._public_key.key_size

    def __copy__(self) -> HsmRsaPrivateKey:
        return self  # a reference to a token key: nothing to copy

    def __deepcopy__(self, memo: dict[int, Any]) -> HsmRsaPrivateKey:
        return self

    def decrypt(self, ciphertext: bytes, padding: AsymmetricPadding) -> bytes:
        _sign_only()

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        _not_extractable()

    def private_bytes(self, encoding: Encoding, format: PrivateFormat,
                      encryption_algorithm: KeySerializationEncryption) -> bytes:
        _not_extractable()


class HsmEcPrivateKey(ec.EllipticCurvePrivateKey):
    """An EC key on the token; sign() hashes here and makes an ECDSA signature there."""

    def __init__(self, session: HsmSession, key_label: str,
                 public_key: ec.EllipticCurvePublicKey, hash_name: str = "sha256") -> None:
        self._session = session
        self.key_label = key_label
        self.hash_name = hash_name
        self._public_key = public_key

    def sign(self, data: bytes | bytearray | memoryview,
             signature_algorithm: ec.EllipticCurveSignatureAlgorithm) -> bytes:
        if not isinstance(signature_algorithm, ec.ECDSA):
            raise TypeError("HSM EC keys sign with ECDSA only")
        if signature_algorithm.deterministic_signing:
            raise ValueError("the token's CKM_ECDSA is not deterministic (RFC 6979)")
        hash_name = _hash_name(signature_algorithm.algorithm)
        return self._session.sign(self.key_label, mechanism_name(hash_name, ECDSA),
                                  bytes(data))

    def public_key(self) -> ec.EllipticCurvePublicKey:
        return self._public_key

    @property
    def curve(self) -> ec.EllipticCurve:
        return self._public_key.curve

    @property
    def key_size(self) -> int:
        return self._public_key.curve.key_size

    def __copy__(self) -> HsmEcPrivateKey:
        return self

    def __deepcopy__(self, memo: dict[int, Any]) -> HsmEcPrivateKey:
        return self

    def exchange(self, algorithm: ec.ECDH, peer_public_key: ec.EllipticCurvePublicKey) -> bytes:
        _sign_only()

    def private_numbers(self) -> ec.EllipticCurvePrivateNumbers:
        _not_extractable()

    def private_bytes(self, encoding: Encoding, format: PrivateFormat,
                      encryption_algorithm: KeySerializationEncryption) -> bytes:
        _not_extractable()
