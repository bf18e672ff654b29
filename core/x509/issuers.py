"""The CA certificates named in the configuration, loaded once per actor that needs them."""
from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from core.runtime.config import SignerConfig


@dataclass(frozen=True)
class Issuer:
    id: str
    key_label: str
    certificate: x509.Certificate

    @property
    def der(self) -> bytes:
        return self.certificate.public_bytes(Encoding.DER)

    def days_to_expiry(self, now: datetime) -> float:
        return (self.certificate.not_valid_after_utc - now).total_seconds() / 86400


def load_issuers(config: SignerConfig) -> dict[str, Issuer]:
    issuers = {}
    for entry in config.issuers:
        try:
            cert = x509.load_pem_x509_certificate(Path(entry.certificate).read_bytes())
        except (OSError, ValueError) as exc:
            raise ValueError(f"issuer {entry.id}: cannot load certificate {entry.certificate}: {exc}") from None
        issuers[entry.id] = Issuer(entry.id, entry.key_label, cert)
    return issuers


def utc_now() -> datetime:
    return datetime.now(timezone.utc)
