"""Repository: the single owner of the SQLite database. All state lives here; handlers keep
none that the repository should have. The storage logic is core.repository.Repository."""
from __future__ import annotations

import time
from typing import Any

from actors.base import SignerActor, error_dict
from core.repository import Repository as RepositoryStore
from messages import RepoHealthReply, RepoHealthRequest


# PRAGMA quick_check reads every page (seconds at 1M certificates) and blocks this actor
# meanwhile, so a health poll reuses a recent result instead of running it every time.
QUICK_CHECK_INTERVAL_S = 300.0


class Repository(SignerActor):
    actor_name = "repository"

    def configure(self, config: Any) -> None:
        self.store = RepositoryStore(config.repository.path, config.node_id)
        self.quick_check: tuple[float, str] | None = None  # (monotonic time, result)

    def receiveMsg_RepoHealthRequest(self, message: RepoHealthRequest, sender: Any) -> None:
        now = time.monotonic()
        fresh = self.quick_check is not None and now - self.quick_check[0] < QUICK_CHECK_INTERVAL_S
        health = self.store.health(run_quick_check=not fresh)
        if fresh:
            health["quick_check"] = self.quick_check[1]
        else:
            self.quick_check = (now, health["quick_check"])
        health["quick_check_age_s"] = round(now - self.quick_check[0], 1)
        self.send(sender, RepoHealthReply(message.tag, health))

    def on_failure(self, message: Any, sender: Any, exc: Exception) -> None:
        if isinstance(message, RepoHealthRequest):
            self.send(sender, RepoHealthReply(message.tag, {}, error=error_dict(exc)))

    def shutdown(self) -> None:
        if getattr(self, "store", None) is not None:
            self.store.close()

    def figures(self) -> dict[str, Any]:
        store = getattr(self, "store", None)
        return {"path": self.config.repository.path if self.config else None,
                "last_event_seq": store.last_event_seq() if store else None}
