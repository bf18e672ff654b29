"""A fake signer on a pty, for testing the WebDB daemon's loop without the real signer.

The daemon opens the slave end (`FakeSigner.device`) as its serial port; a thread in the test
process serves the master end: it decodes request frames (core.wire.framing / core.wire.protocol) and
answers each with `fake.respond(cmd, body, request_id)`, which returns

    ("ok", body)                 a success answer
    ("error", code, message)     an error answer
    None                         no answer at all (the daemon must time out)

`respond` defaults to `fake.standard`, a small signer with throwaway issuers ("root" and
"class3", EC P-256, self-signed): ca_info, health, sign_x509 (a real certificate for the CSR's
key, signed by the issuer; a repeated request id gets the stored answer, marked replayed),
revoke_x509, fetch_crl (a real CRL, signed by the issuer, listing the revocations; "unchanged"
when the client holds the current number) and sign_openpgp (a stand-in armoured key).
Tests replace `respond` with a function that handles some cases and falls back to `standard`.
Every request seen is kept in `fake.seen` as (cmd, body, request_id).
"""
from __future__ import annotations

import datetime as dt
import hashlib
import os
import select
import threading
import time
import tty
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import Encoding
from cryptography.x509.oid import NameOID

from core.wire.framing import FrameDecoder, FrameError, encode_frame
from core.wire.protocol import encode_error, encode_response, unpack

Answer = tuple | None
Responder = Callable[[str, dict[str, Any], Any], Answer]

UTC = dt.timezone.utc


def now() -> dt.datetime:
    return dt.datetime.now(UTC).replace(microsecond=0)


class FakeIssuer:
    """A throwaway self-signed CA: key, certificate, and the revocations it has made."""

    def __init__(self, issuer_id: str, label: str) -> None:
        self.id = issuer_id
        self.key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name([x509.NameAttribute(NameOID.ORGANIZATION_NAME, "Fake CA " + label),
                          x509.NameAttribute(NameOID.COMMON_NAME, f"Fake {issuer_id} {label}")])
        start = now() - dt.timedelta(days=1)
        self.certificate = (
            x509.CertificateBuilder().subject_name(name).issuer_name(name)
            .public_key(self.key.public_key()).serial_number(x509.random_serial_number())
            .not_valid_before(start).not_valid_after(start + dt.timedelta(days=3650))
            .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
            .sign(self.key, hashes.SHA256()))
        self.der = self.certificate.public_bytes(Encoding.DER)
        self.revoked: dict[int, dt.datetime] = {}  # serial -> revocation time
        self.crl_number = 1  # goes up with every revocation

    def certificate_for(self, csr_der: bytes, subject: list[list[str]], days: int = 365) -> x509.Certificate:
        csr = x509.load_der_x509_csr(csr_der)
        common_name = next((value for key, value in subject if key == "CN"), "fake subject")
        start = now()
        return (x509.CertificateBuilder()
                .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)]))
                .issuer_name(self.certificate.subject).public_key(csr.public_key())
                .serial_number(x509.random_serial_number())
                .not_valid_before(start).not_valid_after(start + dt.timedelta(days=days))
                .sign(self.key, hashes.SHA256()))

    def crl(self, number: int | None = None) -> x509.CertificateRevocationList:
        start = now()
        builder = (x509.CertificateRevocationListBuilder().issuer_name(self.certificate.subject)
                   .last_update(start).next_update(start + dt.timedelta(days=7))
                   .add_extension(x509.CRLNumber(self.crl_number if number is None else number),
                                  critical=False))
        for serial, at in sorted(self.revoked.items()):
            builder = builder.add_revoked_certificate(
                x509.RevokedCertificateBuilder().serial_number(serial).revocation_date(at).build())
        return builder.sign(self.key, hashes.SHA256())


class FakeCa:
    """The issuers a fake signer has: a new FakeCa is another CA (other certificates)."""

    def __init__(self, label: str = "one") -> None:
        self.issuers = {issuer_id: FakeIssuer(issuer_id, label) for issuer_id in ("root", "class3")}


def crl_answer(issuer: FakeIssuer, crl: x509.CertificateRevocationList, status: str = "full") -> dict[str, Any]:
    der = crl.public_bytes(Encoding.DER)
    number = crl.extensions.get_extension_for_class(x509.CRLNumber).value.crl_number
    body = {"issuer": issuer.id, "status": status, "number": number, "sha256": hashlib.sha256(der).hexdigest(),
            "this_update": crl.last_update_utc.isoformat(), "next_update": crl.next_update_utc.isoformat()}
    if status == "full":
        body["crl"] = der
    return body


class FakeSigner:
    def __init__(self, ca: FakeCa | None = None) -> None:
        self.ca = ca or FakeCa()
        self.seen: list[tuple[str, dict[str, Any], Any]] = []
        self.respond: Responder = self.standard
        self.stored: dict[Any, dict[str, Any]] = {}  # request id -> first answer (idempotency)
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self.master, self.slave = os.openpty()
        # Raw, no echo, before the daemon opens it: our answers must not come back to us.
        # The slave stays open here too, so the master never sees EIO while the daemon has
        # closed its end (between links).
        tty.setraw(self.slave)
        self.device = os.ttyname(self.slave)
        os.set_blocking(self.master, False)
        self._decoder = FrameDecoder(64 * 1024 * 1024)
        self._outbox = bytearray()
        self.errors: list[BaseException] = []  # exceptions in the serving thread
        self.handled = 0  # requests answered (or left silent) so far
        self.clock_offset_s = 0.0  # health's `time` is this far from the real clock
        self._thread = threading.Thread(target=self._serve, name="fake-signer", daemon=True)
        self._thread.start()

    # -- what the tests look at ----------------------------------------------------------
    def commands(self) -> list[str]:
        with self._lock:
            return [cmd for cmd, _, _ in self.seen]

    def ids(self, cmd: str) -> list[Any]:
        with self._lock:
            return [rid for c, _, rid in self.seen if c == cmd]

    def settle(self, timeout: float = 5.0) -> None:
        """Wait until every request seen so far has been handled (answered or left silent)."""
        deadline = time.monotonic() + timeout
        while self.handled < len(self.seen):
            assert time.monotonic() < deadline, "the fake signer did not handle its requests"
            time.sleep(0.01)

    def issuer(self, issuer_id: str) -> FakeIssuer:
        return self.ca.issuers[issuer_id]

    # -- the standard signer -----------------------------------------------------------------
    def standard(self, cmd: str, body: dict[str, Any], rid: Any) -> Answer:
        if cmd == "ca_info":
            return "ok", {"issuers": [{"id": i.id, "subject": i.certificate.subject.rfc4514_string(),
                                       "certificate": i.der,
                                       "not_after": i.certificate.not_valid_after_utc.isoformat()}
                                      for i in self.ca.issuers.values()]}
        if cmd == "health":
            return "ok", {"healthy": True, "problems": [], "version": "x", "node_id": "fake",
                          "time": (now() + dt.timedelta(seconds=self.clock_offset_s)).isoformat()}
        if cmd in ("sign_x509", "revoke_x509", "sign_openpgp") and rid in self.stored:
            return "ok", {**self.stored[rid], "replayed": True}
        if cmd == "sign_x509":
            issuer = self.ca.issuers.get(body.get("issuer"))
            if issuer is None:
                return "error", "unknown_issuer", f"no issuer {body.get('issuer')!r}"
            cert = issuer.certificate_for(body["csr"], body.get("subject") or [], body.get("days") or 365)
            answer = {"certificate": cert.public_bytes(Encoding.DER), "serial": format(cert.serial_number, "x"),
                      "issuer": issuer.id, "profile": body.get("profile"),
                      "not_before": cert.not_valid_before_utc.isoformat(),
                      "not_after": cert.not_valid_after_utc.isoformat()}
        elif cmd == "revoke_x509":
            issuer = self.ca.issuers[body["issuer"]]
            serial = int(body["serial"], 16)
            already = serial in issuer.revoked
            if not already:
                issuer.revoked[serial] = now()
                issuer.crl_number += 1
            answer = {"issuer": issuer.id, "serial": format(serial, "x"), "reason": "unspecified",
                      "revoked_at": issuer.revoked[serial].isoformat(), "already_revoked": already}
        elif cmd == "sign_openpgp":
            answer = {"key": "-----BEGIN PGP PUBLIC KEY BLOCK-----\n\nZmFrZQ==\n-----END PGP PUBLIC KEY BLOCK-----\n",
                      "certified_uids": list(body.get("uids") or []), "fingerprint": "F" * 40,
                      "expires_at": (now() + dt.timedelta(days=366)).isoformat()}
        elif cmd == "fetch_crl":
            issuer = self.ca.issuers[body["issuer"]]
            crl = issuer.crl()
            held = body.get("have_number")
            return "ok", crl_answer(issuer, crl, "unchanged" if held == issuer.crl_number else "full")
        else:
            return "error", "unknown_command", f"unknown command {cmd!r}"
        self.stored[rid] = answer
        return "ok", answer

    # -- the pty -------------------------------------------------------------------------------
    def _serve(self) -> None:
        while not self._stop.is_set():
            want_write = [self.master] if self._outbox else []
            try:
                readable, writable, _ = select.select([self.master], want_write, [], 0.02)
            except (OSError, ValueError):
                return
            if writable:
                self._flush()
            if not readable:
                continue
            try:
                data = os.read(self.master, 65536)
            except BlockingIOError:
                continue
            except OSError:
                return
            for result in self._decoder.feed(data):
                if isinstance(result, FrameError):
                    continue
                try:
                    self._answer(unpack(result))
                except BaseException as exc:  # seen by the tests (fake_signer fixture)
                    self.errors.append(exc)

    def _answer(self, request: dict[str, Any]) -> None:
        cmd, body, rid = request["cmd"], request.get("body") or {}, request["id"]
        with self._lock:
            self.seen.append((cmd, body, rid))
        try:
            answer = self.respond(cmd, body, rid)
        finally:
            self.handled += 1
        if answer is None:
            return
        if answer[0] == "ok":
            payload = encode_response(rid, answer[1])
        else:
            payload = encode_error(rid, answer[1], answer[2])
        self._outbox += encode_frame(payload)
        self._flush()  # at once, as a signer answers each request when it is done

    def _flush(self) -> None:
        while self._outbox:
            try:
                written = os.write(self.master, bytes(self._outbox[:4096]))
            except BlockingIOError:
                return  # the slave's buffer is full: the rest when the master is writable
            del self._outbox[:written]

    def close(self) -> None:
        self._stop.set()
        self._thread.join(timeout=5)
        assert not self._thread.is_alive(), "the fake signer's thread did not stop"
        for fd in (self.master, self.slave):
            try:
                os.close(fd)
            except OSError:
                pass
