"""The Repository actor commits the operations of one incoming message (a Batch) together
(docs/actors.md, Repository messages): one transaction, a savepoint per operation, and no
reply leaves before the commit; a failed commit answers every operation with an error and
tells nobody of what it did not store."""
from __future__ import annotations

import sqlite3
from contextlib import closing
from datetime import datetime, timedelta, timezone
from types import SimpleNamespace

from actors.owners.repository import Repository
from core.repository.store import RepositoryError
from messages import Batch, HsmSealRequest
from messages.repository import RepoReply, ReserveSerial
from messages.sync import EventsCommitted
from tests.support.actor_harness import ActorHarness

NOW = datetime(2025, 3, 1, 12, 0, 0, tzinfo=timezone.utc)


def repository(tmp_path) -> ActorHarness:
    config = SimpleNamespace(node_id="n1", repository=SimpleNamespace(path=str(tmp_path / "r.sqlite")), sync=None)
    return ActorHarness(Repository, config, {"sync": "SYNC", "hsm": "HSM"})


def reserve(tag: int, serial: str, request_id: str | None = None) -> ReserveSerial:
    return ReserveSerial(tag, "class3", serial, request_id or f"req-{serial}", "server", "CN=x",
                         NOW, NOW + timedelta(days=1))


def stored_serials(h: ActorHarness) -> list[str]:
    with closing(sqlite3.connect(h.actor.config.repository.path)) as other:
        return [row[0] for row in other.execute("SELECT serial FROM certificates ORDER BY serial")]


def replies(h: ActorHarness) -> list[tuple[int, str | None]]:
    return [(reply.tag, reply.error and reply.error["code"]) for _, reply in h.take(RepoReply)]


def test_a_batch_is_one_commit_and_no_reply_leaves_before_it(tmp_path):
    h = repository(tmp_path)
    commits = []
    commit = h.actor.store.commit_group

    def counted_commit() -> None:
        commits.append((stored_serials(h), len(h.take(RepoReply))))
        commit()

    h.actor.store.commit_group = counted_commit
    h.deliver(Batch((reserve(1, "1a"), reserve(2, "1a", "other"), reserve(3, "1b"))), "handler")
    assert commits == [([], 0)]  # nothing stored or answered before the one commit
    assert stored_serials(h) == ["1a", "1b"]
    assert replies(h) == [(1, None), (2, "duplicate_serial"), (3, None)]  # the duplicate alone failed
    h.actor.shutdown()


def test_a_failed_commit_answers_every_operation_with_an_error_and_tells_nobody(tmp_path):
    h = repository(tmp_path)
    h.deliver(reserve(1, "1a"), "handler")  # committed: its audit entry is sealed, Sync told
    h.take()
    store = h.actor.store

    def failing_commit() -> None:
        store._db.execute("ROLLBACK")
        store._grouped = False
        raise RepositoryError("sqlite: disk I/O error")

    store.commit_group = failing_commit
    h.deliver(Batch((reserve(2, "1b"), reserve(3, "1a"))), "handler")
    assert replies(h) == [(2, "repository_error"), (3, "duplicate_serial")]
    assert h.take(EventsCommitted) == [] and h.take(HsmSealRequest) == []
    assert stored_serials(h) == ["1a"]
    h.actor.shutdown()


def test_a_transaction_lost_mid_batch_fails_what_it_held_and_the_rest_commits_anew(tmp_path):
    h = repository(tmp_path)
    store = h.actor.store
    original, calls = store.reserve_serial, []

    def reserve_serial(*args, **kwargs):
        calls.append(args)
        if len(calls) == 2:  # the second operation meets a sqlite error that ends the transaction
            with store._write():
                store._db.execute("ROLLBACK")  # as SQLITE_FULL or an I/O error do
                raise sqlite3.OperationalError("database or disk is full")
        return original(*args, **kwargs)

    store.reserve_serial = reserve_serial
    h.deliver(Batch((reserve(1, "1a"), reserve(2, "1b"), reserve(3, "1c"))), "handler")
    # 1 was undone with the transaction: answered with an error, like 2; 3 ran in a new group.
    assert replies(h) == [(1, "repository_error"), (2, "repository_error"), (3, None)]
    assert stored_serials(h) == ["1c"]
    h.actor.shutdown()


def test_shutdown_ends_the_peer_validators_signature_workers(tmp_path):
    """The worker processes that verify a peer's signatures end with the Repository, not
    only when they later read EOF."""
    from core.sync.peer_validation import PeerValidator
    h = repository(tmp_path)
    h.actor.validator = PeerValidator({}, {}, None, workers=1)
    h.actor.validator.workers._start()
    processes = [worker.process for worker in h.actor.validator.workers.workers]
    assert processes and all(process.poll() is None for process in processes)
    h.actor.shutdown()
    assert all(process.poll() is not None for process in processes)
