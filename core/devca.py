"""`signer dev-init`: a development CA on a SoftHSM token, created idempotently.

Creates (each step only when missing): the SoftHSM token with random PINs kept in
DIR/secrets (mode 0600, never printed), the CA keys on the token (non-extractable), a
self-signed root and a subordinate "class3" certificate issued through the HSM, the
OpenPGP CA key and its public key block, the audit key (EC P-256, it seals the audit log)
and its public key DIR/ca/audit-key.pem, and DIR/signer.yaml pointing at all of it.
"""
from __future__ import annotations

import json
import os
import secrets
import time
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from pathlib import Path
from typing import Callable

import yaml
from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding, PublicFormat
from cryptography.x509.oid import NameOID

from core.hsm import HsmSession
from core.softhsm import SOFTHSM_MODULE, init_softhsm_token

TOKEN_LABEL = "cacert-dev"
AUDIT_KEY_LABEL = "audit-key"
AUDIT_PUBLIC_KEY = "ca/audit-key.pem"  # relative to the data folder
ROOT_VALIDITY = timedelta(days=3650)
SUB_VALIDITY = timedelta(days=1825)


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


def _ensure_key(session: HsmSession, label: str, spec: str, log: Callable[[str], None]) -> None:
    if session.has_key(label):
        return
    log(f"generating {spec} key {label} on the token")
    kind, size = spec.split("-")
    if kind == "rsa":
        session.generate_rsa_key(label, int(size))
    else:
        session.generate_ec_key(label, {"p256": "secp256r1", "p384": "secp384r1"}[size])


def _ca_name(common_name: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "CAcert Inc. (development)"),
                      x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, "http://www.CAcert.org"),
                      x509.NameAttribute(NameOID.COMMON_NAME, common_name)])


def _ca_certificate(subject: x509.Name, public_key, issuer_cert: x509.Certificate | None,
                    signing_key, validity: timedelta, path_length: int | None) -> x509.Certificate:
    now = datetime.now(timezone.utc).replace(microsecond=0)
    issuer_name = issuer_cert.subject if issuer_cert else subject
    issuer_public = issuer_cert.public_key() if issuer_cert else public_key
    builder = (x509.CertificateBuilder()
               .subject_name(subject).issuer_name(issuer_name).public_key(public_key)
               .serial_number(x509.random_serial_number())
               .not_valid_before(now - timedelta(minutes=5)).not_valid_after(now + validity)
               .add_extension(x509.BasicConstraints(ca=True, path_length=path_length), critical=True)
               .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False,
                                            key_encipherment=False, data_encipherment=False,
                                            key_agreement=False, key_cert_sign=True, crl_sign=True,
                                            encipher_only=False, decipher_only=False), critical=True)
               .add_extension(x509.SubjectKeyIdentifier.from_public_key(public_key), critical=False)
               .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(issuer_public),
                              critical=False))
    return builder.sign(signing_key, hashes.SHA256())


def _ensure_certificate(path: Path, make: Callable[[], x509.Certificate],
                        log: Callable[[str], None]) -> x509.Certificate:
    if path.exists():
        return x509.load_pem_x509_certificate(path.read_bytes())
    log(f"issuing {path.name} through the HSM")
    cert = make()
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return cert


def _ensure_openpgp(session: HsmSession, ca_dir: Path, log: Callable[[str], None]) -> int:
    """The OpenPGP CA public key block; returns its creation time (part of the fingerprint)."""
    from core.openpgp import armor, build_public_key_block

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
        _ensure_key(session, "root-key", options.root_key, log)
        _ensure_key(session, "class3-key", options.class3_key, log)
        _ensure_key(session, "openpgp-key", options.openpgp_key, log)
        root_key = session.private_key("root-key")
        root = _ensure_certificate(
            ca_dir / "root.pem",
            lambda: _ca_certificate(_ca_name("CAcert Dev Root"), session.public_key("root-key"),
                                    None, root_key, ROOT_VALIDITY, None), log)
        _ensure_certificate(
            ca_dir / "class3.pem",
            lambda: _ca_certificate(_ca_name("CAcert Dev Class 3"), session.public_key("class3-key"),
                                    root, root_key, SUB_VALIDITY, 0), log)
        created = _ensure_openpgp(session, ca_dir, log)
        _ensure_key(session, AUDIT_KEY_LABEL, "ecdsa-p256", log)
        _write_public_key(session, AUDIT_KEY_LABEL, data / AUDIT_PUBLIC_KEY, log)
    finally:
        session.close()
    config_path = data / "signer.yaml"
    if not config_path.exists():
        config_path.write_text(yaml.safe_dump(dev_config(options, created), sort_keys=False))
        log(f"wrote {config_path}")
    return config_path


def dev_config(options: DevCaOptions, openpgp_created: int) -> dict:
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
