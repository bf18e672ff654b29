"""The WebDB as a work queue: which rows are pending, and writing results and failures back.

Every write is one statement guarded so that repeating it changes nothing (`... AND
crt_name=''`), because the daemon may be killed between any two steps: the next run finds
the row still pending, sends the same request id, gets the signer's stored answer and
writes the same values.
"""
from __future__ import annotations

import datetime as dt
from typing import Any

from tools.client.files import write_atomically
from tools.webdb.config import ClientConfig
from tools.webdb.db import WebDb
from tools.webdb.schema import ZERO
from tools.webdb.work import CERT_TABLES, Job, db_time, later, now_text, result_name, row_file

FAILED, DONE, RETRYING = "failed", "done", "retrying"


class PrefixChanged(Exception):
    """webdb.request_id_prefix differs from the one this WebDB was served with."""


class WorkQueue:
    def __init__(self, config: ClientConfig, db: WebDb) -> None:
        self.config = config
        self.db = db
        self.max_attempts = config.webdb.max_attempts

    def check_prefix(self) -> None:
        """The first prefix used with this WebDB stays: with another one, a row whose answer
        was lost would be asked for again under a new id and get a second certificate."""
        prefix = self.config.webdb.request_id_prefix
        found = self.db.query("SELECT value FROM signer_client_meta WHERE name='request_id_prefix'")
        if not found:
            # First start with the meta table; an earlier version may have served this WebDB.
            other = self.db.query("SELECT request_id FROM signer_client_requests WHERE request_id NOT LIKE ? "
                                  "LIMIT 1", (f"{prefix}:%",))
            if other:
                found = [{"value": str(other[0]["request_id"]).split(":", 1)[0]}]
        if not found:
            self.db.execute("INSERT INTO signer_client_meta (name, value) VALUES ('request_id_prefix', ?)",
                            (prefix,))
        elif found[0]["value"] != prefix:
            raise PrefixChanged(
                f"webdb.request_id_prefix is {prefix!r}, but this WebDB was served with "
                f"{found[0]['value']!r}: a new prefix would ask again for rows whose answers were "
                "lost and could give them a second certificate. Set it back (or, if no answer can "
                "be missing, update signer_client_meta by hand)")

    # -- what is pending -------------------------------------------------------------------
    # Each kind of work is one FROM/WHERE, used to fetch a batch (due_only: rows whose last
    # counted failure is older than webdb.retry_delay_s) and to count the queue (all).
    # Only this prefix's bookkeeping counts (another prefix's ids are other requests); the
    # prefix holds no LIKE wildcards (config.validate).
    def _where(self, table: str, action: str, condition: str, params: tuple,
               due_only: bool) -> tuple[str, tuple]:
        sql = (f"FROM `{table}` t LEFT JOIN signer_client_requests r ON r.tbl=? AND r.row_id=t.id "
               f"AND r.action=? AND r.request_id LIKE ? WHERE {condition}")
        params = (table, action, f"{self.config.webdb.request_id_prefix}:%", *params)
        if due_only:
            sql += " AND (r.retry_after IS NULL OR r.retry_after<=?)"
            params += (now_text(),)
        return sql, params

    def _certificates_where(self, table: str, due_only: bool = True) -> tuple[str, tuple]:
        return self._where(table, "sign", "t.crt_name='' AND t.csr_name<>'' AND t.warning<?",
                           (self.max_attempts,), due_only)

    def _revocations_where(self, table: str, due_only: bool = True) -> tuple[str, tuple]:
        # Revocations have no warning column: the daemon's own table counts their failures.
        return self._where(table, "revoke", "t.revoked=? AND (r.state IS NULL OR r.state<>'failed')",
                           (self.config.webdb.revoke_marker,), due_only)

    def _openpgp_where(self, due_only: bool = True) -> tuple[str, tuple]:
        return self._where("gpg", "sign", "t.crt='' AND t.csr<>'' AND t.warning<?",
                           (self.max_attempts,), due_only)

    def _rows(self, where: tuple[str, tuple], limit: int) -> list[dict[str, Any]]:
        return self.db.query(f"SELECT t.* {where[0]} ORDER BY t.id LIMIT {int(limit)}", where[1])

    def _count(self, where: tuple[str, tuple]) -> int:
        return int(self.db.query(f"SELECT COUNT(*) AS n {where[0]}", where[1])[0]["n"])

    def pending_certificates(self, table: str, limit: int) -> list[dict[str, Any]]:
        return self._rows(self._certificates_where(table), limit)

    def pending_revocations(self, table: str, limit: int) -> list[dict[str, Any]]:
        return self._rows(self._revocations_where(table), limit)

    def pending_openpgp(self, limit: int) -> list[dict[str, Any]]:
        return self._rows(self._openpgp_where(), limit)

    def verified_emails(self, row: dict[str, Any]) -> set[str]:
        """gpg.email, plus, when the row asks for `multiple` uids, every address of the member
        the web side has verified (email.hash empty) and not deleted."""
        emails = {str(row.get("email") or "").lower()} - {""}
        if str(row.get("multiple", 0)) not in ("0", ""):
            found = self.db.query("SELECT email FROM email WHERE memid=? AND hash='' AND deleted=?",
                                  (row["memid"], ZERO.strip("'")))
            emails |= {str(r["email"]).lower() for r in found}
        return emails

    # -- what client.pl read besides the request tables ------------------------------------
    def member_of(self, table: str, row: dict[str, Any]) -> int | None:
        """The member a personal row belongs to: emailcerts.memid, or for domaincerts the
        owner of its domain (domains.memid), as client.pl looked it up. None for org rows."""
        if table in ("emailcerts", "gpg"):
            return int(row.get("memid") or 0) or None
        if table == "domaincerts":
            found = self.db.query("SELECT memid FROM domains WHERE id=?", (int(row.get("domid") or 0),))
            return int(found[0]["memid"]) if found and found[0]["memid"] else None
        return None

    def assurance_points(self, table: str, row: dict[str, Any]) -> int | None:
        """The member's assurance points as client.pl's calculateDays summed them: notary
        `awarded` where `to` is the member and the entry is not deleted. None for org rows."""
        memid = self.member_of(table, row)
        if memid is None:
            return None
        found = self.db.query("SELECT SUM(awarded) AS total FROM notary WHERE `to`=? AND deleted=?",
                              (memid, ZERO.strip("'")))
        return int(found[0]["total"] or 0) if found else 0

    def users(self, memids: list[int]) -> list[dict[str, Any]]:
        """id, email, fname, language of these members (the mails' recipients), in memid order."""
        found = []
        for memid in memids:
            found += self.db.query("SELECT id, email, fname, language FROM users WHERE id=?", (memid,))
        return found

    def org_admins(self, orgid: int) -> list[int]:
        """Every admin of the organisation (client.pl mailed them all on a revocation)."""
        found = self.db.query("SELECT memid FROM org WHERE orgid=? ORDER BY memid", (int(orgid),))
        return [int(r["memid"]) for r in found]

    def depth(self) -> dict[str, int]:
        """Rows waiting, per table and action (for `signer-client status`)."""
        counts: dict[str, int] = {}
        if self.config.x509.enabled:
            for table in CERT_TABLES:
                counts[f"{table}.sign"] = self._count(self._certificates_where(table, False))
                counts[f"{table}.revoke"] = self._count(self._revocations_where(table, False))
        if self.config.openpgp.enabled:
            counts["gpg.sign"] = self._count(self._openpgp_where(False))
        return counts

    # -- results ---------------------------------------------------------------------------
    def expiry_of(self, issuer: str, serial: int) -> "dt.datetime | None":
        """notAfter of the certificate with this serial, from the WebDB rows' `expire` (the
        CRL publisher lets a CRL drop a revocation only when this says the certificate is past
        the grace period). Serials are stored as openssl printed them (upper-case hex, even
        length) or as the signer answers (no leading zero): both forms are asked. The issuer is
        not compared: serials are random 64 bits or more, and an unknown serial keeps the old
        CRL, which is the safe side."""
        plain = format(serial, "X")
        forms = (plain, plain.zfill(len(plain) + len(plain) % 2))
        for table in CERT_TABLES:
            rows = self.db.query(f"SELECT expire FROM `{table}` WHERE serial IN (?, ?) LIMIT 1", forms)
            if rows and rows[0].get("expire"):
                text = str(rows[0]["expire"])[:19]
                try:
                    return dt.datetime.strptime(text, "%Y-%m-%d %H:%M:%S").replace(tzinfo=dt.timezone.utc)
                except ValueError:
                    return None
        return None

    def store_certificate(self, job: Job, pem: bytes, serial: str, not_after: str) -> bool:
        name = result_name(self.config.webdb, job.table, job.row_id)
        write_atomically(row_file(self.config.webdb, name), pem)
        changed = self.db.execute(
            f"UPDATE `{job.table}` SET crt_name=?, serial=?, expire=?, modified=? "
            "WHERE id=? AND crt_name=''",
            # openssl's form, as the old client stored it: upper-case hex
            (name, serial.upper(), db_time(not_after), now_text(), job.row_id))
        self._record(job, DONE, None, count=False)
        return changed == 1

    def store_revocation(self, job: Job, revoked_at: str) -> bool:
        changed = self.db.execute(f"UPDATE `{job.table}` SET revoked=? WHERE id=? AND revoked=?",
                                  (db_time(revoked_at), job.row_id, self.config.webdb.revoke_marker))
        self._record(job, DONE, None, count=False)
        return changed == 1

    def store_openpgp(self, job: Job, armoured: str, expires_at: str) -> bool:
        name = result_name(self.config.webdb, "gpg", job.row_id)
        write_atomically(row_file(self.config.webdb, name), armoured.encode())
        changed = self.db.execute("UPDATE gpg SET crt=?, issued=?, expire=? WHERE id=? AND crt=''",
                                  (name, now_text(), db_time(expires_at), job.row_id))
        self._record(job, DONE, None, count=False)
        return changed == 1

    # -- failures --------------------------------------------------------------------------
    def fail(self, job: Job, reason: str, permanent: bool) -> tuple[int, bool]:
        """Count a failed attempt; a permanent one (the signer refused the request itself) ends
        the retries at once. Returns the attempts counted here and whether the row is done
        with (its warning, or for revocations its attempts, reached max_attempts)."""
        attempts = self._record(job, FAILED if permanent else RETRYING, reason, count=True,
                                final=permanent, retry_after=later(self.config.webdb.retry_delay_s))
        if job.action == "sign":
            # The row's own counter, as the old client kept it: +1 per failed attempt (so a
            # row the old client left at 2 gets one more try), the limit at once when permanent.
            if permanent:
                self.db.execute(f"UPDATE `{job.table}` SET warning=? WHERE id=? AND warning<?",
                                (self.max_attempts, job.row_id, self.max_attempts))
            else:
                self.db.execute(f"UPDATE `{job.table}` SET warning=warning+1 WHERE id=? AND warning<?",
                                (job.row_id, self.max_attempts))
            found = self.db.query(f"SELECT warning FROM `{job.table}` WHERE id=?", (job.row_id,))
            return attempts, not found or int(found[0]["warning"]) >= self.max_attempts
        return attempts, permanent or attempts >= self.max_attempts

    def note_transient(self, job: Job, reason: str, retry_after: str | None = None) -> None:
        """The signer could not serve the request now (HSM, repository, a profile it lacks):
        the row is not at fault, so no attempt is counted; the reason is kept for `status`."""
        self._record(job, RETRYING, reason, count=False, retry_after=retry_after)

    def _record(self, job: Job, state: str, reason: str | None, count: bool,
                final: bool = False, retry_after: str | None = None) -> int:
        now = now_text()
        found = self.db.query("SELECT attempts FROM signer_client_requests WHERE request_id=?",
                              (job.request_id,))
        attempts = (found[0]["attempts"] if found else 0) + (1 if count else 0)
        if final:
            attempts = max(attempts, self.max_attempts)
        if (state == RETRYING and attempts >= self.max_attempts):
            state = FAILED
        if found:
            self.db.execute("UPDATE signer_client_requests SET state=?, attempts=?, last_error=?, "
                            "last_attempt=?, done_at=?, retry_after=? WHERE request_id=?",
                            (state, attempts, reason, now, now if state == DONE else None,
                             retry_after, job.request_id))
        else:
            self.db.execute("INSERT INTO signer_client_requests (request_id, tbl, row_id, action, "
                            "state, attempts, last_error, first_attempt, last_attempt, done_at, "
                            "retry_after) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (job.request_id, job.table, job.row_id, job.action, state, attempts,
                             reason, now, now, now if state == DONE else None, retry_after))
        return attempts

    def failures(self, limit: int = 20) -> list[dict[str, Any]]:
        return self.db.query("SELECT * FROM signer_client_requests WHERE state<>'done' "
                             "ORDER BY last_attempt DESC LIMIT ?", (limit,))

