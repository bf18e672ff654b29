"""Stage timestamps of replication, for bench/bench_sync.py --stages (never shipped).

bench_sync.py puts this folder first on PYTHONPATH of the two signers it starts, so Python
imports this module at start-up (`sitecustomize`), before `signer run` builds its actors.
It wraps a few methods of the Repository and Sync actors and of the NATS bridge to note,
per event id, when the event passed each stage. The actor processes are forked from
`signer run` and inherit the wrapped classes. Nothing here changes what the wrapped code
does: each wrapper notes the time and calls the original.

One line per stage and event, `stage node event_id time`, time from time.monotonic()
(CLOCK_MONOTONIC: the same clock in every process of the machine, and the clock of the
bench's watchers), appended to `<SYNC_TRACE_DIR>/<pid>.trace`.
"""
from __future__ import annotations

import os
import time
from typing import Any

_DIR = os.environ.get("SYNC_TRACE_DIR")
_files: dict[int, Any] = {}


def note(stage: str, node: str, event_ids: Any, at: float | None = None) -> None:
    at = time.monotonic() if at is None else at
    pid = os.getpid()
    out = _files.get(pid)
    if out is None:
        out = _files[pid] = open(os.path.join(_DIR or ".", f"{pid}.trace"), "a", buffering=1)
    out.write("".join(f"{stage} {node} {event_id} {at:.6f}\n" for event_id in event_ids))


def _install() -> None:
    from actors.owners import repository as repo_actor
    from actors import sync as sync_actor
    from core.sync import bridge as bridge_module

    Repository = repo_actor.Repository
    Sync = sync_actor.Sync
    NatsBridge = bridge_module.NatsBridge

    # -- Repository: each operation's commit, and the EventsCommitted that tells of it ------
    def new_ids(self: Any, before: int, after: int) -> list[str]:
        return [row[0] for row in self.store._db.execute(
            "SELECT event_id FROM events WHERE seq > ? AND seq <= ?", (before, after))]

    operate = Repository.receiveMsg_RepoRequest
    grouped = hasattr(Repository, "commit_group")  # operations committed together at the end

    def receive_request(self: Any, message: Any, sender: Any) -> Any:
        before = self.store.last_event_seq()
        try:
            return operate(self, message, sender)
        finally:
            at = time.monotonic()  # the operation returned
            after = self.store.last_event_seq()
            if after > before:
                ids = new_ids(self, before, after)
                if grouped:
                    self._trace_pending = getattr(self, "_trace_pending", []) + ids
                else:
                    note("commit", self.config.node_id, ids, at)

    Repository.receiveMsg_RepoRequest = receive_request

    if grouped:
        commit_group = Repository.commit_group

        def traced_commit_group(self: Any) -> None:
            commit_group(self)
            note("commit", self.config.node_id, getattr(self, "_trace_pending", []))
            self._trace_pending = []

        Repository.commit_group = traced_commit_group

    tell = Repository.tell_sync_of_new_events

    def tell_sync_of_new_events(self: Any) -> None:
        before = self.events_told
        tell(self)  # EventsCommitted is held until the end of the incoming message: right after
        if self.events_told > before:
            note("told", self.config.node_id, new_ids(self, before, self.events_told))

    Repository.tell_sync_of_new_events = tell_sync_of_new_events

    apply_events = Repository.op_apply_events

    def op_apply_events(self: Any, events: list[dict[str, Any]]) -> Any:
        ids = [event.get("event_id") for event in events]
        note("apply_start", self.config.node_id, ids)
        try:
            return apply_events(self, events)
        finally:
            note("apply_end", self.config.node_id, ids)

    Repository.op_apply_events = op_apply_events

    # -- Sync: EventsCommitted received, handed to the bridge, a peer batch received ---------
    committed = Sync.receiveMsg_EventsCommitted

    def receive_committed(self: Any, message: Any, sender: Any) -> Any:
        note("sync_got", self.node_id, [event["event_id"] for event in message.events])
        return committed(self, message, sender)

    Sync.receiveMsg_EventsCommitted = receive_committed

    bridge_result = Sync.bridge_result

    def traced_bridge_result(self: Any, kind: str, value: Any) -> None:
        if kind == "received":
            note("peer_batch", self.node_id, [event["event_id"] for _, _, event in value])
        bridge_result(self, kind, value)

    Sync.bridge_result = traced_bridge_result

    publish = NatsBridge.publish

    def bridge_publish(self: Any, events: list[dict[str, Any]], *args: Any) -> None:
        note("handoff", self.node_id, [event["event_id"] for event in events])
        publish(self, events, *args)

    NatsBridge.publish = bridge_publish

    # -- the bridge's loop: each JetStream publish and its ack, each fetched message ---------
    def wrap_js(self: Any) -> None:
        js = self.local_js
        if getattr(js, "_trace_wrapped", False):
            return
        # publish (each awaited) or publish_async (a future per ack), whichever the bridge calls
        original, original_async = js.publish, getattr(js, "publish_async", None)

        async def js_publish(subject: str, payload: bytes, *args: Any, **kwargs: Any) -> Any:
            event_id = (kwargs.get("headers") or {}).get("Nats-Msg-Id", "?")
            note("js_send", self.node_id, [event_id])
            result = await original(subject, payload, *args, **kwargs)
            note("js_acked", self.node_id, [event_id])
            return result

        async def js_publish_async(subject: str, payload: bytes, *args: Any, **kwargs: Any) -> Any:
            event_id = (kwargs.get("headers") or {}).get("Nats-Msg-Id", "?")
            note("js_send", self.node_id, [event_id])
            future = await original_async(subject, payload, *args, **kwargs)
            future.add_done_callback(lambda _: note("js_acked", self.node_id, [event_id]))
            return future

        js.publish = js_publish
        if original_async is not None:
            js.publish_async = js_publish_async
        js._trace_wrapped = True

    for name in ("_publish", "_send_batches"):  # the bridge's publishing coroutine, as it is named
        inner = getattr(NatsBridge, name, None)
        if inner is None:
            continue

        def traced(inner: Any) -> Any:
            async def publishing(self: Any, *args: Any) -> None:
                wrap_js(self)
                await inner(self, *args)
            return publishing

        setattr(NatsBridge, name, traced(inner))

    fetch = NatsBridge._fetch_available

    async def traced_fetch(sub: Any) -> list[Any]:
        msgs: list[Any] = await fetch(sub)
        note("fetched", "-", [(msg.headers or {}).get("Nats-Msg-Id", "?") for msg in msgs])
        return msgs

    NatsBridge._fetch_available = staticmethod(traced_fetch)


if _DIR:
    _install()
