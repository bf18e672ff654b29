"""Who may use a signer's nats-server, and for what (docs/sync.md#nats-authorization).

One NATS user per signer, named by its node_id, with one password that signer keeps in a
0600 file (`sync.credentials_file`) and uses on both servers. Each server knows two users:

| user on server X | may publish | may subscribe |
|---|---|---|
| X (its own signer) | `signer.events.X`; JetStream API: `STREAM.INFO` / `STREAM.CREATE` of `EVENTS_X` | `_INBOX_X.>` (its replies) |
| R (the peer, reader) | JetStream API: `CONSUMER.INFO`, `CONSUMER.CREATE`, `CONSUMER.DURABLE.CREATE`, `CONSUMER.MSG.NEXT` of `EVENTS_X` consumer `apply-R`; acks `$JS.ACK.EVENTS_X.apply-R.>` | `_INBOX_R.>` |

Nobody may delete or purge a stream, read another consumer, publish into the stream but
its owner, or see another user's replies (each user's inbox prefix is its own). A client
without a user is refused at connect. The server's configuration holds only bcrypt hashes
of the passwords (`password_hash`), never a password.
"""
from __future__ import annotations

import os
import secrets
import warnings
from pathlib import Path

from core.runtime.private_files import PrivateFileError, read_private_bytes


class CredentialsError(Exception):
    """The credentials file is missing, empty, or readable by others."""


def stream_name(node_id: str) -> str:
    return f"EVENTS_{node_id}".replace(".", "_")


def subject(node_id: str) -> str:
    return f"signer.events.{node_id}"


def inbox_prefix(node_id: str) -> str:
    """Replies to this user's requests: a prefix only its user may subscribe to."""
    return f"_INBOX_{node_id}"


def consumer_name(reader_node_id: str) -> str:
    return f"apply-{reader_node_id}"


def read_password(path: str | os.PathLike[str]) -> str:
    """The password in `path` (first line). Refused when group or others may read it."""
    try:
        lines = read_private_bytes(path).decode("utf-8", errors="replace").splitlines()
    except PrivateFileError as exc:
        if exc.mode is None:
            raise CredentialsError(f"sync.credentials_file: cannot read {path}: {exc.strerror}") from None
        raise CredentialsError(f"sync.credentials_file: {path} is accessible by group or others"
                               f" (mode {exc.mode:04o}): chmod 600 it") from None
    password = lines[0].strip() if lines else ""
    if not password:
        raise CredentialsError(f"sync.credentials_file: {path} is empty")
    return password


def create_password_file(path: str | os.PathLike[str]) -> str:
    """Write a new random password to `path` (mode 0600; the file must not exist)."""
    password = secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(password + "\n")
    return password


def password_hash(password: str) -> str:
    """A bcrypt hash nats-server accepts in place of the password ($2b$, cost 11)."""
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)  # crypt: the stdlib's bcrypt, 3.11
        import crypt
    hashed = crypt.crypt(password, crypt.mksalt(crypt.METHOD_BLOWFISH, rounds=1 << 11))
    if not hashed or not hashed.startswith("$2"):
        raise RuntimeError("this system's crypt(3) has no bcrypt")
    return hashed


def _quoted(items: list[str]) -> str:
    return "[" + ", ".join(f'"{item}"' for item in items) + "]"


def owner_permissions(node_id: str) -> dict[str, list[str]]:
    stream = stream_name(node_id)
    return {"publish": [subject(node_id), f"$JS.API.STREAM.INFO.{stream}",
                        f"$JS.API.STREAM.CREATE.{stream}"],
            "subscribe": [f"{inbox_prefix(node_id)}.>"]}


def reader_permissions(owner_node_id: str, reader_node_id: str) -> dict[str, list[str]]:
    stream, consumer = stream_name(owner_node_id), consumer_name(reader_node_id)
    return {"publish": [f"$JS.API.CONSUMER.INFO.{stream}.{consumer}",
                        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}",
                        f"$JS.API.CONSUMER.CREATE.{stream}.{consumer}.>",
                        f"$JS.API.CONSUMER.DURABLE.CREATE.{stream}.{consumer}",
                        f"$JS.API.CONSUMER.MSG.NEXT.{stream}.{consumer}",
                        f"$JS.ACK.{stream}.{consumer}.>"],
            "subscribe": [f"{inbox_prefix(reader_node_id)}.>"]}


# Each event is one NATS message. nats-server refuses messages above its max_payload (1 MB
# unless set), and the publisher cannot split one: an OpenPGP certification of a key with a
# large photo id is an event of ~2.4 times the key (the signed key, and the answer with it
# armoured): ~4.8 MB at openpgp.max_key_bytes' bound of 2 MiB. A larger event stopped
# replication at that event, everything after it waiting (tests/e2e/test_sync.py).
MAX_PAYLOAD = "8MB"


def server_config(node_id: str, owner_hash: str, readers: dict[str, str], *, host: str,
                  port: int, store_dir: str) -> str:
    """A nats-server configuration for signer `node_id`'s own server: JetStream in
    `store_dir`, the owner's user, and one reader user per peer (node id -> password
    hash). TLS is added by hand (docs/sync.md#tls-on-the-cable)."""
    users = [(node_id, owner_hash, owner_permissions(node_id))]
    users += [(reader, hashed, reader_permissions(node_id, reader)) for reader, hashed in readers.items()]
    lines = [f"# nats-server for signer {node_id} (made by core/sync/nats_auth.py; docs/sync.md)",
             f'listen: "{host}:{port}"', f"max_payload: {MAX_PAYLOAD}",
             "jetstream {", f'  store_dir: "{store_dir}"', "}",
             "authorization {", "  users = ["]
    for user, hashed, permissions in users:
        lines += [f'    {{user: "{user}", password: "{hashed}", permissions: {{',
                  f"      publish: {{allow: {_quoted(permissions['publish'])}}},",
                  f"      subscribe: {{allow: {_quoted(permissions['subscribe'])}}}",
                  "    }}"]
    lines += ["  ]", "}", ""]
    return "\n".join(lines)


def write_server_config(path: str | os.PathLike[str], text: str) -> None:
    """The file holds password hashes: 0600, like the credentials."""
    path = Path(path)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC | os.O_NOFOLLOW, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(text)


def main(argv: list[str] | None = None) -> int:
    """`python -m core.sync.nats_auth hash PASSWORD_FILE`: the bcrypt hash of a signer's password
    for the servers' configuration (config/nats-server.example.conf); `... new FILE`: make a
    password file (0600)."""
    import sys

    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2 or args[0] not in ("hash", "new"):
        print("usage: python -m core.sync.nats_auth hash|new PASSWORD_FILE", file=sys.stderr)
        return 2
    try:
        if args[0] == "new":
            create_password_file(args[1])
        else:
            print(password_hash(read_password(args[1])))
    except (CredentialsError, OSError) as exc:
        print(f"nats_auth: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
