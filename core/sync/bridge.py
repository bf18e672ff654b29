"""The NATS JetStream side of replication, on its own asyncio loop in a thread.

The Sync actor owns one NatsBridge. Thespian must never be called from this thread
(facts.md), so results travel back through a queue plus one byte on a socketpair that the
actor watches with ThespianWatch; commands from the actor go in with
`loop.call_soon_threadsafe`.

Topology (docs/sync.md): every signer keeps its whole event log in a stream on its OWN
nats-server (`EVENTS_<node>`, subject `signer.events.<node>`), and reads the peer's stream
straight from the peer's server with a durable pull consumer. No JetStream cluster: each
stream has one home, so neither signer ever needs the other (or a quorum) to issue.

Both connections log in as user <node_id> with the password of `sync.credentials_file`,
and use the inbox prefix `_INBOX_<node_id>`: each server lets that user do exactly what
this bridge does and nothing more (core/sync/nats_auth.py).
"""
from __future__ import annotations

import asyncio
import queue
import socket
import threading
from typing import Any

import msgpack
import nats
from nats.js import api

from core.sync.nats_auth import consumer_name, inbox_prefix, stream_name, subject

FETCH_BATCH = 200
FETCH_WAIT_S = 1.0  # a lingering pull for the next message: returns when it arrives
DRAIN_WAIT_S = 0.005  # then what else is there, without waiting for a full batch
RETRY_S = 0.5
STATUS_EVERY_S = 2.0
ACK_WAIT_S = 10.0  # an applier that died without a nak: its messages come back after this
APPLYING = 2  # peer batches handed over and not settled: one applied, the next one waiting
PUBLISH_ACK_S = 5.0  # JetStream's ack of each publish, counted once they are all sent


__all__ = ["NatsBridge", "stream_name", "subject"]


class NatsBridge:
    def __init__(self, node_id: str, local_url: str, peer_url: str | None, peer_node_id: str | None,
                 notify: socket.socket, password: str | None = None) -> None:
        """password: of NATS user `node_id` on both servers (None: connect without a
        user, for a server without authorization)."""
        self.node_id, self.local_url = node_id, local_url
        self._password = password
        self.peer_url, self.peer_node_id = peer_url, peer_node_id
        self.results: queue.Queue[tuple[str, Any]] = queue.Queue()
        self._notify = notify
        self._loop = asyncio.new_event_loop()
        self._acks: dict[int, Any] = {}
        self._token = 0
        # Peer batches handed to the actor and not settled yet: at most APPLYING, so the next
        # batch is fetched while one is applied (bound to the bridge's loop when first used).
        self._applying = asyncio.Semaphore(APPLYING)
        # Batches to publish, and those sent whose acks are awaited, in order (same binding).
        self._outgoing: asyncio.Queue[tuple[int, list[dict[str, Any]]]] = asyncio.Queue()
        self._unacked: asyncio.Queue[tuple[int, list[tuple[int, asyncio.Future[Any]]],
                                           Exception | None]] = asyncio.Queue()
        self._thread = threading.Thread(target=self._run, name="nats-bridge", daemon=True)
        self._stopping = False

    # -- called from the actor's thread -------------------------------------------------
    def start(self) -> "NatsBridge":
        self._thread.start()
        return self

    def publish(self, events: list[dict[str, Any]], batch: int = 0) -> None:
        """Publish `events` (in seq order) after the batches handed before; reported as
        ("published", {"batch", "last_seq", "error"}), batch after batch in order."""
        self._loop.call_soon_threadsafe(self._outgoing.put_nowait, (batch, events))

    def settle(self, ack: list[int], nak: list[int]) -> None:
        """Acknowledge applied messages (after the repository committed), nak the rest:
        once per batch received (it frees its place for the next fetch)."""
        self._loop.call_soon_threadsafe(lambda: self._loop.create_task(self._settle(ack, nak)))

    def stop(self) -> None:
        self._stopping = True
        if self._loop.is_running():
            asyncio.run_coroutine_threadsafe(self._shutdown(), self._loop)
        self._thread.join(timeout=5)

    async def _shutdown(self) -> None:
        # Hand unapplied messages back at once, rather than after ack_wait, to whoever
        # consumes next (this signer restarted, usually).
        for msg in list(self._acks.values()):
            try:
                await asyncio.wait_for(msg.nak(), 1)
            except Exception:  # noqa: BLE001 - then they come back after ack_wait
                pass
        self._acks.clear()
        for connection in (getattr(self, "local", None), getattr(self, "peer", None)):
            if connection is not None:
                try:
                    await asyncio.wait_for(connection.close(), 2)
                except Exception:  # noqa: BLE001 - closing anyway
                    pass
        tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        self._loop.stop()

    # -- the loop --------------------------------------------------------------------------
    def _run(self) -> None:
        asyncio.set_event_loop(self._loop)
        self._loop.create_task(self._local())
        if self.peer_url:
            self._loop.create_task(self._peer())
        self._loop.run_forever()

    def _post(self, kind: str, value: Any) -> None:
        self.results.put((kind, value))
        try:
            self._notify.send(b"!")
        except OSError:
            pass  # the actor is gone; nothing to tell

    async def _connect(self, url: str, name: str) -> Any:
        # nats-py does not retry a failed first connect (facts.md): loop on it.
        async def error_cb(exc: Exception) -> None:
            # Without a callback nats-py prints a traceback per failed reconnect (twice a
            # second during an outage): report it as status instead.
            key = "local_error" if name.endswith("publisher") else "peer_error"
            self._post("status", {key: f"{type(exc).__name__}: {exc}"})

        while not self._stopping:
            try:
                login = {} if self._password is None else {"user": self.node_id,
                                                            "password": self._password}
                return await nats.connect(url, name=name, max_reconnect_attempts=-1,
                                          reconnect_time_wait=RETRY_S, connect_timeout=2,
                                          allow_reconnect=True, error_cb=error_cb,
                                          inbox_prefix=inbox_prefix(self.node_id), **login)
            except Exception:  # noqa: BLE001 - any failure: the server is not there yet
                await asyncio.sleep(RETRY_S)

    async def _local(self) -> None:
        self.local = await self._connect(self.local_url, f"{self.node_id}-publisher")
        self.local_js = self.local.jetstream()
        while not self._stopping:
            try:
                await self.local_js.stream_info(stream_name(self.node_id))
                break  # it exists: keep whatever an operator configured on it
            except nats.js.errors.NotFoundError:
                pass
            except Exception as exc:  # noqa: BLE001
                self._post("error", f"local stream: {exc}")
                await asyncio.sleep(RETRY_S)
                continue
            try:
                await self.local_js.add_stream(api.StreamConfig(
                    name=stream_name(self.node_id), subjects=[subject(self.node_id)],
                    storage=api.StorageType.FILE, retention=api.RetentionPolicy.LIMITS,
                    duplicate_window=3600.0))
                break
            except Exception as exc:  # noqa: BLE001
                self._post("error", f"local stream: {exc}")
                await asyncio.sleep(RETRY_S)
        self._loop.create_task(self._send_batches())
        self._loop.create_task(self._take_acks())
        self._post("local_ready", True)
        while not self._stopping:
            status = {"local_connected": self.local.is_connected}
            if self.local.is_connected:
                status["local_error"] = None
            self._post("status", status)
            await asyncio.sleep(STATUS_EVERY_S)

    async def _send_batches(self) -> None:
        """Send each batch's events as soon as it is handed over, without waiting for acks
        (one task, one connection: the server stores them in the order sent)."""
        while True:
            batch, events = await self._outgoing.get()
            acks: list[tuple[int, asyncio.Future[Any]]] = []
            failure = None
            for event in events:
                try:
                    # The event id de-duplicates a publish that is retried after an outage.
                    acks.append((event["seq"], await self.local_js.publish_async(
                        subject(self.node_id), msgpack.packb(event, datetime=False, default=str),
                        headers={"Nats-Msg-Id": event["event_id"]})))
                except Exception as exc:  # noqa: BLE001 - reported with the batch's acks
                    failure = exc
                    break
            self._unacked.put_nowait((batch, acks, failure))

    async def _take_acks(self) -> None:
        """Each batch's acks in the order sent (PUBLISH_ACK_S each): the report says up to
        which event JetStream acked it."""
        while True:
            batch, acks, failure = await self._unacked.get()
            last = None
            try:
                for seq, ack in acks:
                    await asyncio.wait_for(ack, PUBLISH_ACK_S)
                    last = seq
                if failure is not None:
                    raise failure
            except Exception as exc:  # noqa: BLE001 - the outbox keeps the rest for later
                for _, ack in acks:
                    ack.cancel()  # no-op for those already acked
                self._post("published", {"batch": batch, "last_seq": last,
                                         "error": f"{type(exc).__name__}: {exc}"})
                continue
            self._post("published", {"batch": batch, "last_seq": last, "error": None})

    async def _peer(self) -> None:
        # Started only with a peer_url, and the configuration gives both or neither.
        assert self.peer_url is not None and self.peer_node_id is not None
        self.peer = await self._connect(self.peer_url, f"{self.node_id}-applier")
        js = self.peer.jetstream()
        sub = None
        last_status = 0.0
        while not self._stopping:
            now = self._loop.time()
            if now - last_status > STATUS_EVERY_S:
                # Posted whatever happens below, so an outage shows at once in status.
                status = {"peer_connected": self.peer.is_connected}
                if sub is not None and self.peer.is_connected:
                    try:
                        info = await sub.consumer_info()
                        status.update(peer_pending=info.num_pending, peer_delivered_seq=info.delivered.stream_seq,
                                      peer_error=None)
                    except Exception as exc:  # noqa: BLE001
                        status["peer_error"] = f"{type(exc).__name__}: {exc}"
                self._post("status", status)
                last_status = now
            await self._applying.acquire()  # released when the batch fetched now is settled
            try:
                if sub is None:
                    sub = await js.pull_subscribe(subject(self.peer_node_id), durable=consumer_name(self.node_id),
                                                  stream=stream_name(self.peer_node_id),
                                                  config=api.ConsumerConfig(ack_policy=api.AckPolicy.EXPLICIT,
                                                                            ack_wait=ACK_WAIT_S, max_ack_pending=FETCH_BATCH))
                msgs = await self._fetch_available(sub)
            except (nats.errors.TimeoutError, asyncio.TimeoutError):
                self._applying.release()
                continue
            except Exception as exc:  # noqa: BLE001 - peer or stream not there (yet)
                self._applying.release()
                self._post("status", {"peer_connected": self.peer.is_connected,
                                      "peer_error": f"{type(exc).__name__}: {exc}"})
                sub = None if "not found" in str(exc).lower() else sub
                await asyncio.sleep(RETRY_S)
                continue
            batch = []
            for msg in msgs:
                self._token += 1
                self._acks[self._token] = msg
                batch.append((self._token, msg.metadata.sequence.stream,
                              msgpack.unpackb(msg.data, raw=False, strict_map_key=False)))
            # The next fetch starts at once: it waits for its messages while this batch is
            # applied, and is applied right after it (in order, by the one Repository).
            self._post("received", batch)

    @staticmethod
    async def _fetch_available(sub: Any) -> list[Any]:
        """The next message as soon as it exists, plus whatever else is there already.

        nats-py's fetch(n) with nothing waiting sends a lingering pull and then waits for n
        messages or its whole timeout: with n = 200 one event could wait up to 1 s. So: a
        lingering fetch of ONE message (returns the moment it arrives), then a drain of up
        to FETCH_BATCH - 1 more that waits at most DRAIN_WAIT_S when nothing else is there.
        """
        msgs: list[Any] = await sub.fetch(1, timeout=FETCH_WAIT_S)
        try:
            msgs += await sub.fetch(FETCH_BATCH - 1, timeout=DRAIN_WAIT_S)
        except (nats.errors.TimeoutError, asyncio.TimeoutError):
            pass
        return msgs

    async def _settle(self, ack: list[int], nak: list[int]) -> None:
        # Plain acks, not awaited one by one: they leave on the connection ahead of the next
        # fetch. One that is lost brings its message back after ack_wait: a no-op to apply.
        for token in ack:
            msg = self._acks.pop(token, None)
            if msg is not None:
                try:
                    await msg.ack()
                except Exception:  # noqa: BLE001 - redelivered later; applying is idempotent
                    pass
        for token in nak:
            msg = self._acks.pop(token, None)
            if msg is not None:
                try:
                    await msg.nak(delay=1)
                except Exception:  # noqa: BLE001
                    pass
        self._applying.release()
