"""Repository: the single owner of the SQLite database. All state lives here; handlers keep
none that the repository should have. The storage logic is core.repository.store.Repository;
each RepoRequest message names the store operation it runs.

It also has the audit log sealed (docs/decisions/0002-audit-seals-on-the-hsm.md): after an
operation that appended audit entries it sends the new head to the Hsm actor
(HsmSealRequest), at most one seal in flight; the next seal covers everything committed
meanwhile. Before each seal it checks that the log still extends the last seal, so it never
seals a log rewritten under it. The head goes back with the reply (RepoReply.audit_head),
so the handler puts it in the client's answer.

The operations of one incoming message (a Batch: all its items) share one transaction, each
in a savepoint of its own, and their replies are held until it is committed (grouped
commits: one fsync per batch; docs/actors.md). After the commit it tells Sync of the events
they appended (EventsCommitted, once per message), which publishes them at once:
replication is pushed on commit, not found by polling."""
from __future__ import annotations

import threading
import time
from datetime import timedelta
from typing import Any

from thespian.actors import WakeupMessage

from actors.base import SignerActor, error_dict
from core.crl.build import needs_rebuild
from core.sync.event_signing import load_or_create_signing_key
from core.sync.peer_validation import PeerValidator
from core.repository.store import Repository as RepositoryStore, RepositoryError, quick_check_file
from messages import HsmSealReply, HsmSealRequest, RepoHealthReply, RepoHealthRequest
from messages.repository import AuditState, RepoHealth, RepoReply, RepoRequest
from messages.sync import EventsCommitted

# PRAGMA quick_check reads every page (seconds at 1M certificates) and blocks this actor
# meanwhile, so a health poll reuses a recent result instead of running it every time.
QUICK_CHECK_INTERVAL_S = 300.0
SEAL_TIMEOUT_S = 30.0  # a seal the Hsm actor has not answered by then is asked again
SEAL_RETRY_S = 30.0  # after a failed seal (no audit key, HSM away): the next try
# At most one seal asked per SEAL_PACE_S: under load the head moves with every message, and
# a seal asked as soon as the last one came back (an HSM signature, two messages and a
# commit each) cost ~0.4 seals per certificate at 200 certificates/s; a lone change is
# still sealed at once (decisions/0002, docs/decisions/0010-fast-path.md round 3).
SEAL_PACE_S = 0.1
PUSH_LIMIT = 200  # newest events pushed to Sync with EventsCommitted; more: Sync's outbox


class Repository(SignerActor):
    actor_name = "repository"

    def configure(self, config: Any) -> None:
        self.store = RepositoryStore(config.repository.path, config.node_id)
        # Peer events are checked as if this signer had made them (core/sync/peer_validation.py).
        self.validator = None
        if config.sync is not None:
            own_key = load_or_create_signing_key(config.sync.event_signing_key).public_key()
            self.validator = PeerValidator.from_config(config, own_key)
        self.quick_check: tuple[float, str] | None = None  # (monotonic time, result)
        self.checker: threading.Thread | None = None
        self.operations: dict[str, int] = {}
        self.sealed = self.store.last_audit_seal()  # {"seq", "hash"} of the newest seal
        self.events_told = 0  # the newest event seq Sync was told of (EventsCommitted)
        self.operated = False  # an operation ran in this message: commit, reply, tell at its end
        self.held: list[tuple[Any, RepoReply[Any]]] = []  # replies waiting for the group's commit
        self.audit_changed = False  # an operation of this message appended audit entries
        self.sealing: int | None = None  # the tag of the seal in flight (its ask: self.pending)
        self.seal_asked_at: float | None = None  # self.pending's clock when the last seal was asked
        self.seal_paced = False  # a ("seal_pace", None) wakeup is armed
        self.seal_hsm: Any = None  # the Hsm actor's address the seal in flight went to
        self.seal_error: str | None = None
        self.seal_after_change()  # entries a previous run left unsealed
        # The first check starts now, not at the first health poll: otherwise a signer that
        # idled for minutes still answers its first health with "pending".
        self.start_quick_check()

    def start_quick_check(self) -> None:
        # It reads every page: seconds at 1M certificates, tens of seconds with a cold
        # cache. A thread with its own read-only connection keeps this actor answering.
        self.checker = threading.Thread(target=self.run_quick_check, daemon=True)
        self.checker.start()

    def receiveMsg_RepoHealthRequest(self, message: RepoHealthRequest, sender: Any) -> None:
        counted = self.store.health(run_quick_check=False)
        health = RepoHealth(quick_check=counted["quick_check"], schema_version=counted["schema_version"],
                            counts=counted["counts"], last_event_seq=counted["last_event_seq"], path=counted["path"])
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
        head = self.store.audit_head()
        sealed_seq = self.sealed["seq"] if self.sealed else 0
        health["audit"] = AuditState(head=self.head_of(head), sealed_seq=sealed_seq,
                                     unsealed=head["seq"] - sealed_seq, seal_error=self.seal_error)
        self.send(sender, RepoHealthReply(message.tag, health))

    def run_quick_check(self) -> None:
        result = quick_check_file(self.config.repository.path)
        self.quick_check = (time.monotonic(), result)  # one tuple assignment: atomic

    def receiveMsg_RepoRequest(self, message: RepoRequest, sender: Any) -> None:
        """Runs the operation in the group of this incoming message (one transaction, a
        savepoint per operation) and holds its reply until the group is committed."""
        self.operations[message.operation] = self.operations.get(message.operation, 0) + 1
        self.operated = True
        local = getattr(self, f"op_{message.operation}", None)
        run = local or getattr(self.store, message.operation)
        try:
            if not self.store.grouped:
                self.store.begin_group()
            before = self.store.audit_head()
            value = message.typed_value(run(**message.arguments()))
            after = self.store.audit_head()
        except Exception as exc:  # noqa: BLE001 - every failure is answered, typed
            self.record_error(exc)
            self.held.append((sender, RepoReply(message.tag, error=error_dict(exc))))
            if self.store.group_lost:  # the operations before it were undone too
                self.commit_group()
            return
        changed = after != before  # this actor is the only writer: the change is this op's
        self.held.append((sender, RepoReply(message.tag, value,
                                            audit_head=self.head_of(after) if changed else None)))
        self.audit_changed = self.audit_changed or changed

    def commit_group(self) -> None:
        """Commit the open group, then let its replies go, each an error if the commit
        failed: no reply leaves before what it reports is durable (synchronous=FULL)."""
        failure = None
        try:
            self.store.commit_group()
        except Exception as exc:  # noqa: BLE001 - every operation of the group is answered
            self.record_error(exc)
            self.log.error("repository commit failed: %s", exc)
            failure = error_dict(RepositoryError(f"not stored, the commit failed: {exc}"))
        held, self.held = self.held, []
        for sender, reply in held:
            if failure is not None and reply.error is None:
                reply = RepoReply(reply.tag, error=failure)
            self.send(sender, reply)

    def end_of_message(self) -> None:
        # Once per incoming message (a Batch of operations: after the last one): the commit,
        # the replies, one seal request and one EventsCommitted for all of them.
        if not getattr(self, "operated", False):
            return
        self.operated = False
        self.commit_group()
        if self.audit_changed:
            self.audit_changed = False
            self.seal_after_change()
        self.tell_sync_of_new_events()

    def tell_sync_of_new_events(self) -> None:
        if "sync" not in self.addresses:
            return
        last_seq = self.store.last_event_seq()
        if last_seq > self.events_told:
            after = max(self.events_told, last_seq - PUSH_LIMIT)
            events = tuple(self.store.events_after(after, PUSH_LIMIT))
            self.events_told = last_seq
            self.send(self.peer("sync"), EventsCommitted(last_seq, events, after))

    # -- audit seals ------------------------------------------------------------------
    def head_of(self, head: dict[str, Any]) -> dict[str, Any]:
        """The head as answers carry it: whose log it is, so heads of two signers are
        never compared with each other."""
        return {"seq": head["seq"], "hash": head["hash"], "node_id": self.config.node_id}

    def seal_after_change(self, head: dict[str, Any] | None = None) -> None:
        """Ask the Hsm actor to seal the head, unless a seal is in flight (its reply asks
        for the next one), the head is sealed already, or the last seal was asked less than
        SEAL_PACE_S ago (a wakeup asks then, for the head as it is by then)."""
        if self.sealing is not None or self.seal_paced or "hsm" not in self.addresses:
            return
        head = head or self.store.audit_head()
        if head["seq"] <= (self.sealed["seq"] if self.sealed else 0):
            return
        wait = (self.seal_asked_at + SEAL_PACE_S - self.pending.clock()) if self.seal_asked_at is not None else 0.0
        if wait > 0:
            self.seal_paced = True
            self.wakeupAfter(wait, payload=("seal_pace", None))
            return
        problem = self.store.audit_extends(self.sealed, head)
        if problem is not None:  # never seal a log rewritten under the signer
            self.seal_error = f"not sealed: {problem}"
            self.log.error("audit log %s", self.seal_error)
            return
        self.seal_asked_at = self.pending.clock()
        self.seal_hsm = self.peer("hsm")
        self.sealing = self.send_ask(self.seal_hsm, lambda tag: HsmSealRequest(tag, head["seq"], head["hash"]),
                                     head["seq"], SEAL_TIMEOUT_S, self.seal_timed_out)

    def seal_timed_out(self, tag: int, seq: int) -> None:
        if self.sealing == tag:
            self.sealing = None
            self.seal_failed(f"the hsm actor did not answer a seal within {SEAL_TIMEOUT_S:g} s")

    def receiveMsg_HsmSealReply(self, message: HsmSealReply, sender: Any) -> None:
        if self.sealing is None or self.sealing != message.tag:
            return  # a late reply after a time-out: its head is asked again anyway
        self.pending.pop(message.tag)
        self.sealing = None
        if message.error is not None:
            self.seal_failed(f"{message.error.get('code')}: {message.error.get('message')}")
            return
        # a reply without an error carries the seal
        assert message.sealed_at is not None and message.signature is not None
        try:
            self.store.store_audit_seal(message.seq, message.hash, message.sealed_at,
                                        message.signature)
        except Exception as exc:  # noqa: BLE001 - reported in health, retried
            self.seal_failed(f"{type(exc).__name__}: {exc}")
            return
        self.sealed, self.seal_error = {"seq": message.seq, "hash": message.hash}, None
        self.seal_after_change()  # what was committed while this seal was in flight

    def seal_failed(self, reason: str) -> None:
        if self.seal_error != reason:
            self.log.error("audit seal failed: %s", reason)
        self.seal_error = reason
        self.errors += 1
        self.wakeupAfter(SEAL_RETRY_S, payload=("seal_retry", None))

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> None:
        if message.payload == ("seal_pace", None):
            self.seal_paced = False
            self.seal_after_change()
        elif message.payload == ("seal_retry", None):
            self.seal_after_change()

    def on_addresses_changed(self) -> Any:
        """A peer was re-created: a seal in flight to a restarted Hsm actor is lost."""
        # Any child's restart sends a new address book; only a re-created Hsm actor lost
        # the seal in flight (else its reply still comes: one seal in flight, as always).
        if self.sealing is not None and self.addresses.get("hsm") != self.seal_hsm:
            self.pending.pop(self.sealing)
            self.sealing = None
            self.seal_asked_at = None  # that seal is lost: ask again now, not after the pace
        self.seal_after_change()
        return self.after_message()

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
        """Check and apply in order, the whole batch in one transaction (each event still
        checked: signature and body). A refused event is quarantined and counts as settled
        (acked), so it never holds back the events behind it; stop at the first failure that
        may pass later (a revocation before its certificate): the rest is redelivered by the
        peer's consumer and applied on a later try. A local sqlite error rolls the batch
        back: nothing applied, all redelivered."""
        if self.validator is None:
            raise RepositoryError("peer events need the sync section (event keys) in the configuration")
        failure: Exception | None
        try:
            outcomes, failure = self.store.apply_peer_events(events, self.validator)
        except Exception as exc:  # noqa: BLE001 - answered: nothing of the batch applied
            outcomes, failure = [], exc
        error = None
        if failure is not None:
            self.record_error(failure)
            error = error_dict(failure)
        return {"applied": len(outcomes), "quarantined": outcomes.count("quarantined"),
                "quarantine_total": self.store.quarantine_count(), "error": error}

    def on_failure(self, message: Any, sender: Any, exc: Exception) -> None:
        if isinstance(message, RepoHealthRequest):
            self.send(sender, RepoHealthReply(message.tag, {}, error=error_dict(exc)))
        elif isinstance(message, RepoRequest):
            self.send(sender, RepoReply(message.tag, error=error_dict(exc)))

    def shutdown(self) -> None:
        validator = getattr(self, "validator", None)
        if validator is not None:
            validator.close()  # its signature worker processes end now, not at EOF
        if getattr(self, "store", None) is not None:
            self.store.close()

    def figures(self) -> dict[str, Any]:
        store = getattr(self, "store", None)
        sealed = getattr(self, "sealed", None)
        return {"path": self.config.repository.path if self.config else None,
                "last_event_seq": store.last_event_seq() if store else None,
                "audit_sealed_seq": sealed["seq"] if sealed else 0,
                "audit_seal_error": getattr(self, "seal_error", None),
                "operations": dict(getattr(self, "operations", {}))}
