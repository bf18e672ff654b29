"""Repository: the single owner of the SQLite database. All state lives here; handlers keep
none that the repository should have. The storage logic is core.repository.Repository."""
from __future__ import annotations

from typing import Any

from actors.base import SignerActor, error_dict
from core.repository import Repository as RepositoryStore
from messages import RepoHealthReply, RepoHealthRequest


class Repository(SignerActor):
    actor_name = "repository"

    def configure(self, config: Any) -> None:
        self.store = RepositoryStore(config.repository.path, config.node_id)

    def receiveMsg_RepoHealthRequest(self, message: RepoHealthRequest, sender: Any) -> None:
        self.send(sender, RepoHealthReply(message.tag, self.store.health()))

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
