"""`signer-client run`: the WebDB side's daemon.

One loop, one serial link: poll the WebDB for certificate, OpenPGP and revocation requests,
send each with a request id derived from its table and row, write the answers back; fetch
the CRLs (diff transfer) and publish them; poll health. When the signer is away (port gone,
no answer) nothing is marked on the rows: the daemon backs off and resumes.
Flow and columns: docs/webdb-client.md.
"""
from __future__ import annotations

import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

import serial
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tools.client import Response, SignerClient, SignerTimeout
from tools.crl_fetch import fetch_crl_into
from tools.webdb.config import ClientConfig
from tools.webdb.db import DbUnavailable, WebDb
from tools.webdb.queue import WorkQueue, write_atomically
from tools.webdb.status import StatusFile
from tools.webdb.work import (CERT_TABLES, Job, RowProblem, is_transient, now_text, openpgp_job,
                              request_id, revoke_job, x509_job)

log = logging.getLogger("signer-client")


class SignerAway(Exception):
    """No usable link to the signer right now (port missing, no answer, or it cannot serve)."""


class ClientDaemon:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.db = WebDb(config.webdb)
        self.queue = WorkQueue(config, self.db)
        self.status = StatusFile(Path(config.state_dir))
        self.client: SignerClient | None = None
        self.stopping = threading.Event()
        self.backoff = config.signer.backoff_initial_s
        self.next_health = 0.0
        self.next_crl = 0.0
        self.crl_dirty: set[str] = set()  # issuers with revocations not yet in a published CRL
        self.issuer_certs: dict[str, x509.Certificate] = {}

    # -- the loop --------------------------------------------------------------------------
    def run(self, cycles: int | None = None) -> None:
        for signum in (signal.SIGTERM, signal.SIGINT):
            signal.signal(signum, lambda *_: self.stopping.set())
        log.info("started: WebDB %s, signer on %s", self.config.webdb.driver, self.config.signer.device)
        while not self.stopping.is_set() and cycles != 0:
            cycles = None if cycles is None else cycles - 1
            wait = self.config.webdb.poll_interval_s
            try:
                if self.cycle():
                    wait = 0.0  # a full batch: more rows are waiting
                self.backoff = self.config.signer.backoff_initial_s
            except SignerAway as exc:
                wait = self._away(str(exc))
            except DbUnavailable as exc:
                self.status.error(str(exc))
                log.error("%s (retry in %.0f s)", exc, self.backoff)
                wait, self.backoff = self.backoff, min(self.backoff * 2, self.config.signer.backoff_max_s)
            self._refresh_queue()  # also while the signer is away: the work waiting is news
            self.status.write()
            self.stopping.wait(wait)
        self._close_link()
        self.db.close()
        self.status.update(running=False)
        self.status.write()
        log.info("stopped")

    def cycle(self) -> bool:
        """One round; True when some kind of work filled its batch (poll again at once)."""
        self.db.connect()
        self._open_link()
        now = time.monotonic()
        if now >= self.next_health:
            self.poll_health()
        full = False
        if self.config.x509.enabled:
            # Revocations first: a compromised key should not wait behind a signing backlog.
            for table in CERT_TABLES:
                full |= self._work(table, "revoke", self.queue.pending_revocations(table, self.config.webdb.batch),
                                   lambda row, t=table: revoke_job(self.config, t, row))
            for table in CERT_TABLES:
                full |= self._work(table, "sign", self.queue.pending_certificates(table, self.config.webdb.batch),
                                   lambda row, t=table: x509_job(self.config, t, row))
        if self.config.openpgp.enabled:
            full |= self._work("gpg", "sign", self.queue.pending_openpgp(self.config.webdb.batch),
                               lambda row: openpgp_job(self.config, row, self.queue.verified_emails(row)))
        if self.config.crl.publish_dir and (self.crl_dirty or now >= self.next_crl):
            self.publish_crls()
        return full

    def _refresh_queue(self) -> None:
        try:
            self.status.update(queue=self.queue.depth())
        except DbUnavailable as exc:
            self.status.error(str(exc))

    def _away(self, reason: str) -> float:
        if self.status.data.get("signer", {}).get("reachable", True):
            log.warning("signer away: %s; work stays pending", reason)
        self._close_link()
        self.status.update(signer={"reachable": False, "since": now_text(), "reason": reason,
                                   "retry_in_s": self.backoff})
        self.status.error(f"signer away: {reason}")
        wait, self.backoff = self.backoff, min(self.backoff * 2, self.config.signer.backoff_max_s)
        return wait

    # -- the link --------------------------------------------------------------------------
    def _open_link(self) -> None:
        if self.client is not None:
            return
        link = self.config.signer
        try:
            self.client = SignerClient(link.device, link.baudrate, link.timeout_s)
        except (serial.SerialException, OSError) as exc:
            raise SignerAway(f"cannot open {link.device}: {exc}") from None
        self.issuer_certs.clear()
        self.next_health = 0.0  # a new link starts with a health check

    def _close_link(self) -> None:
        if self.client is not None:
            try:
                self.client.close()
            except (serial.SerialException, OSError):
                pass
            self.client = None

    def _call(self, fn: Callable[[], Any]) -> Any:
        """Any link failure becomes SignerAway (the caller leaves the rows as they are)."""
        try:
            return fn()
        except SignerTimeout as exc:
            raise SignerAway(str(exc)) from None
        except (serial.SerialException, OSError) as exc:
            raise SignerAway(f"serial link failed: {exc}") from None

    # -- health ----------------------------------------------------------------------------
    def poll_health(self) -> None:
        response: Response = self._call(lambda: self.client.call("health", timeout=min(30.0, self.config.signer.timeout_s)))
        self.next_health = time.monotonic() + self.config.health.interval_s
        body = response.body or {}
        health = {"at": now_text(), "healthy": bool(body.get("healthy")) and response.ok,
                  "problems": body.get("problems", []) if response.ok else [str(response.error)],
                  "version": body.get("version"), "node_id": body.get("node_id"),
                  "signer_time": body.get("time")}
        last = self.status.data.get("health") or {}
        if (last.get("healthy"), last.get("problems")) != (health["healthy"], health["problems"]):
            if health["healthy"]:
                log.info("signer healthy (version %s, node %s)", health["version"], health["node_id"])
            else:
                log.warning("signer unhealthy: %s", "; ".join(health["problems"]))
        if not self.status.data.get("signer", {}).get("reachable", False):
            log.info("signer reachable on %s", self.config.signer.device)
        self.status.update(health=health, signer={"reachable": True, "since": now_text()})

    # -- requests --------------------------------------------------------------------------
    def _work(self, table: str, action: str, rows: list[dict[str, Any]],
              make: Callable[[dict[str, Any]], Job]) -> bool:
        jobs = []
        for row in rows:
            try:
                jobs.append(make(row))
            except RowProblem as exc:
                rid = request_id(self.config.webdb.request_id_prefix, table, row["id"], action)
                self._local_failure(Job(table, int(row["id"]), action, rid, "", {}, row), exc)
        window = self.config.signer.max_in_flight
        for start in range(0, len(jobs), window):
            if self.stopping.is_set():
                return False
            chunk = jobs[start:start + window]
            for job in chunk:
                self._call(lambda j=job: self.client.send(j.command, j.body, j.request_id))
            for job in chunk:
                self._settle(job, self._call(lambda j=job: self.client.wait_for(j.request_id)))
        return len(rows) >= self.config.webdb.batch

    def _local_failure(self, job: Job, exc: RowProblem) -> None:
        """No request could be built for the row (its CSR file is missing, ...)."""
        attempts = self.queue.fail(job, str(exc), exc.permanent)
        self._count("failed")
        log.error("%s row %s (%s): %s [attempt %d]", job.table, job.row_id, job.action, exc, attempts)
        self.status.error(f"{job.table} {job.row_id}: {exc}")

    def _settle(self, job: Job, response: Response) -> None:
        if not response.ok:
            code, message = response.error.get("code", "?"), response.error.get("message", "")
            reason = f"{code}: {message}"
            if is_transient(code):
                self.queue.note_transient(job, reason)
                self.status.error(f"{job.request_id}: {reason}")
                raise SignerAway(f"the signer cannot serve requests now ({reason})")
            attempts = self.queue.fail(job, reason, permanent=True)
            self._count("failed")
            log.error("%s row %s (%s) refused: %s [attempt %d, not retried]",
                      job.table, job.row_id, job.action, reason, attempts)
            self.status.error(f"{job.table} {job.row_id}: {reason}")
            return
        body = response.body
        replay = " (stored answer)" if body.get("replayed") else ""
        if job.command == "sign_x509":
            pem = x509.load_der_x509_certificate(body["certificate"]).public_bytes(Encoding.PEM)
            self.queue.store_certificate(job, pem, body["serial"], body["not_after"])
            self._count("issued")
            log.info("%s row %s: issued serial %s until %s%s", job.table, job.row_id,
                     body["serial"], body["not_after"], replay)
        elif job.command == "revoke_x509":
            self.queue.store_revocation(job, body["revoked_at"])
            self.crl_dirty.add(job.issuer)
            self._count("revoked")
            log.info("%s row %s: revoked serial %s at %s%s", job.table, job.row_id, body["serial"],
                     body["revoked_at"], " (already revoked)" if body.get("already_revoked") else "")
        else:
            self.queue.store_openpgp(job, body["key"], body["expires_at"])
            self._count("openpgp_signed")
            log.info("gpg row %s: certified %s on %s until %s%s", job.row_id,
                     ", ".join(body["certified_uids"]), body["fingerprint"], body["expires_at"], replay)

    def _count(self, name: str) -> None:
        counters = self.status.data.setdefault("counters", {})
        counters[name] = counters.get(name, 0) + 1

    # -- CRLs ------------------------------------------------------------------------------
    def publish_crls(self) -> None:
        publish_dir = Path(self.config.crl.publish_dir)
        publish_dir.mkdir(parents=True, exist_ok=True)
        results = self.status.data.setdefault("crl", {})
        for publication in self.config.crl.issuers:
            der_path = publish_dir / publication.file
            try:
                cert = self._issuer_cert(publication.issuer)
                outcome = self._call(lambda: fetch_crl_into(self.client, publication.issuer, der_path, cert))
            except ValueError as exc:  # the CRL did not verify: the published files stay as they were
                log.error("CRL %s not published: %s", publication.issuer, exc)
                self.status.error(f"CRL {publication.issuer}: {exc}")
                continue
            if outcome.error is not None:
                if is_transient(outcome.error.get("code", "")):
                    raise SignerAway(f"the signer cannot build CRLs now ({outcome.error})")
                log.error("CRL %s refused: %s", publication.issuer, outcome.error)
                self.status.error(f"CRL {publication.issuer}: {outcome.error}")
                continue
            pem_path = der_path.with_name(der_path.name + ".pem")
            if outcome.summary["status"] != "unchanged" or not pem_path.exists():
                crl = x509.load_der_x509_crl(der_path.read_bytes())
                write_atomically(pem_path, crl.public_bytes(Encoding.PEM))
                log.info("CRL %s number %s published (%s, %d bytes on the link)", publication.issuer,
                         outcome.summary["number"], outcome.summary["status"], outcome.summary["bytes_moved"])
            self.crl_dirty.discard(publication.issuer)
            results[publication.issuer] = {**outcome.summary, "at": now_text(), "file": str(der_path)}
        self.next_crl = time.monotonic() + self.config.crl.interval_s

    def _issuer_cert(self, issuer: str) -> x509.Certificate:
        if issuer not in self.issuer_certs:
            response = self._call(lambda: self.client.call("ca_info"))
            for entry in (response.body or {}).get("issuers", []):
                self.issuer_certs[entry["id"]] = x509.load_der_x509_certificate(entry["certificate"])
            if issuer not in self.issuer_certs:
                raise ValueError(f"the signer does not list issuer {issuer!r} (ca_info)")
        return self.issuer_certs[issuer]

