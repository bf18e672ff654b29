"""WebDB client daemon benchmark, in one run against one signer on an unthrottled pty:
  - rows per second the daemon serves (WebDB row -> sign_x509 -> certificate file + UPDATE),
    SQLite and MariaDB, with 1 and 4 requests in flight;
  - next to the same number of sign_x509 requests sent directly with the client library
    (pipelined, no database): the floor the daemon's own work is measured against.

    .venv/bin/python bench/bench_webdb.py [--rows 200]
"""
from __future__ import annotations

import argparse
import os
import secrets
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from tests.support.helpers import SignerProcess, dev_init, signer_config, tool  # noqa: E402
from tests.support.mariadb_server import MariaDbServer, mariadb_available  # noqa: E402
from tests.support.webdb_side import client_config, csr_pem, open_web_side  # noqa: E402
from tools.client.library import SignerClient  # noqa: E402

SUBJECT = "/CN=h{n}.example.org/subjectAltName=DNS:h{n}.example.org"


def direct_rate(device: str, rows: int) -> float:
    from cryptography import x509
    from cryptography.hazmat.primitives.serialization import Encoding
    csr = x509.load_pem_x509_csr(csr_pem()).public_bytes(Encoding.DER)
    with SignerClient(device, timeout=120) as client:
        started = time.perf_counter()
        ids = [client.send("sign_x509", {"issuer": "root", "profile": "server", "csr": csr,
                                         "subject": [["CN", f"h{n}.example.org"]],
                                         "sans": [["dns", f"h{n}.example.org"]]}) for n in range(rows)]
        for request_id in ids:
            assert client.wait_for(request_id).ok
        return rows / (time.perf_counter() - started)


def daemon_rate(folder: Path, device: str, webdb: dict, env: dict, rows: int, in_flight: int) -> float:
    """One fresh WebDB per run: a WebDB keeps the request-id prefix it was first served with."""
    folder.mkdir(parents=True)
    if webdb["driver"] == "sqlite":
        webdb = {**webdb, "path": str(folder / "webdb.sqlite")}
    config = client_config(folder, device, {**webdb, "request_id_prefix": f"b{secrets.token_hex(4)}",
                                            "batch": 50, "poll_interval_s": 0.05},
                           signer={"max_in_flight": in_flight}, crl={"publish_dir": None},
                           health={"interval_s": 3600})
    web = open_web_side(config)
    ids = [web.add_certificate("domaincerts", SUBJECT.format(n=n)) for n in range(rows)]
    started = time.perf_counter()
    daemon = subprocess.Popen([tool("signer-client"), "run", "--config", str(config)],
                              stderr=open(folder / "daemon.log", "wb"), env={**os.environ, **env})
    try:
        last = ids[-1]
        while not web.row("domaincerts", last)["crt_name"]:
            if daemon.poll() is not None:
                raise RuntimeError(f"the daemon exited {daemon.returncode}: {(folder / 'daemon.log').read_text()[-2000:]}")
            time.sleep(0.05)
        elapsed = time.perf_counter() - started
    finally:
        daemon.terminate()
        daemon.wait(30)
    assert all(web.row("domaincerts", i)["crt_name"] for i in ids)
    return rows / elapsed


def fresh_database(server: MariaDbServer, name: str) -> str:
    with server.root_connect() as conn:
        conn.cursor().execute(f"CREATE DATABASE `{name}` CHARACTER SET latin1")
        conn.cursor().execute(f"GRANT ALL ON `{name}`.* TO 'cacert'@'127.0.0.1'")
    return name


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--rows", type=int, default=200)
    args = parser.parse_args()
    base = Path(tempfile.mkdtemp(prefix="bench-webdb-"))
    data = dev_init(base / "data")
    run = base / "run"
    run.mkdir()
    signer = SignerProcess(signer_config(data, run), log_dir=run)
    mariadb = None
    try:
        direct_rate(signer.client_path, 20)  # warm-up: linter, throwaway keys
        print(f"direct client, pipelined:          {direct_rate(signer.client_path, args.rows):7.1f} certs/s")
        backends = [("sqlite", {"driver": "sqlite"}, {})]
        if mariadb_available():
            mariadb = MariaDbServer(base / "mariadb")
            mariadb.start()
            backends.append(("mariadb", {"driver": "mysql", "host": "127.0.0.1", "port": mariadb.port,
                                         "user": mariadb.user, "password_env": "BENCH_DB_PASSWORD"},
                             {"BENCH_DB_PASSWORD": mariadb.password}))
            os.environ["BENCH_DB_PASSWORD"] = mariadb.password
        for name, webdb, env in backends:
            for in_flight in (1, 4):
                if name == "mariadb":
                    webdb = {**webdb, "database": fresh_database(mariadb, f"bench{in_flight}")}
                rate = daemon_rate(base / f"{name}-{in_flight}", signer.client_path, webdb, env,
                                   args.rows, in_flight)
                print(f"daemon, {name:7s}, {in_flight} in flight:      {rate:7.1f} rows/s")
    finally:
        if mariadb is not None:
            mariadb.stop()
        signer.stop()


if __name__ == "__main__":
    main()
