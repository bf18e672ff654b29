"""The repository part of `health`: quick_check starts with the Repository actor, its age is
never negative, and "pending" is answered as docs/protocol.md describes it (issue 12.9)."""
from __future__ import annotations

import math
import re
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import actors.owners.repository as repository_actor
from actors.owners.repository import Repository
from messages import RepoHealthReply, RepoHealthRequest
from tests.support.actor_harness import ActorHarness

DOC = Path(__file__).resolve().parents[2] / "docs" / "protocol.md"


def repository_actor_for(tmp_path: Path) -> ActorHarness:
    config = SimpleNamespace(node_id="n1", repository=SimpleNamespace(path=str(tmp_path / "r.sqlite")), sync=None)
    return ActorHarness(Repository, config, {})


def health_of(h: ActorHarness, tag: int) -> dict:
    h.deliver(RepoHealthRequest(tag), "health")
    (_, reply), = h.take(RepoHealthReply)
    return reply.health


def doc_row(table_heading: str, field: str) -> str:
    """The Meaning cell of `field` in the table that follows `table_heading`."""
    text = DOC.read_text()
    section = text[text.index(table_heading):]
    match = re.search(rf"^\| {re.escape(field)} \| [^|]+ \| (.+) \|$", section, re.MULTILINE)
    assert match, f"no row for {field} after {table_heading!r}"
    return match.group(1)


def test_first_quick_check_runs_without_waiting_for_a_health_poll(tmp_path):
    h = repository_actor_for(tmp_path)
    h.actor.checker.join(60)  # started by configure, not by the first poll
    health = health_of(h, 1)
    assert health["quick_check"] == "ok" and health["quick_check_age_s"] >= 0
    h.actor.shutdown()


def test_quick_check_age_is_never_negative(tmp_path):
    h = repository_actor_for(tmp_path)
    h.actor.checker.join(60)
    # The checker thread read the clock after the poll did (its result landed meanwhile).
    h.actor.quick_check = (time.monotonic() + 5.0, "ok")
    age = health_of(h, 2)["quick_check_age_s"]
    assert age == 0.0 and math.copysign(1.0, age) == 1.0  # not -5.0, not -0.0
    h.actor.shutdown()


def test_pending_answer_is_the_documented_one(tmp_path, monkeypatch):
    release = threading.Event()

    def slow_quick_check(path: str) -> str:
        release.wait(60)
        return "ok"

    monkeypatch.setattr(repository_actor, "quick_check_file", slow_quick_check)
    h = repository_actor_for(tmp_path)
    health = health_of(h, 3)
    release.set()
    h.actor.checker.join(60)
    assert health["quick_check"] == "pending" and "quick_check_age_s" not in health
    assert "ok" not in health  # the Health actor adds ok: true (nothing found wrong yet)
    quick_check_doc = doc_row("`repository`:", "quick_check")
    assert '`"pending"`' in quick_check_doc, quick_check_doc
    assert "absent while" in doc_row("`repository`:", "quick_check_age_s").lower()
    assert '"pending"' in doc_row("`repository`:", "ok")
    h.actor.shutdown()

