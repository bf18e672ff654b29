"""Health handler: asks the Hsm and Repository actors for their state, adds CA certificate
expiry, version and the signer's clock, and decides `healthy`.

A part that does not answer within the deadline (a hung HSM call, say) makes the answer
unhealthy with that cause instead of leaving the client waiting.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from importlib import metadata
from typing import Any, Mapping

from actors.base import SignerActor
from core.wire.requests import HealthRequest
from core.x509.issuers import load_issuers, utc_now
from messages import (CommandReply, CommandRequest, HsmHealthReply, HsmHealthRequest,
                      RepoHealthReply, RepoHealthRequest)
from messages.sync import SyncStatusReply, SyncStatusRequest

PART_TIMEOUT_S = 5.0


def signer_version() -> str:
    try:
        return metadata.version("cacert-signer")
    except metadata.PackageNotFoundError:
        return "unknown"


@dataclass
class HealthCheck:
    client: Any
    tag: int
    parts: dict[str, Any] = field(default_factory=dict)


class Health(SignerActor):
    actor_name = "health"

    def configure(self, config: Any) -> None:
        self.issuers = load_issuers(config)
        self.warning_days = config.health.ca_expiry_warning_days
        self.version = signer_version()

    def receiveMsg_CommandRequest(self, message: CommandRequest, sender: Any) -> None:
        HealthRequest.parse(message.body)  # no fields: any sent are ignored
        check = HealthCheck(sender, message.tag)
        for part, request in self.parts().items():  # one ask per part, each with its deadline
            self.send_ask(self.peer(part), request, (part, check), PART_TIMEOUT_S, self.part_timed_out)

    def parts(self) -> dict[str, Any]:
        parts = {"hsm": HsmHealthRequest, "repository": RepoHealthRequest}
        if "sync" in self.addresses:
            parts["sync"] = SyncStatusRequest
        return parts

    def receiveMsg_HsmHealthReply(self, message: HsmHealthReply, sender: Any) -> None:
        self.part_done(message.tag, message.health, message.error)

    def receiveMsg_RepoHealthReply(self, message: RepoHealthReply, sender: Any) -> None:
        self.part_done(message.tag, message.health, message.error)

    def receiveMsg_SyncStatusReply(self, message: SyncStatusReply, sender: Any) -> None:
        self.part_done(message.tag, message.status, message.error)

    def part_timed_out(self, tag: int, entry: tuple[str, HealthCheck]) -> None:
        part, check = entry
        self.record_part(check, part, {}, {"code": "timeout",
                                           "message": f"{part} did not answer within {PART_TIMEOUT_S:g} s"})

    def part_done(self, tag: int, result: Mapping[str, Any], error: dict[str, str] | None) -> None:
        entry: tuple[str, HealthCheck] | None = self.pending.pop(tag)
        if entry is not None:
            part, check = entry
            self.record_part(check, part, result, error)

    def record_part(self, check: HealthCheck, part: str, result: Mapping[str, Any],
                    error: dict[str, str] | None) -> None:
        result = dict(result)
        result["ok"] = error is None and result.get("ok", True)
        if error is not None:
            result["error"] = error
        check.parts[part] = result
        if len(check.parts) == len(self.parts()):
            self.send(check.client, CommandReply(check.tag, body=self.report(check.parts)))

    def report(self, parts: dict[str, Any]) -> dict[str, Any]:
        now = utc_now()
        problems = [f"{name}: {p['error']['code']}: {p['error']['message']}"
                    for name, p in parts.items() if "error" in p]
        repo = parts["repository"]
        if "error" not in repo and repo.get("quick_check") not in ("ok", "pending"):
            repo["ok"] = False
            problems.append(f"repository: quick_check says {repo.get('quick_check')!r}")
        cas = []
        for issuer in self.issuers.values():
            days = issuer.days_to_expiry(now)
            ok = days > self.warning_days
            if not ok:
                problems.append(f"issuer {issuer.id}: certificate expires in {days:.1f} days")
            cas.append({"id": issuer.id, "subject": issuer.certificate.subject.rfc4514_string(),
                        "not_after": issuer.certificate.not_valid_after_utc.isoformat(),
                        "days_to_expiry": round(days, 2), "ok": ok})
        if self.peers_down:
            # The Supervisor restarts them (with back-off); until then their commands wait.
            problems.append(f"actors not running (being restarted): {', '.join(sorted(self.peers_down))}")
        problems += audit_problems(parts["hsm"], repo)
        if "sync" in parts and "error" not in parts["sync"] and not parts["sync"].get("ok"):
            problems.append(f"sync: {parts['sync'].get('problem') or 'the local NATS server is not reachable'}")
        report = {"healthy": not problems, "problems": problems, "version": self.version,
                  "node_id": self.config.node_id, "time": now.isoformat(), "ca_certificates": cas,
                  "hsm": parts["hsm"], "repository": repo,
                  "actors_down": sorted(self.peers_down)}
        if "sync" in parts:
            report["sync"] = parts["sync"]
        if "audit" in repo:
            report["audit_head"] = repo["audit"]["head"]
        return report


def audit_problems(hsm: dict[str, Any], repo: dict[str, Any]) -> list[str]:
    """A token without the audit key, or seals failing: the log can then be rewritten
    unseen (docs/decisions/0002-audit-seals-on-the-hsm.md)."""
    problems = []
    key = hsm.get("audit_key")
    if key is not None and not key.get("present"):
        problems.append(f"audit: no audit key {key.get('label')!r} on the token: the audit log"
                        " is not sealed (create it: docs/operations.md, 'The audit key')")
    seal_error = (repo.get("audit") or {}).get("seal_error")
    if seal_error:
        problems.append(f"audit: {seal_error}")
    return problems
