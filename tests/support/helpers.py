"""Shared test helpers: the process-wide SoftHSM token, free ports, and a signer run as
its own process on a pty pair (the real thing, as an operator starts it)."""
from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from pathlib import Path

import yaml

from core.sync import nats_auth

ROOT = Path(__file__).resolve().parents[2]
BIN = Path(sys.executable).parent

# PyKCS11 loads SoftHSM once per process and SoftHSM reads SOFTHSM2_CONF then, so every
# in-process HSM test shares this one token (tests/conftest.py creates it).
TOKEN = "cacert-test"
SO_PIN = "so-5730914862"
PIN = "user-8146297035"  # distinctive, so a leak into a message is found by `in`


def free_port() -> int:
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        return probe.getsockname()[1]


def tool(name: str) -> str:
    return str(BIN / name)


def run_tool(name: str, *args: str, timeout: float = 60, env: dict | None = None,
             check: bool = False) -> subprocess.CompletedProcess:
    return subprocess.run([tool(name), *args], capture_output=True, text=True, timeout=timeout,
                          env=env, check=check)


class SignerProcess:
    """`signer run --config FILE` as a child process; `stop()` sends SIGTERM."""

    def __init__(self, config: Path, env: dict | None = None, log_dir: Path | None = None) -> None:
        self.config = config
        env = dict(os.environ if env is None else env)
        if log_dir is not None:
            env["THESPLOG_FILE"] = str(log_dir / "thespian.log")
        # stderr goes to a file: a pipe nobody drains would block the signer once full.
        self.stderr_path = (log_dir or Path(config).parent) / "signer.stderr"
        self._stderr = open(self.stderr_path, "ab")
        self.process = subprocess.Popen([tool("signer"), "run", "--config", str(config)],
                                        stdout=subprocess.PIPE, stderr=self._stderr, text=True,
                                        env=env, start_new_session=True)
        self.client_path = self._read_client_path()

    def _read_client_path(self) -> str:
        deadline = time.monotonic() + 90
        while time.monotonic() < deadline:
            line = self.process.stdout.readline()
            if line.startswith("client-pty: "):
                return line.split(": ", 1)[1].strip()
            if not line and self.process.poll() is not None:
                raise RuntimeError(f"signer exited {self.process.returncode}: "
                                   f"{self.stderr_path.read_text(errors='replace')[-4000:]}")
        raise RuntimeError("signer printed no client-pty line within 90 s")

    def status(self) -> list[dict]:
        result = run_tool("signer-admin", "--config", str(self.config), "status", "--json")
        return json.loads(result.stdout) if result.stdout else []

    def pids(self) -> list[int]:
        return [self.process.pid] + [r["pid"] for r in self.status() if r.get("pid")]

    def stop(self) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(30)
            except subprocess.TimeoutExpired:
                os.killpg(self.process.pid, signal.SIGKILL)
                self.process.wait(10)
        return self.process.returncode


def signer_config(dev_data: Path, target: Path, **changes) -> Path:
    """A copy of the dev config with a fresh admin port, repository and pty link."""
    config = yaml.safe_load((dev_data / "signer.yaml").read_text())
    config["actor_system"] = {"admin_port": free_port(), "log_file": str(target / "signer.log")}
    config["repository"] = {"path": str(target / "repository.sqlite")}
    config["serial"]["link_path"] = str(target / "client-tty")
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        config[section][key] = value
    # Paths in the dev config are relative to its folder.
    for name in ("softhsm_conf", "pin_file"):
        config["hsm"][name] = str(dev_data / config["hsm"][name])
    for issuer in config["issuers"]:
        issuer["certificate"] = str(dev_data / issuer["certificate"])
    config["openpgp"]["public_key"] = str(dev_data / config["openpgp"]["public_key"])
    if "audit" in config:
        config["audit"]["public_key"] = str(dev_data / config["audit"]["public_key"])
    path = target / "signer.yaml"
    path.write_text(yaml.safe_dump(config))
    return path


def dev_init(data: Path, *extra: str) -> Path:
    """Run `signer dev-init` into data (idempotent) and return the folder."""
    result = run_tool("signer", "dev-init", "--data", str(data), "--admin-port", str(free_port()),
                      *extra, timeout=300)
    if result.returncode != 0:
        raise RuntimeError(result.stderr)
    return data


class NatsUsers:
    """The NATS users of a test's signers: one password per node id in a 0600 file under
    `folder` (as `sync.credentials_file` holds it), and its bcrypt hash for the servers."""

    def __init__(self, folder: Path) -> None:
        self.folder = folder
        folder.mkdir(parents=True, exist_ok=True)
        self._hashes: dict[str, str] = {}

    def credentials(self, node_id: str) -> Path:
        path = self.folder / f"{node_id}.nats-password"
        if not path.exists():
            nats_auth.create_password_file(path)
        return path

    def password(self, node_id: str) -> str:
        return nats_auth.read_password(self.credentials(node_id))

    def hash(self, node_id: str) -> str:
        if node_id not in self._hashes:
            self._hashes[node_id] = nats_auth.password_hash(self.password(node_id))
        return self._hashes[node_id]


class NatsServer:
    """A JetStream nats-server on a loopback port the test picks, data in `store`. With
    `owner`, it is the server of that signer as the project ships it (core/sync/nats_auth.py):
    users `owner` and each of `readers`, passwords from `users`; without, it accepts anyone
    (only for tests of what an open server would let in)."""

    def __init__(self, store: Path, port: int | None = None, *, owner: str | None = None,
                 readers: tuple[str, ...] = (), users: NatsUsers | None = None) -> None:
        self.store, self.port = store, port or free_port()
        self.owner, self.readers, self.users = owner, readers, users
        self.process: subprocess.Popen | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"nats://127.0.0.1:{self.port}"

    def command(self) -> list[str]:
        if self.owner is None:
            return ["nats-server", "-a", "127.0.0.1", "-p", str(self.port), "-js", "-sd", str(self.store)]
        self.store.mkdir(parents=True, exist_ok=True)
        config = self.store.parent / f"{self.store.name}.conf"
        nats_auth.write_server_config(config, nats_auth.server_config(
            self.owner, self.users.hash(self.owner), {r: self.users.hash(r) for r in self.readers},
            host="127.0.0.1", port=self.port, store_dir=str(self.store)))
        return ["nats-server", "-c", str(config)]

    def start(self) -> None:
        self.process = subprocess.Popen(self.command(), stdout=subprocess.DEVNULL,
                                        stderr=subprocess.DEVNULL)
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with socket.socket() as probe:
                if probe.connect_ex(("127.0.0.1", self.port)) == 0:
                    return
            if self.process.poll() is not None:
                raise RuntimeError(f"nats-server exited {self.process.returncode}")
            time.sleep(0.05)
        raise RuntimeError("nats-server did not start")

    def stop(self) -> None:
        if self.process is not None and self.process.poll() is None:
            self.process.terminate()
            self.process.wait(10)
