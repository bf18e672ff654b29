"""A pty pair joined by a relay: the development stand-in for a null-modem serial cable.

Two pseudo-terminals are created; bytes written to one's slave come out of the other's.
The signer opens one slave path with pyserial exactly as it would open /dev/ttyUSB0, and a
client opens the other. The relay keeps both slave ends open itself, so a client that
closes its end never makes the masters report EIO (which would end the link); it can
reconnect at any time. With a baud rate, the relay paces bytes like a real line (10 bit
times per byte for 8N1), which is what the slow-link benchmark uses.

Run standalone: `python -m core.runtime.ptyrelay [--baud 115200] [--link-a PATH] [--link-b PATH]`.
"""
from __future__ import annotations

import argparse
import os
import select
import signal
import threading
import time
import tty

CHUNK = 65536
MAX_PENDING = 64 * 1024 * 1024  # bytes held for a side that is not reading


class PtyRelay:
    def __init__(self, baud: int | None = None, link_a: str | None = None,
                 link_b: str | None = None, record: bool = False) -> None:
        self.baud = baud
        # With record: (time.monotonic(), "a_to_b" or "b_to_a", bytes) for every write to
        # the receiving side, i.e. when bytes came out of the line (the slow-link bench
        # finds the line's idle time from it).
        self.deliveries: list[tuple[float, str, int]] | None = [] if record else None
        self.master_a, self.slave_a = os.openpty()
        self.master_b, self.slave_b = os.openpty()
        for fd in (self.slave_a, self.slave_b):
            tty.setraw(fd)
        for fd in (self.master_a, self.master_b):
            os.set_blocking(fd, False)
        self.path_a = os.ttyname(self.slave_a)
        self.path_b = os.ttyname(self.slave_b)
        self.links = [self._link(link_a, self.path_a), self._link(link_b, self.path_b)]
        self.moved = {"a_to_b": 0, "b_to_a": 0}
        self.dropped = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    @staticmethod
    def _link(link: str | None, target: str) -> str | None:
        if link:
            if os.path.lexists(link):
                os.unlink(link)
            os.symlink(target, link)
        return link

    def start(self) -> "PtyRelay":
        self._thread = threading.Thread(target=self.run, name="pty-relay", daemon=True)
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout=2)
        for link, target in zip(self.links, (self.path_a, self.path_b)):
            # Only our own link: another relay may have replaced it since (it is theirs now).
            if link and os.path.islink(link) and os.readlink(link) == target:
                os.unlink(link)
        for fd in (self.master_a, self.master_b, self.slave_a, self.slave_b):
            try:
                os.close(fd)
            except OSError:
                pass

    def run(self) -> None:
        pending = {self.master_a: bytearray(), self.master_b: bytearray()}  # bytes to write to fd
        other = {self.master_a: self.master_b, self.master_b: self.master_a}
        # A serial line is full duplex: each direction has its own bit clock.
        next_send = {fd: time.monotonic() for fd in pending}
        while not self._stop.is_set():
            writers = [fd for fd, buf in pending.items() if buf]
            ready_r, ready_w, _ = select.select([self.master_a, self.master_b], writers, [], 0.1)
            for fd in ready_r:
                try:
                    data = os.read(fd, CHUNK)
                except (BlockingIOError, OSError):
                    continue
                target = pending[other[fd]]
                if len(target) + len(data) > MAX_PENDING:
                    self.dropped += len(data)
                    continue
                target += data
                self.moved["a_to_b" if fd == self.master_a else "b_to_a"] += len(data)
            for fd in ready_w:
                next_send[fd] = self._write(fd, pending[fd], next_send[fd])

    def _write(self, fd: int, buf: bytearray, next_send: float) -> float:
        limit = len(buf)
        if self.baud:
            # Pace like a UART: release only the bytes whose bit time has come.
            now = time.monotonic()
            if now < next_send:
                time.sleep(min(next_send - now, 0.01))
                return next_send
            limit = max(1, min(len(buf), int(self.baud / 10 * 0.01)))
        try:
            written = os.write(fd, bytes(buf[:limit]))
        except (BlockingIOError, OSError):
            return next_send
        del buf[:written]
        if self.deliveries is not None:
            self.deliveries.append((time.monotonic(), "a_to_b" if fd == self.master_b else "b_to_a", written))
        if self.baud:
            next_send = max(next_send, time.monotonic() - 0.01) + written * 10 / self.baud
        return next_send


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--baud", type=int, default=None, help="pace bytes at this rate (8N1)")
    parser.add_argument("--link-a", help="symlink to the first end")
    parser.add_argument("--link-b", help="symlink to the second end")
    args = parser.parse_args()
    relay = PtyRelay(args.baud, args.link_a, args.link_b).start()
    print(f"end-a: {relay.path_a}\nend-b: {relay.path_b}", flush=True)
    signal.sigwait({signal.SIGINT, signal.SIGTERM})
    relay.stop()


if __name__ == "__main__":
    main()
