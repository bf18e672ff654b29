"""Authenticated actor transport: every Thespian TCP frame carries an HMAC, checked first.

Thespian's multiprocTCPBase unpickles whatever arrives on the admin port and on every
actor's loopback port. Loopback is not a boundary on a shared box: any local user (the
`nats` user, a daemon broken into through the cable) could connect, run code in the signer
with a crafted pickle, or send a well-formed HsmSignRequest and get a CA signature.

So, before the ActorSystem is created, `install(key)` replaces the serializer Thespian's
TCP transport uses (module global `serializer`, and the pre-serialized ACK frames):
- sending: frame = HMAC-SHA256(key, pickle) || pickle, inside Thespian's `LEN>` framing;
- receiving: the tag is checked with a constant-time compare BEFORE a single byte is
  unpickled, then the pickle is read by a restricted Unpickler whose find_class allows only
  the classes the signer's messages really carry (ALLOWED_*). Thespian's own ACKs and
  control messages go through the same path: there is no unauthenticated frame.
A refused frame raises FrameRefused inside Thespian's receive path, which answers
ACK+DATAERR (itself authenticated, so it tells a stranger nothing), closes the connection
and delivers nothing. It is logged once for that connection (the connection ends with it).

The key is random per run, made by `signer run` and inherited by the admin and actor
processes through memory (they are forked, never exec'd): it is in no environment variable
and no command line. `signer-admin` reads it from KEY_FILE_NAME in the data folder, a 0600
file `signer run` writes atomically before the actor system starts and removes on a clean
shutdown (see docs/SECURITY.md, "Actor transport").
"""
from __future__ import annotations

import contextlib
import functools
import hashlib
import hmac
import importlib
import io
import logging
import os
import pickle
import secrets
import threading
from collections.abc import Callable
from pathlib import Path
from typing import Any

KEY_BYTES = 32
TAG_BYTES = hashlib.sha256().digest_size
KEY_FILE_NAME = "actor-transport.key"

# Refusals are written by the refusing process itself, through a handler install() gets:
# a record sent to Thespian's logger from inside the transport's receive path was measured
# to wait unsent until that actor's next activity (often shutdown). Not registered with
# logging's manager, which Thespian replaces in every actor process.
refusal_log = logging.Logger("signer.transport", logging.WARNING)


class FrameRefused(Exception):
    """A frame without a valid tag, or naming a class the signer never sends."""


class TransportKeyError(Exception):
    """The key file cannot be read or is not a key; the message says what to do."""


# What find_class may return, measured by logging every find_class while the end-to-end
# tests ran (docs/decisions/0001-authenticated-actor-transport.md). Everything else, above
# all any function (os.system, builtins.eval, ...), refuses the frame.
# 1. The signer's own messages and the configuration StartSigner carries: any class defined
#    in these modules (a class, never a function; not a name imported from elsewhere).
OWN_CLASS_MODULES = ("messages", "core.runtime.config")
# 2. Thespian's messages: subclasses of thespian.actors.ActorSystemMessage, except the ones
#    that load actor source code or join other actor systems, which the signer never uses.
THESPIAN_REFUSED_MODULES = ("thespian.system.messages.convention",)
THESPIAN_REFUSED_NAMES = frozenset({"ValidateSource", "ValidatedSource", "LoadedSource",
                                    "UnloadedSource", "_SourceChangeNotification",
                                    "RegisterSourceAuthority", "NotifyOnSourceAvailability"})
# 3. Exact classes: Thespian's addresses (with the socket enums they hold), the log records
#    actors forward to Thespian's logger (message already formatted, args None), and the
#    datetime types sync and status messages carry.
ALLOWED_NAMES = frozenset({
    ("thespian.actors", "ActorAddress"),
    ("thespian.system.transport.IPBase", "TCPv4ActorAddress"),
    ("thespian.system.transport.IPBase", "RoutedTCPv4ActorAddress"),
    ("thespian.system.transport.IPBase", "TXOnlyAdminTCPv4ActorAddress"),
    ("thespian.system.transport.TCPTransport", "RoutedTCPv4ActorAddress"),
    ("thespian.system.transport.TCPTransport", "TXOnlyAdminTCPv4ActorAddress"),
    ("socket", "AddressFamily"), ("socket", "SocketKind"),
    ("logging", "LogRecord"),
    ("datetime", "datetime"), ("datetime", "date"), ("datetime", "timedelta"),
    ("datetime", "timezone"),
})


def new_key() -> bytes:
    return secrets.token_bytes(KEY_BYTES)


def seal(key: bytes, payload: bytes) -> bytes:
    return hmac.new(key, payload, hashlib.sha256).digest() + payload


def unseal(key: bytes, frame: bytes) -> bytes:
    """The payload of an authentic frame; FrameRefused otherwise. Nothing is parsed first."""
    if len(frame) < TAG_BYTES:
        raise FrameRefused("frame shorter than its authentication tag")
    tag, payload = frame[:TAG_BYTES], frame[TAG_BYTES:]
    if not hmac.compare_digest(tag, hmac.new(key, payload, hashlib.sha256).digest()):
        raise FrameRefused("frame authentication tag does not match (sender lacks this run's key)")
    return payload


def _within(module: str, packages: tuple[str, ...]) -> bool:
    return any(module == p or module.startswith(p + ".") for p in packages)


@functools.lru_cache(maxsize=512)
def class_allowed(module: str, name: str) -> bool:
    if (module, name) in ALLOWED_NAMES:
        return True
    if module == "socket":
        # Python 3.11.0-3.11.4 (Debian 12 ships 3.11.2) pickle a global enum member by its
        # name (`socket.AF_INET`), later ones by class and value: allow the members only.
        import socket

        return isinstance(getattr(socket, name, None), (socket.AddressFamily, socket.SocketKind))
    own = _within(module, OWN_CLASS_MODULES)
    thespian = (_within(module, ("thespian",)) and not _within(module, THESPIAN_REFUSED_MODULES)
                and name not in THESPIAN_REFUSED_NAMES)
    if not (own or thespian):
        return False
    try:  # only our own or Thespian's modules get here: importing them runs nothing foreign
        found = getattr(importlib.import_module(module), name, None)
    except ImportError:
        return False
    if not isinstance(found, type) or found.__module__ != module:
        return False  # a function, or a name that module imported from elsewhere
    if thespian:
        from thespian.actors import ActorSystemMessage

        return issubclass(found, ActorSystemMessage)
    return True


class RestrictedUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        if not class_allowed(module, name):
            raise FrameRefused(f"class {module}.{name} is not one the signer sends")
        return super().find_class(module, name)


def restricted_loads(payload: bytes) -> Any:
    try:
        return RestrictedUnpickler(io.BytesIO(payload)).load()
    except FrameRefused:
        raise
    except Exception as exc:  # a truncated or malformed pickle, even with a valid tag
        raise FrameRefused(f"frame does not unpickle: {type(exc).__name__}") from None


class AuthenticatedSerializer:
    """What Thespian's TCPTransport calls as `serializer.dumps` / `serializer.loads`."""

    def __init__(self, key: bytes) -> None:
        if len(key) != KEY_BYTES:
            raise ValueError(f"the actor transport key must be {KEY_BYTES} bytes")
        self._key = key

    def dumps(self, obj: Any) -> bytes:
        return seal(self._key, pickle.dumps(obj))

    def loads(self, frame: bytes) -> Any:
        try:
            return restricted_loads(unseal(self._key, frame))
        except FrameRefused as exc:
            _log_refusal(exc)
            raise


# The socket whose frame is being decoded (set around Thespian's receive calls), so a
# refusal names its peer. Thespian runs one transport loop per process.
_receiving = threading.local()


def _log_refusal(exc: FrameRefused) -> None:
    sock = getattr(_receiving, "socket", None)
    try:
        peer = "%s:%s" % sock.getpeername()[:2] if sock is not None else "unknown peer"
        local = "%s:%s" % sock.getsockname()[:2] if sock is not None else "?"
    except OSError:
        peer, local = "closed connection", "?"
    refusal_log.warning("actor transport: refused a frame from %s on %s (pid %d): %s; connection dropped",
                peer, local, os.getpid(), exc)


def _while_receiving_from(sock_of: Callable[..., Any]) -> Callable[[Callable[..., Any]], Callable[..., Any]]:
    """Wrap a Thespian method so a refusal inside it knows which socket it came from."""
    def wrap(method: Callable[..., Any]) -> Callable[..., Any]:
        @functools.wraps(method)
        def wrapper(self: Any, *args: Any, **kw: Any) -> Any:
            previous = getattr(_receiving, "socket", None)
            _receiving.socket = sock_of(*args)
            try:
                return method(self, *args, **kw)
            finally:
                _receiving.socket = previous
        return wrapper
    return wrap


_installed_key: bytes | None = None


def install(key: bytes, log_handler: logging.Handler | None = None) -> None:
    """Make this process's Thespian TCP transport authenticate every frame with `key`, and
    write refusals to `log_handler` (a FileHandler with delay=True opens the file in each
    process on its first refusal).

    Call before the ActorSystem is created: the admin and actor processes are forked from
    this one and inherit the patched module. Installing a different key later is refused
    (a process must never talk with two keys)."""
    global _installed_key
    from thespian.system.transport import TCPTransport as tcp
    from thespian.system.transport import streamBuffer

    if _installed_key is not None:
        if not hmac.compare_digest(_installed_key, key):
            raise RuntimeError("a different actor transport key is already installed")
        return
    serializer = AuthenticatedSerializer(key)
    tcp.serializer = serializer
    # Thespian pre-serializes its two ACK frames at import: authenticate them too.
    tcp.ackMsg = streamBuffer.toSendBuffer(streamBuffer.ackPacket, serializer.dumps)
    tcp.ackDataErrMsg = streamBuffer.toSendBuffer(streamBuffer.ackDataErrPacket, serializer.dumps)
    transport = tcp.TCPTransport
    transport._addedDataToIncoming = _while_receiving_from(lambda inc, *a, **k: inc.socket)(
        transport._addedDataToIncoming)
    original_ack_check = _while_receiving_from(lambda intent, *a, **k: getattr(intent, "socket", None))(
        transport._check_XMIT_4_done)

    @functools.wraps(original_ack_check)
    def check_ack(self: Any, intent: Any, rcv: Any) -> Any:
        # The answer on a connection we opened is refused: drop it and retry the send
        # later, exactly as Thespian does with a corrupted ACK.
        try:
            return original_ack_check(self, intent, rcv)
        except FrameRefused:
            intent.backoffPause(True)
            intent.stage = self._XMITStepRetry
            return self._nextTransmitStep(intent)

    transport._check_XMIT_4_done = check_ack
    if log_handler is not None:
        refusal_log.addHandler(log_handler)
    _installed_key = key


# ---- the key file, for signer-admin ---------------------------------------------------

def key_file_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / KEY_FILE_NAME


def write_key_file(path: Path, key: bytes) -> None:
    """Write the key 0600 under a random temporary name, then rename it into place, so no
    reader ever sees a partial key and no planted file or symlink is followed."""
    temporary = path.with_name(f".{path.name}.{secrets.token_hex(8)}")
    fd = os.open(temporary, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o600)
    try:
        with os.fdopen(fd, "wb") as handle:
            handle.write(key.hex().encode() + b"\n")
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(temporary, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temporary)
        raise


def read_key_file(path: Path) -> bytes:
    try:
        text = path.read_text().strip()
    except FileNotFoundError:
        raise TransportKeyError(f"{path} does not exist (is the signer running?)") from None
    except PermissionError:
        raise TransportKeyError(f"{path} is readable only by the signer's user: "
                                "run signer-admin as that user") from None
    except OSError as exc:
        raise TransportKeyError(f"cannot read {path}: {exc.strerror}") from None
    try:
        key = bytes.fromhex(text)
    except ValueError:
        key = b""
    if len(key) != KEY_BYTES:
        raise TransportKeyError(f"{path} does not hold an actor transport key")
    return key


def remove_key_file(path: Path, key: bytes) -> None:
    """Remove the key file if it still holds our key (a newer signer's stays)."""
    with contextlib.suppress(OSError, TransportKeyError):
        if hmac.compare_digest(read_key_file(path), key):
            path.unlink()
