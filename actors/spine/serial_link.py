"""SerialLink: owns the serial port (pyserial), reads it without blocking the actor, writes
frames to it, and re-opens it with backoff when it fails.

Reading uses ThespianWatch on the port's file descriptor, which Thespian only honours when
it is returned from *every* receiveMessage call, so `after_message` always returns it.
Writing is non-blocking too: a 4 MB CRL takes six minutes at 115200 baud, and the actor
must keep reading requests and answering status meanwhile. Bytes the port cannot take yet
wait in an outbox that a short timer drains.
"""
from __future__ import annotations

import errno
import os
import select
from typing import Any

import serial
from thespian.actors import ThespianWatch, WakeupMessage, WatchMessage

from actors.base import SignerActor
from messages import SerialBytesReceived, SerialBytesToSend

READ_CHUNK = 65536
WRITE_CHUNK = 65536
FIRST_BACKOFF_S = 0.1
DRAIN_INTERVAL_S = 0.005
REOPEN, DRAIN = "reopen", "drain"


class SerialLink(SignerActor):
    actor_name = "serial_link"

    def configure(self, config: Any) -> None:
        self.device = config.serial.device
        self.baudrate = config.serial.baudrate
        self.max_backoff = config.serial.reopen_max_backoff_s
        self.port: serial.Serial | None = None
        self.outbox = bytearray()
        self.draining = False
        self.backoff = FIRST_BACKOFF_S
        self.reopen_scheduled = False
        self.bytes_in = self.bytes_out = 0
        self.read_errors = self.write_errors = self.opens = 0
        self.dropped_bytes = 0
        self.chunks_read = 0  # numbers the chunks for Framing, which decodes them in order
        self.last_port_error: str | None = None
        self.open_port()

    def open_port(self) -> None:
        try:
            port = serial.Serial(self.device, self.baudrate, timeout=0, write_timeout=0,
                                 exclusive=True)
            os.set_blocking(port.fileno(), False)
            # Bytes left in the port from before (a previous client, a previous run) are
            # not requests to this instance.
            port.reset_input_buffer()
        except (serial.SerialException, OSError) as exc:
            self.last_port_error = str(exc)
            self.log.warning("cannot open %s: %s; retrying in %.1f s", self.device, exc, self.backoff)
            self.schedule_reopen()
            return
        self.port = port
        self.opens += 1
        self.backoff = FIRST_BACKOFF_S
        self.log.info("serial port %s open", self.device)

    def schedule_reopen(self) -> None:
        if not self.reopen_scheduled:
            self.reopen_scheduled = True
            self.wakeupAfter(self.backoff, payload=REOPEN)
            self.backoff = min(self.backoff * 2, self.max_backoff)

    def port_failed(self, exc: BaseException) -> None:
        self.record_error(exc)
        self.last_port_error = str(exc)
        self.log.warning("serial port %s failed: %s", self.device, exc)
        if self.port is not None:
            try:
                self.port.close()
            except (serial.SerialException, OSError):
                pass
        self.port = None
        if self.outbox:  # answers for a link that is gone; clients retry by request id
            self.dropped_bytes += len(self.outbox)
            self.outbox.clear()
        self.schedule_reopen()

    def receiveMsg_WatchMessage(self, message: WatchMessage, sender: Any) -> Any:
        if self.port is None:
            return self.after_message()
        try:
            data = os.read(self.port.fileno(), READ_CHUNK)
        except BlockingIOError:
            return self.after_message()
        except OSError as exc:
            self.read_errors += 1
            self.port_failed(exc)
            return self.after_message()
        if not data and self.hung_up():
            self.read_errors += 1
            self.port_failed(OSError(errno.EIO, "end of file on serial port"))
            return self.after_message()
        if not data:  # a wake-up with nothing to read (VMIN=0 ttys return 0 bytes)
            return self.after_message()
        self.bytes_in += len(data)
        self.chunks_read += 1
        self.send(self.peer("framing"), SerialBytesReceived(data, self.chunks_read))
        return self.after_message()

    def hung_up(self) -> bool:
        """After an empty read: did the device go away, or was there simply nothing to read
        (a VMIN=0 tty returns 0 bytes then)? Only a hang-up or error event says gone: "ready
        but empty" also happens when bytes arrive between the read and a readiness check."""
        assert self.port is not None  # asked after a read from the open port
        poller = select.poll()
        poller.register(self.port.fileno(), select.POLLIN | select.POLLHUP | select.POLLERR)
        events = poller.poll(0)
        return any(mask & (select.POLLHUP | select.POLLERR | select.POLLNVAL) for _, mask in events)

    def receiveMsg_SerialBytesToSend(self, message: SerialBytesToSend, sender: Any) -> Any:
        if self.port is None:
            # The client retries by request id, and the handlers answer a retry from the
            # repository, so dropping an answer here loses nothing.
            self.dropped_bytes += len(message.data)
            return self.after_message()
        self.outbox += message.data
        self.drain()
        return self.after_message()

    def drain(self) -> None:
        while self.outbox and self.port is not None:
            try:
                written = os.write(self.port.fileno(), self.outbox[:WRITE_CHUNK])
            except BlockingIOError:
                break
            except OSError as exc:
                self.write_errors += 1
                self.port_failed(exc)
                return
            self.bytes_out += written
            del self.outbox[:written]
        if self.outbox and not self.draining:
            self.draining = True
            self.wakeupAfter(DRAIN_INTERVAL_S, payload=DRAIN)

    def receiveMsg_WakeupMessage(self, message: WakeupMessage, sender: Any) -> Any:
        if message.payload == DRAIN:
            self.draining = False
            self.drain()
        else:
            self.reopen_scheduled = False
            if self.port is None:
                self.open_port()
        return self.after_message()

    def after_message(self) -> Any:
        port = getattr(self, "port", None)
        return ThespianWatch([port.fileno()]) if port is not None else None

    def shutdown(self) -> None:
        port = getattr(self, "port", None)
        if port is not None:
            port.close()

    def figures(self) -> dict[str, Any]:
        return {"device": self.device, "open": self.port is not None, "bytes_in": self.bytes_in,
                "bytes_out": self.bytes_out, "read_errors": self.read_errors,
                "write_errors": self.write_errors, "opens": self.opens,
                "dropped_bytes": self.dropped_bytes, "outbox_bytes": len(self.outbox),
                "last_port_error": self.last_port_error}
