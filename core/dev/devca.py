"""`signer dev-init`: a development CA on a SoftHSM token, created idempotently.

Creates (each step only when missing): the SoftHSM token with random PINs kept in
DIR/secrets (mode 0600, never printed), then, through the key ceremony's steps
(core/hsm/ceremony.py, logged in DIR/ca/ceremony-log.jsonl), the CA keys on the token
(non-extractable), a self-signed root and a subordinate "class3" certificate issued through
the HSM, the audit key (EC P-256, it seals the audit log); then the
OpenPGP CA key and its public key block, the audit key's public half DIR/ca/audit-key.pem,
and DIR/signer.yaml pointing at all of it.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Callable

import yaml
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat

from core.hsm.ceremony import LOG_NAME, CeremonyRunner, KeyStep, RootStep, SignStep, Step
from core.hsm.session import HsmSession
from core.dev.softhsm import SOFTHSM_MODULE, init_softhsm_token
from core.runtime.config import SHIPPED_PROFILES
from core.x509.profiles import crl_urls_by_issuer, load_profiles

TOKEN_LABEL = "cacert-dev"
AUDIT_KEY_LABEL = "audit-key"
AUDIT_PUBLIC_KEY = "ca/audit-key.pem"  # relative to the data folder
ROOT_VALIDITY = timedelta(days=3650)
SUB_VALIDITY = timedelta(days=1825)
_DEV_ORG = {"O": "CAcert Inc. (development)", "OU": "http://www.CAcert.org"}
DEV_SUBJECTS = {"root": {**_DEV_ORG, "CN": "CAcert Dev Root"},
                "class3": {**_DEV_ORG, "CN": "CAcert Dev Class 3"}}


@dataclass(frozen=True)
class DevCaOptions:
    data_dir: Path
    admin_port: int = 19190
    openpgp_key: str = "rsa-4096"  # rsa-4096 | ecdsa-p256 | ecdsa-p384
    root_key: str = "rsa-4096"
    class3_key: str = "rsa-2048"
    node_id: str = "signer-dev"


def _secret(path: Path, nbytes: int = 12) -> str:
    """Read a PIN file, or create it with a random PIN readable only by this user."""
    if path.exists():
        return path.read_text().strip()
    path.parent.mkdir(mode=0o700, parents=True, exist_ok=True)
    value = secrets.token_hex(nbytes)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    with os.fdopen(fd, "w") as handle:
        handle.write(value + "\n")
    return value


def _ensure_openpgp(session: HsmSession, ca_dir: Path, log: Callable[[str], None]) -> int:
    """The OpenPGP CA public key block; returns its creation time (part of the fingerprint)."""
    from core.openpgp.certify import build_public_key_block
    from core.openpgp.packets import armor

    meta_path = ca_dir / "openpgp-ca.json"
    if meta_path.exists():
        return int(json.loads(meta_path.read_text())["created"])
    created = int(time.time())
    user_id = "CAcert Signing Authority (development) <gpg@cacert.invalid>"
    block = build_public_key_block(session.public_key("openpgp-key"), created, user_id.encode(),
                                   lambda data, mechanism: session.sign("openpgp-key", mechanism, data))
    (ca_dir / "openpgp-ca.asc").write_text(armor(block))
    meta_path.write_text(json.dumps({"created": created, "user_id": user_id}))
    log("wrote the OpenPGP CA public key")
    return created


def _write_public_key(session: HsmSession, label: str, path: Path,
                      log: Callable[[str], None]) -> None:
    """The key's public half as PEM, rewritten when it differs from the token's key."""
    pem = session.public_key(label).public_bytes(Encoding.PEM, PublicFormat.SubjectPublicKeyInfo)
    if path.exists() and path.read_bytes() == pem:
        return
    path.write_bytes(pem)
    log(f"wrote the public key of {label} to {path}")


def dev_ceremony_steps(options: DevCaOptions, ca_dir: Path) -> list[Step]:
    """The key ceremony of the development CA, run by dev-init on every call (each step
    finds what exists and does nothing)."""
    return [
        KeyStep("root-key", "key", "root-key", options.root_key),
        KeyStep("class3-key", "key", "class3-key", options.class3_key),
        RootStep("root", "root", "root-key", DEV_SUBJECTS["root"], str(ca_dir / "root.pem"),
                 ROOT_VALIDITY.days),
        SignStep("class3", "subordinate", issuer_certificate=str(ca_dir / "root.pem"),
                 issuer_key_label="root-key", certificate=str(ca_dir / "class3.pem"),
                 validity_days=SUB_VALIDITY.days, subject_key_label="class3-key",
                 subject=DEV_SUBJECTS["class3"], path_length=0,
                 # The root's CRL, as the shipped profiles name it: the root's CRL carries that
                 # URL as its (critical) issuing distribution point, and a verifier checking
                 # the whole chain (openssl -crl_check_all) needs the class3 certificate's
                 # distribution point to match it.
                 crl_url=crl_urls_by_issuer(load_profiles(SHIPPED_PROFILES)).get("root")),
        KeyStep(AUDIT_KEY_LABEL, "key", AUDIT_KEY_LABEL, "ecdsa-p256"),
    ]


def initialise_dev_ca(options: DevCaOptions, log: Callable[[str], None] = lambda _: None) -> Path:
    data = options.data_dir
    ca_dir, secrets_dir = data / "ca", data / "secrets"
    for folder in (data, ca_dir):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(data, 0o700)  # also when it existed: the token and the PINs are under it
    softhsm_conf = data / "softhsm2.conf"
    user_pin = _secret(secrets_dir / "hsm-user-pin")
    so_pin = _secret(secrets_dir / "hsm-so-pin")
    init_softhsm_token(str(data / "tokens"), str(softhsm_conf), TOKEN_LABEL, so_pin, user_pin)
    # The PKCS#11 library reads SOFTHSM2_CONF once, when this process first loads it.
    os.environ["SOFTHSM2_CONF"] = str(softhsm_conf)
    session = HsmSession(SOFTHSM_MODULE, TOKEN_LABEL, user_pin)
    session.open()
    try:
        # The ceremony's progress lines, without its indented fingerprint lines.
        runner = CeremonyRunner(session, ca_dir / LOG_NAME, file_mode=0o600,
                                out=lambda line: None if line.startswith(" ") else log(line))
        steps = dev_ceremony_steps(options, ca_dir)
        for step in steps[:-1]:
            runner.run(step)
        # An existing OpenPGP key is kept whatever its type: --openpgp-key only matters
        # the first time (docs/configuration.md).
        if not session.has_key("openpgp-key"):
            runner.run(KeyStep("openpgp-key", "key", "openpgp-key", options.openpgp_key))
        created = _ensure_openpgp(session, ca_dir, log)
        runner.run(steps[-1])
        _write_public_key(session, AUDIT_KEY_LABEL, data / AUDIT_PUBLIC_KEY, log)
    finally:
        session.close()
    config_path = data / "signer.yaml"
    if not config_path.exists():
        config_path.write_text(yaml.safe_dump(dev_config(options, created), sort_keys=False))
        log(f"wrote {config_path}")
    return config_path


def dev_config(options: DevCaOptions, openpgp_created: int) -> dict[str, Any]:
    """The development configuration; paths are relative to the data folder."""
    return {
        "node_id": options.node_id,
        "serial": {"mode": "dev-pty", "link_path": "client-tty", "baudrate": 115200},
        "hsm": {"module": SOFTHSM_MODULE, "token_label": TOKEN_LABEL,
                "pin_env": "SIGNER_HSM_PIN", "pin_file": "secrets/hsm-user-pin",
                "softhsm_conf": "softhsm2.conf", "health_key": "class3-key"},
        "repository": {"path": "repository.sqlite"},
        "actor_system": {"admin_port": options.admin_port, "log_file": "signer.log"},
        "issuers": [{"id": "root", "certificate": "ca/root.pem", "key_label": "root-key"},
                    {"id": "class3", "certificate": "ca/class3.pem", "key_label": "class3-key"}],
        "openpgp": {"key_label": "openpgp-key", "public_key": "ca/openpgp-ca.asc",
                    "created": openpgp_created},
        "audit": {"key_label": AUDIT_KEY_LABEL, "public_key": AUDIT_PUBLIC_KEY},
    }
