"""core.hsm.session against a real SoftHSM2 token.

PyKCS11 loads the library once per process and SoftHSM reads SOFTHSM2_CONF at
C_Initialize, so the whole module shares ONE conf and token, set up before the first
session opens.
"""
from __future__ import annotations

import datetime
import subprocess
from pathlib import Path
from typing import Iterator

import PyKCS11
import pytest
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.utils import Prehashed
from cryptography.x509.oid import NameOID

from core.hsm.session import (MECHANISMS, HsmError, HsmKeyNotFound, HsmLoginFailed,
                      HsmMechanismUnsupported, HsmSession, HsmTokenNotFound, HsmUnavailable,
                      mechanism_for, verify_signature)
from core.hsm.keys import HsmEcPrivateKey, HsmRsaPrivateKey
from core.dev.softhsm import SOFTHSM_MODULE, init_softhsm_token, softhsm_env, token_labels

from tests.support.helpers import PIN, SO_PIN, TOKEN  # one token for the whole test process
WRONG_PIN = "wrong-3961570248"

RSA_KEY, P256_KEY, P384_KEY = "rsa-2048", "ec-p256", "ec-p384"


@pytest.fixture(scope="module")
def hsm(softhsm: dict[str, str]) -> Iterator[HsmSession]:
    session = HsmSession(SOFTHSM_MODULE, TOKEN, PIN)
    session.open()
    session.generate_rsa_key(RSA_KEY, 2048)
    session.generate_ec_key(P256_KEY, "secp256r1")
    session.generate_ec_key(P384_KEY, "secp384r1")
    yield session
    session.close()


def _key_for(mechanism: str) -> str:
    if mechanism.endswith("ecdsa"):
        return P384_KEY if mechanism.startswith("sha384") else P256_KEY
    return RSA_KEY


def _verify_independently(public_key: object, mechanism: str, signature: bytes,
                          data: bytes) -> None:
    """Verify with cryptography directly, not through the code under test."""
    hash_name, _, family = mechanism.partition("-")
    algorithm = {"sha256": hashes.SHA256(), "sha384": hashes.SHA384(),
                 "sha512": hashes.SHA512()}[hash_name]
    if family == "ecdsa":
        assert isinstance(public_key, ec.EllipticCurvePublicKey)
        public_key.verify(signature, data, ec.ECDSA(algorithm))
    elif family == "rsa-pss":
        assert isinstance(public_key, rsa.RSAPublicKey)
        public_key.verify(signature, data, padding.PSS(padding.MGF1(algorithm),
                                                       algorithm.digest_size), algorithm)
    else:
        assert isinstance(public_key, rsa.RSAPublicKey)
        public_key.verify(signature, data, padding.PKCS1v15(), algorithm)


# -- token set-up ----------------------------------------------------------------------

def test_init_softhsm_token_is_idempotent(softhsm: dict[str, str]) -> None:
    init_softhsm_token(softhsm["token_dir"], softhsm["conf"], TOKEN, SO_PIN, PIN)
    assert token_labels(softhsm["conf"]).count(TOKEN) == 1
    conf_text = Path(softhsm["conf"]).read_text()
    assert f"directories.tokendir = {softhsm['token_dir']}" in conf_text
    assert PIN not in conf_text and SO_PIN not in conf_text
    assert softhsm_env(softhsm["conf"])["SOFTHSM2_CONF"] == softhsm["conf"]


# -- keys ------------------------------------------------------------------------------

def test_generated_keys_have_the_requested_type_and_size(hsm: HsmSession) -> None:
    assert hsm.key_info(RSA_KEY) == {"type": "rsa", "bits": 2048, "curve": None}
    assert hsm.key_info(P256_KEY) == {"type": "ec", "bits": 256, "curve": "secp256r1"}
    assert hsm.key_info(P384_KEY) == {"type": "ec", "bits": 384, "curve": "secp384r1"}
    assert isinstance(hsm.public_key(RSA_KEY), rsa.RSAPublicKey)
    assert hsm.has_key(P256_KEY) and not hsm.has_key("no-such-key")


def test_generation_refuses_an_existing_label(hsm: HsmSession) -> None:
    with pytest.raises(HsmError, match="already exists"):
        hsm.generate_ec_key(P256_KEY, "secp256r1")
    with pytest.raises(ValueError):
        hsm.generate_rsa_key("too-small", 1024)
    with pytest.raises(ValueError):
        hsm.generate_ec_key("bad-curve", "secp521r1")


@pytest.mark.parametrize("label", [RSA_KEY, P256_KEY, P384_KEY])
def test_private_keys_cannot_leave_the_token(hsm: HsmSession, label: str) -> None:
    assert hsm._session is not None
    private = hsm._handle(PyKCS11.CKO_PRIVATE_KEY, label)
    public = hsm._handle(PyKCS11.CKO_PUBLIC_KEY, label)
    names = [PyKCS11.CKA_EXTRACTABLE, PyKCS11.CKA_SENSITIVE, PyKCS11.CKA_DECRYPT,
             PyKCS11.CKA_UNWRAP, PyKCS11.CKA_DERIVE, PyKCS11.CKA_SIGN, PyKCS11.CKA_PRIVATE,
             PyKCS11.CKA_TOKEN]
    values = dict(zip(names, hsm._session.getAttributeValue(private, names)))
    assert values == {PyKCS11.CKA_EXTRACTABLE: False, PyKCS11.CKA_SENSITIVE: True,
                      PyKCS11.CKA_DECRYPT: False, PyKCS11.CKA_UNWRAP: False,
                      PyKCS11.CKA_DERIVE: False, PyKCS11.CKA_SIGN: True,
                      PyKCS11.CKA_PRIVATE: True, PyKCS11.CKA_TOKEN: True}
    ids = [bytes(hsm._session.getAttributeValue(handle, [PyKCS11.CKA_ID], True)[0])
           for handle in (private, public)]
    assert ids[0] and ids[0] == ids[1]
    assert hsm._session.getAttributeValue(public, [PyKCS11.CKA_VERIFY])[0] is True
    with pytest.raises(TypeError):
        hsm.private_key(label).private_bytes(serialization.Encoding.PEM,
                                             serialization.PrivateFormat.PKCS8,
                                             serialization.NoEncryption())


# -- signing ---------------------------------------------------------------------------

@pytest.mark.parametrize("mechanism", MECHANISMS)
def test_every_mechanism_signs_and_verifies(hsm: HsmSession, mechanism: str) -> None:
    label = _key_for(mechanism)
    data = b"to-be-signed " + mechanism.encode() * 50
    before = hsm.signatures
    signature = hsm.sign(label, mechanism, data)
    assert hsm.signatures == before + 1
    _verify_independently(hsm.public_key(label), mechanism, signature, data)
    verify_signature(hsm.public_key(label), mechanism, signature, data)
    with pytest.raises(InvalidSignature):
        _verify_independently(hsm.public_key(label), mechanism, signature, data + b"!")


def test_unknown_or_mismatched_mechanism_is_refused(hsm: HsmSession) -> None:
    with pytest.raises(HsmMechanismUnsupported):
        hsm.sign(RSA_KEY, "md5-rsa-pkcs1", b"data")
    # SoftHSM would accept CKM_ECDSA on an RSA key and return an empty signature.
    with pytest.raises(HsmMechanismUnsupported):
        hsm.sign(RSA_KEY, "sha256-ecdsa", b"data")
    with pytest.raises(HsmMechanismUnsupported):
        hsm.sign(P256_KEY, "sha256-rsa-pss", b"data")
    assert hsm.sign(RSA_KEY, "sha256-rsa-pkcs1", b"data")  # the session is still usable


def test_mechanism_for() -> None:
    rsa_info = {"type": "rsa", "bits": 2048, "curve": None}
    ec_info = {"type": "ec", "bits": 256, "curve": "secp256r1"}
    assert mechanism_for(rsa_info, "sha256") == "sha256-rsa-pkcs1"
    assert mechanism_for(rsa_info, "sha512", pss=True) == "sha512-rsa-pss"
    assert mechanism_for(ec_info, "sha384") == "sha384-ecdsa"
    with pytest.raises(HsmMechanismUnsupported):
        mechanism_for(ec_info, "sha256", pss=True)
    with pytest.raises(HsmMechanismUnsupported):
        mechanism_for(rsa_info, "sha1")


def test_health_makes_a_real_signature(hsm: HsmSession) -> None:
    report = hsm.health(P256_KEY, "sha256-ecdsa")
    assert report["ok"] is True and report["logged_in"] is True
    assert report["token"] == TOKEN and report["mechanism"] == "sha256-ecdsa"
    assert report["test_signature_ms"] > 0


# -- cryptography adapters -------------------------------------------------------------

def _self_signed(key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey,
                 algorithm: hashes.HashAlgorithm,
                 rsa_padding: padding.AsymmetricPadding | None = None) -> x509.Certificate:
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HSM test root")])
    now = datetime.datetime.now(datetime.timezone.utc)
    public = key.public_key()
    builder = (x509.CertificateBuilder()
               .subject_name(name).issuer_name(name).public_key(public)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - datetime.timedelta(minutes=1))
               .not_valid_after(now + datetime.timedelta(days=1))
               .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True,
                                            crl_sign=True, encipher_only=False,
                                            decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public),
                              critical=False))
    return builder.sign(key, algorithm, rsa_padding=rsa_padding)


def _openssl_verify(cert: x509.Certificate, directory: Path) -> str:
    path = directory / "cert.pem"
    path.write_bytes(cert.public_bytes(serialization.Encoding.PEM))
    result = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", str(path),
                             str(path)], capture_output=True, text=True, check=False)
    return result.stdout + result.stderr


@pytest.mark.parametrize("label, algorithm, pss", [
    (RSA_KEY, hashes.SHA256(), False),
    (RSA_KEY, hashes.SHA384(), True),
    (P256_KEY, hashes.SHA256(), False),
    (P384_KEY, hashes.SHA384(), False),
])
def test_certificate_signed_on_the_token_passes_openssl_verify(
        hsm: HsmSession, tmp_path: Path, label: str, algorithm: hashes.HashAlgorithm,
        pss: bool) -> None:
    key = hsm.private_key(label, algorithm.name)
    rsa_padding = padding.PSS(padding.MGF1(algorithm), padding.PSS.DIGEST_LENGTH) if pss \
        else None
    cert = _self_signed(key, algorithm, rsa_padding)
    cert.verify_directly_issued_by(cert)
    assert ": OK" in _openssl_verify(cert, tmp_path)


def test_crl_signed_on_the_token_verifies(hsm: HsmSession) -> None:
    key = hsm.private_key(P256_KEY)
    now = datetime.datetime.now(datetime.timezone.utc)
    revoked = [x509.RevokedCertificateBuilder().serial_number(n).revocation_date(now).build()
               for n in (1, 2, 3)]
    crl = (x509.CertificateRevocationListBuilder(revoked_certificates=revoked)
           .issuer_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "HSM test")]))
           .last_update(now).next_update(now + datetime.timedelta(days=7))
           .sign(key, hashes.SHA256()))
    assert crl.is_signature_valid(hsm.public_key(P256_KEY))


def test_adapters_are_real_cryptography_keys(hsm: HsmSession) -> None:
    rsa_key, ec_key = hsm.private_key(RSA_KEY), hsm.private_key(P384_KEY, "sha384")
    assert isinstance(rsa_key, HsmRsaPrivateKey) and isinstance(rsa_key, rsa.RSAPrivateKey)
    assert isinstance(ec_key, HsmEcPrivateKey)
    assert isinstance(ec_key, ec.EllipticCurvePrivateKey)
    assert rsa_key.key_size == 2048 and ec_key.key_size == 384
    assert isinstance(ec_key.curve, ec.SECP384R1)
    with pytest.raises(ValueError):  # the token's PSS salt is the digest length
        rsa_key.sign(b"data", padding.PSS(padding.MGF1(hashes.SHA256()),
                                          padding.PSS.MAX_LENGTH), hashes.SHA256())
    with pytest.raises(TypeError):  # a digest alone cannot be hashed on the token
        rsa_key.sign(b"\0" * 32, padding.PKCS1v15(), Prehashed(hashes.SHA256()))
    with pytest.raises(NotImplementedError):
        ec_key.exchange(ec.ECDH(), ec_key.public_key())
    with pytest.raises(HsmMechanismUnsupported):
        hsm.private_key(RSA_KEY, "md5")


# -- failures and recovery -------------------------------------------------------------

def test_recovers_after_all_sessions_were_closed(hsm: HsmSession) -> None:
    hsm.sign(RSA_KEY, "sha256-rsa-pkcs1", b"warm the handle cache")
    before = hsm.recoveries
    hsm._lib.closeAllSessions(hsm._slot)
    signature = hsm.sign(RSA_KEY, "sha256-rsa-pkcs1", b"data")
    _verify_independently(hsm.public_key(RSA_KEY), "sha256-rsa-pkcs1", signature, b"data")
    assert hsm.recoveries == before + 1
    assert hsm.last_error is not None and "CKR_SESSION_HANDLE_INVALID" in hsm.last_error


def test_recovers_after_a_logout_from_under_it(hsm: HsmSession) -> None:
    hsm.sign(P384_KEY, "sha384-ecdsa", b"warm the handle cache")
    before = hsm.recoveries
    hsm._session.logout()
    signature = hsm.sign(P384_KEY, "sha384-ecdsa", b"data")
    _verify_independently(hsm.public_key(P384_KEY), "sha384-ecdsa", signature, b"data")
    assert hsm.recoveries == before + 1
    assert hsm.logged_in()


def test_logout_does_not_make_keys_look_missing(hsm: HsmSession) -> None:
    # Private objects are invisible while logged out: an uncached lookup must log in
    # again rather than report the key as missing.
    hsm._session.logout()
    assert hsm.has_key(RSA_KEY)
    hsm._session.logout()
    hsm._forget_handles()
    assert hsm.sign(RSA_KEY, "sha256-rsa-pkcs1", b"data")


def test_a_key_deleted_under_a_cached_handle_is_key_not_found(hsm: HsmSession) -> None:
    hsm.generate_ec_key("doomed", "secp256r1")
    hsm.sign("doomed", "sha256-ecdsa", b"cache the handle")
    for object_class in (PyKCS11.CKO_PRIVATE_KEY, PyKCS11.CKO_PUBLIC_KEY):
        hsm._session.destroyObject(hsm._handle(object_class, "doomed"))
    with pytest.raises(HsmKeyNotFound):
        hsm.sign("doomed", "sha256-ecdsa", b"data")
    assert not hsm.has_key("doomed")


def test_wrong_pin_is_login_failed_without_the_pin(hsm: HsmSession) -> None:
    # Login belongs to the process: while `hsm` is logged in, C_Login answers
    # CKR_USER_ALREADY_LOGGED_IN without checking any PIN. Log out to test the PIN.
    hsm._session.logout()
    wrong = HsmSession(SOFTHSM_MODULE, TOKEN, WRONG_PIN)
    with pytest.raises(HsmLoginFailed) as caught:
        wrong.open()
    assert caught.value.code == "hsm_login_failed"
    assert "PIN" in str(caught.value) and WRONG_PIN not in str(caught.value)
    assert WRONG_PIN not in repr(wrong) and WRONG_PIN not in (wrong.last_error or "")
    assert hsm.sign(RSA_KEY, "sha256-rsa-pss", b"data")  # hsm logs in again


def test_unknown_token_is_token_not_found(hsm: HsmSession) -> None:
    missing = HsmSession(SOFTHSM_MODULE, "no-such-token", PIN)
    with pytest.raises(HsmTokenNotFound) as caught:
        missing.open()
    assert caught.value.code == "hsm_token_not_found" and PIN not in str(caught.value)
    # Looking again re-initialised the library, which may reuse handle numbers: the
    # other session must start over, not sign through a stale handle.
    signature = hsm.sign(P384_KEY, "sha384-ecdsa", b"data")
    _verify_independently(hsm.public_key(P384_KEY), "sha384-ecdsa", signature, b"data")


def test_two_sessions_in_one_process_share_the_login(hsm: HsmSession) -> None:
    with HsmSession(SOFTHSM_MODULE, TOKEN, PIN) as second:
        for session in (hsm, second, hsm):
            signature = session.sign(RSA_KEY, "sha512-rsa-pss", b"data")
            _verify_independently(hsm.public_key(RSA_KEY), "sha512-rsa-pss", signature,
                                  b"data")
    assert not second.is_open and hsm.sign(P256_KEY, "sha256-ecdsa", b"after close")


def test_unknown_key_is_key_not_found(hsm: HsmSession) -> None:
    with pytest.raises(HsmKeyNotFound) as caught:
        hsm.sign("no-such-key", "sha256-rsa-pkcs1", b"data")
    assert caught.value.code == "hsm_key_not_found"
    with pytest.raises(HsmKeyNotFound):
        hsm.public_key("no-such-key")
    with pytest.raises(HsmKeyNotFound):
        hsm.health("no-such-key", "sha256-ecdsa")


def test_unloadable_module_is_unavailable(softhsm: dict[str, str]) -> None:
    with pytest.raises(HsmUnavailable) as caught:
        HsmSession("/nonexistent/libpkcs11.so", TOKEN, PIN).open()
    assert caught.value.code == "hsm_unavailable" and PIN not in str(caught.value)


def test_no_pin_in_repr_or_errors(hsm: HsmSession) -> None:
    assert PIN not in repr(hsm) and PIN not in (hsm.last_error or "")
