"""The signer's configuration: one YAML file loaded into typed, validated dataclasses.

Every mistake (unknown key, missing key, wrong type, bad value) raises ConfigError with a
message naming the dotted key and what was expected, so start-up stops with a useful line.
The HSM PIN never lives in the YAML: it comes from an environment variable or a file the
YAML names (see docs/configuration.md).
"""
from __future__ import annotations

import dataclasses
import os
import re
import shutil
import types
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeVar

import yaml

if TYPE_CHECKING:
    from _typeshed import DataclassInstance


# A certification's event is ~2.4 times the key: at 2 MiB ~4.8 MB, within the nats-server
# max_payload the project configures (core/sync/nats_auth.py, MAX_PAYLOAD: 8 MB).
MAX_OPENPGP_KEY_BYTES = 2 * 1024 * 1024
MAX_X509_WORKERS = 16  # each is a process of ~55 MiB (pkilint loaded)


class ConfigError(Exception):
    """A configuration mistake; the message names the key."""


@dataclass(frozen=True)
class SerialConfig:
    mode: str  # "dev-pty": the signer creates a pty pair; "device": a real serial port
    device: str | None = None
    baudrate: int = 115200
    link_path: str | None = None  # dev-pty: a symlink to the client end is kept here
    reopen_max_backoff_s: float = 5.0


@dataclass(frozen=True)
class HsmConfig:
    module: str
    token_label: str
    pin_env: str | None = None
    pin_file: str | None = None
    softhsm_conf: str | None = None  # sets SOFTHSM2_CONF for the signer's processes
    health_key: str | None = None  # key label for the health test signature


@dataclass(frozen=True)
class IssuerConfig:
    id: str
    certificate: str
    key_label: str


@dataclass(frozen=True)
class OpenPgpConfig:
    key_label: str
    public_key: str  # armoured public key block made by dev-init
    created: int  # key creation time: part of the fingerprint, so it is stored
    default_days: int = 366  # certification expiry when a request names none
    max_days: int = 366  # cap on a request's days
    signature_type: int = 0x10  # 0x10 generic .. 0x13 positive certification
    policy_url: str | None = "http://www.cacert.org/cps.php"
    max_key_bytes: int = 1024 * 1024  # larger user keys are refused (openpgp_oversized)
    max_uids: int = 20  # user ids one sign_openpgp may ask for: one HSM signature each (limit_exceeded)
    gpg: str = "gpg"  # the kept implementation that validates user keys first


@dataclass(frozen=True)
class AuditConfig:
    # The token key that seals the audit log's head (EC P-256, sign-only, made by dev-init
    # or the key ceremony); it signs seals only, never a request's bytes.
    key_label: str = "audit-key"
    public_key: str | None = None  # its public half (PEM) for `signer-admin verify-audit`


@dataclass(frozen=True)
class RepositoryConfig:
    path: str


@dataclass(frozen=True)
class ActorSystemConfig:
    admin_port: int
    log_file: str | None = None


@dataclass(frozen=True)
class ProtocolConfig:
    max_payload_bytes: int = 4 * 1024 * 1024
    handler_timeout_s: float = 60.0


@dataclass(frozen=True)
class HealthConfig:
    ca_expiry_warning_days: int = 30


@dataclass(frozen=True)
class EventKeyConfig:
    node_id: str  # a signer whose events this one applies
    key: str  # its Ed25519 event key: base64 of the 32 raw public bytes


@dataclass(frozen=True)
class SyncConfig:
    local_url: str  # this signer's own nats-server (JetStream): its event stream lives there
    credentials_file: str  # 0600 file: the NATS password of user <node_id> on both servers
    event_signing_key: str  # 0600 file: this signer's Ed25519 event key (made when missing)
    peer_url: str | None = None  # the peer's nats-server, read with a durable consumer
    peer_node_id: str | None = None
    peer_event_keys: list[EventKeyConfig] = field(default_factory=list)  # events of these are applied
    publish_interval_s: float = 0.5  # how often the outbox is checked for new events
    batch: int = 200  # events per publish batch


def _shipped_profiles() -> str:
    """The default profiles folder: inside the installed package (a wheel ships config/profiles
    as core/shipped_profiles, setup.cfg), else config/profiles of the source checkout."""
    installed = Path(__file__).resolve().parents[1] / "shipped_profiles"
    if installed.is_dir():
        return str(installed)
    return str(Path(__file__).resolve().parents[2] / "config" / "profiles")


SHIPPED_PROFILES = _shipped_profiles()


def default_x509_workers(cpus: int | None) -> int:
    """The CPUs less one (left to the other actors), but 2 on a 2-CPU machine: measured
    there, pipelined sign_x509 15.1-15.5 % of the raw HSM rate with 2 workers, 13.6-13.9 %
    with 1 (docs/decisions/0010-fast-path.md, round 3; before the seal pace and the lint
    cache a second worker cost more than it gained). 1 on 1 CPU; at most MAX_X509_WORKERS."""
    cpus = cpus or 1
    return min(MAX_X509_WORKERS, cpus if cpus <= 2 else cpus - 1)


@dataclass(frozen=True)
class X509Config:
    profiles: str = SHIPPED_PROFILES  # folder of profile YAML files (docs/profiles.md)
    lint: bool = True  # pkilint RFC 5280 lints on every certificate before it is signed
    # X509Signer actors (processes) building and linting in parallel: default_x509_workers.
    workers: int = field(default_factory=lambda: default_x509_workers(os.cpu_count()))


@dataclass(frozen=True)
class CrlConfig:
    lifetime_days: float = 7.0  # nextUpdate - thisUpdate
    grace_days: float | None = None  # expired revoked certificates stay listed this long; default 2 x lifetime
    rebuild_after_fraction: float = 0.5  # rebuild an unchanged CRL once this much of its lifetime passed
    keep: int = 10  # CRLs kept per issuer to diff against
    hash: str = "sha256"
    # A critical issuingDistributionPoint naming the issuer's CRL URL. Off by default: the
    # old signer's CRLs had none, and OpenSSL's -crl_check_all then refuses every chain
    # whose CA certificates lack a matching CRL distribution point (a self-signed root has
    # none: "different CRL scope"). The CRLs are complete, so RFC 5280 needs no IDP.
    issuing_distribution_point: bool = False

    @property
    def grace(self) -> float:
        return self.grace_days if self.grace_days is not None else 2 * self.lifetime_days


@dataclass(frozen=True)
class SignerConfig:
    node_id: str
    serial: SerialConfig
    hsm: HsmConfig
    repository: RepositoryConfig
    actor_system: ActorSystemConfig
    issuers: list[IssuerConfig]
    openpgp: OpenPgpConfig | None = None
    protocol: ProtocolConfig = field(default_factory=ProtocolConfig)
    health: HealthConfig = field(default_factory=HealthConfig)
    x509: X509Config = field(default_factory=X509Config)
    crl: CrlConfig = field(default_factory=CrlConfig)
    sync: SyncConfig | None = None
    audit: AuditConfig = field(default_factory=AuditConfig)
    source: str = ""  # the file it was loaded from (set by the loader, not the YAML)

    def issuer(self, issuer_id: str) -> IssuerConfig | None:
        return next((i for i in self.issuers if i.id == issuer_id), None)


# Keys whose values are paths: relative ones resolve against the config file's folder.
PATH_KEYS = {"profiles", "device", "link_path", "module", "pin_file", "softhsm_conf", "certificate",
             "public_key", "path", "log_file", "credentials_file", "event_signing_key",
             # the WebDB client's (tools/webdb/config.py), built with the same builder
             "files_root", "names_relative_to", "publish_dir", "state_dir", "password_file",
             "unix_socket"}


_Config = TypeVar("_Config", bound="DataclassInstance")


def load_config(path: str | os.PathLike[str]) -> SignerConfig:
    config = load_yaml_as(SignerConfig, path)
    validate(config)
    return config


def load_yaml_as(cls: type[_Config], path: str | os.PathLike[str]) -> _Config:
    """Read the YAML file and build dataclass `cls` from it (relative paths against the file's
    folder, `source` set to the file); every mistake is a ConfigError naming the key."""
    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except OSError as exc:
        raise ConfigError(f"cannot read config file {path}: {exc.strerror}") from None
    except yaml.YAMLError as exc:
        raise ConfigError(f"config file {path} is not valid YAML: {exc}") from None
    config = build(cls, data, "", path.resolve().parent)
    return dataclasses.replace(config, source=str(path.resolve()))


def build(cls: type[_Config], data: Any, where: str, base: Path) -> _Config:
    """Build dataclass `cls` from a mapping, checking every key against its type hints."""
    if not isinstance(data, dict):
        raise ConfigError(f"{where or 'the config'}: expected a mapping, got {_kind(data)}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.name != "source"}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ConfigError(f"{_join(where, str(unknown[0]))}: unknown key "
                          f"(expected one of: {', '.join(sorted(fields))})")
    values = {}
    for name, f in fields.items():
        key = _join(where, name)
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ConfigError(f"{key}: missing required key ({_describe(hints[name])})")
            continue
        values[name] = _convert(hints[name], data[name], key, base)
    return cls(**values)


def _convert(hint: Any, value: Any, key: str, base: Path) -> Any:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        options = typing.get_args(hint)
        if value is None and type(None) in options:
            return None
        inner = [o for o in options if o is not type(None)]
        return _convert(inner[0], value, key, base)
    if hint is Any:  # free-form (a ceremony file's steps: built per kind afterwards)
        return value
    if origin is dict:  # a free-form mapping (dict[str, Any]): checked as a dict, its contents are not
        hint = dict
    if origin is list:
        if not isinstance(value, list):
            raise ConfigError(f"{key}: expected a list, got {_kind(value)}")
        (item,) = typing.get_args(hint)
        return [_convert(item, v, f"{key}[{i}]", base) for i, v in enumerate(value)]
    if isinstance(hint, type) and dataclasses.is_dataclass(hint):  # hints are classes
        return build(hint, value, key, base)
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not isinstance(value, hint) or (hint is int and isinstance(value, bool)):
        raise ConfigError(f"{key}: expected {_describe(hint)}, got {_kind(value)} {value!r}")
    if hint is str and key.rsplit(".", 1)[-1] in PATH_KEYS:
        # normpath, not resolve(): a path may be a symlink the signer itself maintains
        # (serial.link_path), which must not be replaced by its current target.
        return os.path.normpath(base / value) if not os.path.isabs(value) else value
    return value


def validate(config: SignerConfig) -> None:
    """Checks that span fields (the type checks happened while building)."""
    if config.serial.mode not in ("dev-pty", "device"):
        raise ConfigError(f"serial.mode: expected 'dev-pty' or 'device', got {config.serial.mode!r}")
    if config.serial.mode == "device" and not config.serial.device:
        raise ConfigError("serial.device: required when serial.mode is 'device'")
    if not config.hsm.pin_env and not config.hsm.pin_file:
        raise ConfigError("hsm.pin_env or hsm.pin_file: one is required (the PIN is never in the YAML)")
    if config.serial.baudrate <= 0 or config.serial.reopen_max_backoff_s < 0.1:
        raise ConfigError("serial: baudrate must be positive and reopen_max_backoff_s at least 0.1")
    if config.protocol.handler_timeout_s <= 0:
        raise ConfigError("protocol.handler_timeout_s: expected a positive number of seconds")
    if not 1024 <= config.actor_system.admin_port <= 65535:
        raise ConfigError("actor_system.admin_port: expected a port number from 1024 to 65535")
    if not config.issuers:
        raise ConfigError("issuers: at least one issuer is required")
    ids = [i.id for i in config.issuers]
    if len(set(ids)) != len(ids):
        raise ConfigError(f"issuers: duplicate issuer id in {ids}")
    for i, issuer in enumerate(config.issuers):
        if not os.path.isfile(issuer.certificate):
            raise ConfigError(f"issuers[{i}].certificate: file {issuer.certificate} does not exist")
    if not re.fullmatch(r"[A-Za-z0-9_-]{1,64}", config.node_id):
        raise ConfigError("node_id: expected 1 to 64 letters, digits, '-' or '_' (it names a NATS stream)")
    if config.sync is not None:
        if (config.sync.peer_url is None) != (config.sync.peer_node_id is None):
            raise ConfigError("sync.peer_url and sync.peer_node_id: give both or neither")
        if config.sync.peer_node_id == config.node_id:
            raise ConfigError("sync.peer_node_id: must differ from node_id")
        if config.sync.batch < 1 or config.sync.publish_interval_s <= 0:
            raise ConfigError("sync: batch must be >= 1 and publish_interval_s > 0")
        _validate_event_keys(config.sync, config.node_id)
    pgp = config.openpgp
    if pgp is not None:
        if not 0x10 <= pgp.signature_type <= 0x13:
            raise ConfigError("openpgp.signature_type: expected 16 to 19 (0x10 to 0x13)")
        if not 0 < pgp.default_days <= pgp.max_days <= 3660:
            raise ConfigError("openpgp.default_days, max_days: expected 1 <= default_days <= max_days <= 3660")
        if not 1024 <= pgp.max_key_bytes <= MAX_OPENPGP_KEY_BYTES:
            from core.sync.nats_auth import MAX_PAYLOAD
            raise ConfigError(f"openpgp.max_key_bytes: expected 1024 to {MAX_OPENPGP_KEY_BYTES} (2 MiB: a"
                              f" certification is replicated as one NATS message, at most {MAX_PAYLOAD})")
        if pgp.max_uids < 1:
            raise ConfigError("openpgp.max_uids: expected at least 1")
        if shutil.which(pgp.gpg) is None:
            raise ConfigError(f"openpgp.gpg: {pgp.gpg!r} is not an executable on PATH")
        if not os.path.isfile(pgp.public_key):
            raise ConfigError(f"openpgp.public_key: file {pgp.public_key} does not exist")
    if not os.path.isdir(config.x509.profiles):
        raise ConfigError(f"x509.profiles: folder {config.x509.profiles} does not exist")
    if not 1 <= config.x509.workers <= MAX_X509_WORKERS:
        raise ConfigError(f"x509.workers: expected 1 to {MAX_X509_WORKERS}")
    if not 0 < config.crl.rebuild_after_fraction <= 1:
        raise ConfigError("crl.rebuild_after_fraction: expected a number in (0, 1]")
    if config.crl.lifetime_days <= 0 or config.crl.grace < 0 or config.crl.keep < 1:
        raise ConfigError("crl: lifetime_days must be > 0, grace_days >= 0 and keep >= 1")
    if config.crl.hash not in ("sha256", "sha384", "sha512"):
        raise ConfigError(f"crl.hash: expected sha256, sha384 or sha512, got {config.crl.hash!r}")
    if config.protocol.max_payload_bytes < 1024:
        raise ConfigError("protocol.max_payload_bytes: expected at least 1024")


# Set by hold_pin() in `signer run` before the actor system forks: the actors inherit it in
# memory, so the PIN can leave the environment (docs/SECURITY.md, "Files, secrets").
_held_pin: tuple[HsmConfig, str] | None = None


def hold_pin(hsm: HsmConfig) -> str:
    """Read the PIN once and keep it in this process (and every process forked from it)."""
    global _held_pin
    _held_pin = None
    _held_pin = (hsm, read_pin(hsm))
    return _held_pin[1]


def _validate_event_keys(sync: SyncConfig, node_id: str) -> None:
    from core.sync.event_signing import parse_public_key  # cryptography: only when sync is used

    seen = set()
    for i, entry in enumerate(sync.peer_event_keys):
        where = f"sync.peer_event_keys[{i}]"
        if entry.node_id in seen or entry.node_id == node_id:
            raise ConfigError(f"{where}.node_id: {entry.node_id!r} is this signer or listed twice")
        seen.add(entry.node_id)
        try:
            parse_public_key(entry.key)
        except ValueError as exc:
            raise ConfigError(f"{where}.key: not an Ed25519 public key ({exc})") from None
    if sync.peer_node_id is not None and sync.peer_node_id not in seen:
        raise ConfigError(f"sync.peer_event_keys: no key for peer_node_id {sync.peer_node_id!r}"
                          " (its events could not be verified)")


def read_pin(hsm: HsmConfig) -> str:
    """The held PIN, else the environment variable, else the file (refused when group or
    others may read it). Never logged."""
    if _held_pin is not None and _held_pin[0] == hsm:
        return _held_pin[1]
    if hsm.pin_env and os.environ.get(hsm.pin_env):
        return os.environ[hsm.pin_env]
    if hsm.pin_env and hsm.pin_env in os.environ and not hsm.pin_file:
        raise ConfigError(f"hsm.pin_env: environment variable {hsm.pin_env} is empty")
    if hsm.pin_file:
        return read_private_file(hsm.pin_file, "hsm.pin_file").strip()
    raise ConfigError(f"hsm.pin_env: environment variable {hsm.pin_env} is not set")


def read_private_file(path: str, key: str) -> str:
    """A secret file's text; ConfigError (naming `key`) when group or others may access it
    or it cannot be read. Never logged."""
    from core.runtime.private_files import PrivateFileError, read_private_bytes

    try:
        return read_private_bytes(path).decode("utf-8", errors="replace")
    except PrivateFileError as exc:
        if exc.mode is None:
            raise ConfigError(f"{key}: cannot read {path}: {exc.strerror}") from None
        raise ConfigError(
            f"{key}: {path} is open to group or others (mode "
            f"{exc.mode & 0o777:03o}); make it readable only by the signer's user: "
            f"chmod 600 {path}") from None


def _join(where: str, name: str) -> str:
    return f"{where}.{name}" if where else name


def _kind(value: Any) -> str:
    return "nothing" if value is None else type(value).__name__


def _describe(hint: Any) -> str:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return " or ".join(_describe(a) for a in typing.get_args(hint) if a is not type(None))
    if origin is list:
        return f"a list of {_describe(typing.get_args(hint)[0])}"
    if hint is Any:
        return "anything"
    if origin is dict:
        return "dict"  # as a bare dict hint reads
    if dataclasses.is_dataclass(hint):
        return "a mapping"
    return {str: "a string", int: "an integer", float: "a number", bool: "true or false"}.get(
        hint, getattr(hint, "__name__", str(hint)))
