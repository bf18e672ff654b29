"""The message layer of the wire protocol (see docs/protocol.md).

A frame's payload is one msgpack map. Requests: ``{"v": 1, "id": ID, "cmd": NAME,
"body": {...}}``. Responses carry the request's id and either ``"body"`` (success) or
``"error": {"code", "message"}``. Requests are independent: a client may have many in
flight, and responses come back in any order, matched by id.
"""
from __future__ import annotations

from collections.abc import Container
from dataclasses import dataclass
from typing import Any, TypeGuard

import msgpack

from core.wire.errors import ErrorCode

PROTOCOL_VERSION = 1
MAX_ID_LENGTH = 128
# How deep a request may nest maps and arrays, the envelope map being level 1 (the deepest
# request the commands need is 4: envelope, body, the `sans` array, one pair). The decoded
# body is pickled to reach its handler, and pickling recurses: some 500 levels raise a
# RecursionError there, and msgpack's decoder itself stops at 1024 levels.
MAX_NESTING_DEPTH = 32
_CONTAINER_TYPES = frozenset({list, dict})  # what msgpack decodes arrays and maps into

# Every error code the signer sends, with its meaning (core/wire/errors.py is the one source).
# docs/protocol.md documents the same table; tests/project/test_docs_match_code.py checks that the
# two stay in step.
ERROR_CODES: dict[str, str] = {code.value: code.meaning for code in ErrorCode}


class SignerError(Exception):
    """An error that is answered to the client as a typed error response."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    def to_wire(self) -> dict[str, str]:
        return {"code": self.code, "message": self.message}


@dataclass(frozen=True)
class Request:
    request_id: str | int
    command: str
    body: dict[str, Any]


def pack(obj: Any) -> bytes:
    packed: bytes = msgpack.packb(obj, use_bin_type=True)  # msgpack has no type hints
    return packed


class Extension:
    """What a msgpack ext value (any type code but the timestamp's) decodes to. The protocol
    uses none: decode_request refuses a request holding one (`bad_request`, with the id)
    rather than let it travel on as an object the actor transport would refuse."""
    __slots__ = ("code",)

    def __init__(self, code: int, data: bytes = b"") -> None:
        self.code = code

    def __repr__(self) -> str:
        return f"Extension({self.code})"


# msgpack values the protocol never uses: ext values, and timestamps (ext type -1).
_EXTENSION_TYPES = frozenset({Extension, msgpack.Timestamp})


def _map_without_repeated_keys(pairs: list[tuple[Any, Any]]) -> dict[Any, Any]:
    """A map that names one key twice is refused: two parsers keeping the first or the last
    value would read two different requests (the signer and whatever logged it)."""
    mapping = dict(pairs)
    if len(mapping) != len(pairs):
        seen: set[Any] = set()
        for key, _ in pairs:  # the first key named again
            if key in seen:
                raise ValueError(f"a map names the key {key!r} more than once")
            seen.add(key)
    return mapping


def unpack(payload: bytes) -> Any:
    """Decode exactly one msgpack object; raise SignerError("bad_msgpack") otherwise (also
    for a map that repeats a key, or whose keys are arrays or maps), or "bad_request" when
    it is nested too deeply for msgpack's decoder to hold it."""
    try:
        return msgpack.unpackb(payload, raw=False, strict_map_key=False, ext_hook=Extension,
                               object_pairs_hook=_map_without_repeated_keys)
    except msgpack.StackError:
        raise SignerError("bad_request", _too_deep_message("the payload")) from None
    except (msgpack.ExtraData, msgpack.FormatError, ValueError, TypeError) as exc:
        # FormatError (a reserved byte such as 0xc1) says nothing: name it at least.
        detail = str(exc) or f"{type(exc).__name__} (a byte that starts no msgpack object)"
        raise SignerError("bad_msgpack", f"payload is not valid msgpack: {detail}") from None


def _too_deep_message(what: str) -> str:
    return (f"{what} nests maps and arrays more than {MAX_NESTING_DEPTH} levels deep "
            f"(the limit, the envelope map counting as level 1)")


def nested_deeper_than(value: Any, limit: int) -> bool:
    """Whether maps and arrays in a decoded msgpack value nest more than `limit` levels deep.
    Level by level, without recursion, so any depth is safe to check; a flat array of a
    million scalars is passed over at C speed (map over type), not element by element."""
    level, depth = ([value] if type(value) in _CONTAINER_TYPES else []), 1
    while level:
        if depth > limit:
            return True
        deeper: list[Any] = []
        for container in level:
            children = container.values() if type(container) is dict else container
            if not _CONTAINER_TYPES.isdisjoint(set(map(type, children))):
                deeper.extend(child for child in children if type(child) in _CONTAINER_TYPES)
        level, depth = deeper, depth + 1
    return False


def extension_in(value: Any) -> Any:
    """The first msgpack ext or timestamp value among a decoded value's map keys, map values
    and array items, at any depth (level by level, like nested_deeper_than); None if none."""
    level = [value] if type(value) in _CONTAINER_TYPES else []
    if type(value) in _EXTENSION_TYPES:
        return value
    while level:
        deeper: list[Any] = []
        for container in level:
            children = [*container.keys(), *container.values()] if type(container) is dict else container
            kinds = set(map(type, children))
            if not _EXTENSION_TYPES.isdisjoint(kinds):
                return next(child for child in children if type(child) in _EXTENSION_TYPES)
            if not _CONTAINER_TYPES.isdisjoint(kinds):
                deeper.extend(child for child in children if type(child) in _CONTAINER_TYPES)
        level = deeper
    return None


def valid_request_id(value: Any) -> TypeGuard[str | int]:
    if isinstance(value, bool):
        return False
    if isinstance(value, int):
        return 0 <= value < 2**63
    return isinstance(value, str) and 0 < len(value) <= MAX_ID_LENGTH


def decode_request(payload: bytes, known_commands: Container[str]) -> Request:
    """Validate a request payload. Errors carry the id when one could be read."""
    obj = unpack(payload)
    if not isinstance(obj, dict):
        raise SignerError("bad_envelope", f"payload is a {type(obj).__name__}, not a map")
    request_id = obj.get("id")
    if not valid_request_id(request_id):
        raise SignerError("bad_envelope",
                          f"'id' must be a non-empty string of at most {MAX_ID_LENGTH} "
                          "characters or a non-negative integer")
    try:
        if nested_deeper_than(obj, MAX_NESTING_DEPTH):
            raise SignerError("bad_request", _too_deep_message("the request"))
        extension = extension_in(obj)
        if extension is not None:
            kind = "a timestamp" if type(extension) is msgpack.Timestamp else f"an ext value of type {extension.code}"
            raise SignerError("bad_request", f"the request holds {kind}; the protocol uses no msgpack ext types")
        return _validate_fields(obj, request_id, known_commands)
    except SignerError as exc:
        raise RequestError(request_id, exc.code, exc.message) from None


class RequestError(SignerError):
    """A SignerError that belongs to a request whose id is known."""

    def __init__(self, request_id: str | int, code: str, message: str) -> None:
        super().__init__(code, message)
        self.request_id = request_id


def _validate_fields(obj: dict[Any, Any], request_id: str | int, known_commands: Container[str]) -> Request:
    version = obj.get("v")
    if type(version) is not int or version != PROTOCOL_VERSION:  # 1.0 and true are not 1
        raise SignerError("unsupported_version",
                          f"version {version!r} is not supported; this signer speaks {PROTOCOL_VERSION}")
    command = obj.get("cmd")
    if not isinstance(command, str):
        raise SignerError("bad_envelope", "'cmd' must be a string")
    body = obj.get("body", {})
    if not isinstance(body, dict):
        raise SignerError("bad_envelope", "'body' must be a map")
    unknown = set(obj) - {"v", "id", "cmd", "body"}
    if unknown:
        raise SignerError("bad_envelope", f"unknown envelope fields: {sorted(map(str, unknown))}")
    if command not in known_commands:
        raise SignerError("unknown_command", f"unknown command {command!r}")
    return Request(request_id, command, body)


def encode_request(request_id: str | int, command: str, body: dict[str, Any] | None = None) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "cmd": command, "body": body or {}})


def encode_response(request_id: str | int | None, body: dict[str, Any]) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "body": body})


def encode_error(request_id: str | int | None, code: str, message: str) -> bytes:
    return pack({"v": PROTOCOL_VERSION, "id": request_id, "error": {"code": code, "message": message}})


def field(body: dict[str, Any], name: str, kind: type | tuple[type, ...], required: bool = True,
          default: Any = None) -> Any:
    """Read one body field, raising a bad_request error that names the field."""
    if name not in body or body[name] is None:
        if required:
            raise SignerError("bad_request", f"field '{name}' is required")
        return default
    value = body[name]
    kinds = kind if isinstance(kind, tuple) else (kind,)
    # bool is a subclass of int: true must not pass where a number is asked for.
    if isinstance(value, bool) and bool not in kinds or not isinstance(value, kind):
        expected = kind.__name__ if isinstance(kind, type) else " or ".join(k.__name__ for k in kind)
        raise SignerError("bad_request", f"field '{name}' must be {expected}, got {type(value).__name__}")
    return value


def check_count(name: str, items: Any, limit: int, setting: str) -> None:
    """Refuse a list or map field with more than `limit` entries, naming the setting that
    sets the limit; checked before any work whose cost grows with the entries."""
    if len(items) > limit:
        raise SignerError("limit_exceeded", f"field '{name}' has {len(items)} entries; at most {limit} "
                                            f"are allowed ({setting})")
