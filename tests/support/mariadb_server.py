"""A private, throwaway MariaDB server for end-to-end tests.

`MariaDbServer(base)` initialises a fresh data directory under `base` (which it owns), runs
`mariadbd` on a unix socket and a free loopback port, and creates database `cacert` and user
`cacert` with a random password. `--no-defaults` everywhere, so /etc/mysql never leaks in.
"""
from __future__ import annotations

import os
import secrets
import shutil
import signal
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import pymysql

# /usr/sbin is often not on a non-root user's PATH, but that is where Debian puts mariadbd.
_SEARCH_PATH = os.pathsep.join([os.environ.get("PATH", ""), "/usr/sbin", "/usr/bin"])
_SOCKET_MAX = 100  # sun_path is 108 bytes; pytest's tmp_path can get longer than that


def _which(name: str) -> str | None:
    return shutil.which(name, path=_SEARCH_PATH)


def mariadb_available() -> bool:
    """True when both the server and its data-dir initialiser are installed."""
    return _which("mariadbd") is not None and _which("mariadb-install-db") is not None


def _free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def _tail(path: Path, lines: int = 30) -> str:
    text = path.read_text(errors="replace") if path.exists() else "(no error log)"
    return "\n".join(text.splitlines()[-lines:])


class MariaDbServer:
    """One-shot server under `base`: start() once, stop() (idempotent) when done."""
    host = "127.0.0.1"
    database = "cacert"
    user = "cacert"

    # Small and unsafe-but-fast InnoDB settings: the data is thrown away after the test.
    _TUNING = ["--innodb-buffer-pool-size=32M", "--innodb-log-file-size=8M",
               "--skip-innodb-doublewrite", "--innodb-flush-log-at-trx-commit=0",
               "--skip-log-bin", "--skip-name-resolve"]

    def __init__(self, base: Path) -> None:
        self.base = Path(base)
        self.datadir = self.base / "data"
        self.pid_file = self.base / "mariadbd.pid"
        self.log_file = self.base / "mariadbd.err"
        self._short_dir: str | None = None
        self.unix_socket = self.base / "mariadbd.sock"
        if len(str(self.unix_socket)) > _SOCKET_MAX:  # too long to bind: use a short dir
            self._short_dir = tempfile.mkdtemp(prefix="mdb-")
            self.unix_socket = Path(self._short_dir) / "mariadbd.sock"
        self.port = _free_port()
        self.password = secrets.token_hex(16)
        self._root_password = ""  # until _provision() gives root a random one
        self.process: subprocess.Popen | None = None

    def _user_args(self) -> list[str]:
        # mariadbd refuses to run as root unless told to; as anyone else --user is ignored.
        return ["--user=root"] if os.geteuid() == 0 else []

    def _install_db(self) -> None:
        # "normal" gives root@localhost an empty password, which works for any OS user
        # (socket auth would need the OS user's name and PyMySQL's unix_socket support).
        self.datadir.mkdir(parents=True, exist_ok=True)
        cmd = [_which("mariadb-install-db") or "mariadb-install-db", "--no-defaults",
               f"--datadir={self.datadir}", "--auth-root-authentication-method=normal",
               "--skip-test-db", *self._user_args(), *self._TUNING]
        done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        if done.returncode != 0:
            raise RuntimeError(f"mariadb-install-db failed ({done.returncode}):\n"
                               f"{done.stdout[-2000:]}\n{done.stderr[-2000:]}")

    def start(self, timeout: float = 60) -> None:
        self._install_db()
        cmd = [_which("mariadbd") or "mariadbd", "--no-defaults", *self._user_args(),
               f"--datadir={self.datadir}", f"--socket={self.unix_socket}",
               f"--port={self.port}", "--bind-address=127.0.0.1",
               f"--pid-file={self.pid_file}", f"--log-error={self.log_file}",
               # sql_mode='' as CAcert's server runs: the web application's INSERTs rely on
               # it (coll_found never set, '' into a tinyint, md values outside the enum).
               "--sql-mode=", *self._TUNING]
        # Own session: a Ctrl-C in the terminal must not kill it before stop() runs.
        self.process = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL, start_new_session=True)
        try:
            self._wait_ready(timeout)
            self._provision()
        except BaseException:
            self.stop()
            raise

    def _wait_ready(self, timeout: float) -> None:
        deadline = time.monotonic() + timeout
        while True:
            if self.process.poll() is not None:
                raise RuntimeError(f"mariadbd exited with {self.process.returncode}:\n"
                                   f"{_tail(self.log_file)}")
            try:
                self.root_connect().close()
                return
            except pymysql.err.OperationalError:
                if time.monotonic() > deadline:
                    raise RuntimeError(f"mariadbd not ready after {timeout}s:\n"
                                       f"{_tail(self.log_file)}") from None
                time.sleep(0.05)

    def _provision(self) -> None:
        pw, rpw = self.password, secrets.token_hex(16)
        with self.root_connect() as conn, conn.cursor() as cur:
            # latin1, as CAcert's WebDB; only socket root with a password, no anonymous users.
            cur.execute(f"CREATE DATABASE `{self.database}` CHARACTER SET latin1")
            for host in ("localhost", "127.0.0.1"):
                cur.execute(f"CREATE USER '{self.user}'@'{host}' IDENTIFIED BY %s", (pw,))
                cur.execute(f"GRANT ALL ON `{self.database}`.* TO '{self.user}'@'{host}'")
            cur.execute("SELECT User, Host FROM mysql.user WHERE User IN ('', 'root')")
            for user, host in cur.fetchall():
                if (user, host) != ("root", "localhost"):
                    cur.execute("DROP USER %s@%s", (user, host))
            cur.execute("ALTER USER 'root'@'localhost' IDENTIFIED BY %s", (rpw,))
        self._root_password = rpw

    def root_connect(self) -> pymysql.connections.Connection:
        """Root over the unix socket (the only way root may log in)."""
        return pymysql.connect(unix_socket=str(self.unix_socket), user="root",
                               password=self._root_password, autocommit=True)

    def connect(self) -> pymysql.connections.Connection:
        """`cacert` over TCP to `cacert` (the socket is reachable via `unix_socket`)."""
        return pymysql.connect(host=self.host, port=self.port, user=self.user,
                               password=self.password, database=self.database, autocommit=True)

    def stop(self) -> None:
        """SIGTERM, up to 30 s for a clean shutdown, then SIGKILL; safe to call twice."""
        proc, self.process = self.process, None
        if proc is not None and proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
        if self._short_dir is not None:
            shutil.rmtree(self._short_dir, ignore_errors=True)
            self._short_dir = None

    def __enter__(self) -> MariaDbServer:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()
