"""An RSA "key" that only stands in for the issuer's while cryptography builds a TBS.

cryptography's builders take a TBS only from a signed result, and the Hsm actor makes the
real signature afterwards (docs/decisions/0008). For an RSA issuer with PKCS#1 v1.5, the
TBS and the signatureAlgorithm depend on the key's type and the hash only, and the builder
asks the key for nothing but `sign()` (measured with cryptography 50: not `public_key`, not
`key_size`). So instead of a generated RSA key that really signs (RSA-4096: ~1.7 ms per
certificate and ~1 s of key generation per process), this stand-in returns as many zero
bytes as the issuer's signature would have: the throwaway certificate that is linted then
has a signature value of the real length. tests/unit/test_placeholder_key.py checks that
the TBS is byte for byte the one a real key of that size gives, and the lint the same.

It can sign nothing else: every other method of a private key raises.
"""
from __future__ import annotations

from typing import Any, NoReturn

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import rsa
from cryptography.hazmat.primitives.asymmetric.padding import PKCS1v15


class PlaceholderRsaKey(rsa.RSAPrivateKey):
    """Stands in for an RSA issuer key of `bits` bits while a TBS is built."""

    def __init__(self, bits: int) -> None:
        self._bits = bits

    @property
    def key_size(self) -> int:
        return self._bits

    def sign(self, data: bytes, padding: Any, algorithm: Any) -> bytes:
        if not isinstance(padding, PKCS1v15) or not isinstance(algorithm, hashes.HashAlgorithm):
            # A padding whose encoding depends on the key (PSS salt length) is not handled.
            raise ValueError("the placeholder RSA key stands in for PKCS#1 v1.5 signatures only")
        return bytes((self._bits + 7) // 8)

    def _refuse(self, *args: Any, **kwargs: Any) -> NoReturn:
        raise NotImplementedError("a placeholder key stands in for the issuer's only while a TBS is built")

    def public_key(self) -> rsa.RSAPublicKey:
        self._refuse()

    def decrypt(self, ciphertext: bytes, padding: Any) -> bytes:
        self._refuse()

    def private_numbers(self) -> rsa.RSAPrivateNumbers:
        self._refuse()

    def private_bytes(self, encoding: Any, format: Any, encryption_algorithm: Any) -> bytes:
        self._refuse()

    def __copy__(self) -> PlaceholderRsaKey:
        return self

    def __deepcopy__(self, memo: dict[int, object]) -> PlaceholderRsaKey:
        return self
