"""`signer-client run`: the WebDB side's daemon.

One loop, one serial link: poll the WebDB for revocation, certificate and OpenPGP requests,
send each with a request id derived from its table and row, write the answers back; fetch
the CRLs (diff transfer) and publish them; poll health. When the signer is away (port gone,
no answer, HSM down) nothing is marked on the rows: the daemon backs off and resumes.
Flow, failures and columns: docs/webdb-client.md.
"""
from __future__ import annotations

import datetime as dt
import logging
import signal
import threading
import time
from pathlib import Path
from typing import Any, Callable

from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from tools.client.library import Response
from tools.webdb.config import ClientConfig
from tools.webdb.crl_publisher import CrlPublisher
from tools.webdb.db import DbUnavailable, WebDb
from tools.webdb.link import SignerAway, SignerLink
from tools.webdb.mail import Mailer
from tools.webdb.queue import PrefixChanged, WorkQueue
from tools.webdb.status import StatusFile
from tools.webdb.work import (CERT_TABLES, Job, LocalTrouble, RowProblem, audit_head_of, classify,
                              keep_audit_head, later, now_text, openpgp_job, request_id, revoke_job,
                              x509_job)

log = logging.getLogger("signer-client")



HEALTH_TIMEOUT_S = 10.0  # the signer answers health within its 5 s part deadline plus ~0.1 s of link


def health_timeout_s(config: Any) -> float:
    """How long a health poll waits: short, so a signer that stopped answering is seen soon
    (`signer-client status` bounds its staleness with it)."""
    return min(HEALTH_TIMEOUT_S, config.signer.timeout_s)

class ClientDaemon:
    def __init__(self, config: ClientConfig) -> None:
        self.config = config
        self.db = WebDb(config.webdb)
        self.queue = WorkQueue(config, self.db)
        self.status = StatusFile(Path(config.state_dir))
        self.stopping = threading.Event()
        self.link = SignerLink(config.signer, Path(config.state_dir), abort=self.stopping.is_set)
        # The WebDB's `expire` column says which revocations a new CRL may drop (expired
        # longer than the grace period); an unknown serial keeps the published CRL.
        self.crls = CrlPublisher(config.crl, expiry_of=self.queue.expiry_of)
        self.mailer = Mailer(config.mail)
        self.backoff = config.signer.backoff_initial_s
        self.next_health = 0.0
        self.next_crl = 0.0
        self.crl_dirty: set[str] = set()  # issuers with revocations not yet in a published CRL
        self.blocked: dict[str, str] = {}  # kind of work -> why it cannot be served now
        self.status_written = 0.0
        self.prefix_checked = False
        self.exit_code = 0
        # failures in a row that may be the row's or everyone's; reset by a success
        self.failing_streak = 0
        self.streak_limit = 2 * config.signer.max_in_flight
        self.last_failure, self.last_failure_local = "", False

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
                    wait = 0.0  # a full batch went through: more rows are waiting
                self.backoff = self.config.signer.backoff_initial_s
                self.blocked.pop("local files", None)
            except SignerAway as exc:
                wait = self._away(str(exc))
            except DbUnavailable as exc:
                self._webdb_state(False, str(exc))
                wait = self._next_backoff()
            except LocalTrouble as exc:
                # Answers of the window may still be on the link: start it afresh.
                self.link.close()
                if self.blocked.get("local files") != str(exc):
                    log.error("%s; nothing counted against rows, retrying", exc)
                self.blocked["local files"] = str(exc)
                self.status.error(str(exc))
                wait = self._next_backoff()
            except PrefixChanged as exc:
                log.critical("%s", exc)
                self.status.error(str(exc))
                self.exit_code = 2
                break
            except Exception as exc:  # a bug must not end the daemon: log it, back off, go on
                log.exception("round failed")
                self.status.error(f"round failed: {type(exc).__name__}: {exc}")
                wait = self._next_backoff()
            try:
                self._refresh_queue()  # also while the signer is away: the work waiting is news
                self._write_status()
            except Exception:  # never let the bookkeeping end the daemon
                log.exception("status not updated")
            self.stopping.wait(wait)
        self.link.close()
        self.db.close()
        self.status.update(running=False)
        self._write_status()
        log.info("stopped")

    def cycle(self) -> bool:
        """One round; True when a batch was full and went through (poll again at once)."""
        self.db.connect()
        self._webdb_state(True)
        if not self.prefix_checked:
            self.queue.check_prefix()
            self.prefix_checked = True
        if self.link.open():
            self.next_health = 0.0  # a new link starts with a health check
        if time.monotonic() >= self.next_health:
            self.poll_health()
        full = False
        if self.config.x509.enabled:
            # Revocations first, then their CRLs: a compromised key must not wait behind a
            # signing backlog, nor its CRL behind a failing signature.
            for table in CERT_TABLES:
                full |= self._kind(table, "revoke", lambda t: self.queue.pending_revocations(t, self.config.webdb.batch),
                                   lambda row, t: revoke_job(self.config, t, row))
        if (self.config.crl.publish_dir and not self.stopping.is_set()
                and (self.crl_dirty or time.monotonic() >= self.next_crl)):
            self.publish_crls()
        if self.config.x509.enabled:
            for table in CERT_TABLES:
                full |= self._kind(table, "sign", lambda t: self.queue.pending_certificates(t, self.config.webdb.batch),
                                   lambda row, t: x509_job(self.config, t, row, self.queue.assurance_points(t, row)))
        if self.config.openpgp.enabled:
            full |= self._kind("gpg", "sign", lambda t: self.queue.pending_openpgp(self.config.webdb.batch),
                               lambda row, t: openpgp_job(self.config, row, self.queue.verified_emails(row)))
        return full

    def _next_backoff(self) -> float:
        wait, self.backoff = self.backoff, min(self.backoff * 2, self.config.signer.backoff_max_s)
        return wait

    def _away(self, reason: str) -> float:
        signer = self.status.data.get("signer") or {}
        if signer.get("reachable", True) or signer.get("reason") != reason:
            log.warning("signer away: %s; work stays pending", reason)
        self.link.close()
        since = (signer.get("since") if not signer.get("reachable", True) else None) or now_text()
        wait = self._next_backoff()
        self.status.update(signer={"reachable": False, "since": since, "reason": reason, "retry_in_s": wait})
        self.status.error(f"signer away: {reason}")
        return wait

    def _webdb_state(self, reachable: bool, error: str | None = None) -> None:
        before = (self.status.data.get("webdb") or {}).get("reachable")
        if reachable and before is False:
            log.info("WebDB reachable again")
        if not reachable:
            if before is not False:
                log.error("%s; retrying", error)
            assert error is not None  # the callers give the reason when it is not reachable
            self.status.error(error)
        self.status.update(webdb={"reachable": reachable, "error": error})

    def _refresh_queue(self) -> None:
        try:
            queue = self.queue.depth()
        except DbUnavailable as exc:
            self._webdb_state(False, str(exc))
            return
        self.status.update(queue=queue)
        for key in [k for k in self.blocked if "." in k and not queue.get(k.split(" ")[0])]:
            del self.blocked[key]  # nothing of that kind (table.action) waits any more

    def _write_status(self) -> None:
        self.status_written = time.monotonic()
        self.status.update(crl=self.crls.published, crl_errors=self.crls.errors, blocked=self.blocked)
        try:
            self.status.write()
        except OSError as exc:  # state_dir full or gone: the daemon's work matters more
            log.error("cannot write the status file: %s", exc)

    # -- health ----------------------------------------------------------------------------
    def poll_health(self) -> None:
        response: Response = self.link.request("health", timeout=health_timeout_s(self.config))
        self.next_health = time.monotonic() + self.config.health.interval_s
        body = response.body or {}
        health: dict[str, Any] = {"at": now_text(), "healthy": bool(body.get("healthy")) and response.ok,
                  "problems": list(body.get("problems", [])) if response.ok else [str(response.error)],
                  "version": body.get("version"), "node_id": body.get("node_id"),
                  "signer_time": body.get("time"), "clock_skew_s": None}
        if response.ok:
            self._check_clock(health, body.get("time"))
        last = self.status.data.get("health") or {}
        if (last.get("healthy"), last.get("problems")) != (health["healthy"], health["problems"]):
            if health["healthy"]:
                log.info("signer healthy (version %s, node %s)", health["version"], health["node_id"])
            else:
                log.warning("signer unhealthy: %s", "; ".join(map(str, health["problems"])))
        signer = self.status.data.get("signer") or {}
        if not signer.get("reachable"):
            log.info("signer reachable on %s", self.config.signer.device)
            signer = {"reachable": True, "since": now_text()}
        self.status.update(health=health, signer=signer)
        if response.ok:
            self.note_audit_head(body, is_log_end=True)

    def _check_clock(self, health: dict[str, Any], signer_time: Any) -> None:
        """The signer dates every certificate and CRL by its own clock, which nothing sets on
        the offline box: compare it with this host's at every health poll. Over
        health.max_clock_skew_s it is a problem (status exit 1, logged when it changes)."""
        try:
            moment = dt.datetime.fromisoformat(str(signer_time))
            if moment.tzinfo is None:
                raise ValueError("no time zone")
        except ValueError:
            health["problems"].append(f"clock: the signer's time {signer_time!r} is not an ISO 8601 time")
            health["healthy"] = False
            return
        skew = (moment - dt.datetime.now(dt.timezone.utc)).total_seconds()
        health["clock_skew_s"] = round(skew, 1)
        limit = self.config.health.max_clock_skew_s
        if abs(skew) > limit:
            # no seconds in the text: it is logged when the problems change, not every poll
            health["problems"].append(f"clock: the signer's clock is more than {limit:g} s "
                                      f"{'ahead of' if skew > 0 else 'behind'} this host's "
                                      "(health.max_clock_skew_s; the skew is in clock_skew_s)")
            health["healthy"] = False

    def note_audit_head(self, body: Any, is_log_end: bool = False) -> None:
        """Keep the signer's newest audit head (docs/webdb-client.md, "The audit head")."""
        head = audit_head_of(body)
        if head is None:
            return
        warning = keep_audit_head(self.status.data["audit_heads"], head, now_text(), is_log_end)
        if warning is not None:
            if warning != self.status.data.get("audit_warning"):
                log.error("%s", warning)
            self.status.update(audit_warning=warning)
            self.status.error(warning)

    # -- requests --------------------------------------------------------------------------
    def _kind(self, table: str, action: str, fetch: Callable[[str], list[dict[str, Any]]],
              make: Callable[[dict[str, Any], str], Job]) -> bool:
        if self.stopping.is_set():
            return False
        rows = fetch(table)
        served = self._work(table, action, rows, make)
        return len(rows) >= self.config.webdb.batch and served > 0

    def _work(self, table: str, action: str, rows: list[dict[str, Any]],
              make: Callable[[dict[str, Any], str], Job]) -> int:
        """Send the rows' requests, max_in_flight at a time; returns how many were served."""
        jobs = []
        for row in rows:
            rid = request_id(self.config.webdb.request_id_prefix, table, row["id"], action)
            bare = Job(table, int(row["id"]), action, rid, "", {}, row)
            try:
                jobs.append(make(row, table))
            except RowProblem as exc:
                self._local_problem(bare, exc)
            except DbUnavailable:
                raise
            except Exception as exc:  # LocalTrouble (a file the daemon cannot read), or a path
                # the OS refuses: this row's problem, unless every row fails alike (streak)
                self._retry_failure(bare, f"cannot build the request: {exc}", local=True)
                if self.failing_streak >= self.streak_limit:
                    raise LocalTrouble(f"{self.failing_streak} rows in a row failed on this side "
                                       f"(last: {self.last_failure})") from None
        served, window = 0, self.config.signer.max_in_flight
        for start in range(0, len(jobs), window):
            if self.stopping.is_set():
                break
            chunk = jobs[start:start + window]
            streak_before = self.failing_streak
            for job in chunk:
                # link.call runs the function at once: `job` is this iteration's
                self.link.call(lambda client: client.send(job.command, job.body, job.request_id))
            away: SignerAway | None = None
            for job in chunk:
                # Every answer of the window is taken off the link, even after a "signer"
                # verdict: a stale answer must not meet the same request id next round.
                response = self.link.call(lambda client: client.wait_for(job.request_id))
                try:
                    served += self._settle(job, response)
                except SignerAway as exc:
                    away = away or exc
            self.link.drain_unmatched()
            if time.monotonic() - self.status_written > 1.0:
                self._write_status()  # a long round still shows it is alive (at most once a second)
            if away is not None:
                raise away
            if self.failing_streak >= self.streak_limit and self.failing_streak > streak_before:
                # Not one odd row: everything fails alike (a handler crash-looping, a full
                # disk). The round ends; rows are counted again only after a success.
                what = "rows in a row failed on this side" if self.last_failure_local else \
                    "requests in a row failed at the signer"
                problem = f"{self.failing_streak} {what} (last: {self.last_failure})"
                raise LocalTrouble(problem) if self.last_failure_local else SignerAway(problem)
        return served

    def _retry_failure(self, job: Job, reason: str, local: bool) -> None:
        """A failure that may be the row's or may be everyone's: counted against the row while
        successes come between them; once streak_limit failures follow each other with no
        success, the rows are not counted any more (they step aside, uncounted)."""
        self.failing_streak += 1
        self.last_failure, self.last_failure_local = reason, local
        if self.failing_streak > self.streak_limit:
            self.queue.note_transient(job, reason, later(self.config.webdb.retry_delay_s))
        else:
            self._row_failed(job, reason, permanent=False)

    def _local_problem(self, job: Job, exc: RowProblem) -> None:
        """No request could be built for the row; what happens follows exc.verdict."""
        if exc.verdict == "setup":
            self._blocked(job, str(exc))
        elif exc.verdict == "wait":
            # step aside briefly: the certificate it waits for is asked for in this round
            self.queue.note_transient(job, str(exc), later(min(5.0, self.config.webdb.retry_delay_s)))
        elif exc.verdict == "retry":
            self._retry_failure(job, str(exc), local=True)
        else:
            self._row_failed(job, str(exc), permanent=True)

    @staticmethod
    def _block_key(job: Job) -> str:
        # Per profile: one route the signer lacks must not hold up the table's other routes.
        profile = job.body.get("profile")
        return f"{job.table}.{job.action}" + (f" ({profile})" if profile else "")

    def _blocked(self, job: Job, reason: str) -> None:
        key = self._block_key(job)
        if self.blocked.get(key) != reason:
            log.error("%s cannot be served: %s; its rows stay pending", key, reason)
        self.blocked[key] = reason
        self.status.error(f"{key}: {reason}")
        # Not the row's fault: nothing counted, but the row steps aside for retry_delay_s so
        # that a batch full of such rows does not hide the rows behind it.
        self.queue.note_transient(job, reason, later(self.config.webdb.retry_delay_s))

    def _row_failed(self, job: Job, reason: str, permanent: bool) -> None:
        attempts, final = self.queue.fail(job, reason, permanent)
        self.status.count("failed")
        log.error("%s row %s (%s): %s [attempt %d%s]", job.table, job.row_id, job.action, reason,
                  attempts, ", not retried" if final else f", retry in {self.config.webdb.retry_delay_s:.0f} s")
        self.status.error(f"{job.table} {job.row_id}: {reason}")

    def _settle(self, job: Job, response: Response) -> int:
        if not response.ok:
            error = response.error or {}
            reason = f"{error.get('code', '?')}: {error.get('message', '')}"
            verdict = classify(str(error.get("code", "")))
            if verdict == "signer":
                self.queue.note_transient(job, reason)
                raise SignerAway(f"the signer cannot serve requests now ({reason})")
            if verdict == "setup":
                self._blocked(job, reason)
                return 0
            if verdict == "wait":
                self.queue.note_transient(job, reason)
                return 0
            if verdict == "retry":
                self._retry_failure(job, reason, local=False)
            else:
                self._row_failed(job, f"refused: {reason}", permanent=True)
            return 0
        try:
            self._write_back(job, response.body or {})
        except DbUnavailable:
            raise
        except RowProblem as exc:  # the row names a file outside files_root
            self._local_problem(job, exc)
            return 0
        except OSError as exc:  # the crt file or folder, the disk: the streak tells which
            self._retry_failure(job, f"write-back failed: {exc.strerror or exc} ({exc.filename})", local=True)
            return 0
        except Exception as exc:  # an odd answer: counted against the row, retried later
            log.exception("%s row %s: the answer could not be written back", job.table, job.row_id)
            self._retry_failure(job, f"write-back failed: {type(exc).__name__}: {exc}", local=False)
            return 0
        self.failing_streak = 0
        self.blocked.pop("local files", None)
        if self.blocked.pop(self._block_key(job), None) is not None:
            log.info("%s served again", self._block_key(job))
        return 1

    def _write_back(self, job: Job, body: dict[str, Any]) -> None:
        self.note_audit_head(body)
        replay = " (stored answer)" if body.get("replayed") else ""
        if job.command == "sign_x509":
            pem = x509.load_der_x509_certificate(body["certificate"]).public_bytes(Encoding.PEM)
            written = self.queue.store_certificate(job, pem, body["serial"], body["not_after"])
            self.status.count("issued")
            log.info("%s row %s: issued serial %s by %s until %s%s", job.table, job.row_id,
                     body["serial"], job.issuer, body["not_after"], replay)
            for note in job.notes:
                log.info("%s row %s: %s", job.table, job.row_id, note)
            if written:  # once per row: a repeated write-back finds it done and mails nobody
                self._mail("issued", self._issuance_recipients(job), name=str(job.row.get("CN") or ""),
                           url=f"{self.config.mail.site_url}/account.php?id="
                               f"{15 if job.table.endswith('domaincerts') else 6}&cert={job.row_id}")
        elif job.command == "revoke_x509":
            written = self.queue.store_revocation(job, body["revoked_at"])
            if job.issuer in self.crls.issuers:
                self.crl_dirty.add(job.issuer)
            self.status.count("revoked")
            log.info("%s row %s: revoked serial %s at %s%s", job.table, job.row_id, body["serial"],
                     body["revoked_at"], " (already revoked)" if body.get("already_revoked") else "")
            if written:
                self._mail("revoked", self._revocation_recipients(job), name=str(job.row.get("CN") or ""),
                           serial=str(job.row.get("serial") or body["serial"]).upper())
        else:
            written = self.queue.store_openpgp(job, body["key"], body["expires_at"])
            self.status.count("openpgp_signed")
            log.info("gpg row %s: certified %s on %s until %s%s", job.row_id,
                     ", ".join(body["certified_uids"]), body["fingerprint"], body["expires_at"], replay)
            if written:
                self._mail("openpgp", self.queue.users([int(job.row.get("memid") or 0)]),
                           name=str(job.row.get("email") or ""),
                           url=f"{self.config.mail.site_url}/gpg.php?id=3&cert={job.row_id}")

    # -- notification mails (docs/webdb-client.md#notification-mails) ----------------------
    def _issuance_recipients(self, job: Job) -> list[dict[str, Any]]:
        # Personal rows: the member. Org rows have no member column (client.pl's mail went
        # to nobody): the org admin who asked for it (orgadminid), when the row names one.
        memid = self.queue.member_of(job.table, job.row) or int(job.row.get("orgadminid") or 0)
        return self.queue.users([memid]) if memid else []

    def _revocation_recipients(self, job: Job) -> list[dict[str, Any]]:
        if job.table.startswith("org"):  # every admin of the organisation, as client.pl
            return self.queue.users(self.queue.org_admins(int(job.row.get("orgid") or 0)))
        memid = self.queue.member_of(job.table, job.row)
        return self.queue.users([memid]) if memid else []

    def _mail(self, kind: str, recipients: list[dict[str, Any]], **values: str) -> None:
        if not self.config.mail.enabled:
            return
        errors = self.mailer.send(kind, recipients, **values)
        for line in errors:
            self.status.count("mail_failed")
            self.status.error(line)
        for _ in range(len(recipients) - len(errors)):
            self.status.count("mails_sent")

    # -- CRLs ------------------------------------------------------------------------------
    def publish_crls(self) -> None:
        # Set first: a CRL step that ends the round (signer away) is not retried every round.
        self.next_crl = time.monotonic() + self.config.crl.interval_s
        errors = self.crls.publish_all(self.link)
        for published in self.crls.published.values():
            self.note_audit_head(published)  # a CRL built for this fetch carries the head
        for line in errors:
            self.status.error(line)
        self.crl_dirty &= set(self.crls.errors)  # published ones are clean; failed ones are tried again
