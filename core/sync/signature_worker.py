"""Signatures of a batch of peer events verified in worker processes, ahead of the
repository applying them (issue 14.4: peer catch-up).

cryptography holds the GIL while it verifies, and an Ed25519 verification is about a third
of what applying an imported event costs: a thread does not help, another process does.
`SignatureWorkers` starts `count` worker processes (this module run with `python -m`: a
fresh interpreter, no inherited threads, sockets or SQLite connection) and hands each a
share of a batch's checks in chunks; the caller applies event after event and takes each
verdict when it gets there, so the workers verify while the repository writes.

A verdict is only what the check itself would have found: True (verifies), False (does not
verify: the same refusal as checking inline) or None (the worker could not tell, or is
gone: the caller checks inline). A worker that fails, answers garbage or takes longer than
`timeout_s` is stopped and everything it still owed is checked inline, so the pool can make
catch-up slower, never a check weaker. Workers end when their stdin closes (the parent
stopped or died).

Frames on the pipes: 4-byte big-endian length, then msgpack. Request: [chunk id, [item, ...]]
with item ["ed25519", public key (32 raw bytes), signature, signed bytes] or ["x509",
issuer certificate DER, certificate DER]; answer: [chunk id, [verdict, ...]].
"""
from __future__ import annotations

import bisect
import os
import select
import subprocess
import sys
import time
from collections import deque
from pathlib import Path
from typing import Any

import msgpack
from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PublicKey

Item = tuple[str, bytes, bytes] | tuple[str, bytes, bytes, bytes]
_HEADER = 4
_READ_SIZE = 1 << 16
MAX_FAILURES = 3  # workers that failed before this pool stops starting new ones
# A batch goes out in chunks of 4, 8, 16, 32, 32, ... items: the caller waits only for the
# small first one, and later ones are answered before it gets to them.
FIRST_CHUNK, LARGEST_CHUNK = 4, 32


def default_count() -> int:
    """One worker per CPU beyond the one the repository writes on, at most 2 (0 on one
    CPU: then every check runs inline)."""
    return max(0, min(2, (os.cpu_count() or 1) - 1))


def _frame(payload: Any) -> bytes:
    body: bytes = msgpack.packb(payload, use_bin_type=True)
    return len(body).to_bytes(_HEADER, "big") + body


def worker_command() -> list[str]:
    return [sys.executable, "-m", "core.sync.signature_worker"]


class _Worker:
    def __init__(self, command: list[str]) -> None:
        root = str(Path(__file__).resolve().parent.parent.parent)  # the folder holding core/
        env = dict(os.environ, PYTHONPATH=os.pathsep.join(
            [root, *filter(None, [os.environ.get("PYTHONPATH")])]))
        self.process = subprocess.Popen(command, stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                                        env=env, close_fds=True)
        assert self.process.stdin is not None and self.process.stdout is not None  # PIPE both
        self.stdin, self.stdout = self.process.stdin.fileno(), self.process.stdout.fileno()
        os.set_blocking(self.stdin, False)
        self.out = bytearray()  # frames not yet written (the pipe was full)
        self.inbuf = bytearray()
        self.owed: deque[int] = deque()  # chunk ids sent, in order, not yet answered

    def pump(self) -> None:
        """Write what the pipe takes now, without waiting (OSError: the worker is gone)."""
        while self.out:
            try:
                written = os.write(self.stdin, self.out[:_READ_SIZE])
            except BlockingIOError:
                return
            del self.out[:written]

    def read_frames(self) -> list[Any]:
        """Whatever is readable now (call after select said so), as decoded frames."""
        data = os.read(self.stdout, _READ_SIZE)
        if not data:
            raise EOFError("the signature worker closed its output")
        self.inbuf += data
        frames = []
        while len(self.inbuf) >= _HEADER:
            size = int.from_bytes(self.inbuf[:_HEADER], "big")
            if len(self.inbuf) < _HEADER + size:
                break
            frames.append(msgpack.unpackb(bytes(self.inbuf[_HEADER:_HEADER + size]), raw=False))
            del self.inbuf[:_HEADER + size]
        return frames

    def stop(self) -> None:
        for stream in (self.process.stdin, self.process.stdout):
            try:
                if stream is not None:
                    stream.close()
            except OSError:
                pass
        try:
            self.process.wait(timeout=2)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class Verdicts:
    """The verdicts of one submit(), taken in any order; each waits for its chunk."""

    def __init__(self, pool: SignatureWorkers, starts: list[int], chunks: list[int]) -> None:
        self.pool, self.starts, self.chunks = pool, starts, chunks  # chunk i: items starts[i]..
        self.answers: dict[int, list[Any] | None] = {}

    def get(self, index: int) -> bool | None:
        position = bisect.bisect_right(self.starts, index) - 1
        chunk = self.chunks[position]
        if chunk not in self.answers:
            self.answers[chunk] = self.pool._wait(chunk)
        verdicts = self.answers[chunk]
        if verdicts is None:
            return None
        offset = index - self.starts[position]
        verdict = verdicts[offset] if offset < len(verdicts) else None
        return verdict if isinstance(verdict, bool) else None


class SignatureWorkers:
    def __init__(self, count: int = 1, timeout_s: float = 30.0,
                 command: list[str] | None = None) -> None:
        """count: worker processes; timeout_s: how long a chunk may take before its worker
        is given up; command: what runs a worker (tests), by default this module."""
        if count < 1:
            raise ValueError("at least one worker (none: check inline instead)")
        self.count, self.timeout_s = count, timeout_s
        self.command = command or worker_command()
        self.workers: list[_Worker] = []
        self.results: dict[int, list[Any] | None] = {}  # answered (None: gone unanswered)
        self.next_chunk = 0
        self.failures = 0

    def submit(self, items: list[Item]) -> Verdicts:
        """Send `items` to the workers now (in chunks, spread over them); the verdicts come
        back in the same order. Nothing blocks here, however many items there are. The
        verdicts of the previous submit are given up (None from then on)."""
        # Answers nobody took (a batch that stopped early) are not needed any more: one
        # batch at a time (an older Verdicts asking again gets None: inline).
        self.results.clear()
        if len(self.workers) < self.count:
            self._start()
        starts, chunks, start, size = [], [], 0, FIRST_CHUNK
        while start < len(items):
            chunk_id, self.next_chunk = self.next_chunk, self.next_chunk + 1
            starts.append(start)
            chunks.append(chunk_id)
            if not self.workers:
                self.results[chunk_id] = None  # none would start: all inline
            else:
                worker = self.workers[len(chunks) % len(self.workers)]
                worker.out += _frame([chunk_id, [list(item) for item in items[start:start + size]]])
                worker.owed.append(chunk_id)
                try:
                    worker.pump()
                except OSError:
                    self._drop(worker)
            start, size = start + size, min(2 * size, LARGEST_CHUNK)
        return Verdicts(self, starts, chunks)

    def close(self) -> None:
        for worker in self.workers:
            worker.stop()
        self.workers = []

    def _start(self) -> None:
        while len(self.workers) < self.count and self.failures < MAX_FAILURES:
            try:
                self.workers.append(_Worker(self.command))
            except OSError:
                self.failures += 1
                return

    def _wait(self, chunk: int) -> list[Any] | None:
        deadline = time.monotonic() + self.timeout_s
        while chunk not in self.results:
            waiting = [w for w in self.workers if w.owed]
            if not waiting:
                self.results[chunk] = None  # owed by a worker that was stopped
                break
            for worker in waiting:
                try:
                    worker.pump()
                except OSError:
                    self._drop(worker)
            waiting = [w for w in waiting if w in self.workers]
            if not waiting:
                continue
            left = deadline - time.monotonic()
            readable, writable, _ = select.select(
                [w.stdout for w in waiting], [w.stdin for w in waiting if w.out], [], max(left, 0))
            if not readable and not writable:
                for worker in waiting:
                    self._drop(worker)  # silent past the deadline: check inline
                continue
            for worker in waiting:
                if worker.stdout in readable:
                    try:
                        self._take(worker, worker.read_frames())
                    except (OSError, EOFError, ValueError, msgpack.UnpackException):
                        self._drop(worker)
        return self.results.pop(chunk)

    def _take(self, worker: _Worker, frames: list[Any]) -> None:
        for frame in frames:
            if (not isinstance(frame, list) or len(frame) != 2 or not worker.owed
                    or frame[0] != worker.owed[0] or not isinstance(frame[1], list)):
                raise ValueError("a frame that answers no chunk sent")
            self.results[worker.owed.popleft()] = frame[1]

    def _drop(self, worker: _Worker) -> None:
        """Stop a worker that failed; what it owed is checked inline. The next submit
        starts a new one."""
        self.failures += 1
        for chunk in worker.owed:
            self.results[chunk] = None
        worker.owed.clear()
        worker.stop()
        self.workers.remove(worker)


# -- the worker process ------------------------------------------------------------------

def _verdict(item: list[Any], keys: dict[bytes, Any], issuers: dict[bytes, Any]) -> bool | None:
    try:
        if item[0] == "ed25519":
            key = keys.get(item[1])
            if key is None:
                key = keys[item[1]] = Ed25519PublicKey.from_public_bytes(item[1])
            key.verify(item[2], item[3])
            return True
        if item[0] == "x509":
            issuer = issuers.get(item[1])
            if issuer is None:
                issuer = issuers[item[1]] = x509.load_der_x509_certificate(item[1])
            # What core.sync.peer_validation._check_certificate calls a refusal.
            try:
                x509.load_der_x509_certificate(item[2]).verify_directly_issued_by(issuer)
            except (ValueError, TypeError, InvalidSignature):
                return False
            return True
    except InvalidSignature:
        return False
    except Exception:  # noqa: BLE001 - anything else: the caller checks inline
        return None
    return None


def _read_exact(stream: Any, size: int) -> bytes | None:
    data = stream.read(size)
    return data if len(data) == size else None


def main() -> int:
    stdin, stdout = sys.stdin.buffer, sys.stdout.buffer
    keys: dict[bytes, Any] = {}
    issuers: dict[bytes, Any] = {}
    while True:
        header = _read_exact(stdin, _HEADER)
        if header is None:
            return 0  # the parent closed the pipe (or died)
        payload = _read_exact(stdin, int.from_bytes(header, "big"))
        if payload is None:
            return 0
        chunk_id, items = msgpack.unpackb(payload, raw=False)
        stdout.write(_frame([chunk_id, [_verdict(item, keys, issuers) for item in items]]))
        stdout.flush()


if __name__ == "__main__":
    sys.exit(main())
