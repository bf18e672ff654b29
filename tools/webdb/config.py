"""The WebDB client daemon's configuration (`signer-client run --config FILE`).

Built with the signer's own typed builder (core.runtime.config.build): every unknown key, missing
key or wrong type is a ConfigError naming the dotted key. The database password is never in
the YAML: it comes from an environment variable or a file (like the signer's HSM PIN).
docs/webdb-client.md describes every key.
"""
from __future__ import annotations

import os
import re
from dataclasses import dataclass, field
from pathlib import Path

from core.runtime.config import ConfigError, load_yaml_as

TABLES = ("emailcerts", "domaincerts", "orgemailcerts", "orgdomaincerts")
VARIANTS = ("", "codesign", "ocsp", "timestamp", "jabber")


@dataclass(frozen=True)
class IssuerPin:
    issuer: str
    sha256: str  # of the issuer certificate's DER, hex (colons allowed)


@dataclass(frozen=True)
class SignerLinkConfig:
    device: str  # the serial port, or the dev signer's client-tty link
    baudrate: int = 115200
    timeout_s: float = 90.0  # per request; above the signer's own 30 s HSM/repository deadlines
    max_in_flight: int = 4  # requests pipelined on the link
    backoff_initial_s: float = 1.0
    backoff_max_s: float = 60.0
    # The issuer certificates of the first signer met are kept in state_dir; a signer with
    # others (another CA, a test signer, a wrong cable) is refused until the file is removed.
    pin_issuers: bool = True
    # Pins given here are checked instead of the first signer's (no trust on first use).
    issuer_sha256: list[IssuerPin] = field(default_factory=list)


@dataclass(frozen=True)
class WebDbConfig:
    driver: str  # "sqlite" or "mysql" (MariaDB/MySQL through PyMySQL)
    path: str | None = None  # sqlite: the database file
    host: str = "localhost"
    port: int = 3306
    unix_socket: str | None = None
    database: str = "cacert"
    user: str = "cacert"
    password_env: str | None = None
    password_file: str | None = None
    # csr_name / crt_name / gpg.csr / gpg.crt hold file paths, as in CAcert's web app. They
    # start at names_relative_to (None: files_root) and must stay inside files_root
    # (tools.webdb.work.row_file): no absolute names, no `..` or symlink out of it.
    files_root: str = "."
    names_relative_to: str | None = None  # CAcert's `../csr/...` names: its www folder
    poll_interval_s: float = 5.0
    batch: int = 50  # rows fetched per table and kind of work per poll
    max_attempts: int = 3  # the old client's `warning < 3`
    retry_delay_s: float = 60.0  # after a counted failure, before the row is tried again
    revoke_marker: str = "1970-01-01 10:00:01"  # the web app's "please revoke" value of `revoked`
    request_id_prefix: str = "webdb"  # request ids: <prefix>:<table>:<row id>:<action>


@dataclass(frozen=True)
class X509Route:
    """Which profile a row of `table` gets; `variant` comes from the row: `type` 8 "ocsp",
    `type` 9 "timestamp" (any table, as client.pl), `codesign` = 1 "codesign", an XMPP
    subjectAltName on a personal server row "jabber", else "". The issuer follows from the
    row's `rootcert` (X509WorkConfig.rootcerts) unless the route names one."""
    table: str
    profile: str
    issuer: str | None = None  # None: the issuer the row's rootcert names
    variant: str = ""
    days: int | None = None  # a cap on the validity client.pl's rule gives (None: no cap)


def default_routes() -> list[X509Route]:
    # client.pl's profile choice (CommModule/client.pl HandleCerts): type 8/9 on any table,
    # codesign on the e-mail tables, org client -> client-org, org server -> server-org.
    routes = [X509Route("emailcerts", "client"),
              X509Route("emailcerts", "client-codesign", variant="codesign"),
              X509Route("domaincerts", "server"),
              X509Route("domaincerts", "server-jabber", variant="jabber"),
              X509Route("orgemailcerts", "client-org"),
              X509Route("orgemailcerts", "client-codesign", variant="codesign"),
              X509Route("orgdomaincerts", "server-org")]
    for table in TABLES:
        routes += [X509Route(table, "ocsp", variant="ocsp"), X509Route(table, "timestamp", variant="timestamp")]
    return routes


@dataclass(frozen=True)
class RootcertIssuer:
    """The web application's `rootcert` value and the signer's issuer id for it."""
    rootcert: int
    issuer: str


def default_rootcerts() -> list[RootcertIssuer]:
    # CommModule/server.pl: rootcert 1 = the CAcert root ("class 1"), 2 = class 3.
    return [RootcertIssuer(1, "root"), RootcertIssuer(2, "class3")]


@dataclass(frozen=True)
class X509WorkConfig:
    enabled: bool = True
    routes: list[X509Route] = field(default_factory=default_routes)
    rootcerts: list[RootcertIssuer] = field(default_factory=default_rootcerts)

    def issuer_for(self, rootcert: object) -> str | None:
        for entry in self.rootcerts:
            if str(entry.rootcert) == str(rootcert).strip():
                return entry.issuer
        return None


@dataclass(frozen=True)
class OpenPgpWorkConfig:
    enabled: bool = True
    days: int | None = None  # None: the signer's default (366)


@dataclass(frozen=True)
class CrlPublication:
    issuer: str
    file: str  # DER file name in publish_dir; the PEM copy is <file>.pem


@dataclass(frozen=True)
class CrlWorkConfig:
    publish_dir: str | None = None  # None: CRLs are not fetched
    interval_s: float = 3600.0
    issuers: list[CrlPublication] = field(default_factory=lambda: [
        CrlPublication("root", "revoke.crl"), CrlPublication("class3", "class3-revoke.crl")])


@dataclass(frozen=True)
class HealthWorkConfig:
    interval_s: float = 15.0  # also bounds how long `status` may show a stopped signer green
    # The signer's clock (health `time`) and the daemon's may differ by this much; more is a
    # problem in the log and in `signer-client status` (certificates are dated by the signer).
    max_clock_skew_s: float = 120.0


@dataclass(frozen=True)
class MailConfig:
    """Notification mails as client.pl sent them (docs/webdb-client.md#notification-mails)."""
    enabled: bool = True
    host: str = "localhost"
    port: int = 25
    sender: str = "support@cacert.org"  # From: and Reply-To:, as client.pl
    envelope_from: str = "returns@cacert.org"  # MAIL FROM, Sender: and Errors-To:
    site_url: str = "https://www.cacert.org"  # the links in the mails
    timeout_s: float = 30.0


@dataclass(frozen=True)
class ClientConfig:
    signer: SignerLinkConfig
    webdb: WebDbConfig
    state_dir: str  # status.json lives here
    x509: X509WorkConfig = field(default_factory=X509WorkConfig)
    openpgp: OpenPgpWorkConfig = field(default_factory=OpenPgpWorkConfig)
    crl: CrlWorkConfig = field(default_factory=CrlWorkConfig)
    health: HealthWorkConfig = field(default_factory=HealthWorkConfig)
    mail: MailConfig = field(default_factory=MailConfig)
    source: str = ""

    def route(self, table: str, variant: str) -> X509Route | None:
        for route in self.x509.routes:
            if route.table == table and route.variant == variant:
                return route
        return None


def load_client_config(path: str | os.PathLike) -> ClientConfig:
    config = load_yaml_as(ClientConfig, path)
    validate(config)
    return config


def validate(config: ClientConfig) -> None:
    db = config.webdb
    if db.driver not in ("sqlite", "mysql"):
        raise ConfigError(f"webdb.driver: expected 'sqlite' or 'mysql', got {db.driver!r}")
    if db.driver == "sqlite" and not db.path:
        raise ConfigError("webdb.path: required when webdb.driver is 'sqlite'")
    if db.driver == "mysql" and not (db.password_env or db.password_file):
        raise ConfigError("webdb.password_env or webdb.password_file: one is required for mysql "
                          "(the password is never in the YAML)")
    if db.poll_interval_s <= 0 or db.batch < 1 or db.max_attempts < 1 or db.retry_delay_s < 0:
        raise ConfigError("webdb: poll_interval_s must be > 0, batch and max_attempts >= 1, "
                          "retry_delay_s >= 0")
    if db.names_relative_to is not None and not Path(os.path.normpath(db.names_relative_to)).is_relative_to(
            os.path.normpath(db.files_root)):
        raise ConfigError(f"webdb.names_relative_to: must be webdb.files_root or a folder inside it, "
                          f"not {db.names_relative_to!r}")
    if not re.fullmatch(r"[A-Za-z0-9-]{1,40}", db.request_id_prefix):
        raise ConfigError("webdb.request_id_prefix: 1 to 40 letters, digits or '-'")
    link = config.signer
    if link.timeout_s <= 0 or link.max_in_flight < 1:
        raise ConfigError("signer: timeout_s must be > 0 and max_in_flight >= 1")
    if not 0 < link.backoff_initial_s <= link.backoff_max_s:
        raise ConfigError("signer: expected 0 < backoff_initial_s <= backoff_max_s")
    for i, pin in enumerate(link.issuer_sha256):
        if not re.fullmatch(r"[0-9a-fA-F]{64}", pin.sha256.replace(":", "")):
            raise ConfigError(f"signer.issuer_sha256[{i}].sha256: expected 64 hex digits")
    seen = set()
    for i, route in enumerate(config.x509.routes):
        if route.table not in TABLES:
            raise ConfigError(f"x509.routes[{i}].table: expected one of {', '.join(TABLES)}, "
                              f"got {route.table!r}")
        if route.variant not in VARIANTS:
            raise ConfigError(f"x509.routes[{i}].variant: expected one of {VARIANTS}, got {route.variant!r}")
        if (route.table, route.variant) in seen:
            raise ConfigError(f"x509.routes[{i}]: a second route for {route.table} {route.variant!r}")
        seen.add((route.table, route.variant))
        if route.days is not None and route.days <= 0:
            raise ConfigError(f"x509.routes[{i}].days: expected a positive number of days")
    rootcerts = [entry.rootcert for entry in config.x509.rootcerts]
    if len(set(rootcerts)) != len(rootcerts):
        raise ConfigError(f"x509.rootcerts: a rootcert value twice in {rootcerts}")
    if config.crl.interval_s <= 0 or config.health.interval_s <= 0 or config.health.max_clock_skew_s <= 0:
        raise ConfigError("crl.interval_s, health.interval_s and health.max_clock_skew_s: "
                          "expected positive seconds")
    if not 0 < config.mail.port < 65536 or config.mail.timeout_s <= 0:
        raise ConfigError("mail: port must be 1..65535 and timeout_s positive")
    for i, publication in enumerate(config.crl.issuers):
        if "/" in publication.file or publication.file in ("", ".", ".."):
            raise ConfigError(f"crl.issuers[{i}].file: a file name, not a path: {publication.file!r}")


def read_password(db: WebDbConfig) -> str:
    """The database password, from the environment variable or else the file. Never logged."""
    if db.password_env and os.environ.get(db.password_env):
        return os.environ[db.password_env]
    if db.password_file:
        try:
            return Path(db.password_file).read_text().strip()
        except OSError as exc:
            raise ConfigError(f"webdb.password_file: cannot read {db.password_file}: "
                              f"{exc.strerror}") from None
    raise ConfigError(f"webdb.password_env: environment variable {db.password_env} is not set")
