"""Pieces several test modules build the same way: an in-memory test CA written to a PEM
file, and the Hsm actor in-process on the process-wide SoftHSM token."""
from __future__ import annotations

from datetime import datetime, timedelta, timezone
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID


def write_test_ca(folder: Path, issuer_id: str, key: Any, label: str = "Test") -> tuple[x509.Certificate, Path]:
    """A self-signed CA certificate (CA:TRUE, keyCertSign + cRLSign, SKI) for `key`, as PEM."""
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, f"{label} {issuer_id} CA")])
    now = datetime.now(timezone.utc)
    usage = x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                          data_encipherment=False, key_agreement=False, key_cert_sign=True,
                          crl_sign=True, encipher_only=False, decipher_only=False)
    cert = (x509.CertificateBuilder().subject_name(name).issuer_name(name).public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - timedelta(days=1)).not_valid_after(now + timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .add_extension(usage, critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
            .sign(key, hashes.SHA256()))
    path = folder / f"{issuer_id}.pem"
    path.write_bytes(cert.public_bytes(Encoding.PEM))
    return cert, path


def token_rsa_key(label: str) -> Any:
    """The public half of an RSA-2048 key `label` on the test token, made if missing."""
    from core.hsm.session import HsmSession
    from core.dev.softhsm import SOFTHSM_MODULE
    from tests.support.helpers import PIN, TOKEN

    with HsmSession(SOFTHSM_MODULE, TOKEN, PIN) as session:
        if not session.has_key(label):
            session.generate_rsa_key(label, 2048)
        return session.public_key(label)


def hsm_actor(label: str, monkeypatch: Any) -> Any:
    """The Hsm actor in this process (an ActorHarness), its health key `label`."""
    from actors.owners.hsm import Hsm
    from core.dev.softhsm import SOFTHSM_MODULE
    from tests.support.actor_harness import ActorHarness
    from tests.support.helpers import PIN, TOKEN

    monkeypatch.setenv("TEST_HSM_PIN", PIN)
    config = SimpleNamespace(
        hsm=SimpleNamespace(module=SOFTHSM_MODULE, token_label=TOKEN, pin_env="TEST_HSM_PIN",
                            pin_file=None, health_key=label),
        issuers=[SimpleNamespace(id="x", key_label=label)],
        audit=SimpleNamespace(key_label=AUDIT_KEY))
    return ActorHarness(Hsm, config, {})


AUDIT_KEY = "test-audit-key"  # on the process-wide test token once token_audit_key() made it


def token_audit_key() -> Any:
    """The public half of the audit key (EC P-256) on the test token, made if missing."""
    from core.hsm.session import HsmSession
    from core.dev.softhsm import SOFTHSM_MODULE
    from tests.support.helpers import PIN, TOKEN

    with HsmSession(SOFTHSM_MODULE, TOKEN, PIN) as session:
        if not session.has_key(AUDIT_KEY):
            session.generate_ec_key(AUDIT_KEY, "secp256r1")
        return session.public_key(AUDIT_KEY)
