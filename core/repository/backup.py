"""An online backup of the repository (`signer-admin backup --to FILE`), safe beside a
running signer, and its verification.

The copy is made with SQLite's backup API in one step: it reads every page inside one read
transaction, so it is one consistent snapshot even while the signer commits (a WAL reader
never blocks the writer, nor the writer it). It is written to a temporary file created 0600
beside the target (O_EXCL, no symlink followed), switched out of WAL mode so the backup is
one self-contained file, fsynced, verified (integrity_check, then the audit chain and every
seal against the audit public key), and only then renamed to FILE. A copy that fails its
verification is removed and never takes FILE's name.
"""
from __future__ import annotations

import os
import sqlite3
from contextlib import closing
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from core.repository import audit
from core.repository.store import BUSY_TIMEOUT_MS, RepositoryError, verify_sealed_audit_file


class BackupError(Exception):
    """The backup cannot be made (source unreadable, target exists or unwritable)."""


@dataclass(frozen=True)
class BackupReport:
    path: str
    size_bytes: int
    integrity: str                      # "ok", or what PRAGMA integrity_check found
    audit: audit.SealedAuditReport | None  # None when integrity_check failed

    @property
    def ok(self) -> bool:
        return self.integrity == "ok" and self.audit is not None and self.audit.ok

    @property
    def audit_head(self) -> str | None:
        """SEQ:HASH of the backup's last audit entry, for `verify-audit --head` later."""
        if self.audit is None or not self.audit.chain.ok:
            return None
        return f"{self.audit.chain.entries_checked}:{self.audit.chain.last_hash}"


def backup_repository(source: str, target: Path, public_key: Any) -> BackupReport:
    """Copy `source` to `target` (which must not exist) and verify the copy. The report says
    whether the copy verified; when it did not, `target` is not created."""
    target = Path(target)
    if target.exists() or target.is_symlink():
        raise BackupError(f"{target} exists: give the backup a new name (it is never overwritten)")
    partial = target.with_name(f".{target.name}.partial-{os.getpid()}")
    try:
        fd = os.open(partial, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    except OSError as exc:
        raise BackupError(f"cannot create {partial}: {exc.strerror}") from None
    os.close(fd)
    try:
        copy_snapshot(source, partial)
        report = verify_backup(partial, public_key)
        if not report.ok:
            return report
        os.replace(partial, target)
        fsync_folder(target.parent)
        return BackupReport(str(target), report.size_bytes, report.integrity, report.audit)
    finally:
        if partial.exists():
            partial.unlink()


def copy_snapshot(source: str, partial: Path) -> None:
    uri = f"file:{quote(os.path.abspath(source))}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as src, closing(sqlite3.connect(partial)) as dst:
            src.execute(f"PRAGMA busy_timeout = {BUSY_TIMEOUT_MS}")
            src.backup(dst)  # pages=-1: every page in one step, one read transaction
            # The copy carries the source's WAL flag: one self-contained file instead.
            dst.execute("PRAGMA journal_mode = DELETE")
    except sqlite3.Error as exc:
        raise BackupError(f"cannot copy {source}: {exc}") from None
    with open(partial, "rb+") as handle:
        os.fsync(handle.fileno())


def verify_backup(path: Path, public_key: Any) -> BackupReport:
    """integrity_check, then the audit chain and its seals, on a backup file (read-only)."""
    uri = f"file:{quote(os.path.abspath(path))}?mode=ro"
    try:
        with closing(sqlite3.connect(uri, uri=True)) as db:
            findings = [row[0] for row in db.execute("PRAGMA integrity_check")]
    except sqlite3.Error as exc:
        findings = [f"cannot read it: {exc}"]
    integrity = "ok" if findings == ["ok"] else "; ".join(findings[:5])
    report = None
    if integrity == "ok":
        try:
            report = verify_sealed_audit_file(str(path), public_key)
        except RepositoryError as exc:
            integrity = exc.message
    return BackupReport(str(path), path.stat().st_size, integrity, report)


def fsync_folder(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
