"""The daemon's one link to the signer: open it, call over it, make sure it is the signer
we think it is, and turn every link failure into SignerAway.
"""
from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path
from typing import Any, Callable

import serial
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tools.client.library import Response, SignerClient, SignerTimeout
from tools.client.files import write_atomically
from tools.webdb.config import SignerLinkConfig

log = logging.getLogger("signer-client")
PIN_NAME = "signer-issuers.json"


class SignerAway(Exception):
    """No usable signer right now: port missing, no answer, cannot serve, or not ours."""


class SignerLink:
    def __init__(self, config: SignerLinkConfig, state_dir: Path,
                 abort: Callable[[], bool] | None = None) -> None:
        self.config = config
        self.abort = abort  # True: stop waiting for an answer (the daemon is stopping)
        self.pin_path = state_dir / PIN_NAME
        self.client: SignerClient | None = None
        self.issuer_certs: dict[str, x509.Certificate] = {}

    @property
    def is_open(self) -> bool:
        return self.client is not None

    def open(self) -> bool:
        """Open the port if it is not; True when a new link was opened (and checked)."""
        if self.client is not None:
            return False
        try:
            # exclusive: a second client on the port would read our answers (and we its);
            # timeout_is_silence: a long answer (a full CRL at 115200 baud) is not "away"
            self.client = SignerClient(self.config.device, self.config.baudrate, self.config.timeout_s,
                                       exclusive=True, timeout_is_silence=True)
        except (serial.SerialException, OSError) as exc:
            raise SignerAway(f"cannot open {self.config.device}: {exc}") from None
        self.client.abort = self.abort
        try:
            self._learn_issuers()
        except SignerAway:
            self.close()
            raise
        except BaseException as exc:  # an unusable ca_info answer, an unwritable pin file:
            self.close()              # the link stays closed, so no request goes unchecked
            raise SignerAway(f"cannot check which signer this is: {type(exc).__name__}: {exc}") from None
        return True

    def drain_unmatched(self) -> None:
        """Error frames with no id (a request frame damaged on the line): the request itself
        then gets no answer and times out; log them, do not keep them."""
        if self.client is not None and self.client.unmatched:
            codes = sorted({str((r.error or {}).get("code")) for r in self.client.unmatched})
            log.warning("%d error frame(s) without id from the signer (%s): line noise?",
                        len(self.client.unmatched), ", ".join(codes))
            self.client.unmatched.clear()

    def close(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except (serial.SerialException, OSError):
                pass
            self.client = None

    def call(self, fn: Callable[[SignerClient], Any]) -> Any:
        """fn(client), with every link failure turned into SignerAway (the caller leaves its
        rows as they are). Only link I/O may run inside: a local file error is not the signer."""
        if self.client is None:
            raise SignerAway("the link is closed")
        try:
            return fn(self.client)
        except SignerTimeout as exc:
            raise SignerAway(str(exc)) from None
        except (serial.SerialException, OSError) as exc:
            raise SignerAway(f"serial link failed: {exc}") from None

    def request(self, command: str, body: dict[str, Any] | None = None, timeout: float | None = None) -> Response:
        return self.call(lambda client: client.call(command, body, timeout=timeout))

    # -- which signer is this ---------------------------------------------------------------
    def _learn_issuers(self) -> None:
        response = self.request("ca_info", timeout=min(30.0, self.config.timeout_s))
        if not response.ok:
            raise SignerAway(f"ca_info refused: {response.error}")
        self.issuer_certs = {entry["id"]: x509.load_der_x509_certificate(entry["certificate"])
                             for entry in (response.body or {}).get("issuers", [])}
        if self.config.pin_issuers:
            self._check_pin()

    def _check_pin(self) -> None:
        seen = {issuer: hashlib.sha256(cert.public_bytes(Encoding.DER)).hexdigest()
                for issuer, cert in self.issuer_certs.items()}
        if self.config.issuer_sha256:
            wrong = [pin.issuer for pin in self.config.issuer_sha256
                     if seen.get(pin.issuer) != pin.sha256.replace(":", "").lower()]
            if wrong:
                raise SignerAway(f"the signer on {self.config.device} is not the configured one "
                                 f"(signer.issuer_sha256 differs for: {', '.join(wrong)}); refusing it")
            return
        try:
            pinned = json.loads(self.pin_path.read_text())
        except FileNotFoundError:
            write_atomically(self.pin_path, json.dumps(seen, indent=2, sort_keys=True).encode())
            log.info("pinned the signer's issuer certificates (%s) in %s", ", ".join(sorted(seen)), self.pin_path)
            return
        except (OSError, ValueError) as exc:
            raise SignerAway(f"cannot read the pinned issuers {self.pin_path}: {exc}") from None
        if pinned != seen:
            differ = sorted(k for k in set(pinned) | set(seen) if pinned.get(k) != seen.get(k))
            raise SignerAway(f"the signer on {self.config.device} is not the pinned one (issuer "
                             f"certificates differ: {', '.join(differ)}); refusing it. After a "
                             f"legitimate CA change, remove {self.pin_path}")

    def issuer_cert(self, issuer: str) -> x509.Certificate:
        if issuer not in self.issuer_certs:
            raise ValueError(f"the signer does not list issuer {issuer!r} (ca_info)")
        return self.issuer_certs[issuer]
