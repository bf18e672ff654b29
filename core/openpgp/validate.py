"""Validate a user's OpenPGP public key with gpg before our own packet code uses it.

gpg (a kept implementation) judges the input first: self-signatures, revocations, expiry,
algorithm and size. Only a key gpg accepts is handed to `core.openpgp.certify`, which then just
splits the packet stream (`split_transferable_key`) and adds certifications. Our parser is
a second check: exactly one v4 transferable key whose fingerprint is the one gpg listed.

gpg invocation (measured with gpg 2.2.40): `--show-keys` is `--import` with show-only
(IMPORT_SHOW | IMPORT_DRY_RUN) and without repair-keys, so it runs the import checks of
self-signatures and revocations but stores nothing: a user id with a bad or missing
self-signature is not listed, a forged key revocation is ignored, a valid one gives "r".
`--import --import-options show-only` lists the same, but repair-keys (default yes) may
reorder or strip signatures first: gpg would judge other bytes than the ones we certify.
`--no-autostart` keeps secret key material away from any gpg-agent (gpg still lists it as
`sec`); `--verbose` makes gpg say why it skipped a user id; `--no-options` reads no gpg.conf.
gpg 2.2 skips v3 keys silently, even next to a v4 key: the second check catches that; it cannot
read v6 keys (RFC 9580) at all: an empty listing is explained by the key packet's version.
"""
from __future__ import annotations

import contextlib
import os
import re
import subprocess
import tempfile
import time
from dataclasses import dataclass

from core.openpgp.certify import TransferableKey, fingerprint_v4, split_transferable_key
from core.openpgp.packets import (  # noqa: F401  (OversizedInput: raised by check_input_size)
    MAX_INPUT_BYTES, PUBKEY_DSA, PUBKEY_ECDSA, PUBKEY_EDDSA, PUBKEY_ELGAMAL, PUBKEY_ELGAMAL_SIGN,
    PUBKEY_RSA, PUBKEY_RSA_ENCRYPT_ONLY, PUBKEY_RSA_SIGN_ONLY, TAG_PUBLIC_KEY, MalformedPacket,
    MultiplePrimaryKeys, OpenPgpError, OversizedInput, SecretKeyMaterial, UnsupportedKey,
    check_input_size, dearmor, parse_packets, parse_public_key_body,
)

GPG_TIMEOUT_SECONDS = 20
MIN_RSA_BITS = 2048
_ECDSA_CURVES = ("nistp256", "nistp384", "nistp521", "brainpoolP256r1", "brainpoolP384r1", "brainpoolP512r1")
ACCEPTED_CURVES = {PUBKEY_ECDSA: _ECDSA_CURVES, PUBKEY_EDDSA: ("ed25519",)}  # curve names as gpg prints
LEGACY_ALGORITHMS = {  # refused: UnsupportedKey
    PUBKEY_RSA_ENCRYPT_ONLY: "RSA encrypt-only", PUBKEY_RSA_SIGN_ONLY: "RSA sign-only", PUBKEY_DSA: "DSA",
    PUBKEY_ELGAMAL: "ElGamal", PUBKEY_ELGAMAL_SIGN: "ElGamal sign+encrypt",
}
# gpg's colon output escapes ':' '\\' and control characters in user ids (doc/DETAILS).
_GPG_ESCAPE = re.compile(rb"\\(x[0-9a-fA-F]{2}|[nrfvb0])")
_NAMED_ESCAPES = {b"n": b"\n", b"r": b"\r", b"f": b"\f", b"v": b"\v", b"b": b"\b", b"0": b"\0"}
# stderr lines that say nothing about the key.
_GPG_NOISE = ("keybox '", "trustdb created", "using pgp trust model", "no gpg-agent running")


class KeyRevoked(OpenPgpError):
    code = "openpgp_key_revoked"


class KeyExpired(OpenPgpError):
    code = "openpgp_key_expired"


class WeakKey(OpenPgpError):
    code = "openpgp_weak_key"


class UserIdRevoked(OpenPgpError):
    code = "openpgp_uid_revoked"


class NoRequestedUserId(OpenPgpError):
    code = "openpgp_no_uid"


class GpgUnavailable(OpenPgpError):  # gpg could not run or timed out: not the user's fault, retry
    code = "internal_error"


@dataclass(frozen=True)
class UserIdInfo:
    text: str  # the packet body as UTF-8; invalid bytes kept by "surrogateescape"
    revoked: bool
    expired: bool


@dataclass(frozen=True)
class ValidatedKey:
    fingerprint: str  # uppercase hex, as gpg prints it
    algorithm: int  # OpenPGP public-key algorithm id
    bits: int | None
    curve: str | None
    created: int
    user_ids: tuple[UserIdInfo, ...]  # the user ids gpg accepts, in key (packet) order
    binary: bytes  # the input as binary packets: exactly what gpg validated


@dataclass
class _Primary:  # one pub (or sec) record of gpg's listing, its fpr and its uid records
    record: list[bytes]
    fingerprint: str
    user_ids: list[list[bytes]]


def _to_binary(data: bytes | str, max_bytes: int) -> bytes:
    """Binary packets from binary or ASCII-armoured input; only a PUBLIC KEY BLOCK is taken."""
    check_input_size(data, 2 * max_bytes)  # armour is 4/3 of the data plus line breaks
    raw = data.encode("utf-8", "surrogateescape") if isinstance(data, str) else data
    if not raw.lstrip().startswith(b"-----BEGIN PGP"):
        if isinstance(data, str):
            raise MalformedPacket("text input is not an ASCII-armoured PGP PUBLIC KEY BLOCK")
        check_input_size(data, max_bytes)
        return data
    kinds = re.findall(rb"^\s*-----BEGIN PGP ([A-Z ,/0-9]*)-----", raw, re.MULTILINE)
    if any(kind.startswith(b"PRIVATE KEY") for kind in kinds):
        raise SecretKeyMaterial("input is a PGP PRIVATE KEY BLOCK: send the public key only")
    if any(kind != b"PUBLIC KEY BLOCK" for kind in kinds):
        names = ", ".join(kind.decode() for kind in kinds)
        raise MalformedPacket(f"armour holds {names}, expected one PGP PUBLIC KEY BLOCK")
    if len(kinds) > 1:
        raise MultiplePrimaryKeys(f"input holds {len(kinds)} armoured public key blocks, expected one")
    binary = dearmor(raw, expected_kind="PUBLIC KEY BLOCK", max_bytes=max_bytes)
    check_input_size(binary, max_bytes)
    return binary


def _run_gpg(gpg: str, binary: bytes, timeout: float) -> tuple[int, bytes, str]:
    """`gpg --show-keys` in a throwaway home: (exit status, colon listing, stderr)."""
    # Short path under /tmp: a gpg-agent socket path must fit in sockaddr_un (108 bytes).
    with tempfile.TemporaryDirectory(prefix="ov-", dir="/tmp") as home:
        os.chmod(home, 0o700)
        command = [
            gpg, "--homedir", home, "--batch", "--no-tty", "--no-options", "--no-autostart",
            "--with-colons", "--fixed-list-mode", "--verbose", "--show-keys",
        ]  # fmt: skip
        try:
            result = subprocess.run(
                command, input=binary, capture_output=True, timeout=timeout,
                env={"PATH": os.environ.get("PATH", os.defpath), "LC_ALL": "C", "LANGUAGE": "C"}, check=False,
            )  # fmt: skip
        except subprocess.TimeoutExpired:
            raise GpgUnavailable(f"gpg did not check the key within {timeout} s") from None
        except OSError as exc:
            raise GpgUnavailable(f"cannot run {gpg!r} to check the key: {exc}") from None
        finally:
            if any(name.startswith("S.") for name in os.listdir(home)):  # an agent's sockets
                with contextlib.suppress(OSError, subprocess.SubprocessError):
                    subprocess.run(
                        [os.path.join(os.path.dirname(gpg), "gpgconf"), "--homedir", home, "--kill", "all"],
                        capture_output=True, timeout=timeout, check=False,
                    )  # fmt: skip
    return result.returncode, result.stdout, result.stderr.decode("utf-8", "replace")


def _gpg_notes(stderr: str) -> str:
    """gpg's messages about the key, for an error message."""
    lines = [line[5:].strip() for line in stderr.splitlines() if line.startswith("gpg: ")]
    notes = "; ".join(line for line in lines if not any(noise in line for noise in _GPG_NOISE))
    return f" (gpg: {notes[:400]})" if notes else ""


def _parse_listing(stdout: bytes) -> tuple[list[_Primary], bool]:
    """Primary keys with their fingerprint and uid records, and whether gpg saw secret keys."""
    primaries: list[_Primary] = []
    secret = False
    previous = b""
    for line in stdout.splitlines():
        fields = line.split(b":")
        kind = fields[0]
        if kind in (b"sec", b"ssb"):
            secret = True
        if kind in (b"pub", b"sec"):
            primaries.append(_Primary(fields, "", []))
        elif kind == b"fpr" and previous in (b"pub", b"sec") and len(fields) > 9:
            primaries[-1].fingerprint = fields[9].decode("ascii", "replace").upper()
        elif kind == b"uid" and primaries and len(fields) > 9:
            primaries[-1].user_ids.append(fields)
        previous = kind
    return primaries, secret


def _int_field(record: list[bytes], index: int) -> int | None:
    return int(record[index]) if len(record) > index and record[index].isdigit() else None


def _unsupported_key_version(binary: bytes) -> int | None:
    """Only to explain an empty gpg listing: gpg 2.2 skips v3 keys without a word and cannot
    read RFC 9580 v6 keys at all. The version of the first primary key that is not v4."""
    try:
        packets = parse_packets(binary)
    except OpenPgpError:
        return None
    versions = [body[0] for tag, body in packets if tag == TAG_PUBLIC_KEY and body]
    return next((version for version in versions if version != 4), None)


def _check_algorithm(fpr: str, algorithm: int, bits: int | None, curve: str | None) -> None:
    if algorithm in LEGACY_ALGORITHMS:
        raise UnsupportedKey(f"key {fpr} is {LEGACY_ALGORITHMS[algorithm]} (algorithm {algorithm}); only "
                             f"RSA of {MIN_RSA_BITS} bits or more, ECDSA and EdDSA keys are certified")
    if algorithm == PUBKEY_RSA:
        if bits is None or bits < MIN_RSA_BITS:
            raise WeakKey(f"key {fpr} is RSA with {bits} bits; at least {MIN_RSA_BITS} are needed")
    elif algorithm in ACCEPTED_CURVES:
        if curve not in ACCEPTED_CURVES[algorithm]:
            accepted = ", ".join(ACCEPTED_CURVES[algorithm])
            raise UnsupportedKey(f"key {fpr} uses curve {curve or 'unknown'}; accepted: {accepted}")
    else:
        raise UnsupportedKey(f"key {fpr} uses public-key algorithm {algorithm}, which is not supported")


def _unescape(value: bytes) -> bytes:
    return _GPG_ESCAPE.sub(lambda m: _NAMED_ESCAPES.get(m[1]) or bytes([int(m[1][1:], 16)]), value)


def _user_ids(primary: _Primary, key: TransferableKey, now: int) -> tuple[UserIdInfo, ...]:
    """The user ids gpg lists (it leaves out those without a valid self-signature), in key order."""
    listed = {_unescape(uid[9]): uid for uid in primary.user_ids}
    in_packets = [component.body for component in key.user_ids]
    missing = [name for name in listed if name not in in_packets]
    if missing:
        raise MalformedPacket(f"gpg lists user id {missing[0]!r}, which is not in the key packets")
    user_ids = []
    for body in dict.fromkeys(body for body in in_packets if body in listed):  # duplicates once
        validity, expires = listed[body][1], _int_field(listed[body], 6)
        expired = validity == b"e" or (expires is not None and expires <= now)
        user_ids.append(UserIdInfo(body.decode("utf-8", "surrogateescape"), validity == b"r", expired))
    return tuple(user_ids)


def validate_public_key(
    data: bytes | str, *, gpg: str = "gpg", max_bytes: int = MAX_INPUT_BYTES, now: int | None = None
) -> ValidatedKey:
    """gpg's verdict on one transferable public key, cross-checked with our own parser."""
    now = int(time.time()) if now is None else now
    binary = _to_binary(data, max_bytes)
    status, stdout, stderr = _run_gpg(gpg, binary, GPG_TIMEOUT_SECONDS)
    primaries, secret = _parse_listing(stdout)
    notes = _gpg_notes(stderr)
    if secret:
        raise SecretKeyMaterial("input holds secret key material: send the public key only")
    if not primaries:
        version = _unsupported_key_version(binary)
        if version in (2, 3):
            raise UnsupportedKey("v3 (PGP 2.x) keys are not supported: MD5 fingerprints (RFC 4880 5.5.2)")
        if version in (5, 6):  # v6: RFC 9580; v5: the LibrePGP draft. Real, just not ours.
            raise UnsupportedKey(f"v{version} keys are not supported (RFC 9580 v6 keys: gpg 2.2 cannot read "
                                 f"them); only v4 keys are certified")
        # Any other version byte is no OpenPGP key at all (random bytes often parse as a
        # packet header): malformed, below.
        raise MalformedPacket(f"gpg found no public key in the input{notes}")
    if status != 0:
        raise MalformedPacket(f"gpg could not read the key (exit status {status}){notes}")
    if len(primaries) > 1:
        fprs = ", ".join(p.fingerprint for p in primaries)
        raise MultiplePrimaryKeys(f"input holds {len(primaries)} primary keys ({fprs}), expected one")
    primary = primaries[0]
    record, fpr = primary.record, primary.fingerprint
    validity, expires = record[1], _int_field(record, 6)
    if validity == b"r":
        raise KeyRevoked(f"key {fpr} is revoked")
    if validity == b"e" or (expires is not None and expires <= now):
        when = "" if expires is None else time.strftime(" on %Y-%m-%d", time.gmtime(expires))
        raise KeyExpired(f"key {fpr} expired{when}")
    if validity == b"i":
        raise MalformedPacket(f"gpg marks key {fpr} invalid: no user id with a valid self-signature{notes}")
    algorithm, bits, created = _int_field(record, 3), _int_field(record, 2), _int_field(record, 5)
    curve = record[16].decode("ascii", "replace") if len(record) > 16 and record[16] else None
    if algorithm is None or created is None or not fpr:
        raise MalformedPacket(f"unexpected gpg listing for key {fpr or '?'}")
    _check_algorithm(fpr, algorithm, bits, curve)

    # Second check with our own parser on the very bytes gpg judged.
    key = split_transferable_key(binary, max_bytes=max_bytes)
    if fingerprint_v4(key.primary_key).hex().upper() != fpr:
        raise MalformedPacket(f"gpg listed key {fpr}, our parser found {key.fingerprint.hex().upper()}")
    if parse_public_key_body(key.primary_key).algorithm != algorithm:
        raise MalformedPacket(f"gpg and our parser disagree on the algorithm of key {fpr}")
    return ValidatedKey(fpr, algorithm, bits, curve, created, _user_ids(primary, key, now), binary)


def select_user_ids(key: ValidatedKey, requested: list[str]) -> list[str]:
    """The requested user ids on the key, in key order; requested ones not on it are skipped.

    An expired user id is skipped too: a certification of it would never be valid.
    """
    wanted = set(requested)
    revoked = [uid.text for uid in key.user_ids if uid.revoked and uid.text in wanted]
    if revoked:
        names = ", ".join(repr(text) for text in revoked)
        raise UserIdRevoked(f"user id {names} is revoked on key {key.fingerprint}")
    chosen = [uid.text for uid in key.user_ids if uid.text in wanted and not uid.expired]
    if not chosen:
        usable = [uid.text for uid in key.user_ids if not uid.revoked and not uid.expired]
        expired = [uid.text for uid in key.user_ids if uid.expired and uid.text in wanted]
        detail = f"; expired on the key: {expired!r}" if expired else ""
        raise NoRequestedUserId(
            f"none of the requested user ids {requested!r} is a valid user id of key "
            f"{key.fingerprint}, which has {usable!r}{detail}"
        )
    return chosen
