"""Signatures on replicated events: every event carries an Ed25519 signature of the signer
that made it (its `origin_node`), and a peer verifies it before anything is applied.

Each signer has its own key in a 0600 file (`sync.event_signing_key`), made by
`signer dev-init` or on the Sync actor's first start. Its public half goes into the
other signers' configuration (`sync.peer_event_keys`, base64 of the 32 raw bytes; print it
with `python -m core.sync.event_signing KEYFILE`). An event is signed when
its origin publishes it; a signer that applied a peer's event keeps that signature with
the event and publishes it unchanged, so a third signer replaying any log can still check
every event against the key of the signer that made it.

What is signed (`canonical_bytes`): a fixed domain label, event_id, origin_node, type, the
body and created_at (database time text, whole seconds), packed with msgpack. Both sides
build it from the decoded event, so the bytes do not depend on how the event travelled.
"""
from __future__ import annotations

import base64
import binascii
import os
import sys
from collections.abc import Mapping
from datetime import datetime
from pathlib import Path
from typing import Any

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from core.runtime.private_files import PrivateFileError, read_private_bytes
from core.wire.protocol import pack
from core.repository.schema import from_db_time, to_db_time

DOMAIN = "cacert-signer sync event v1"  # a signature made for anything else never verifies


class EventKeyError(Exception):
    """The signing key file is missing, unreadable, too open or not an Ed25519 key."""


class EventSignatureError(ValueError):
    """An event whose signature is missing, from an unknown signer or wrong."""


def load_or_create_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    """The key in `path` (PEM PKCS#8), created with mode 0600 when missing. A file readable
    or writable by group or others is refused: whoever reads it can forge this signer's
    events."""
    path = Path(path)
    if not path.exists():
        key = Ed25519PrivateKey.generate()
        pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                serialization.NoEncryption())
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
        except FileExistsError:
            pass  # made meanwhile by another process: read that one
        except OSError as exc:
            raise EventKeyError(f"cannot create event signing key {path}: {exc.strerror}") from None
        else:
            with os.fdopen(fd, "wb") as handle:
                handle.write(pem)
    return load_signing_key(path)


def load_signing_key(path: str | os.PathLike[str]) -> Ed25519PrivateKey:
    try:
        data = read_private_bytes(path)
    except PrivateFileError as exc:
        if exc.mode is None:
            raise EventKeyError(f"cannot read event signing key {path}: {exc.strerror}") from None
        raise EventKeyError(f"event signing key {path} is accessible by group or others"
                            f" (mode {exc.mode:04o}): chmod 600 it") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except (ValueError, TypeError) as exc:
        raise EventKeyError(f"event signing key {path} is not a PEM private key") from exc
    if not isinstance(key, Ed25519PrivateKey):
        raise EventKeyError(f"event signing key {path} is not an Ed25519 key")
    return key


def public_key_text(key: Ed25519PrivateKey | Ed25519PublicKey) -> str:
    """The form `sync.peer_event_keys[].key` takes: base64 of the 32 raw public bytes."""
    public = key.public_key() if isinstance(key, Ed25519PrivateKey) else key
    raw = public.public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
    return base64.b64encode(raw).decode()


def parse_public_key(text: str) -> Ed25519PublicKey:
    """Inverse of public_key_text; ValueError for anything else."""
    try:
        raw = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("not base64") from None
    if len(raw) != 32:
        raise ValueError(f"{len(raw)} bytes, an Ed25519 public key has 32")
    return Ed25519PublicKey.from_public_bytes(raw)


def canonical_bytes(event: Mapping[str, Any]) -> bytes:
    """The signed bytes of an event as events_after returns it or as it arrives (body
    decoded; created_at an aware datetime or ISO 8601 text). ValueError/TypeError/KeyError
    for an event that has no canonical form."""
    created_at = event["created_at"]
    if isinstance(created_at, str):
        created_at = from_db_time(created_at)
    if not isinstance(created_at, datetime):
        raise TypeError(f"created_at is a {type(created_at).__name__}")
    fields = [DOMAIN, event["event_id"], event["origin_node"], event["type"], event["body"],
              to_db_time(created_at)]
    if not all(isinstance(value, str) for value in fields[1:4]):
        raise TypeError("event_id, origin_node and type must be strings")
    return pack(fields)


def sign_event(key: Ed25519PrivateKey, event: Mapping[str, Any]) -> bytes:
    return key.sign(canonical_bytes(event))


def verify_event(keys: Mapping[str, Ed25519PublicKey], event: Mapping[str, Any],
                 verdict: bool | None = None) -> None:
    """Raises EventSignatureError unless `event["signature"]` is a valid signature of the
    key configured for the event's origin_node. verdict: the outcome of verifying this very
    event (its canonical bytes, signature and that key) elsewhere, a worker process
    (core/sync/signature_worker.py); None: verify here."""
    signature = event.get("signature")
    if not isinstance(signature, bytes):
        raise EventSignatureError("the event carries no signature")
    origin = event.get("origin_node")
    key = keys.get(origin) if isinstance(origin, str) else None
    if key is None:
        raise EventSignatureError(f"no event key is configured for origin node {origin!r}")
    if verdict is not None:
        if not verdict:
            raise EventSignatureError(f"the signature does not verify with {origin}'s event key")
        return
    try:
        key.verify(signature, canonical_bytes(event))
    except InvalidSignature:
        raise EventSignatureError(f"the signature does not verify with {origin}'s event key") from None
    except (KeyError, TypeError, ValueError) as exc:
        raise EventSignatureError(f"the event has no canonical form: {exc}") from None


def main(argv: list[str] | None = None) -> int:
    """`python -m core.sync.event_signing KEYFILE`: print the public half for the peer's
    configuration (creating the key file when it is missing)."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 1:
        print("usage: python -m core.sync.event_signing KEYFILE", file=sys.stderr)
        return 2
    try:
        print(public_key_text(load_or_create_signing_key(args[0])))
    except EventKeyError as exc:
        print(f"event_signing: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
