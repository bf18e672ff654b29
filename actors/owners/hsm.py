"""Hsm: the one actor per token that holds a logged-in PyKCS11 session.

Every signature of the signer is made here, one at a time: PyKCS11 holds the GIL during
each call and a session must never be shared, so serialising in one actor costs nothing
and rules out CKR_OPERATION_ACTIVE. Recovery (re-open, log in, find the key, retry once)
lives in core.hsm.session.HsmSession.

The audit key (config.audit.key_label) seals the audit log's head (HsmSealRequest, sent by
the Repository actor) and nothing else: an HsmSignRequest naming it is refused, and the
sealed bytes are built here (core.repository.audit.seal_message), never taken from a message.
"""
from __future__ import annotations

import time
from datetime import datetime, timezone
from typing import Any

from actors.base import SignerActor, error_dict
from core.repository import audit
from core.runtime.config import read_pin
from core.hsm.session import HsmError, HsmMechanismUnsupported, HsmSession, mechanism_for
from core.repository.schema import to_db_time
from messages import (HsmHealthReply, HsmHealthRequest, HsmSealReply, HsmSealRequest,
                      HsmSignReply, HsmSignRequest)
from messages.hsm import AuditKeyState, HsmHealth


class Hsm(SignerActor):
    actor_name = "hsm"

    def configure(self, config: Any) -> None:
        self.session = HsmSession(config.hsm.module, config.hsm.token_label, read_pin(config.hsm))
        self.health_key = config.hsm.health_key or config.issuers[0].key_label
        self.audit_key = config.audit.key_label
        self.seals = 0
        self.sign_errors = 0
        self.sign_time_s = 0.0
        self.health_mechanism: str | None = None
        # A failure here stops start-up; after a restart the session opens on first use.
        self.session.open()
        self.health_mechanism = mechanism_for(self.session.key_info(self.health_key), "sha256")

    def receiveMsg_HsmSignRequest(self, message: HsmSignRequest, sender: Any) -> None:
        started = time.perf_counter()
        try:
            if message.key_label == self.audit_key:
                raise HsmMechanismUnsupported(f"key {self.audit_key!r} is the audit key: it"
                                              " signs audit seals only")
            signature = self.session.sign(message.key_label, message.mechanism, message.data)
        except HsmError as exc:
            self.sign_errors += 1
            self.record_error(exc)
            self.send(sender, HsmSignReply(message.tag, error=error_dict(exc)))
            return
        finally:
            self.sign_time_s += time.perf_counter() - started
        self.send(sender, HsmSignReply(message.tag, signature=signature))

    def receiveMsg_HsmSealRequest(self, message: HsmSealRequest, sender: Any) -> None:
        sealed_at = to_db_time(datetime.now(timezone.utc))
        try:
            signature = self.session.sign(self.audit_key, audit.SEAL_MECHANISM,
                                          audit.seal_message(message.seq, message.hash, sealed_at))
        except HsmError as exc:
            self.record_error(exc)
            self.send(sender, HsmSealReply(message.tag, message.seq, message.hash,
                                           error=error_dict(exc)))
            return
        self.seals += 1
        self.send(sender, HsmSealReply(message.tag, message.seq, message.hash, sealed_at,
                                       signature))

    def receiveMsg_HsmHealthRequest(self, message: HsmHealthRequest, sender: Any) -> None:
        try:
            if self.health_mechanism is None:
                self.health_mechanism = mechanism_for(self.session.key_info(self.health_key), "sha256")
            tested = self.session.health(self.health_key, self.health_mechanism)
            health = HsmHealth(token=tested["token"], logged_in=tested["logged_in"],
                               test_signature_ms=tested["test_signature_ms"], mechanism=tested["mechanism"],
                               ok=tested["ok"],
                               # Looked up on every health check: a token without it cannot seal the audit log.
                               audit_key=AuditKeyState(label=self.audit_key,
                                                       present=self.session.has_key(self.audit_key)))
        except HsmError as exc:
            self.record_error(exc)
            self.send(sender, HsmHealthReply(message.tag, HsmHealth(token=self.config.hsm.token_label,
                                                                    logged_in=self.logged_in()),
                                             error=error_dict(exc)))
            return
        self.send(sender, HsmHealthReply(message.tag, health))

    def logged_in(self) -> bool | None:
        try:
            return self.session.logged_in()
        except HsmError:
            return None

    def on_failure(self, message: Any, sender: Any, exc: Exception) -> None:
        if isinstance(message, HsmSignRequest):
            self.send(sender, HsmSignReply(message.tag, error=error_dict(exc)))
        elif isinstance(message, HsmHealthRequest):
            self.send(sender, HsmHealthReply(message.tag, {}, error=error_dict(exc)))
        elif isinstance(message, HsmSealRequest):
            self.send(sender, HsmSealReply(message.tag, message.seq, message.hash,
                                           error=error_dict(exc)))

    def shutdown(self) -> None:
        if getattr(self, "session", None) is not None:
            self.session.close()

    def figures(self) -> dict[str, Any]:
        session = getattr(self, "session", None)
        if session is None:
            return {"open": False}
        return {"token": self.config.hsm.token_label, "open": session.is_open,
                "signatures": session.signatures, "recoveries": session.recoveries,
                "sign_errors": self.sign_errors, "seals": self.seals, "sign_time_s": round(self.sign_time_s, 3),
                "last_hsm_error": session.last_error}
