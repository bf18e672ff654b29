"""The placeholder RSA key (core/x509/placeholder_key.py) gives cryptography's builder the TBS a
real key of the issuer's size gives, and a throwaway certificate that lints the same."""
from __future__ import annotations

import datetime

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import padding, rsa
from cryptography.x509.oid import NameOID

from core.x509 import certificate as xb
from core.x509.placeholder_key import PlaceholderRsaKey

NOW = datetime.datetime(2026, 5, 4, 12, 0, tzinfo=datetime.timezone.utc)
SUBJECT_KEY = rsa.generate_private_key(65537, 2048)
ISSUER = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "Test Root")])


@pytest.fixture(scope="module")
def real_keys():
    return {bits: rsa.generate_private_key(65537, bits) for bits in (2048, 3072, 4096)}


def builder() -> x509.CertificateBuilder:
    return (x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "www.example.org")]))
            .issuer_name(ISSUER).public_key(SUBJECT_KEY.public_key()).serial_number(xb.new_serial())
            .not_valid_before(NOW).not_valid_after(NOW + datetime.timedelta(days=90))
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), True)
            .add_extension(x509.SubjectAlternativeName([x509.DNSName("www.example.org")]), False))


@pytest.mark.parametrize("bits", [2048, 3072, 4096])
@pytest.mark.parametrize("hash_name", ["sha256", "sha384", "sha512"])
def test_same_tbs_and_algorithm_as_a_real_key(real_keys, bits, hash_name):
    built = builder()
    real = built.sign(real_keys[bits], xb.hash_algorithm(hash_name))
    stand_in = built.sign(PlaceholderRsaKey(bits), xb.hash_algorithm(hash_name))
    real_tbs, real_algorithm, real_signature = xb.split_signed(real.public_bytes(serialization.Encoding.DER))
    tbs, algorithm, signature = xb.split_signed(stand_in.public_bytes(serialization.Encoding.DER))
    assert (tbs, algorithm) == (real_tbs, real_algorithm)
    assert len(signature) == len(real_signature)  # the BIT STRING of a real signature's length
    assert stand_in.signature == bytes(bits // 8)


def test_the_throwaway_certificate_lints_as_with_a_real_key(real_keys):
    linter = xb.PkixLinter()
    built = builder()
    for bits, key in real_keys.items():
        real = built.sign(key, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        stand_in = built.sign(PlaceholderRsaKey(bits), hashes.SHA256()).public_bytes(serialization.Encoding.DER)
        assert linter.lint(stand_in, "DEBUG") == linter.lint(real, "DEBUG")


def test_throwaway_key_of_an_rsa_issuer_is_the_placeholder_and_an_ec_one_a_real_key():
    assert isinstance(xb.throwaway_key({"type": "rsa", "bits": 4096, "curve": None}), PlaceholderRsaKey)
    ec_key = xb.throwaway_key({"type": "ec", "bits": 256, "curve": "secp256r1"})
    assert not isinstance(ec_key, PlaceholderRsaKey) and ec_key.curve.name == "secp256r1"


def test_it_signs_nothing_but_pkcs1_v15_and_gives_nothing_away():
    key = PlaceholderRsaKey(2048)
    pss = padding.PSS(padding.MGF1(hashes.SHA256()), padding.PSS.DIGEST_LENGTH)
    with pytest.raises(ValueError, match="PKCS#1 v1.5"):
        key.sign(b"data", pss, hashes.SHA256())
    for refused in (key.public_key, key.private_numbers, lambda: key.decrypt(b"x", padding.PKCS1v15()),
                    lambda: key.private_bytes(serialization.Encoding.DER, serialization.PrivateFormat.PKCS8,
                                              serialization.NoEncryption())):
        with pytest.raises(NotImplementedError):
            refused()
