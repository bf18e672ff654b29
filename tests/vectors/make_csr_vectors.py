"""Write the generated odd CSRs of tests/vectors/ (run once; the files are stored, see README.md).

    .venv/bin/python tests/vectors/make_csr_vectors.py tests/vectors

cryptography's CSR builder makes only well-formed version-0 requests with a modern hash, so
the odd ones are put together here by hand: CertificationRequestInfo DER-encoded with the
helpers of core.x509.certificate, then signed. Each is validly signed where its name does not say
otherwise, so a refusal can only come from the property the file is named after.
"""
from __future__ import annotations

import sys
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import dsa, rsa
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from core.x509.certificate import der_tlv

SUBJECT = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, "odd.example.org")]).public_bytes()
# DigestInfo prefixes of RFC 8017 9.2 (EMSA-PKCS1-v1_5), by hash.
DIGEST_INFO = {"sha256": bytes.fromhex("3031300d060960864801650304020105000420"),
               "md5": bytes.fromhex("3020300c06082a864886f70d020505000410"),
               "sha1": bytes.fromhex("3021300906052b0e03021a05000414")}
RSA_SIGNATURE_OIDS = {"sha256": "1.2.840.113549.1.1.11", "sha1": "1.2.840.113549.1.1.5",
                      "md5": "1.2.840.113549.1.1.4"}


def der_integer(value: int) -> bytes:
    return der_tlv(0x02, value.to_bytes(value.bit_length() // 8 + 1, "big"))


def der_oid(dotted: str) -> bytes:
    first, second, *rest = map(int, dotted.split("."))
    body = bytearray([40 * first + second])
    for arc in rest:
        chunk = [arc & 0x7F]
        while arc > 0x7F:
            arc >>= 7
            chunk.append(0x80 | (arc & 0x7F))
        body += bytes(reversed(chunk))
    return der_tlv(0x06, bytes(body))


def algorithm(dotted: str, null_parameters: bool = True) -> bytes:
    return der_tlv(0x30, der_oid(dotted) + (b"\x05\x00" if null_parameters else b""))


def rsa_spki(n: int, e: int) -> bytes:
    key = der_tlv(0x30, der_integer(n) + der_integer(e))
    return der_tlv(0x30, algorithm("1.2.840.113549.1.1.1") + der_tlv(0x03, b"\x00" + key))


def request_info(spki: bytes, version: int = 0) -> bytes:
    return der_tlv(0x30, der_integer(version) + SUBJECT + spki + b"\xa0\x00")


def csr(info: bytes, signature_algorithm: bytes, signature: bytes) -> bytes:
    return der_tlv(0x30, info + signature_algorithm + der_tlv(0x03, b"\x00" + signature))


def emsa_pkcs1(message: bytes, hash_name: str, size: int) -> int:
    digest = hashes.Hash({"sha256": hashes.SHA256(), "sha1": hashes.SHA1(), "md5": hashes.MD5()}[hash_name])
    digest.update(message)
    t = DIGEST_INFO[hash_name] + digest.finalize()
    return int.from_bytes(b"\x00\x01" + b"\xff" * (size - len(t) - 3) + b"\x00" + t, "big")


def rsa_signed(key: rsa.RSAPrivateKey, info: bytes, hash_name: str) -> bytes:
    """Raw RSA (m^d mod n), so any hash can be used whatever the backend allows."""
    numbers, size = key.private_numbers(), key.key_size // 8
    signature = pow(emsa_pkcs1(info, hash_name, size), numbers.d, numbers.public_numbers.n)
    return csr(info, algorithm(RSA_SIGNATURE_OIDS[hash_name]), signature.to_bytes(size, "big"))


def small_exponent_csr(e: int) -> bytes:
    """RSA with e = 1 or 2, validly signed: e = 1 makes the signature the padded digest itself;
    e = 2 (Rabin) takes a square root modulo n = p*q with p, q = 3 mod 4, drawing new primes
    until the padded digest is a square modulo both."""
    while True:
        p, q = (_prime_3_mod_4() for _ in range(2))
        n = p * q
        info = request_info(rsa_spki(n, e))
        m = emsa_pkcs1(info, "sha256", (n.bit_length() + 7) // 8)
        if e == 1:
            return csr(info, algorithm(RSA_SIGNATURE_OIDS["sha256"]), m.to_bytes((n.bit_length() + 7) // 8, "big"))
        if pow(m, (p - 1) // 2, p) == 1 and pow(m, (q - 1) // 2, q) == 1:
            rp, rq = pow(m, (p + 1) // 4, p), pow(m, (q + 1) // 4, q)
            root = (rp * q * pow(q, -1, p) + rq * p * pow(p, -1, q)) % n
            assert pow(root, 2, n) == m
            return csr(info, algorithm(RSA_SIGNATURE_OIDS["sha256"]), root.to_bytes((n.bit_length() + 7) // 8, "big"))


def _prime_3_mod_4() -> int:
    while True:
        p = rsa.generate_private_key(65537, 2048).private_numbers().p
        if p % 4 == 3 and p.bit_length() == 1024:
            return p


def main(folder: Path) -> None:
    key = rsa.generate_private_key(65537, 2048)
    spki = key.public_key().public_bytes(Encoding.DER, PublicFormat.SubjectPublicKeyInfo)
    files = {f"csr-version{v}.der": rsa_signed(key, request_info(spki, v), "sha256") for v in (1, 2)}
    files.update({f"csr-rsa-{h}.der": rsa_signed(key, request_info(spki), h) for h in ("sha1", "md5")})
    files.update({f"csr-rsa-e{e}.der": small_exponent_csr(e) for e in (1, 2)})
    dsa_key = dsa.generate_private_key(2048)
    files["csr-dsa-sha256.der"] = (x509.CertificateSigningRequestBuilder()
                                   .subject_name(x509.Name.from_rfc4514_string("CN=odd.example.org"))
                                   .sign(dsa_key, hashes.SHA256()).public_bytes(Encoding.DER))
    for name, data in files.items():
        (folder / name).write_bytes(data)
        print(name, len(data))


if __name__ == "__main__":
    main(Path(sys.argv[1]))
