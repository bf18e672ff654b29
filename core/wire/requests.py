"""What every command's request body shares, and the bodies of the commands without fields.

Each command's body is parsed once, by plain code, into a frozen dataclass with typed fields
(`parse` classmethods: core/x509/requests.py for sign_x509 and revoke_x509,
core/crl/requests.py for fetch_crl, core/openpgp/requests.py for sign_openpgp, this module
for health and ca_info). A handler actor gets the typed request and never reads the
msgpack body itself; the body as sent is kept only for the request digest. A parse raises
the SignerError (`bad_request` and the others of docs/protocol.md) the client is answered.
"""
from __future__ import annotations

import hashlib
from dataclasses import dataclass
from typing import Any, Collection, Mapping

from core.wire.protocol import SignerError, pack


def refuse_unknown_fields(command: str, body: Mapping[str, Any], fields: Collection[str]) -> None:
    """Any field the command does not take is refused, so a request can never smuggle in
    something (say, extensions) that a handler would silently ignore."""
    unknown = sorted(map(str, set(body) - set(fields)))
    if unknown:
        raise SignerError("bad_request", f"unknown field(s) {unknown} for {command}; "
                                         f"it takes {sorted(fields)}")


def request_digest(command: str, body: Mapping[str, Any]) -> str:
    """Identifies a request's content, so a reused id with other content is caught:
    sha256 of msgpack([command, canonical(body)]), every map a list of [str(key), value]
    pairs sorted by key, recursively (docs/ISSUANCE-CYCLE.md, idempotency)."""
    def canonical(value: Any) -> Any:
        if isinstance(value, dict):
            return sorted((str(k), canonical(v)) for k, v in value.items())
        if isinstance(value, (list, tuple)):
            return [canonical(v) for v in value]
        return value
    return hashlib.sha256(pack([command, canonical(body)])).hexdigest()


@dataclass(frozen=True)
class HealthRequest:
    """`health` takes no fields; any sent are ignored (docs/protocol.md)."""

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> HealthRequest:
        return cls()


@dataclass(frozen=True)
class CaInfoRequest:
    """`ca_info` takes no fields; any sent are ignored (docs/protocol.md)."""

    @classmethod
    def parse(cls, body: Mapping[str, Any]) -> CaInfoRequest:
        return cls()
