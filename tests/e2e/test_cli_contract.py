"""The command-line contract and running one signer per repository (issue 16.2-16.4): the
instance lock, signer-admin's identity check, SIGHUP, the exit-code table, --version, JSON
errors, the health table, the quick commands' timeout, the WebDB status staleness, and the
progress line. docs/operations.md, "The command-line contract", is what is checked."""
from __future__ import annotations

import io
import json
import os
import re
import signal
import subprocess
import time
from importlib import metadata
from pathlib import Path

import pytest
import yaml

from core.runtime.cli_contract import Progress
from core.runtime.instance_lock import running_holder
from core.runtime.ptyrelay import PtyRelay
from tests.support.helpers import SignerProcess, free_port, run_tool, signer_config, tool


def config_like(config: Path, target: Path, **changes) -> Path:
    """A copy of a signer config with some top-level or dotted (section__key) changes."""
    data = yaml.safe_load(config.read_text())
    for dotted, value in changes.items():
        section, _, key = dotted.partition("__")
        if key:
            data[section][key] = value
        else:
            data[section] = value
    target.write_text(yaml.safe_dump(data))
    return target


def admin_port(config: Path) -> int:
    return yaml.safe_load(config.read_text())["actor_system"]["admin_port"]


@pytest.fixture
def dead_pty():
    """A pty with nothing behind it (its master is open and never answers)."""
    master, slave = os.openpty()
    yield os.ttyname(slave)
    os.close(master)
    os.close(slave)


# -- one signer per repository ----------------------------------------------------------------

def test_a_second_signer_on_the_same_repository_is_refused_naming_the_first(signer, tmp_path):
    folder = signer.config.parent
    link_before = os.readlink(folder / "client-tty")
    second = config_like(signer.config, folder / "second.yaml", node_id="intruder",
                         actor_system__admin_port=free_port())
    process = subprocess.Popen([tool("signer"), "run", "--config", str(second)], stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True, start_new_session=True)
    try:
        out, err = process.communicate(timeout=60)
    except subprocess.TimeoutExpired:  # it started: the lock did not stop it
        os.killpg(process.pid, signal.SIGTERM)
        process.communicate(timeout=30)
        pytest.fail("a second signer started on a repository in use")
    finally:
        (folder / "second.yaml").unlink()
    assert process.returncode == 2, err
    first_node = yaml.safe_load(signer.config.read_text())["node_id"]
    assert (f"pid {signer.process.pid}" in err and f"node {first_node}" in err
            and f"admin port {admin_port(signer.config)}" in err), err
    assert "client-pty" not in out
    assert os.readlink(folder / "client-tty") == link_before  # not taken over, not removed
    assert run_tool("signer-client", "--port", str(folder / "client-tty"), "health").returncode == 0


def test_a_relay_stopping_leaves_the_link_another_relay_made(tmp_path):
    link = str(tmp_path / "client-tty")
    first = PtyRelay(link_b=link).start()
    second = PtyRelay(link_b=link).start()
    first.stop()
    assert os.readlink(link) == second.path_b
    second.stop()
    assert not os.path.lexists(link)


def test_admin_with_another_signers_config_says_so(signer, tmp_path):
    # The same data folder (the key is readable) but another node: the reply gives it away.
    other_node = config_like(signer.config, tmp_path / "other-node.yaml", node_id="other-node")
    result = run_tool("signer-admin", "--config", str(other_node), "status")
    assert result.returncode == 2, result.stdout + result.stderr
    assert "names node other-node" in result.stderr and "supervisor" not in result.stdout
    # Another data folder whose config reuses the running signer's admin port.
    elsewhere = config_like(signer.config, tmp_path / "elsewhere.yaml",
                            repository={"path": str(tmp_path / "repository.sqlite")})
    result = run_tool("signer-admin", "--config", str(elsewhere), "status", "--json")
    assert result.returncode == 2
    error = json.loads(result.stdout)["error"]
    assert error["code"] == "wrong_signer" and f"admin port {admin_port(signer.config)}" in error["message"]


# -- signals ----------------------------------------------------------------------------------

def test_sighup_is_the_same_clean_shutdown_as_sigterm(dev_data, tmp_path):
    process = SignerProcess(signer_config(dev_data, tmp_path), log_dir=tmp_path)
    assert os.path.islink(tmp_path / "client-tty") and running_holder(tmp_path) is not None
    process.process.send_signal(signal.SIGHUP)
    assert process.process.wait(60) == 0, process.stderr_path.read_text()
    assert "SIGHUP, shutting down" in process.stderr_path.read_text()
    assert not os.path.lexists(tmp_path / "client-tty")
    assert not (tmp_path / "actor-transport.key").exists()
    # The repository was closed by its actor: SQLite removes the WAL files at the last close.
    assert not (tmp_path / "repository.sqlite-wal").exists()
    assert running_holder(tmp_path) is None


# -- exit codes, --version, JSON errors --------------------------------------------------------

@pytest.mark.parametrize("command", ["signer", "signer-admin", "signer-client"])
def test_every_command_has_version(command):
    result = run_tool(command, "--version")
    assert result.returncode == 0, result.stderr
    assert result.stdout.startswith(f"{command} {metadata.version('cacert-signer')} ")


def client_yaml(folder: Path) -> Path:
    path = folder / "client.yaml"
    path.write_text(yaml.safe_dump({"signer": {"device": "/dev/ttyS9"},
                                    "webdb": {"driver": "sqlite", "path": "web.sqlite"},
                                    "state_dir": "state"}))
    return path


EXIT_TABLE = {  # case: (arguments built from the fixtures, documented exit code)
    "signer run: configuration error": (lambda c: ["signer", "run", "--config", c["missing"]], 2),
    "signer run: usage": (lambda c: ["signer", "run"], 2),
    "signer-admin status: every actor answers": (lambda c: ["signer-admin", "--config", c["config"], "status"], 0),
    "signer-admin status: not running": (lambda c: ["signer-admin", "--config", c["idle"], "status"], 3),
    "signer-admin status: configuration error": (lambda c: ["signer-admin", "--config", c["missing"], "status"], 2),
    "signer-admin verify-audit: intact": (lambda c: ["signer-admin", "--config", c["config"], "verify-audit"], 0),
    "signer-admin quarantine: none": (lambda c: ["signer-admin", "--config", c["config"], "quarantine"], 0),
    "signer-admin backup: target exists": (
        lambda c: ["signer-admin", "--config", c["config"], "backup", "--to", c["config"]], 2),
    "signer-client health: healthy": (lambda c: ["signer-client", "--port", c["port"], "health"], 0),
    "signer-client revoke-x509: refused": (
        lambda c: ["signer-client", "--port", c["port"], "revoke-x509", "--issuer", "root", "--serial", "0abc"], 1),
    "signer-client health: no port given": (lambda c: ["signer-client", "health"], 2),
    "signer-client health: nothing behind the port": (
        lambda c: ["signer-client", "--port", c["dead"], "--timeout", "1", "health"], 3),
    "signer-client status: configuration error": (lambda c: ["signer-client", "status", "--config", c["missing"]], 2),
    "signer-client status: the daemon never ran": (lambda c: ["signer-client", "status", "--config", c["client"]], 3),
}


@pytest.mark.parametrize("case", EXIT_TABLE)
def test_exit_code_table(case, signer, tmp_path, dead_pty):
    idle = tmp_path / "idle"
    idle.mkdir()
    paths = {"config": str(signer.config), "port": signer.client_path, "dead": dead_pty,
             "missing": str(tmp_path / "missing.yaml"), "client": str(client_yaml(tmp_path)),
             "idle": str(config_like(signer.config, idle / "signer.yaml",
                                     repository={"path": str(idle / "repository.sqlite")},
                                     actor_system__admin_port=free_port()))}
    build, expected = EXIT_TABLE[case]
    name, *args = build(paths)
    env = {k: v for k, v in os.environ.items() if k != "SIGNER_PORT"}
    result = run_tool(name, *args, timeout=120, env=env)
    assert result.returncode == expected, (result.stdout[-2000:], result.stderr[-2000:])
    assert "Traceback" not in result.stderr


def test_refusals_and_failures_are_json_under_json(signer, dead_pty):
    refused = run_tool("signer-client", "--port", signer.client_path, "--json",
                       "revoke-x509", "--issuer", "root", "--serial", "0abc")
    assert refused.returncode == 1 and refused.stderr == ""
    assert json.loads(refused.stdout)["error"]["code"] == "unknown_serial"
    silent = run_tool("signer-client", "--port", dead_pty, "--timeout", "1", "health", "--json")
    assert silent.returncode == 3 and json.loads(silent.stdout)["error"]["code"] == "no_answer"


def test_admin_not_running_is_a_json_error_under_json(signer, tmp_path):
    idle = config_like(signer.config, tmp_path / "signer.yaml",
                       repository={"path": str(tmp_path / "repository.sqlite")},
                       actor_system__admin_port=free_port())
    result = run_tool("signer-admin", "--config", str(idle), "status", "--json")
    assert result.returncode == 3 and json.loads(result.stdout)["error"]["code"] == "not_running"


def test_health_is_a_table_without_python_reprs_or_long_floats(signer):
    result = run_tool("signer-client", "--port", signer.client_path, "health")
    assert result.returncode == 0, result.stderr
    text = result.stdout
    assert re.search(r"^hsm\s+test_signature_ms\s+\d+\.\d\d$", text, re.MULTILINE), text
    assert re.search(r"^repository\s+counts\.certificates\s+\d+$", text, re.MULTILINE), text
    assert not re.search(r"[{}]|'|\bTrue\b|\bFalse\b|\bNone\b|\d\.\d{3,}", text), text


def test_quick_commands_give_up_soon_and_say_what_to_check(dead_pty):
    started = time.monotonic()
    result = run_tool("signer-client", "--port", dead_pty, "health", timeout=120)
    elapsed = time.monotonic() - started
    assert result.returncode == 3
    assert elapsed < 45, elapsed  # 10 s by default (was 90 s of silence)
    assert "within 10 s" in result.stderr and "--timeout" in result.stderr
    assert "client-pty" in result.stderr and "right port" in result.stderr


# -- signer-client status: never green on an old answer ---------------------------------------

def write_daemon_status(state: Path, health_age_s: float) -> None:
    state.mkdir(exist_ok=True)
    at = time.strftime("%Y-%m-%d %H:%M:%S", time.gmtime(time.time() - health_age_s))
    (state / "status.json").write_text(json.dumps({
        "pid": os.getpid(), "running": True, "updated_unix": time.time(), "updated_at": at,
        "signer": {"reachable": True, "since": at}, "webdb": {"reachable": True},
        "health": {"at": at, "healthy": True, "problems": []}, "queue": {}, "counters": {}}))


def test_client_status_is_green_only_while_the_signer_answered_recently(tmp_path):
    config = client_yaml(tmp_path)
    # Defaults: health.interval_s 15 + min(10, timeout_s 90) + poll_interval_s 5 + 10 s = 40 s.
    write_daemon_status(tmp_path / "state", health_age_s=5)
    fresh = run_tool("signer-client", "status", "--config", str(config))
    assert fresh.returncode == 0, fresh.stdout + fresh.stderr
    write_daemon_status(tmp_path / "state", health_age_s=50)
    stale = run_tool("signer-client", "status", "--config", str(config))
    assert stale.returncode == 1 and "STALE" in stale.stdout, stale.stdout
    as_json = json.loads(run_tool("signer-client", "status", "--json", "--config", str(config)).stdout)
    assert as_json["signer_stale"] is True and as_json["health_age_s"] >= 50


# -- progress ----------------------------------------------------------------------------------

class Terminal(io.StringIO):
    def __init__(self, tty: bool) -> None:
        super().__init__()
        self.tty = tty

    def isatty(self) -> bool:
        return self.tty


@pytest.mark.parametrize("tty", [True, False])
def test_progress_is_drawn_only_on_a_terminal(tty):
    stream = Terminal(tty)
    progress = Progress("fetch-crl root", stream=stream, every_s=0)
    progress.update(1_500_000, 3_000_000)
    progress.close()
    if tty:
        assert stream.getvalue().startswith("\rfetch-crl root: 1.5 MB of 3.0 MB (50 %)")
        assert stream.getvalue().endswith("\n")
    else:
        assert stream.getvalue() == ""
