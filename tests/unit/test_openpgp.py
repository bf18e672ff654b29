"""core.openpgp.certify against real GnuPG: the HSM is simulated with in-memory cryptography keys.

Every gpg call gets its own --homedir under /tmp (short paths: gpg-agent sockets must fit
108 bytes), so nothing touches the user's keyring; homes that started an agent kill it.
"""
from __future__ import annotations

import re
import shutil
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa

from core.openpgp import certify as openpgp
from core.openpgp.certify import (
    MalformedPacket,
    MultiplePrimaryKeys,
    OversizedInput,
    Packet,
    SecretKeyMaterial,
    UnsupportedKey,
)

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")

DAY = 86400
CERTIFICATION_LIFETIME = 366 * DAY
POLICY_URL = "http://www.cacert.org/cps.php"
CA_USER_ID = b"CAcert OpenPGP test CA <gpg@cacert.example>"
NOW = int(time.time())
# gpg marks a signature older than the key that made it, or than the key it certifies, as
# "[Time conflict]": the CA key predates the tests, certifications are made after the user keys.
CA_CREATED = NOW - 10 * DAY
HASHES = {"sha256": hashes.SHA256, "sha384": hashes.SHA384, "sha512": hashes.SHA512}


# --- A simulated HSM -----------------------------------------------------------------------


def hsm_signer(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey) -> openpgp.Signer:
    """Signs the whole data like the HSM actor's mechanisms: hash-and-sign, DER for ECDSA."""

    def sign(data: bytes, mechanism: str) -> bytes:
        hash_name, _, scheme = mechanism.partition("-")
        algorithm = HASHES[hash_name]()
        if scheme == "rsa-pkcs1":
            return private_key.sign(data, padding.PKCS1v15(), algorithm)
        if scheme == "ecdsa":
            return private_key.sign(data, ec.ECDSA(algorithm))
        raise ValueError(f"unknown mechanism {mechanism}")

    return sign


@dataclass(frozen=True)
class CaKey:
    private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey
    block: bytes  # binary transferable public key
    key_body: bytes
    fingerprint: bytes
    hash_name: str

    @property
    def key_id_hex(self) -> str:
        return openpgp.key_id(self.fingerprint).hex().upper()

    def certify(self, key: openpgp.TransferableKey, user_id: bytes, created: int) -> bytes:
        prepared = openpgp.prepare_certification(
            self.key_body, self.key_body[5], key.primary_key, user_id,
            openpgp.SIG_GENERIC_CERTIFICATION, created, CERTIFICATION_LIFETIME,
            self.hash_name, POLICY_URL, self.fingerprint,
        )  # fmt: skip
        signature = hsm_signer(self.private_key)(prepared.hashed_data, prepared.mechanism)
        return openpgp.assemble_signature_packet(prepared, signature)


def make_ca(private_key: rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey, hash_name: str) -> CaKey:
    block = openpgp.build_public_key_block(
        private_key.public_key(), CA_CREATED, CA_USER_ID, hsm_signer(private_key), hash_name=hash_name
    )
    key_body = openpgp.parse_packets(block)[0].body
    return CaKey(private_key, block, key_body, openpgp.fingerprint_v4(key_body), hash_name)


CA_FACTORIES = {
    "rsa2048": lambda: make_ca(rsa.generate_private_key(65537, 2048), "sha256"),
    "rsa3072": lambda: make_ca(rsa.generate_private_key(65537, 3072), "sha512"),
    "p256": lambda: make_ca(ec.generate_private_key(ec.SECP256R1()), "sha256"),
    "p384": lambda: make_ca(ec.generate_private_key(ec.SECP384R1()), "sha384"),
}


@pytest.fixture(scope="module")
def ca_keys() -> dict[str, CaKey]:
    return {name: factory() for name, factory in CA_FACTORIES.items()}


# --- GnuPG ---------------------------------------------------------------------------------


class GpgHome:
    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="gpgtest-", dir="/tmp"))

    def run(self, *args: str, stdin: bytes | None = None) -> bytes:
        command = ["gpg", "--homedir", str(self.path), "--batch", "--no-tty", "--trust-model", "always"]
        result = subprocess.run(
            [*command, *args], input=stdin, capture_output=True, check=False, timeout=120
        )
        if result.returncode != 0:
            raise AssertionError(f"gpg {args} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def run_unlocked(self, *args: str) -> bytes:
        """A command that needs the secret key, which our test keys protect with ''."""
        return self.run("--pinentry-mode", "loopback", "--passphrase", "", *args)

    def import_keys(self, *blocks: bytes) -> None:
        for block in blocks:
            self.run("--import", stdin=block)

    def colon_records(self, *args: str) -> list[list[str]]:
        lines = self.run("--with-colons", "--fixed-list-mode", *args).decode().splitlines()
        return [line.split(":") for line in lines]

    def fingerprint_of(self, user_id: str) -> str:
        return next(r[9] for r in self.colon_records("--list-keys", user_id) if r[0] == "fpr")

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.path), "--kill", "all"], check=False)
        shutil.rmtree(self.path, ignore_errors=True)


@pytest.fixture
def gpg_home():
    home = GpgHome()
    yield home
    home.close()


@dataclass(frozen=True)
class SignatureRecord:
    """One `sig` record of `gpg --with-colons --check-sigs` (doc/DETAILS in GnuPG)."""

    validity: str  # "!" good, "-" bad, "?" no key, "%" error
    key_id: str
    created: int
    expires: str
    sig_class: str


def signatures_by_user_id(records: list[list[str]]) -> dict[str, list[SignatureRecord]]:
    by_user_id: dict[str, list[SignatureRecord]] = {}
    current: list[SignatureRecord] | None = None
    for record in records:
        if record[0] == "uid":
            current = by_user_id.setdefault(record[9], [])
        elif record[0] in ("pub", "sub"):
            current = None
        elif record[0] == "sig" and current is not None:
            current.append(SignatureRecord(record[1], record[4], int(record[5]), record[6], record[10]))
    return by_user_id


@dataclass(frozen=True)
class UserKey:
    user_ids: tuple[bytes, ...]
    public: bytes  # gpg --export
    secret: bytes  # gpg --export-secret-keys


USER_KEY_SPECS = {
    # name: (algorithm for --quick-gen-key, encryption subkey or None, user ids)
    "alice": ("rsa3072", None, ("Alice <alice@example.org>", "Alice Work <alice@work.example>")),
    "bob": ("ed25519", "cv25519", ("Bob <bob@example.org>", "Bob Work <bob@work.example>")),
    "carol": ("nistp256", "nistp256", ("Carol <carol@example.org>", "C <c@example.net>", "C3 <c@x.example>")),
}


@pytest.fixture(scope="module")
def user_keys() -> dict[str, UserKey]:
    home = GpgHome()
    try:
        keys = {}
        for name, (algorithm, subkey_algorithm, user_ids) in USER_KEY_SPECS.items():
            home.run_unlocked("--quick-gen-key", user_ids[0], algorithm)
            fingerprint = home.fingerprint_of(user_ids[0])
            if subkey_algorithm:
                home.run_unlocked("--quick-add-key", fingerprint, subkey_algorithm, "encr")
            for extra_user_id in user_ids[1:]:
                home.run_unlocked("--quick-add-uid", fingerprint, extra_user_id)
            keys[name] = UserKey(
                tuple(uid.encode() for uid in user_ids),
                home.run("--export", fingerprint),
                home.run_unlocked("--export-secret-keys", fingerprint),
            )
        return keys
    finally:
        home.close()


# --- The CA key ----------------------------------------------------------------------------


@pytest.mark.parametrize("ca_name", CA_FACTORIES)
def test_ca_public_key_block_has_a_good_self_signature(ca_keys, gpg_home, ca_name):
    ca = ca_keys[ca_name]
    gpg_home.import_keys(ca.block)

    fingerprints = [r[9] for r in gpg_home.colon_records("--list-keys") if r[0] == "fpr"]
    assert fingerprints == [ca.fingerprint.hex().upper()]
    human = gpg_home.run("--check-sigs").decode()
    assert re.search(rf"^sig!3\s+{ca.key_id_hex}\s", human, re.MULTILINE), human
    signatures = signatures_by_user_id(gpg_home.colon_records("--check-sigs"))
    assert signatures == {
        CA_USER_ID.decode(): [SignatureRecord("!", ca.key_id_hex, CA_CREATED, "", "13x")]
    }
    capabilities = next(r[11] for r in gpg_home.colon_records("--list-keys") if r[0] == "pub")
    assert capabilities == "scSC"  # key flags 27: certify + sign


def test_armored_ca_block_imports(ca_keys, gpg_home):
    ca = ca_keys["p256"]
    gpg_home.import_keys(openpgp.armor(ca.block).encode())
    assert gpg_home.run("--export", "--armor").startswith(b"-----BEGIN PGP PUBLIC KEY BLOCK-----")
    assert openpgp.dearmor(gpg_home.run("--export", "--armor")) == gpg_home.run("--export")


def test_default_hash_follows_the_curve():
    private_key = ec.generate_private_key(ec.SECP384R1())
    seen = []

    def sign(data: bytes, mechanism: str) -> bytes:
        seen.append(mechanism)
        return hsm_signer(private_key)(data, mechanism)

    openpgp.build_public_key_block(private_key.public_key(), CA_CREATED, CA_USER_ID, sign)
    assert seen == ["sha384-ecdsa"]


def test_p384_with_sha256_is_refused(ca_keys):
    # gpg 2.2: "ECDSA key ... requires a 384 bit or larger hash (hash is SHA256)"
    ca = ca_keys["p384"]
    with pytest.raises(ValueError, match="384 bits"):
        openpgp.prepare_certification(
            ca.key_body, openpgp.PUBKEY_ECDSA, ca.key_body, b"x", 0x10, NOW, None, "sha256", None,
            ca.fingerprint,
        )  # fmt: skip


def test_unsupported_ca_curve():
    public_key = ec.generate_private_key(ec.SECP521R1()).public_key()
    with pytest.raises(UnsupportedKey):
        openpgp.public_key_packet_body(public_key, NOW)


def test_prepare_refuses_inconsistent_arguments(ca_keys):
    ca, other = ca_keys["rsa2048"], ca_keys["p256"]
    arguments = dict(
        signer_key_body=ca.key_body, signer_algo=openpgp.PUBKEY_RSA, target_key_body=other.key_body,
        user_id=b"u", sig_type=0x10, created=NOW, expires_after_seconds=None, hash_name="sha256",
        policy_url=None, issuer_fpr=ca.fingerprint,
    )  # fmt: skip
    for wrong in (
        {"sig_type": 0x18},
        {"signer_algo": openpgp.PUBKEY_ECDSA},
        {"issuer_fpr": other.fingerprint},
        {"hash_name": "md5"},
        {"expires_after_seconds": 0},
        {"self_signature_extras": True},
    ):
        with pytest.raises(ValueError):
            openpgp.prepare_certification(**{**arguments, **wrong})


def test_prepared_data_is_what_rfc4880_hashes(ca_keys):
    ca = ca_keys["rsa2048"]
    prepared = openpgp.prepare_certification(
        ca.key_body, openpgp.PUBKEY_RSA, ca.key_body, b"uid", 0x10, NOW, 7, "sha256", None,
        ca.fingerprint,
    )  # fmt: skip
    key_part = b"\x99" + len(ca.key_body).to_bytes(2, "big") + ca.key_body
    assert prepared.hashed_data.startswith(key_part + b"\xb4\x00\x00\x00\x03uid\x04\x10\x01\x08")
    assert prepared.hashed_data.endswith(b"\x04\xff" + len(prepared.signed_part).to_bytes(4, "big"))
    assert prepared.mechanism == "sha256-rsa-pkcs1"
    # An RSA signature with leading zero octets is still one MPI of the right value.
    body = openpgp.parse_packets(openpgp.assemble_signature_packet(prepared, b"\x00\x00\x01\x02"))[0].body
    assert body.endswith(prepared.hash_left16 + b"\x00\x09\x01\x02")


# --- Certifying user keys ------------------------------------------------------------------

CERTIFICATION_CASES = [
    ("rsa2048", "alice", (0,)),
    ("p256", "alice", (0, 1)),
    ("rsa3072", "bob", (1,)),
    ("p384", "bob", (0, 1)),
    ("rsa2048", "carol", (0, 2)),
    ("p256", "carol", (1,)),
]


@pytest.mark.parametrize("ca_name, user_name, certified_indexes", CERTIFICATION_CASES)
def test_certified_user_ids_verify_in_gpg(
    ca_keys, user_keys, gpg_home, ca_name, user_name, certified_indexes
):
    ca, user = ca_keys[ca_name], user_keys[user_name]
    key = openpgp.split_transferable_key(user.public)
    certified = {user.user_ids[i] for i in certified_indexes}
    certified_at = int(time.time())
    certifications = {uid: ca.certify(key, uid, certified_at) for uid in certified}
    signed_key = openpgp.insert_certifications(key, certifications)

    gpg_home.import_keys(ca.block, signed_key)
    signatures = signatures_by_user_id(gpg_home.colon_records("--check-sigs", key.fingerprint.hex()))
    assert set(signatures) == {uid.decode() for uid in user.user_ids}
    for user_id in user.user_ids:
        by_ca = [s for s in signatures[user_id.decode()] if s.key_id == ca.key_id_hex]
        expires = str(certified_at + CERTIFICATION_LIFETIME)
        expected = [SignatureRecord("!", ca.key_id_hex, certified_at, expires, "10x")]
        assert by_ca == (expected if user_id in certified else [])
        assert all(s.validity == "!" for s in signatures[user_id.decode()])
    human = gpg_home.run("--check-sigs", key.fingerprint.hex()).decode()
    # "sig!    P    KEYID": P flags the policy URL.
    assert len(re.findall(rf"^sig! +P +{ca.key_id_hex} ", human, re.MULTILINE)) == len(certified)
    listing = gpg_home.run("--list-packets", stdin=signed_key).decode()
    assert listing.count(f"(policy: {POLICY_URL})") == len(certified)


def test_a_tampered_certification_is_bad(ca_keys, user_keys, gpg_home):
    ca, user = ca_keys["p256"], user_keys["alice"]
    key = openpgp.split_transferable_key(user.public)
    certified_at = int(time.time())
    signature = ca.certify(key, user.user_ids[0], certified_at)
    tampered = signature.replace(b"cps.php", b"cps.phx")  # a hashed subpacket
    gpg_home.import_keys(ca.block, openpgp.insert_certifications(key, {user.user_ids[0]: tampered}))
    signatures = signatures_by_user_id(gpg_home.colon_records("--check-sigs", key.fingerprint.hex()))
    by_ca = [s for s in signatures[user.user_ids[0].decode()] if s.key_id == ca.key_id_hex]
    # gpg must call a changed hashed subpacket bad, or the "sig!" results above prove nothing.
    assert [s.validity for s in by_ca] == ["-"]


# --- Taking user keys apart ----------------------------------------------------------------


def test_split_and_reserialise_keeps_every_packet(user_keys):
    for user in user_keys.values():
        key = openpgp.split_transferable_key(user.public)
        assert [c.body for c in key.user_ids] == list(user.user_ids)
        assert all(len(c.signatures) == 1 for c in key.components)
        reserialised = openpgp.insert_certifications(key, {})
        assert openpgp.parse_packets(reserialised) == openpgp.parse_packets(user.public)
    assert len(openpgp.split_transferable_key(user_keys["bob"].public).subkeys) == 1
    assert openpgp.split_transferable_key(user_keys["alice"].public).subkeys == []


def test_insert_refuses_a_user_id_not_on_the_key(ca_keys, user_keys):
    key = openpgp.split_transferable_key(user_keys["alice"].public)
    stranger = b"Mallory <m@example.org>"
    with pytest.raises(ValueError, match="not on this key"):
        openpgp.insert_certifications(key, {stranger: ca_keys["p256"].certify(key, stranger, NOW)})


def test_secret_key_export_is_refused(user_keys):
    with pytest.raises(SecretKeyMaterial) as raised:
        openpgp.split_transferable_key(user_keys["bob"].secret)
    assert raised.value.code == "openpgp_secret_key"


def test_two_public_keys_are_refused(user_keys):
    with pytest.raises(MultiplePrimaryKeys) as raised:
        openpgp.split_transferable_key(user_keys["alice"].public + user_keys["bob"].public)
    assert raised.value.code == "openpgp_multiple_keys"


def test_v3_key_is_refused(user_keys):
    packets = openpgp.parse_packets(user_keys["alice"].public)
    v3 = [Packet(packets[0].tag, b"\x03" + packets[0].body[1:]), *packets[1:]]
    with pytest.raises(UnsupportedKey) as raised:
        openpgp.split_transferable_key(openpgp.serialise_packets(v3))
    assert raised.value.code == "openpgp_unsupported_key"


@pytest.mark.parametrize(
    "packets",
    [
        [Packet(13, b"uid")],  # no primary key first
        [Packet(6, b"")],  # empty key packet
        [Packet(2, b"sig")],
        [Packet(11, b"literal")],  # not part of a key
    ],
)
def test_not_a_transferable_key(packets):
    with pytest.raises(MalformedPacket):
        openpgp.split_transferable_key(openpgp.serialise_packets(packets))


def test_key_without_user_id(user_keys):
    primary = openpgp.parse_packets(user_keys["alice"].public)[0]
    with pytest.raises(MalformedPacket, match="user id"):
        openpgp.split_transferable_key(openpgp.serialise_packets([primary]))


def test_trust_and_marker_packets_are_dropped(user_keys):
    packets = openpgp.parse_packets(user_keys["alice"].public)
    noisy = [Packet(10, b"PGP"), packets[0], Packet(12, b"\x00\x00"), *packets[1:]]
    key = openpgp.split_transferable_key(openpgp.serialise_packets(noisy))
    assert openpgp.parse_packets(openpgp.insert_certifications(key, {})) == packets


# --- Key parsing for policy ----------------------------------------------------------------


def test_public_key_info_of_gpg_keys(user_keys):
    def infos(name: str) -> list[tuple[str, int | None, str | None]]:
        key = openpgp.split_transferable_key(user_keys[name].public)
        bodies = [key.primary_key, *(c.body for c in key.subkeys)]
        return [(i.algorithm_name, i.bits, i.curve_name) for i in map(openpgp.parse_public_key_body, bodies)]

    assert infos("alice") == [("rsa", 3072, None)]
    assert infos("bob") == [("eddsa", 255, "ed25519"), ("ecdh", 255, "cv25519")]
    assert infos("carol") == [("ecdsa", 256, "nistp256"), ("ecdh", 256, "nistp256")]


def integer_key_body(algorithm: int, bit_sizes: list[int]) -> bytes:
    mpis = b"".join(openpgp.encode_mpi((1 << (bits - 1)) | 1) for bits in bit_sizes)
    return b"\x04" + NOW.to_bytes(4, "big") + bytes([algorithm]) + mpis


def test_public_key_info_of_dsa_elgamal_and_unknown_curves():
    dsa = openpgp.parse_public_key_body(integer_key_body(openpgp.PUBKEY_DSA, [2048, 224, 2048, 2048]))
    assert (dsa.algorithm_name, dsa.bits, dsa.created) == ("dsa", 2048, NOW)
    elgamal = openpgp.parse_public_key_body(integer_key_body(openpgp.PUBKEY_ELGAMAL, [3072, 3, 3072]))
    assert (elgamal.algorithm_name, elgamal.bits) == ("elgamal", 3072)
    odd_curve = b"\x04" + NOW.to_bytes(4, "big") + b"\x13\x03\x2b\x00\x01" + openpgp.encode_mpi(4)
    info = openpgp.parse_public_key_body(odd_curve)
    assert (info.algorithm_name, info.curve_oid) == ("ecdsa", b"\x2b\x00\x01")
    assert (info.curve_name, info.bits) == (None, None)  # unknown: the caller's policy decides


@pytest.mark.parametrize(
    "body, error",
    [
        (integer_key_body(99, [256]), UnsupportedKey),  # unknown algorithm
        (b"\x05" + integer_key_body(1, [2048, 17])[1:], UnsupportedKey),  # v5
        (integer_key_body(openpgp.PUBKEY_RSA, [2048]), MalformedPacket),  # e missing
        (integer_key_body(openpgp.PUBKEY_RSA, [2048, 17]) + b"\x00", MalformedPacket),  # trailing
        (b"\x04\x00\x00", MalformedPacket),
        (b"\x04" + NOW.to_bytes(4, "big") + b"\x13\x00", MalformedPacket),  # reserved OID length
    ],
)
def test_public_key_body_errors(body, error):
    with pytest.raises(error):
        openpgp.parse_public_key_body(body)


# --- Packet framing ------------------------------------------------------------------------


@pytest.mark.parametrize("length", [0, 1, 191, 192, 8383, 8384, 70000])
def test_new_format_round_trip(length):
    body = bytes(range(256)) * (length // 256) + bytes(length % 256)
    assert openpgp.parse_packets(openpgp.serialise_packet(13, body)) == [Packet(13, body)]


@pytest.mark.parametrize(
    "encoded",
    [
        b"\xb4\x03abc",  # old format, 1-octet length
        b"\xb5\x00\x03abc",  # 2-octet length
        b"\xb6\x00\x00\x00\x03abc",  # 4-octet length
        b"\xb7abc",  # indeterminate: to the end of the input (4.2.1)
        b"\xcd\xff\x00\x00\x00\x03abc",  # new format, 5-octet length
    ],
)
def test_every_length_form(encoded):
    assert openpgp.parse_packets(encoded) == [Packet(13, b"abc")]


def test_partial_lengths_on_a_data_packet():
    body = bytes(range(256)) * 6 + b"tail"
    last_length = openpgp.encode_length(len(body) - 1024)
    # 0xE9 = partial length 1 << 9: two 512-octet chunks, then a definite length (4.2.2.4)
    encoded = b"\xcb\xe9" + body[:512] + b"\xe9" + body[512:1024] + last_length + body[1024:]
    assert openpgp.parse_packets(encoded) == [Packet(11, body)]


@pytest.mark.parametrize(
    "encoded",
    [
        b"\xc6\xe9" + bytes(512) + b"\x00",  # partial length on a public-key packet
        b"\xcb\xe8" + bytes(256) + b"\x00",  # first partial chunk shorter than 512
        b"\xcb\xe9" + bytes(512),  # partial chunks without the final one
        b"\x34\x03abc",  # bit 7 clear
        b"\xc0\x00",  # reserved tag 0
        b"\xcd",  # header without length
        b"\xcd\xc5",  # two-octet length cut
        b"\xcd\xff\x00\x00",  # five-octet length cut
        b"\xb5\x00",  # old format length cut
        b"\xcd\x05abc",  # body cut
    ],
)
def test_malformed_packets(encoded):
    with pytest.raises(MalformedPacket) as raised:
        openpgp.parse_packets(encoded)
    assert raised.value.code == "openpgp_malformed"


def test_every_truncation_of_a_real_key_is_malformed(user_keys, gpg_home):
    data = user_keys["carol"].public
    listing = gpg_home.run("--list-packets", stdin=data)
    packet_offsets = {int(m) for m in re.findall(rb"^# off=(\d+)", listing, re.MULTILINE)}
    assert len(packet_offsets) == len(openpgp.parse_packets(data))
    for cut in set(range(1, len(data))) - packet_offsets:
        with pytest.raises(MalformedPacket):
            openpgp.split_transferable_key(data[:cut])


def test_oversized_input():
    with pytest.raises(OversizedInput) as raised:
        openpgp.split_transferable_key(bytes(openpgp.MAX_INPUT_BYTES + 1))
    assert raised.value.code == "openpgp_oversized"
    with pytest.raises(OversizedInput):
        openpgp.parse_packets(b"\xb4\x03abc", max_bytes=4)
    with pytest.raises(OversizedInput):
        openpgp.dearmor("A" * (2 * openpgp.MAX_INPUT_BYTES + 1))


# --- Armor ---------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [0, 1, 2, 3, 47, 48, 49, 1000])
def test_armor_round_trip(size):
    data = bytes(range(256)) * 4
    text = openpgp.armor(data[:size], kind="SIGNATURE")
    assert text.startswith("-----BEGIN PGP SIGNATURE-----\n\n")
    assert all(len(line) <= 64 for line in text.splitlines())
    assert openpgp.dearmor(text, expected_kind="SIGNATURE") == data[:size]


def test_crc24_known_value():
    assert openpgp.crc24(b"") == 0xB704CE
    assert openpgp.crc24(b"123456789") == 0x21CF02  # CRC-24/OPENPGP check value


def test_dearmor_accepts_headers_crlf_and_surrounding_text(user_keys):
    data = user_keys["alice"].public
    lines = openpgp.armor(data).splitlines()
    text = "\r\n".join(["junk before", lines[0], "Comment: hello: world", "Version: x", *lines[1:], "after"])
    assert openpgp.dearmor(text.encode(), expected_kind="PUBLIC KEY BLOCK") == data
    no_checksum = "\n".join(line for line in lines if not line.startswith("="))
    assert openpgp.dearmor(no_checksum) == data


def _flip_checksum(text: str) -> str:
    checksum_line = next(line for line in text.splitlines() if line.startswith("="))
    flipped = "=" + ("A" if checksum_line[1] != "A" else "B") + checksum_line[2:]
    return text.replace(checksum_line, flipped)


@pytest.mark.parametrize(
    "mangle",
    [
        _flip_checksum,
        lambda t: t.replace("-----END PGP PUBLIC KEY BLOCK-----", ""),
        lambda t: t.replace("-----BEGIN PGP", "-----BEGIN XYZ"),
        lambda t: t.replace("\n\n", "\n\n!!!!", 1),
        lambda t: t.replace("PUBLIC KEY BLOCK", "SIGNATURE"),  # not the expected kind
        lambda t: t.replace("\n\n", "\n\n\u00e9", 1),  # non-ASCII in the base64 body (UTF-8 headers are fine)
    ],
)
def test_bad_armor_is_malformed(mangle):
    text = mangle(openpgp.armor(b"some packet bytes"))
    with pytest.raises(MalformedPacket):
        openpgp.dearmor(text.encode("utf-8"), expected_kind="PUBLIC KEY BLOCK")

