"""Repository: the single owner of the SQLite database. All state lives here; handlers keep
none that the repository should have. The storage logic is core.repository.Repository;
each RepoRequest message names the store operation it runs."""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from actors.base import SignerActor, error_dict
from core.crl import needs_rebuild
from core.repository import Repository as RepositoryStore, quick_check_file
from messages import RepoHealthReply, RepoHealthRequest
from messages.repository import RepoReply, RepoRequest

# PRAGMA quick_check reads every page (seconds at 1M certificates) and blocks this actor
# meanwhile, so a health poll reuses a recent result instead of running it every time.
QUICK_CHECK_INTERVAL_S = 300.0


class Repository(SignerActor):
    actor_name = "repository"

    def configure(self, config: Any) -> None:
        self.store = RepositoryStore(config.repository.path, config.node_id)
        self.quick_check: tuple[float, str] | None = None  # (monotonic time, result)
        self.checker: threading.Thread | None = None
        self.operations: dict[str, int] = {}
        # The first check starts now, not at the first health poll: otherwise a signer that
        # idled for minutes still answers its first health with "pending".
        self.start_quick_check()

    def start_quick_check(self) -> None:
        # It reads every page: seconds at 1M certificates, tens of seconds with a cold
        # cache. A thread with its own read-only connection keeps this actor answering.
        self.checker = threading.Thread(target=self.run_quick_check, daemon=True)
        self.checker.start()

    def receiveMsg_RepoHealthRequest(self, message: RepoHealthRequest, sender: Any) -> None:
        health = self.store.health(run_quick_check=False)
        checked = self.quick_check  # read once: the checker thread may replace it meanwhile
        now = time.monotonic()
        if (checked is None or now - checked[0] >= QUICK_CHECK_INTERVAL_S) \
                and not (self.checker and self.checker.is_alive()):
            self.start_quick_check()
        if checked is None:
            health["quick_check"] = "pending"  # the first check is still running
        else:
            health["quick_check"] = checked[1]
            # Never negative (nor -0.0): the thread's clock reading may follow this one.
            health["quick_check_age_s"] = max(0.0, round(now - checked[0], 1))
        self.send(sender, RepoHealthReply(message.tag, health))

    def run_quick_check(self) -> None:
        result = quick_check_file(self.config.repository.path)
        self.quick_check = (time.monotonic(), result)  # one tuple assignment: atomic

    def receiveMsg_RepoRequest(self, message: RepoRequest, sender: Any) -> None:
        self.operations[message.operation] = self.operations.get(message.operation, 0) + 1
        local = getattr(self, f"op_{message.operation}", None)
        run = local or getattr(self.store, message.operation)
        try:
            value = run(**message.arguments())
        except Exception as exc:  # noqa: BLE001 - every failure is answered, typed
            self.record_error(exc)
            self.send(sender, RepoReply(message.tag, error=error_dict(exc)))
            return
        self.send(sender, RepoReply(message.tag, value))

    def op_crl_state(self, issuer: str, now: Any, grace_s: float, max_age_s: float,
                     base_number: int | None) -> dict[str, Any]:
        """The latest CRL, whether it must be rebuilt, the entries for a rebuild (only
        then: 100k entries are megabytes to pass between processes) and the client's base."""
        entries, digest = self.store.revoked_with_digest(issuer, now, timedelta(seconds=grace_s))
        latest = self.store.latest_crl(issuer)
        rebuild = needs_rebuild(latest, digest, now, max_age_s)
        # The client's CRL is the diff base, also when it is the latest (a rebuild follows).
        base = self.store.get_crl(issuer, base_number) if base_number is not None else None
        return {"latest": latest, "rebuild": rebuild, "digest": digest,
                "entries": entries if rebuild else None, "base": base,
                # Above both this signer's CRLs and the peer's (crl_issued events): numbers
                # never go backwards whichever signer a client fetches from.
                "previous_number": self.store.previous_crl_number(issuer)}

    def op_outbox(self, after_seq: int, limit: int) -> dict[str, Any]:
        return {"events": self.store.events_after(after_seq, limit), "last_seq": self.store.last_event_seq()}

    def op_apply_events(self, events: list[dict[str, Any]]) -> dict[str, Any]:
        """Apply in order; stop at the first failure so the log order is kept (the rest is
        redelivered by the peer's consumer and applied on a later try)."""
        applied = 0
        for event in events:
            try:
                self.store.apply_event(event)
            except Exception as exc:  # noqa: BLE001 - answered with what was applied
                self.record_error(exc)
                return {"applied": applied, "error": error_dict(exc)}
            applied += 1
        return {"applied": applied, "error": None}

    def on_failure(self, message: Any, sender: Any, exc: Exception) -> None:
        if isinstance(message, RepoHealthRequest):
            self.send(sender, RepoHealthReply(message.tag, {}, error=error_dict(exc)))
        elif isinstance(message, RepoRequest):
            self.send(sender, RepoReply(message.tag, error=error_dict(exc)))

    def shutdown(self) -> None:
        if getattr(self, "store", None) is not None:
            self.store.close()

    def figures(self) -> dict[str, Any]:
        store = getattr(self, "store", None)
        return {"path": self.config.repository.path if self.config else None,
                "last_event_seq": store.last_event_seq() if store else None,
                "operations": dict(getattr(self, "operations", {}))}
