"""Every message class survives the actor transport (issue 13.3).

Thespian pickles each message between actor processes, and the authenticated transport
unpickles it with a restricted Unpickler that refuses any class it does not know
(core/runtime/actor_transport_auth.py). The classes are found by walking the `messages`
package, so a class added later is tested without being listed here; each instance is made
from the class's own type hints, and a hint this test cannot fill fails it (add a sample to
SAMPLES) rather than being skipped.
"""
from __future__ import annotations

import dataclasses
import importlib
import pickle
import pkgutil
import types
import typing
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import pytest
import yaml

import messages
from core.runtime.actor_transport_auth import (AuthenticatedSerializer, FrameRefused, class_allowed, new_key,
                                               restricted_loads)
from core.runtime.config import load_config

EXAMPLE = Path(__file__).resolve().parents[2] / "config" / "signer.example.yaml"
WHEN = datetime(2026, 11, 27, 9, 52, 23, tzinfo=timezone.utc)


def message_classes() -> list[type]:
    """Every dataclass defined in a module of the `messages` package."""
    found = []
    for info in pkgutil.walk_packages(messages.__path__, "messages."):
        module = importlib.import_module(info.name)
        for value in vars(module).values():
            if isinstance(value, type) and value.__module__ == module.__name__ \
                    and dataclasses.is_dataclass(value):
                found.append(value)
    return sorted(found, key=lambda cls: f"{cls.__module__}.{cls.__qualname__}")


MESSAGE_CLASSES = message_classes()


@pytest.fixture(scope="module")
def signer_config(tmp_path_factory):
    """The shipped example configuration, loaded as `signer run` loads it: what StartSigner
    and Configure carry."""
    folder = tmp_path_factory.mktemp("config")
    data = yaml.safe_load(EXAMPLE.read_text())
    for issuer in data["issuers"]:
        (folder / f"{issuer['id']}.pem").write_text("placeholder")
        issuer["certificate"] = str(folder / f"{issuer['id']}.pem")
    data["x509"]["profiles"] = str(EXAMPLE.parent / "profiles")
    (folder / "openpgp-ca.asc").write_text("placeholder")
    data["openpgp"]["public_key"] = str(folder / "openpgp-ca.asc")
    path = folder / "signer.yaml"
    path.write_text(yaml.safe_dump(data))
    return load_config(path)


def thespian_address() -> Any:
    """What the Supervisor's address book holds in the running signer."""
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    return TCPv4ActorAddress("127.0.0.1", 45123, external=False)


# Fields typed Any (or too loosely for a useful sample) get what the signer really sends.
SAMPLES: dict[tuple[str, str], Any] = {
    ("StartSigner", "config"): "SIGNER_CONFIG",
    ("Configure", "config"): "SIGNER_CONFIG",
    ("Configure", "addresses"): {"hsm": "THESPIAN_ADDRESS"},
}


def sample(hint: Any, where: str, config: Any) -> Any:
    """A value of the type `hint` (the first alternative of a union, never None)."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any or isinstance(hint, typing.TypeVar):
        return {"any": [1, "two", b"three", WHEN]}
    if origin in (typing.Union, types.UnionType):
        return sample(next(a for a in args if a is not type(None)), where, config)
    if origin is typing.Literal:
        return args[0]
    if origin is typing.ClassVar:
        raise AssertionError(f"{where}: a ClassVar is not a field")
    if origin is list:
        return [sample(args[0], where, config)]
    if origin is tuple:
        if len(args) == 2 and args[1] is Ellipsis:
            return (sample(args[0], where, config),)
        return tuple(sample(a, where, config) for a in args)
    if origin is dict:
        return {sample(args[0], where, config): sample(args[1], where, config)}
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):
        return instance_of(hint, config)
    if typing.is_typeddict(hint):
        return {name: sample(h, where, config) for name, h in typing.get_type_hints(hint).items()}
    simple = {bool: True, int: 7, float: 1.5, str: "text", bytes: b"\x00\xff", datetime: WHEN,
              timedelta: timedelta(seconds=90), type(None): None}
    if hint in simple:
        return simple[hint]
    generic_origin = origin if isinstance(origin, type) and dataclasses.is_dataclass(origin) else None
    if generic_origin is not None:  # a generic dataclass such as RepoReply[X]
        return instance_of(generic_origin, config)
    raise AssertionError(f"{where}: no sample for the type {hint!r}: add one to SAMPLES")


def resolve(value: Any, config: Any) -> Any:
    if value == "SIGNER_CONFIG":
        return config
    if isinstance(value, dict):
        return {k: thespian_address() if v == "THESPIAN_ADDRESS" else v for k, v in value.items()}
    return value


def instance_of(cls: type, config: Any) -> Any:
    hints = typing.get_type_hints(cls)
    values = {}
    for f in dataclasses.fields(cls):
        if not f.init:
            continue
        where = f"{cls.__module__}.{cls.__qualname__}.{f.name}"
        override = SAMPLES.get((cls.__name__, f.name))
        values[f.name] = resolve(override, config) if override is not None else sample(hints[f.name], where, config)
    return cls(**values)


def test_the_walk_finds_the_messages():
    names = {cls.__name__ for cls in MESSAGE_CLASSES}
    # A sample of each module: the walk reaches every module of the package.
    assert {"Batch", "CommandRequest", "HsmSignRequest", "SerialBytesReceived", "RepoReply",
            "LookupOrReserve", "EventsCommitted", "QuarantineCount", "Configure"} <= names
    assert len(MESSAGE_CLASSES) >= 40, len(MESSAGE_CLASSES)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda cls: cls.__name__)
def test_every_message_class_is_frozen(cls, signer_config):
    assert cls.__dataclass_params__.frozen, f"{cls.__name__} must be @dataclass(frozen=True)"
    message = instance_of(cls, signer_config)
    if dataclasses.fields(message):
        with pytest.raises(dataclasses.FrozenInstanceError):
            setattr(message, dataclasses.fields(message)[0].name, None)


@pytest.mark.parametrize("cls", MESSAGE_CLASSES, ids=lambda cls: cls.__name__)
def test_every_message_class_crosses_the_actor_transport(cls, signer_config):
    message = instance_of(cls, signer_config)
    pickled = pickle.dumps(message)
    assert pickle.loads(pickled) == message
    # What the receiving actor's transport does: only allowed classes are unpickled.
    assert restricted_loads(pickled) == message
    serializer = AuthenticatedSerializer(new_key())
    assert serializer.loads(serializer.dumps(message)) == message


def test_a_batch_of_messages_crosses_the_transport(signer_config):
    batch_class = next(cls for cls in MESSAGE_CLASSES if cls.__name__ == "Batch")
    items = tuple(instance_of(cls, signer_config) for cls in MESSAGE_CLASSES if cls is not batch_class)
    batch = batch_class(items)
    assert restricted_loads(pickle.dumps(batch)) == batch


def test_the_check_would_catch_a_class_the_transport_refuses():
    """The test above can fail: a message carrying a class from outside the allow-list (a
    core dataclass, say) is refused by the same unpickler."""
    from core.wire.protocol import Request

    assert not class_allowed(Request.__module__, Request.__qualname__)
    carrier = next(cls for cls in MESSAGE_CLASSES if cls.__name__ == "CommandRequest")
    message = carrier(1, "id", "sign_x509", {"smuggled": Request("id", "sign_x509", {})})
    with pytest.raises(FrameRefused):
        restricted_loads(pickle.dumps(message))
