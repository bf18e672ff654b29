"""The whole signer as its own process on a real pty, real SoftHSM, real repository."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import time
import zlib
from pathlib import Path

import msgpack
import pytest
from cobs import cobs

from core.wire.framing import encode_frame
from core.wire.protocol import encode_request
from tests.support.helpers import signer_config
from tests.support.helpers import SignerProcess, run_tool
from tools.client.library import SignerClient

pytestmark = pytest.mark.e2e


@pytest.fixture
def client(signer):
    with SignerClient(signer.client_path, timeout=20) as c:
        yield c


def test_health_cli_is_healthy_with_ca_expiry_and_hsm_signature(signer):
    result = run_tool("signer-client", "--port", signer.client_path, "health", "--json")
    assert result.returncode == 0, result.stderr
    body = json.loads(result.stdout)
    assert body["healthy"] is True
    assert {c["id"] for c in body["ca_certificates"]} == {"root", "class3"}
    assert all(c["days_to_expiry"] > 1000 for c in body["ca_certificates"])
    assert body["hsm"]["logged_in"] is True and body["hsm"]["test_signature_ms"] > 0
    # The first quick_check runs in the background ("pending" until done), then says ok.
    deadline = time.monotonic() + 30
    while body["repository"]["quick_check"] == "pending" and time.monotonic() < deadline:
        time.sleep(0.2)
        body = json.loads(run_tool("signer-client", "--port", signer.client_path, "health", "--json").stdout)
    assert body["repository"]["quick_check"] == "ok"
    assert body["repository"]["quick_check_age_s"] >= 0


def test_ca_info_writes_a_chain_openssl_accepts(signer, tmp_path):
    result = run_tool("signer-client", "--port", signer.client_path, "ca-info", "--out-dir", str(tmp_path))
    assert result.returncode == 0, result.stderr
    assert sorted(p.name for p in tmp_path.iterdir()) == ["class3.pem", "openpgp-ca.asc", "root.pem"]
    verify = subprocess.run(["openssl", "verify", "-x509_strict", "-CAfile", str(tmp_path / "root.pem"),
                             str(tmp_path / "class3.pem")], capture_output=True, text=True)
    assert verify.returncode == 0, verify.stdout + verify.stderr
    assert "BEGIN PGP PUBLIC KEY BLOCK" in (tmp_path / "openpgp-ca.asc").read_text()


def test_100_pipelined_requests_are_all_answered_by_id(client):
    ids = [client.send("health" if i % 2 else "ca_info", request_id=f"pipe-{i}") for i in range(100)]
    answers = {}
    while len(answers) < 100:
        response = client.receive(timeout=60)
        answers[response.request_id] = response
    assert set(answers) == set(ids)
    assert all(r.ok for r in answers.values())
    assert all(("healthy" in r.body) == (int(i.split("-")[1]) % 2 == 1) for i, r in answers.items())


def raw_frame(raw: bytes) -> bytes:
    return cobs.encode(raw) + b"\x00"


BROKEN_FRAMES = {
    "bad_crc": raw_frame(b"payload" + (zlib.crc32(b"payload") ^ 0xFFFF).to_bytes(4, "big")),
    "bad_cobs": b"\x09ab\x00",
    "frame_too_short": raw_frame(b"ab"),
    "bad_msgpack": encode_frame(b"\xc1\xc1"),
    "bad_envelope": encode_frame(msgpack.packb([1, 2, 3])),
}


@pytest.mark.parametrize("code", sorted(BROKEN_FRAMES))
def test_broken_frame_gets_its_error_and_the_link_keeps_working(client, code):
    client.write_raw(BROKEN_FRAMES[code])
    error = client.receive()
    assert error.request_id is None and error.error["code"] == code
    assert client.call("ca_info").ok


@pytest.mark.parametrize("payload, code", [
    (msgpack.packb({"v": 9, "id": "v9", "cmd": "health"}), "unsupported_version"),
    (msgpack.packb({"v": 1, "id": "nc", "cmd": "make_coffee"}), "unknown_command"),
])
def test_envelope_errors_carry_the_id(client, payload, code):
    client.write_raw(encode_frame(payload))
    response = client.receive()
    assert response.error["code"] == code and response.request_id is not None


def test_oversized_frame_then_good_frame(client):
    client.write_raw(b"\x01" * (4 * 1024 * 1024 + 4096) + b"\x00")
    assert client.receive(timeout=60).error["code"] == "frame_too_large"
    assert client.call("health", timeout=30).ok


def test_garbage_then_frame_in_one_byte_writes(client):
    client.write_raw(b"\xde\xad\xbe\xef noise \x00")
    assert client.receive().error["code"] in {"bad_cobs", "bad_crc", "frame_too_short"}
    for byte in encode_frame(encode_request("slow-1", "ca_info")):
        client.write_raw(bytes([byte]))
    assert client.wait_for("slow-1").ok


def test_admin_status_lists_every_actor_alive(signer):
    records = signer.status()
    names = {r["name"] for r in records}
    assert {"supervisor", "serial_link", "framing", "dispatcher", "health", "ca_info", "hsm",
            "repository"} <= names
    assert all(r["alive"] and r["restarts"] == 0 for r in records)
    table = run_tool("signer-admin", "--config", str(signer.config), "status")
    assert table.returncode == 0 and "serial_link" in table.stdout


def listening_sockets_of(pids: list[int]) -> list[str]:
    """Local addresses (hex as in /proc/net/tcp*) of listening sockets owned by pids."""
    inodes = set()
    for pid in pids:
        for fd in Path(f"/proc/{pid}/fd").iterdir():
            try:
                target = os.readlink(fd)
            except OSError:
                continue
            if target.startswith("socket:["):
                inodes.add(target[8:-1])
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A = LISTEN
                found.append(fields[1])
    return found


def test_every_listening_socket_is_loopback(signer):
    addresses = listening_sockets_of(signer.pids())
    assert len(addresses) >= 8  # the admin and one per actor
    assert all(a.startswith("0100007F:") for a in addresses), addresses


def test_crashed_handler_is_restarted_and_seen_in_status(signer, client):
    health = next(r for r in signer.status() if r["name"] == "health")
    os.kill(health["pid"], signal.SIGKILL)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        record = next(r for r in signer.status() if r["name"] == "health")
        if record["restarts"] >= 1 and record["alive"]:
            break
        time.sleep(0.3)
    assert record["restarts"] >= 1 and record["alive"] and record["pid"] != health["pid"]
    assert client.call("health", timeout=30).body["healthy"] is True


def test_signer_client_times_out_clearly_without_a_signer(tmp_path):
    from core.runtime.ptyrelay import PtyRelay
    relay = PtyRelay().start()  # a line with nobody on the other end
    try:
        result = run_tool("signer-client", "--port", relay.path_b, "--timeout", "1", "health")
    finally:
        relay.stop()
    assert result.returncode == 3 and "no answer" in result.stderr


def test_wrong_pin_is_a_clear_startup_error(dev_data, tmp_path):
    config = signer_config(dev_data, tmp_path)
    env = dict(os.environ, SIGNER_HSM_PIN="wrong-pin-4711")
    result = subprocess.run([str(Path(run_tool.__globals__["tool"]("signer"))), "run", "--config",
                             str(config)], capture_output=True, text=True, env=env, timeout=120)
    assert result.returncode == 2
    assert "cannot start" in result.stderr and "PIN" in result.stderr
    assert "wrong-pin-4711" not in result.stderr + result.stdout


def test_config_error_names_the_key(dev_data, tmp_path):
    config = signer_config(dev_data, tmp_path)
    config.write_text(config.read_text().replace("token_label:", "token_lable:"))
    result = run_tool("signer", "run", "--config", str(config))
    assert result.returncode == 2 and "hsm.token_lable: unknown key" in result.stderr


def test_sigterm_stops_every_process(dev_data, tmp_path):
    process = SignerProcess(signer_config(dev_data, tmp_path), log_dir=tmp_path)
    pids = process.pids()
    assert len(pids) >= 9
    assert process.stop() == 0
    time.sleep(1)
    alive = [p for p in pids if Path(f"/proc/{p}").exists()
             and "Z" not in Path(f"/proc/{p}/stat").read_text().split()[2]]
    assert alive == []


def test_dev_init_is_idempotent(dev_data):
    before = {p: p.read_bytes() for p in (dev_data / "ca").iterdir()}
    config_before = (dev_data / "signer.yaml").read_text()
    result = run_tool("signer", "dev-init", "--data", str(dev_data), timeout=120)
    assert result.returncode == 0, result.stderr
    assert {p: p.read_bytes() for p in (dev_data / "ca").iterdir()} == before
    assert (dev_data / "signer.yaml").read_text() == config_before
    assert "generating" not in result.stderr and "issuing" not in result.stderr


def test_admin_says_clearly_when_no_signer_runs(dev_data, tmp_path):
    config = signer_config(dev_data, tmp_path)  # a fresh admin port nobody listens on
    result = run_tool("signer-admin", "--config", str(config), "status")
    assert result.returncode == 3 and "no signer is running" in result.stderr  # 3: not running


def test_sigterm_during_start_up_leaves_nothing_behind(dev_data, tmp_path):
    config = signer_config(dev_data, tmp_path)
    process = subprocess.Popen([run_tool.__globals__["tool"]("signer"), "run", "--config", str(config)],
                               stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    time.sleep(1.0)  # the actor system is starting, the supervisor not yet answering
    process.send_signal(signal.SIGTERM)
    out, err = process.communicate(timeout=60)
    assert process.returncode == 0, err
    assert "client-pty" not in out or "shutting down" in err
    import yaml
    port = yaml.safe_load(config.read_text())["actor_system"]["admin_port"]
    deadline = time.monotonic() + 15
    from system import port_in_use
    while port_in_use(port) and time.monotonic() < deadline:
        time.sleep(0.2)
    assert not port_in_use(port), "the actor system outlived a SIGTERM during start-up"
