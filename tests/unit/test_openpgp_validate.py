"""core.openpgp.validate: user keys made by real gpg, judged by gpg and our own parser.

The keys are generated once per module in a throwaway GNUPGHOME under /tmp. The agent gets
a fixed `s2k-count`: without it gpg-agent calibrates the S2K count on every protected key
and each `--quick-gen-key` takes about 1.6 s instead of a few milliseconds.
"""
from __future__ import annotations

import os
import re
import shutil
import stat
import subprocess
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import pytest
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec, rsa

from core.openpgp import certify as openpgp

from core.openpgp import validate as openpgp_validate
from core.openpgp.validate import (
    GpgUnavailable,
    KeyExpired,
    KeyRevoked,
    MalformedPacket,
    MultiplePrimaryKeys,
    NoRequestedUserId,
    OpenPgpError,
    OversizedInput,
    SecretKeyMaterial,
    UnsupportedKey,
    UserIdInfo,
    UserIdRevoked,
    ValidatedKey,
    WeakKey,
    select_user_ids,
    validate_public_key,
)
from core.wire.protocol import ERROR_CODES

pytestmark = pytest.mark.skipif(shutil.which("gpg") is None, reason="gpg is not installed")

ALICE = "Alice <alice@example.org>"
ALICE_TWO = "Alice Two <alice.two@example.org>"  # revoked
ALICE_THREE = "Alice Three <alice.three@example.org>"
BOB = "Bob <bob@example.org>"
CAROL = "Carol <carol@example.org>"
YEAR = 365 * 86400


class GpgHome:
    def __init__(self) -> None:
        self.path = Path(tempfile.mkdtemp(prefix="ovt-", dir="/tmp"))
        (self.path / "gpg-agent.conf").write_text("s2k-count 65536\n")

    def run(self, *args: str, stdin: bytes | None = None) -> bytes:
        command = ["gpg", "--homedir", str(self.path), "--batch", "--no-tty", "--pinentry-mode", "loopback",
                   "--passphrase", "", *args]  # fmt: skip
        result = subprocess.run(command, input=stdin, capture_output=True, check=False, timeout=120)
        if result.returncode != 0:
            raise AssertionError(f"gpg {args} failed: {result.stderr.decode(errors='replace')}")
        return result.stdout

    def generate(self, user_id: str, algorithm: str, expire: str = "never", *extra: str) -> str:
        self.run(*extra, "--quick-gen-key", user_id, algorithm, "default", expire)
        listing = self.run("--with-colons", "--list-keys", f"={user_id}").decode()
        return re.search(r"^fpr:+([0-9A-F]{40}):", listing, re.MULTILINE)[1]

    def close(self) -> None:
        subprocess.run(["gpgconf", "--homedir", str(self.path), "--kill", "all"], check=False)
        shutil.rmtree(self.path, ignore_errors=True)


@dataclass(frozen=True)
class UserKey:
    fingerprint: str
    public: bytes  # gpg --export, binary


@pytest.fixture(scope="module")
def keys() -> dict[str, UserKey]:
    home = GpgHome()
    try:
        fprs = {
            "alice": home.generate(ALICE, "rsa3072"),
            "bob": home.generate(BOB, "ed25519"),
            "carol": home.generate(CAROL, "nistp256", "1y"),
            "weak": home.generate("Weak <weak@example.org>", "rsa1024"),
            "dsa": home.generate("Dave <dave@example.org>", "dsa2048"),
            "revoked": home.generate("Rev <rev@example.org>", "ed25519"),
            "expired": home.generate("Old <old@example.org>", "ed25519", "1d",
                                     "--faked-system-time", "20200101T000000"),
        }  # fmt: skip
        home.run("--quick-add-key", fprs["bob"], "cv25519", "encr")
        home.run("--quick-add-uid", fprs["alice"], ALICE_TWO)
        home.run("--quick-add-uid", fprs["alice"], ALICE_THREE)
        home.run("--quick-revoke-uid", fprs["alice"], ALICE_TWO)
        # --quick-gen-key leaves a revocation certificate, its armour line masked with ':'.
        certificate = (home.path / "openpgp-revocs.d" / f"{fprs['revoked']}.rev").read_text()
        home.run("--import", stdin=certificate.replace(":-----BEGIN", "-----BEGIN").encode())
        result = {name: UserKey(fpr, home.run("--export", fpr)) for name, fpr in fprs.items()}
        result["bob_secret"] = UserKey(fprs["bob"], home.run("--export-secret-keys", fprs["bob"]))
        result["bob_secret_armored"] = UserKey(
            fprs["bob"], home.run("--armor", "--export-secret-keys", fprs["bob"])
        )
        return result
    finally:
        home.close()


def refused(error: type[OpenPgpError], data: bytes | str, *words: str, **kwargs) -> OpenPgpError:
    """validate_public_key must raise `error`, with its code, and a message with `words`."""
    with pytest.raises(error) as caught:
        validate_public_key(data, **kwargs)
    assert type(caught.value) is error
    assert caught.value.code == error.code and error.code in ERROR_CODES
    for word in words:
        assert word in str(caught.value), (word, str(caught.value))
    return caught.value


def packets_of(data: bytes) -> list[openpgp.Packet]:
    return openpgp.parse_packets(data)


def damage_signature(data: bytes, index: int) -> bytes:
    """Flip bits in the MPI area of the index-th signature packet: it no longer verifies."""
    packets = packets_of(data)
    position = [i for i, packet in enumerate(packets) if packet.tag == openpgp.TAG_SIGNATURE][index]
    body = bytearray(packets[position].body)
    body[-3] ^= 0x55
    packets[position] = openpgp.Packet(openpgp.TAG_SIGNATURE, bytes(body))
    return openpgp.serialise_packets(packets)


# --- Accepted keys -------------------------------------------------------------------------


def test_rsa_key_with_three_user_ids(keys):
    key = validate_public_key(keys["alice"].public)
    assert key.fingerprint == keys["alice"].fingerprint
    assert (key.algorithm, key.bits, key.curve) == (openpgp.PUBKEY_RSA, 3072, None)
    assert abs(key.created - time.time()) < 3600
    assert key.binary == keys["alice"].public
    # Key (packet) order, which is not gpg's listing order (gpg puts the primary uid first).
    assert key.user_ids == (
        UserIdInfo(ALICE, revoked=False, expired=False),
        UserIdInfo(ALICE_TWO, revoked=True, expired=False),
        UserIdInfo(ALICE_THREE, revoked=False, expired=False),
    )


@pytest.mark.parametrize("name, algorithm, bits, curve", [
    ("bob", openpgp.PUBKEY_EDDSA, 255, "ed25519"),
    ("carol", openpgp.PUBKEY_ECDSA, 256, "nistp256"),
])  # fmt: skip
def test_ec_keys(keys, name, algorithm, bits, curve):
    key = validate_public_key(keys[name].public)
    assert key.fingerprint == keys[name].fingerprint
    assert (key.algorithm, key.bits, key.curve) == (algorithm, bits, curve)
    assert [uid.text for uid in key.user_ids] == [{"bob": BOB, "carol": CAROL}[name]]


def test_armored_input_as_text_and_bytes(keys):
    text = openpgp.armor(keys["bob"].public)
    for data in (text, text.encode(), "\n  " + text):
        key = validate_public_key(data)
        assert key.binary == keys["bob"].public and key.fingerprint == keys["bob"].fingerprint


def test_user_id_bytes_survive_gpg_escaping():
    # gpg's colon listing writes ':' as \x3a, '\' as \x5c, a newline as \n, keeps UTF-8 bytes.
    user_id = 'Wé:ird \\ "x" <w@x.example>'.encode() + b"\x01\n\x7f\xff%"
    private_key = ec.generate_private_key(ec.SECP256R1())
    block = openpgp.build_public_key_block(
        private_key.public_key(), int(time.time()) - 100, user_id,
        lambda data, mechanism: private_key.sign(data, ec.ECDSA(hashes.SHA256())),
    )  # fmt: skip
    key = validate_public_key(block)
    assert [uid.text.encode("utf-8", "surrogateescape") for uid in key.user_ids] == [user_id]
    assert select_user_ids(key, [key.user_ids[0].text]) == [key.user_ids[0].text]


def test_user_id_with_bad_self_signature_is_left_out(keys):
    key = validate_public_key(damage_signature(keys["alice"].public, 0))  # ALICE's self-signature
    assert [uid.text for uid in key.user_ids] == [ALICE_TWO, ALICE_THREE]
    with pytest.raises(NoRequestedUserId, match="Alice Three"):
        select_user_ids(key, [ALICE])


def test_forged_key_revocation_is_ignored(keys):
    packets = packets_of(keys["revoked"].public)
    assert packets[1].tag == openpgp.TAG_SIGNATURE and packets[1].body[1] == 0x20  # key revocation
    key = validate_public_key(damage_signature(keys["revoked"].public, 0))
    assert key.fingerprint == keys["revoked"].fingerprint


# --- Refused keys --------------------------------------------------------------------------


def test_revoked_key(keys):
    refused(KeyRevoked, keys["revoked"].public, keys["revoked"].fingerprint, "revoked")


def test_expired_key(keys):
    refused(KeyExpired, keys["expired"].public, keys["expired"].fingerprint, "expired on 2020-01-02")


def test_expiry_is_judged_at_now(keys):
    expires = validate_public_key(keys["carol"].public).created + YEAR
    assert validate_public_key(keys["carol"].public, now=expires - 1).fingerprint == keys["carol"].fingerprint
    refused(KeyExpired, keys["carol"].public, keys["carol"].fingerprint, "expired on", now=expires)


def test_weak_rsa_key(keys):
    refused(WeakKey, keys["weak"].public, keys["weak"].fingerprint, "1024 bits", "2048")


def test_dsa_key(keys):
    refused(UnsupportedKey, keys["dsa"].public, keys["dsa"].fingerprint, "DSA (algorithm 17)")


def v3_key() -> bytes:
    """A PGP 2.x key: v3 key packet (RFC 4880 5.5.2), user id, v3 self-signature (not valid)."""
    numbers = rsa.generate_private_key(65537, 2048).public_key().public_numbers()
    created = (1_000_000_000).to_bytes(4, "big")
    body = b"\x03" + created + b"\x00\x00\x01" + openpgp.encode_mpi(numbers.n) + openpgp.encode_mpi(numbers.e)
    signature = b"\x03\x05\x13" + created + bytes(8) + b"\x01\x01\xab\xcd" + openpgp.encode_mpi(12345)
    return openpgp.serialise_packets([
        openpgp.Packet(openpgp.TAG_PUBLIC_KEY, body),
        openpgp.Packet(openpgp.TAG_USER_ID, b"Old <v3@example.org>"),
        openpgp.Packet(openpgp.TAG_SIGNATURE, signature),
    ])  # fmt: skip


def test_v3_key():
    refused(UnsupportedKey, v3_key(), "v3")


def test_v3_key_next_to_a_v4_key(keys):
    # gpg 2.2 skips the v3 key silently and lists only Alice: our parser sees both.
    refused(MultiplePrimaryKeys, v3_key() + keys["alice"].public, "2 primary keys")


def test_binary_secret_key(keys):
    refused(SecretKeyMaterial, keys["bob_secret"].public, "secret key material")


def test_armored_secret_key(keys):
    refused(SecretKeyMaterial, keys["bob_secret_armored"].public, "PRIVATE KEY BLOCK")


def test_two_keys(keys):
    both = keys["alice"].public + keys["bob"].public
    refused(MultiplePrimaryKeys, both, "2 primary keys", keys["alice"].fingerprint, keys["bob"].fingerprint)


def test_two_armored_blocks(keys):
    text = openpgp.armor(keys["alice"].public) + openpgp.armor(keys["bob"].public)
    refused(MultiplePrimaryKeys, text, "2 armoured public key blocks")


def test_truncated_key(keys):
    refused(MalformedPacket, keys["alice"].public[:500], "could not read", "premature eof")


def test_random_bytes():
    refused(MalformedPacket, os.urandom(300), "no public key")


def test_empty_input():
    refused(MalformedPacket, b"", "no public key")


def test_key_without_a_valid_user_id(keys):
    damaged = damage_signature(keys["bob"].public, 0)
    refused(MalformedPacket, damaged, "no user id with a valid self-signature", "invalid self-signature")


def test_oversized_input(keys):
    data = keys["alice"].public
    refused(OversizedInput, data, str(len(data)), max_bytes=len(data) - 1)
    refused(OversizedInput, openpgp.armor(data), max_bytes=len(data) // 2)
    assert validate_public_key(data, max_bytes=len(data)).binary == data


def test_bad_armor(keys):
    text = openpgp.armor(keys["bob"].public)
    checksum = re.search(r"^=(.{4})$", text, re.MULTILINE)[1]
    refused(MalformedPacket, text.replace(f"={checksum}", "=AAAA"), "CRC24")
    refused(MalformedPacket, openpgp.armor(keys["bob"].public, "MESSAGE"), "MESSAGE", "PUBLIC KEY BLOCK")
    refused(MalformedPacket, "not a key", "ASCII-armoured")


# --- gpg itself misbehaving ----------------------------------------------------------------


def fake_gpg(tmp_path: Path, script: str) -> str:
    path = tmp_path / "gpg"
    path.write_text(f"#!/bin/sh\ncat >/dev/null\n{script}\n")
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


def test_gpg_timeout(keys, tmp_path, monkeypatch):
    monkeypatch.setattr(openpgp_validate, "GPG_TIMEOUT_SECONDS", 0.3)
    gpg = fake_gpg(tmp_path, "exec sleep 10")  # exec: the timeout kills sleep itself
    error = refused(GpgUnavailable, keys["bob"].public, "within 0.3 s", gpg=gpg)
    assert error.code == "internal_error"


def test_gpg_missing(keys, tmp_path):
    refused(GpgUnavailable, keys["bob"].public, "cannot run", gpg=str(tmp_path / "no-gpg"))


def test_fingerprint_mismatch_with_our_parser(keys, tmp_path):
    listing = subprocess.run(
        ["gpg", "--batch", "--homedir", str(tmp_path), "--with-colons", "--show-keys"],
        input=keys["alice"].public, capture_output=True, check=True,
    ).stdout.decode()  # fmt: skip
    forged = listing.replace(keys["alice"].fingerprint, keys["bob"].fingerprint)
    (tmp_path / "listing").write_text(forged)
    gpg = fake_gpg(tmp_path, f"cat {tmp_path / 'listing'}")
    refused(MalformedPacket, keys["alice"].public, "gpg listed key", keys["alice"].fingerprint, gpg=gpg)


# --- select_user_ids -----------------------------------------------------------------------


def test_select_in_key_order(keys):
    key = validate_public_key(keys["alice"].public)
    assert select_user_ids(key, [ALICE_THREE, ALICE]) == [ALICE, ALICE_THREE]
    assert select_user_ids(key, [ALICE_THREE, "Mallory <m@example.org>"]) == [ALICE_THREE]


def test_select_revoked_user_id(keys):
    key = validate_public_key(keys["alice"].public)
    with pytest.raises(UserIdRevoked) as caught:
        select_user_ids(key, [ALICE, ALICE_TWO])
    assert caught.value.code == "openpgp_uid_revoked" and ALICE_TWO in str(caught.value)
    assert key.fingerprint in str(caught.value)


def test_select_none_present(keys):
    key = validate_public_key(keys["alice"].public)
    with pytest.raises(NoRequestedUserId) as caught:
        select_user_ids(key, ["Mallory <m@example.org>"])
    message = str(caught.value)
    assert caught.value.code == "openpgp_no_uid"
    assert "Mallory" in message and ALICE in message and ALICE_THREE in message and ALICE_TWO not in message


def test_select_skips_expired_user_ids():
    key = ValidatedKey(
        "00" * 20, openpgp.PUBKEY_EDDSA, 255, "ed25519", 0,
        (UserIdInfo("A <a@x>", False, True), UserIdInfo("B <b@x>", False, False)), b"",
    )  # fmt: skip
    assert select_user_ids(key, ["A <a@x>", "B <b@x>"]) == ["B <b@x>"]
    with pytest.raises(NoRequestedUserId, match="expired on the key: \\['A <a@x>'\\]"):
        select_user_ids(key, ["A <a@x>"])


def test_all_codes_are_protocol_codes():
    for error in (KeyRevoked, KeyExpired, WeakKey, UserIdRevoked, NoRequestedUserId, GpgUnavailable):
        assert issubclass(error, OpenPgpError) and error.code in ERROR_CODES
