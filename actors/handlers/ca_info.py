"""CaInfo handler: the issuers' certificates and the OpenPGP CA public key, for clients
that need to verify what the signer returns."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from actors.base import SignerActor
from core.wire.requests import CaInfoRequest
from core.x509.issuers import load_issuers
from messages import CommandReply, CommandRequest


class CaInfo(SignerActor):
    actor_name = "ca_info"

    def configure(self, config: Any) -> None:
        issuers = load_issuers(config)
        self.body: dict[str, Any] = {
            "issuers": [{"id": i.id, "subject": i.certificate.subject.rfc4514_string(),
                         "certificate": i.der,
                         "not_after": i.certificate.not_valid_after_utc.isoformat()}
                        for i in issuers.values()],
            "openpgp": None,
        }
        if config.openpgp is not None:
            self.body["openpgp"] = {"public_key": Path(config.openpgp.public_key).read_text(),
                                    "created": config.openpgp.created}

    def receiveMsg_CommandRequest(self, message: CommandRequest, sender: Any) -> None:
        CaInfoRequest.parse(message.body)  # no fields: any sent are ignored
        self.send(sender, CommandReply(message.tag, body=self.body))
