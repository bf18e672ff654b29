"""Pieces the WebDB unit test modules (tests/test_webdb_*.py, without the daemon) share: a
SQLite WebDB with its client config and WorkQueue (`Web`, fixture `web`), rows and Jobs built on
it, and an OpenPGP key made by gpg (fixture `gpg_key`). A test module imports the fixtures by
name (`web = webdb_fixtures.web`) so pytest finds them there.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from pathlib import Path
from typing import Any

import pytest

from tools.webdb.config import load_client_config
from tools.webdb.queue import WorkQueue
from tools.webdb.work import Job, request_id
from tests.support.webdb_side import client_config, open_web_side

MARKER = "1970-01-01 10:00:01"
ZERO = "0000-00-00 00:00:00"

ALICE = "Alice <alice@example.org>"
ALICE_WORK = "Alice Work <Alice.Work@Example.COM>"


class Web:
    """A SQLite WebDB with the web side, the loaded client config and a WorkQueue on it."""

    def __init__(self, folder: Path, webdb: dict[str, Any] | None = None, **sections: Any) -> None:
        # retry_delay_s 0: a failed row is listed again at once (the delay has its own test)
        path = client_config(folder, "/dev/no-signer",
                             {"driver": "sqlite", "path": str(folder / "webdb.sqlite"), "retry_delay_s": 0,
                              **(webdb or {})},
                             **sections)
        self.side = open_web_side(path)
        self.config = load_client_config(path)
        self.queue = WorkQueue(self.config, self.side.db)
        self.root = Path(self.config.webdb.files_root)

    def row(self, table: str, row_id: int) -> dict[str, Any]:
        return self.side.row(table, row_id)

    def book(self, table: str, row_id: int, action: str) -> dict[str, Any] | None:
        return self.side.bookkeeping(table, row_id, action)

    def ids(self, rows: list[dict[str, Any]]) -> list[int]:
        return [r["id"] for r in rows]

    def close(self) -> None:
        self.side.db.close()


@pytest.fixture
def web(tmp_path: Path):
    w = Web(tmp_path)
    yield w
    w.close()


def local_job(web: Web, table: str, row_id: int, action: str = "sign") -> Job:
    """The Job the daemon builds for a row it could not turn into a request."""
    rid = request_id(web.config.webdb.request_id_prefix, table, row_id, action)
    return Job(table, row_id, action, rid, "", {}, web.row(table, row_id))


def issued_row(web: Web, table: str = "emailcerts", subject: str = "/CN=Alice/emailAddress=a@example.org",
               **columns: Any) -> int:
    """A row whose certificate was issued earlier (serial and crt_name set)."""
    row_id = web.side.add_certificate(table, subject, **columns)
    web.side.db.execute(f"UPDATE `{table}` SET crt_name=?, serial=? WHERE id=?",
                        (f"crt/x/{row_id}.crt", "0A1B2C", row_id))
    return row_id


@pytest.fixture(scope="module")
def gpg_key():
    """An ed25519 key made by gpg with two user ids: (armoured, binary)."""
    if shutil.which("gpg") is None:
        pytest.skip("gpg is not installed")
    home = tempfile.mkdtemp(prefix="wdu-", dir="/tmp")  # short: gpg-agent's socket path

    def gpg(*args: str) -> bytes:
        result = subprocess.run(["gpg", "--batch", "--no-tty", "--yes", "--homedir", home,
                                 "--pinentry-mode", "loopback", "--passphrase", "", *args],
                                capture_output=True, timeout=60)
        assert result.returncode == 0, result.stderr.decode(errors="replace")
        return result.stdout

    try:
        gpg("--quick-gen-key", ALICE, "ed25519", "default", "never")
        gpg("--quick-add-uid", "alice@example.org", ALICE_WORK)
        yield gpg("--armor", "--export", "alice@example.org"), gpg("--export", "alice@example.org")
    finally:
        subprocess.run(["gpgconf", "--homedir", home, "--kill", "all"], capture_output=True, check=False)
        shutil.rmtree(home, ignore_errors=True)
