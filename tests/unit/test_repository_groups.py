"""Grouped commits (core/repository/store.py begin_group / commit_group): the operations of
one group share one transaction, each in a savepoint of its own; nothing is durable or
visible to another connection before the commit; a failed operation is undone alone; a
sqlite error that ends the transaction loses the whole group, and says so."""
from __future__ import annotations

import sqlite3
from collections.abc import Iterator
from contextlib import closing
from pathlib import Path

import pytest

from core.repository.store import DuplicateSerial, Repository, RepositoryError
from tests.unit.test_repository import ISSUER, NODE, event_types, issue, reserve


@pytest.fixture
def repo(tmp_path: Path) -> Iterator[Repository]:
    repository = Repository(str(tmp_path / "signer.sqlite"), NODE)
    yield repository
    repository.close()


def committed_serials(repo: Repository) -> list[str]:
    """What another connection sees (as the peer, a reader or a restarted signer would)."""
    with closing(sqlite3.connect(repo.path)) as other:
        return [row[0] for row in other.execute("SELECT serial FROM certificates ORDER BY serial")]


def test_a_group_is_invisible_until_committed_then_all_of_it_is_there(repo):
    repo.begin_group()
    issue(repo, "1a")
    issue(repo, "1b")
    assert repo.get_certificate(ISSUER, "1a")["status"] == "issued"  # the group sees its own writes
    assert committed_serials(repo) == []
    repo.commit_group()
    assert committed_serials(repo) == ["1a", "1b"]
    assert event_types(repo) == ["x509_issued", "x509_issued"]
    assert repo.verify_audit().ok


def test_a_failed_operation_is_undone_alone(repo):
    repo.begin_group()
    reserve(repo, "1a")
    with pytest.raises(DuplicateSerial):
        reserve(repo, "1a", request_id="another")
    with pytest.raises(RepositoryError):  # fails half-way: its certificate update is undone
        repo.complete_certificate(ISSUER, "1a", b"DER", "not-the-reserving-request", "sign_x509", "d", {})
    issue(repo, "1b")
    repo.commit_group()
    assert committed_serials(repo) == ["1a", "1b"]
    assert repo.get_certificate(ISSUER, "1a")["status"] == "reserved"
    assert event_types(repo) == ["x509_issued"]
    assert repo.verify_audit().ok


def test_a_transaction_rolled_back_by_sqlite_loses_the_group_and_says_so(repo, monkeypatch):
    repo.begin_group()
    issue(repo, "1a")

    def disk_full(*args, **kwargs):
        repo._db.execute("ROLLBACK")  # as SQLITE_FULL or an I/O error do to the whole transaction
        raise sqlite3.OperationalError("database or disk is full")

    monkeypatch.setattr(repo, "_reserve", disk_full)
    with pytest.raises(RepositoryError):
        reserve(repo, "1b")
    assert repo.group_lost
    monkeypatch.undo()
    with pytest.raises(RepositoryError, match="rolled back"):
        reserve(repo, "1c")  # nothing more joins a lost group
    with pytest.raises(RepositoryError, match="rolled back"):
        repo.commit_group()
    assert not repo.grouped and committed_serials(repo) == []
    issue(repo, "1d")  # and the repository works on, one transaction per operation
    assert committed_serials(repo) == ["1d"]


def test_outside_a_group_each_operation_commits_alone(repo):
    issue(repo, "1a")
    assert committed_serials(repo) == ["1a"]
    repo.commit_group()  # no group: nothing to do
    assert not repo.grouped
