"""Nested values decoded once (core/x509/lint_cache.py) give exactly pkilint's results.

The linter the X509Signer runs (indexed walk and the cache) lints the corpus
(tests/support/lint_corpus.py) twice, forwards and backwards, so that the second time most
nested values come from the cache, filled by other certificates; every ValidationResult must
equal pkilint's own walk without the cache."""
from __future__ import annotations

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.x509.oid import ExtensionOID, NameOID

from core.x509 import certificate as xb
from core.x509.lint_cache import DecodedValues
from tests.support.lint_corpus import CORPUS, EC_KEY, ISSUER_NAME, NOW, everything, name


@pytest.fixture(scope="module")
def linters():
    patch = pytest.MonkeyPatch()
    patch.setattr(xb, "index_validators", lambda container: None)
    plain = xb.PkixLinter()
    patch.undo()
    return plain, xb.PkixLinter(DecodedValues())


def decoders(linter: xb.PkixLinter) -> list:
    from pkilint.validation import DecodingValidator, ValidatorContainer
    found, pending = [], [linter._validator]
    while pending:
        current = pending.pop()
        for validator in current.validators:
            if isinstance(validator, ValidatorContainer):
                pending.append(validator)
            elif isinstance(validator, DecodingValidator):
                found.append(validator.decode_func)
    return found


def test_the_plain_linter_decodes_as_pkilint_does(linters):
    plain, cached = linters
    assert plain.decoded_values is None
    assert not any("decode_value" in vars(decoder) for decoder in decoders(plain))
    assert any("decode_value" in vars(decoder) for decoder in decoders(cached))


def test_decoders_with_their_own_decode_value_are_left_alone(linters):
    from pkilint.pkix.certificate.certificate_key import SubjectPublicKeyDecoder
    _, cached = linters
    spki = [decoder for decoder in decoders(cached) if isinstance(decoder, SubjectPublicKeyDecoder)]
    assert spki and not any("decode_value" in vars(decoder) for decoder in spki)


@pytest.mark.parametrize("order", ["forwards", "backwards"])
def test_cached_lint_gives_pkilints_results(linters, order):
    plain, cached = linters
    corpus = CORPUS if order == "forwards" else CORPUS[::-1]
    for label, der in corpus:
        expected = everything(plain, der)
        assert everything(cached, der) == expected, label
        assert cached.lint(der, "DEBUG") == plain.lint(der, "DEBUG"), label


def test_values_the_same_in_every_certificate_come_from_the_cache():
    linter = xb.PkixLinter(DecodedValues())
    label, der = next((label, der) for label, der in CORPUS if label == "server-org")
    linter.lint(der)
    first_misses, first_hits = linter.decoded_values.misses, linter.decoded_values.hits
    linter.lint(der)
    assert first_misses >= 8  # issuer name attributes, subject attributes, extensions
    assert linter.decoded_values.misses == first_misses
    assert linter.decoded_values.hits - first_hits == first_misses + first_hits


def test_a_value_that_fails_to_decode_is_never_cached():
    """A key usage extension whose value is not a BIT STRING: pkilint's FATAL decoding
    finding every time, and nothing of it kept."""
    builder = (x509.CertificateBuilder().subject_name(name((NameOID.COMMON_NAME, "bad.example.org")))
               .issuer_name(ISSUER_NAME).public_key(EC_KEY.public_key()).serial_number(99)
               .not_valid_before(NOW).not_valid_after(NOW.replace(year=NOW.year + 1))
               .add_extension(x509.UnrecognizedExtension(ExtensionOID.KEY_USAGE, b"\x05\x00"), True))
    der = builder.sign(EC_KEY, hashes.SHA256()).public_bytes(serialization.Encoding.DER)
    plain, cached = xb.PkixLinter(), xb.PkixLinter(DecodedValues())
    expected = plain.lint(der, "DEBUG")
    assert any(f.code == "itu.invalid_asn1_syntax" for f in expected)
    assert cached.lint(der, "DEBUG") == expected
    held = len(cached.decoded_values)
    assert cached.lint(der, "DEBUG") == expected
    assert b"\x05\x00" not in {substrate for _, substrate in cached.decoded_values._values}
    assert len(cached.decoded_values) == held


def test_the_cache_is_bounded():
    values = DecodedValues(capacity=5, max_bytes=64)
    linter = xb.PkixLinter(values)
    for _, der in CORPUS:
        linter.lint(der)
    assert len(values) == 5
    assert all(len(substrate) <= 64 for _, substrate in values._values)
