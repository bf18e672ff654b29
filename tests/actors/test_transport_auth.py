"""Issue 11, points 1 and 5: a local user cannot reach the signer's actors, and the signer's
files, secrets and processes are its own.

Against a real signer (its own process tree, real SoftHSM): frames without this run's key,
sent to the admin port and to every actor's port, by a process of the same uid and by
`nobody`, do nothing: no code runs (no file appears), no signature comes back, each refusal
is logged once, and the signer keeps answering. Plus unit tests of the framing and the
restricted unpickler, and of the process hardening."""
from __future__ import annotations

import ctypes
import json
import os
import pickle
import re
import resource
import select
import socket
import stat
import subprocess
import time
import traceback
from pathlib import Path

import pytest
import yaml

from core.runtime.actor_transport_auth import (restricted_loads, KEY_FILE_NAME, AuthenticatedSerializer, FrameRefused,
                                       new_key, read_key_file, seal, unseal)
from core.runtime.config import ConfigError, HsmConfig, read_pin
from messages.hsm import HsmSignRequest
from tests.support.helpers import SignerProcess, free_port, signer_config
from tests.e2e.test_spine import listening_sockets_of
from tools.client.library import SignerClient

NOBODY = 65534
PR_GET_DUMPABLE = 3


class CreatesFile:
    """Unpickling this opens (creates) `path`: what a pickle that runs code does."""

    def __init__(self, path: str) -> None:
        self.path = path

    def __reduce__(self):  # type: ignore[no-untyped-def]
        return (open, (self.path, "w"))


def thespian_frame(payload: bytes) -> bytes:
    """Thespian's TCP framing: the length in ASCII, '>', the serialized bytes."""
    return b"%d>" % len(payload) + payload


# ---- unit: framing and the restricted unpickler ---------------------------------------

def test_an_authentic_frame_round_trips_a_message():
    serializer = AuthenticatedSerializer(new_key())
    request = HsmSignRequest(tag=7, key_label="class3-key", mechanism="sha256-rsa-pkcs1", data=b"x")
    assert serializer.loads(serializer.dumps(request)) == request


@pytest.mark.parametrize("tamper", [
    lambda frame, key: seal(new_key(), frame[32:]),                   # another run's key
    lambda frame, key: frame[:-1] + bytes([frame[-1] ^ 1]),           # one bit of the pickle
    lambda frame, key: frame[32:],                                    # no tag: a bare pickle
    lambda frame, key: frame[:31],                                    # shorter than a tag
], ids=["other-key", "flipped-bit", "bare-pickle", "short"])
def test_a_frame_without_this_runs_key_is_refused_before_unpickling(tmp_path, tamper):
    key = new_key()
    marker = tmp_path / "created-by-unpickling"
    frame = tamper(seal(key, pickle.dumps(CreatesFile(str(marker)))), key)
    with pytest.raises(FrameRefused):
        AuthenticatedSerializer(key).loads(frame)
    assert not marker.exists()


def test_even_an_authentic_frame_may_name_only_allowed_classes(tmp_path):
    """The second line of defence: a key holder's frame still cannot call a function."""
    key = new_key()
    marker = tmp_path / "created-by-unpickling"
    frame = seal(key, pickle.dumps(CreatesFile(str(marker))))
    assert unseal(key, frame)  # the tag is right
    with pytest.raises(FrameRefused, match=r"class io\.open is not one the signer sends"):
        AuthenticatedSerializer(key).loads(frame)
    assert not marker.exists()


def test_thespian_messages_and_addresses_pass_the_restricted_unpickler():
    from thespian.actors import ActorAddress, ActorExitRequest
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    serializer = AuthenticatedSerializer(new_key())
    address = ActorAddress(TCPv4ActorAddress("127.0.0.1", 40000, external=False))
    sender, message = serializer.loads(serializer.dumps((address, ActorExitRequest())))
    assert sender == address and isinstance(message, ActorExitRequest)


def test_socket_enum_members_pickled_by_name_pass_and_other_socket_names_do_not():
    # Python 3.11.2 (Debian 12) pickles socket.AF_INET as the global `socket AF_INET`.
    assert restricted_loads(b"csocket\nAF_INET\n.") is socket.AF_INET
    assert restricted_loads(b"csocket\nSOCK_STREAM\n.") is socket.SOCK_STREAM
    for name in ("socket", "create_connection", "SOMAXCONN"):
        with pytest.raises(FrameRefused):
            restricted_loads(f"csocket\n{name}\n.".encode())


def test_a_readable_pin_file_is_refused_naming_the_file_and_the_fix(tmp_path):
    pin_file = tmp_path / "pin"
    pin_file.write_text("1234\n")
    os.chmod(pin_file, 0o640)
    hsm = HsmConfig(module="m", token_label="t", pin_file=str(pin_file))
    with pytest.raises(ConfigError, match=re.escape(f"{pin_file} is open to group or others "
                                                    "(mode 640)") + ".*" + re.escape(f"chmod 600 {pin_file}")):
        read_pin(hsm)
    os.chmod(pin_file, 0o600)
    assert read_pin(hsm) == "1234"


def test_harden_process_sets_umask_no_core_and_not_dumpable():
    from core.runtime.process_hardening import harden_process

    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:  # the child hardens itself; the test process stays as it is
        try:
            harden_process()
            umask = os.umask(0o077)
            dumpable = ctypes.CDLL(None).prctl(PR_GET_DUMPABLE, 0, 0, 0, 0)
            os.write(write_end, json.dumps([umask, resource.getrlimit(resource.RLIMIT_CORE),
                                            dumpable]).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    os.waitpid(pid, 0)
    with os.fdopen(read_end) as pipe:
        umask, core, dumpable = json.loads(pipe.read())
    assert (umask, core, dumpable) == (0o077, [0, 0], 0)


def test_gpg_runs_with_a_minimal_environment(tmp_path, monkeypatch):
    from core.openpgp.validate import _run_gpg

    dump = tmp_path / "gpg-environment.json"
    fake_gpg = tmp_path / "gpg"
    fake_gpg.write_text(f"#!{os.path.realpath(os.sys.executable)}\nimport json, os\n"
                        f"json.dump(dict(os.environ), open({str(dump)!r}, 'w'))\n")
    fake_gpg.chmod(0o700)
    monkeypatch.setenv("SIGNER_HSM_PIN", "must-not-reach-gpg")
    _run_gpg(str(fake_gpg), b"", 30)
    assert set(json.loads(dump.read_text())) <= {"PATH", "LC_ALL", "LANGUAGE"}


# ---- against a running signer ---------------------------------------------------------

@pytest.fixture(scope="module")
def run_dir(tmp_path_factory) -> Path:
    return tmp_path_factory.mktemp("transport-auth-run")


@pytest.fixture(scope="module")
def pin_env_signer(dev_data: Path, run_dir: Path):
    """A signer given its PIN through hsm.pin_env, with THESPLOG_FILE unset, started in a
    data folder an older signer left 0755 (so 0700 must be its own doing)."""
    os.chmod(run_dir, 0o755)
    env = {k: v for k, v in os.environ.items() if k != "THESPLOG_FILE"}
    env["SIGNER_HSM_PIN"] = (dev_data / "secrets" / "hsm-user-pin").read_text().strip()
    process = SignerProcess(signer_config(dev_data, run_dir), env=env)
    process.pin = env["SIGNER_HSM_PIN"]
    yield process
    process.stop()


def signer_pids(signer: SignerProcess) -> list[int]:
    """Every process of this signer: `signer run`, Thespian's (detached) admin and logger,
    the actors. They are all forks of `signer run`, so their command line names its config."""
    pids = []
    for entry in Path("/proc").iterdir():
        try:
            if entry.name.isdigit() and str(signer.config).encode() in (entry / "cmdline").read_bytes():
                pids.append(int(entry.name))
        except OSError:
            continue  # exited meanwhile
    assert set(signer.pids()) <= set(pids)
    return pids


def ports_of(pids: list[int]) -> set[int]:
    return {int(address.split(":")[1], 16) for address in listening_sockets_of(pids)}


def signer_ports(signer: SignerProcess) -> list[int]:
    """The admin port and every actor's port. Not the socket of `signer run` itself (every
    fork inherits its descriptor): that process reads it only while it asks the Supervisor
    (start-up, shutdown), so a frame sent there waits unread until then."""
    admin_port = yaml.safe_load(signer.config.read_text())["actor_system"]["admin_port"]
    ports = ports_of(signer_pids(signer)) - ports_of([signer.process.pid])
    assert admin_port in ports
    return sorted(ports)


def attack(ports: list[int], payloads: list[bytes], listener_port: int, as_uid: int | None) -> dict:
    """In a forked child (as `as_uid` when given): listen on listener_port, send each payload,
    framed as Thespian frames it, to each port, and report what came back."""
    read_end, write_end = os.pipe()
    pid = os.fork()
    if pid == 0:
        try:
            if as_uid is not None:
                os.setgroups([])
                os.setgid(as_uid)
                os.setuid(as_uid)
            report = _attack_in_child(ports, payloads, listener_port)
        except BaseException:
            report = {"error": traceback.format_exc()}
        try:
            os.write(write_end, json.dumps(report).encode())
        finally:
            os._exit(0)
    os.close(write_end)
    with os.fdopen(read_end) as pipe:
        report = json.loads(pipe.read())
    os.waitpid(pid, 0)
    assert "error" not in report, report.get("error")
    return report


def _attack_in_child(ports: list[int], payloads: list[bytes], listener_port: int) -> dict:
    listener = socket.socket()
    listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    listener.bind(("127.0.0.1", listener_port))
    listener.listen(16)
    listener.setblocking(False)
    report = {"uid": os.getuid(), "connections": 0, "dropped_by": [], "kept_open_by": [],
              "answers": [], "received_on_listener": ""}
    for port in ports:
        for payload in payloads:
            with socket.create_connection(("127.0.0.1", port), timeout=10) as conn:
                conn.sendall(thespian_frame(payload))
                report["connections"] += 1
                answer = b""
                try:
                    while chunk := conn.recv(65536):
                        answer += chunk
                    report["dropped_by"].append(port)
                except TimeoutError:
                    report["kept_open_by"].append(port)
                report["answers"].append(answer.decode("latin-1"))
    # Whatever the signer sends to the address the forged requests named as their sender.
    received = b""
    deadline = time.monotonic() + 5
    while time.monotonic() < deadline:
        if select.select([listener], [], [], 0.2)[0]:
            conn, _ = listener.accept()
            conn.settimeout(5)
            try:
                while chunk := conn.recv(65536):
                    received += chunk
            except OSError:
                pass
            conn.close()
    report["received_on_listener"] = received.decode("latin-1")
    return report


def forged_sign_request(listener_port: int) -> bytes:
    """What a local user would send: a well-formed envelope (sender address, HsmSignRequest)
    naming its own listening port as the sender, so a signature would come back there."""
    from thespian.actors import ActorAddress
    from thespian.system.transport.IPBase import TCPv4ActorAddress

    sender = ActorAddress(TCPv4ActorAddress("127.0.0.1", listener_port, external=False))
    return pickle.dumps((sender, HsmSignRequest(tag=4711, key_label="class3-key",
                                                mechanism="sha256-rsa-pkcs1", data=b"forged tbs")))


def refusals_in_log(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.exists() else ""
    return [line for line in text.splitlines() if "actor transport: refused a frame" in line]


@pytest.mark.parametrize("who", ["same-uid", "nobody"])
def test_frames_without_the_key_change_nothing_and_are_logged_once_each(pin_env_signer, run_dir,
                                                                        tmp_path, who):
    if who == "nobody":
        if os.getuid() != 0:
            pytest.skip("dropping to another uid needs root (CI runs the tests as root)")
        os.chmod(tmp_path, 0o777)  # the marker's folder: writable by anyone, by the signer too
    signer = pin_env_signer
    ports = signer_ports(signer)
    marker = tmp_path / "created-by-unpickling"
    listener_port = free_port()  # the child listens there: the forged sender address
    payloads = [pickle.dumps(CreatesFile(str(marker))), forged_sign_request(listener_port)]
    log = Path(yaml.safe_load(signer.config.read_text())["actor_system"]["log_file"])
    before = len(refusals_in_log(log))

    report = attack(ports, payloads, listener_port, NOBODY if who == "nobody" else None)

    assert report["uid"] == (NOBODY if who == "nobody" else os.getuid())
    assert report["connections"] == 2 * len(ports) and len(ports) >= 9
    assert not marker.exists(), "a frame without the key ran code in the signer"
    assert "HsmSignReply" not in report["received_on_listener"], "a forged request got a signature"
    assert not any("HsmSignReply" in a for a in report["answers"])
    assert report["kept_open_by"] == [] and len(report["dropped_by"]) == report["connections"]
    deadline = time.monotonic() + 60
    while len(refusals_in_log(log)) - before < report["connections"] and time.monotonic() < deadline:
        time.sleep(0.2)
    time.sleep(1)  # a second line for one connection would arrive by now
    refusals = refusals_in_log(log)[before:]
    assert len(refusals) == report["connections"], refusals  # once per connection
    assert {int(re.search(r" on 127\.0\.0\.1:(\d+) ", r).group(1)) for r in refusals} == set(ports)
    with SignerClient(signer.client_path, timeout=30) as client:
        assert client.call("health", timeout=30).body["healthy"] is True
    assert all(r["alive"] for r in signer.status())


def test_no_signer_process_has_the_pin_in_its_environment_or_may_dump_core(pin_env_signer):
    pids = signer_pids(pin_env_signer)
    assert len(pids) >= 9  # signer run, Thespian's admin and logger, the actors
    pin = pin_env_signer.pin.encode()
    for pid in pids:
        environ = Path(f"/proc/{pid}/environ").read_bytes()
        assert pin not in environ and b"SIGNER_HSM_PIN=" not in environ, f"pid {pid}"
        limits = Path(f"/proc/{pid}/limits").read_text()
        assert re.search(r"Max core file size\s+0\s+0\s", limits), f"pid {pid}"


def test_data_folder_and_files_are_the_signers_only(pin_env_signer, run_dir):
    with SignerClient(pin_env_signer.client_path, timeout=30) as client:
        assert client.call("health", timeout=30).body["healthy"] is True  # the repository is used
    assert stat.S_IMODE(run_dir.stat().st_mode) == 0o700  # it was 0755 before the start
    names = ["repository.sqlite", "repository.sqlite-wal", "repository.sqlite-shm", "signer.log",
             KEY_FILE_NAME]
    for name in names:
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o600, name


def test_thespian_log_is_in_the_data_folder(pin_env_signer, run_dir):
    """THESPLOG_FILE unset: Thespian's log goes to the data folder, 0600, never $TMPDIR.
    (The refused frames of the attack test write to it; a bad frame here makes sure.)"""
    admin_port = yaml.safe_load(pin_env_signer.config.read_text())["actor_system"]["admin_port"]
    with socket.create_connection(("127.0.0.1", admin_port), timeout=10) as conn:
        conn.sendall(thespian_frame(b"not a pickle"))
        conn.recv(1024)
    log = run_dir / "thespian.log"
    deadline = time.monotonic() + 30
    while not log.exists() and time.monotonic() < deadline:
        time.sleep(0.2)
    assert "OUCH" in log.read_text(errors="replace")
    assert stat.S_IMODE(log.stat().st_mode) == 0o600


def test_admin_without_the_key_says_it_cannot_reach_the_signer(pin_env_signer, tmp_path):
    """A copy of the configuration whose data folder holds no key (and no running signer):
    a clear line, exit 2 (the config names another signer than the one on the port)."""
    config = yaml.safe_load(pin_env_signer.config.read_text())
    config["repository"]["path"] = str(tmp_path / "repository.sqlite")
    other = tmp_path / "signer.yaml"
    other.write_text(yaml.safe_dump(config))
    result = subprocess.run([str(Path(os.sys.executable).parent / "signer-admin"), "--config",
                             str(other), "status"], capture_output=True, text=True, timeout=60)
    assert result.returncode == 2
    assert "no signer runs on" in result.stderr and "Traceback" not in result.stderr
    assert read_key_file(pin_env_signer.config.parent / KEY_FILE_NAME)  # the real one is there


def test_clean_shutdown_removes_the_key_file(dev_data, tmp_path):
    process = SignerProcess(signer_config(dev_data, tmp_path), log_dir=tmp_path)
    key_file = tmp_path / KEY_FILE_NAME
    assert stat.S_IMODE(key_file.stat().st_mode) == 0o600
    assert process.stop() == 0
    assert not key_file.exists()
