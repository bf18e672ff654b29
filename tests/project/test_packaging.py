"""The package as an operator installs it: a wheel built from the source tree, installed into a
fresh venv outside the tree, runs `signer dev-init`, `signer run` and `signer-client health`
and signs with a shipped profile, from a working folder outside the tree (issue 16.6). And
the wheel's metadata lets the WebDB box install only what the daemon imports.

The fresh venv gets the third-party dependencies through a .pth line naming this test run's
own site-packages (a plain path: the editable install's finder there is not activated, so the
source tree is not importable from the fresh venv; the first test checks exactly that).
"""
from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import sysconfig
import time
from pathlib import Path

import pytest

from tests.support.helpers import ROOT, free_port

pytestmark = pytest.mark.e2e

# Modules only the signer imports (setup.cfg extra `signer`); the WebDB box does not have them.
SIGNER_ONLY = {"thespian": "thespian", "pykcs11": "PyKCS11", "nats-py": "nats",
               "pkilint": "pkilint"}
# What is not part of a source distribution of the project.
NOT_SOURCE = shutil.ignore_patterns(".git", ".venv", "data", "build", "dist", "*.egg-info",
                                    "__pycache__", ".pytest_cache", ".hypothesis")


def _clean_env(**extra: str) -> dict:
    env = {k: v for k, v in os.environ.items()
           if k not in ("PYTHONPATH", "SOFTHSM2_CONF", "SIGNER_HSM_PIN", "THESPLOG_FILE")}
    return {**env, **extra}


@pytest.fixture(scope="module")
def venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh venv (outside the source tree) with the project's wheel installed into it."""
    work = tmp_path_factory.mktemp("packaging")
    source = work / "source"
    shutil.copytree(ROOT, source, ignore=NOT_SOURCE)  # the build writes build/ into its tree
    subprocess.run([sys.executable, "-m", "pip", "wheel", "-q", "--no-deps", "-w", str(work / "dist"),
                    str(source)], check=True, capture_output=True, text=True, timeout=300)
    (wheel,) = (work / "dist").glob("cacert_signer-*.whl")
    target = work / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(target)], check=True, timeout=120)
    purelib = Path(subprocess.run([str(target / "bin" / "python"), "-c",
                                   "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
                                  check=True, capture_output=True, text=True).stdout.strip())
    (purelib / "test-dependencies.pth").write_text(sysconfig.get_paths()["purelib"] + "\n")
    subprocess.run([sys.executable, "-m", "pip", "--python", str(target / "bin" / "python"), "install",
                    "-q", "--no-deps", "--no-index", str(wheel)],
                   check=True, capture_output=True, text=True, timeout=300)
    return target


def _python(venv: Path, code: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run([str(venv / "bin" / "python"), "-c", code], capture_output=True, text=True,
                          cwd=cwd, env=_clean_env(), timeout=60)


def test_the_installed_package_not_the_source_tree_is_imported(venv: Path, tmp_path: Path) -> None:
    result = _python(venv, "import core.runtime.config, system, tools.webdb.daemon as d\n"
                           "print(core.runtime.config.__file__); print(system.__file__); print(d.__file__)\n"
                           "print(core.runtime.config.SHIPPED_PROFILES)", tmp_path)
    assert result.returncode == 0, result.stderr
    *modules, profiles = result.stdout.split()
    for path in modules + [profiles]:
        assert Path(path).is_relative_to(venv), path
        assert not Path(path).is_relative_to(ROOT), path
    assert sorted(p.name for p in Path(profiles).glob("*.yaml")) == \
        sorted(p.name for p in (ROOT / "config" / "profiles").glob("*.yaml"))


def test_wheel_install_runs_dev_init_run_health_and_signs_with_a_shipped_profile(
        venv: Path, tmp_path: Path) -> None:
    bin_dir, data, cwd = venv / "bin", tmp_path / "data", tmp_path / "elsewhere"
    cwd.mkdir()
    env = _clean_env()
    init = subprocess.run([str(bin_dir / "signer"), "dev-init", "--data", str(data), "--admin-port",
                           str(free_port()), "--openpgp-key", "ecdsa-p256"],
                          capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert init.returncode == 0, init.stderr
    stderr_path = tmp_path / "signer.stderr"
    with open(stderr_path, "wb") as stderr:
        signer = subprocess.Popen([str(bin_dir / "signer"), "run", "--config", str(data / "signer.yaml")],
                                  stdout=subprocess.PIPE, stderr=stderr, text=True, cwd=cwd, env=env,
                                  start_new_session=True)
    try:
        port = _client_pty(signer, stderr_path)
        client = [str(bin_dir / "signer-client"), "--port", port, "--timeout", "60"]
        health = subprocess.run(client + ["health"], capture_output=True, text=True, cwd=cwd, env=env,
                                timeout=120)
        assert health.returncode == 0, health.stdout + health.stderr
        assert "healthy: yes" in health.stdout
        key, csr = tmp_path / "k.key", tmp_path / "k.csr"
        subprocess.run(["openssl", "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256",
                        "-nodes", "-keyout", str(key), "-out", str(csr), "-subj", "/CN=ignored"],
                       check=True, capture_output=True, timeout=60)
        signed = subprocess.run(client + ["sign-x509", "--issuer", "root", "--profile", "server",
                                          "--csr", str(csr), "--subject", "CN=www.example.org",
                                          "--san", "dns:www.example.org", "--out", str(tmp_path / "www.pem")],
                                capture_output=True, text=True, cwd=cwd, env=env, timeout=120)
        assert signed.returncode == 0, signed.stdout + signed.stderr
        verify = subprocess.run(["openssl", "verify", "-CAfile", str(data / "ca" / "root.pem"),
                                 str(tmp_path / "www.pem")], capture_output=True, text=True, timeout=60)
        assert verify.returncode == 0, verify.stdout + verify.stderr
    finally:
        signer.send_signal(signal.SIGTERM)
        try:
            signer.wait(60)
        except subprocess.TimeoutExpired:
            os.killpg(signer.pid, signal.SIGKILL)
            signer.wait(10)
    assert signer.returncode == 0, stderr_path.read_text(errors="replace")[-4000:]


def _client_pty(signer: subprocess.Popen, stderr_path: Path) -> str:
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        line = signer.stdout.readline()
        if line.startswith("client-pty: "):
            return line.split(": ", 1)[1].strip()
        if not line and signer.poll() is not None:
            break
    pytest.fail(f"signer run (exit {signer.poll()}) printed no client-pty line: "
                f"{stderr_path.read_text(errors='replace')[-4000:]}")


def test_webdb_box_installs_and_imports_none_of_the_signer_only_packages(venv: Path, tmp_path: Path) -> None:
    # What `pip install 'cacert-signer[webdb]'` pulls in, read from the installed wheel's metadata.
    code = ("from importlib.metadata import requires\n"
            "from packaging.requirements import Requirement\n"
            "for line in requires('cacert-signer'):\n"
            "    r = Requirement(line)\n"
            "    if r.marker is None or r.marker.evaluate({'extra': 'webdb'}): print(r.name.lower())\n")
    result = _python(venv, code, tmp_path)
    assert result.returncode == 0, result.stderr
    webdb_box = set(result.stdout.split())
    assert "pymysql" in webdb_box and "cryptography" in webdb_box
    assert not webdb_box & set(SIGNER_ONLY), webdb_box & set(SIGNER_ONLY)
    # Everything the daemon and signer-client import works with those modules absent.
    blocked = sorted(SIGNER_ONLY.values())
    code = (f"import sys, importlib, pkgutil\n"
            f"for name in {blocked!r}: sys.modules[name] = None\n"
            "import tools.webdb, tools.client.cli, tools.client.crl_fetch\n"
            "for m in pkgutil.iter_modules(tools.webdb.__path__): importlib.import_module('tools.webdb.' + m.name)\n"
            "sys.argv = ['signer-client', '--help']\n"
            "tools.client.cli.main()\n")
    result = _python(venv, code, tmp_path)
    assert result.returncode == 0, result.stderr
    assert "init-webdb" in result.stdout


# The host paths a real run of scripts/install-production.sh creates or changes.
INSTALL_TARGETS = ["/opt/cacert-signer", "/etc/cacert-signer", "/etc/cacert-signer-client",
                   "/var/lib/cacert-signer", "/var/lib/cacert-signer-client", "/var/log/cacert-signer",
                   "/etc/logrotate.d/cacert-signer", "/etc/systemd/system/cacert-signer.service",
                   "/etc/systemd/system/cacert-signer-nats.service",
                   "/etc/systemd/system/cacert-signer-client.service"]


def _host_state() -> dict:
    state = {}
    for path in map(Path, INSTALL_TARGETS):
        state[str(path)] = (path.stat().st_mtime_ns, path.stat().st_mode) if path.exists() else None
    for user in ("cacert-signer", "cacert-signer-nats", "cacert-client"):
        state[user] = subprocess.run(["getent", "passwd", user], capture_output=True, text=True).stdout
    return state


@pytest.mark.parametrize("role", [[], ["--no-sync"], ["--webdb"]], ids=["signer", "signer-no-sync", "webdb"])
def test_install_script_dry_run_prints_each_change_and_changes_nothing(role: list[str], tmp_path: Path) -> None:
    staging, scratch = tmp_path / "root", tmp_path / "tmp"
    staging.mkdir()
    scratch.mkdir()
    before = _host_state()
    result = subprocess.run(["bash", str(ROOT / "scripts" / "install-production.sh"), "--dry-run",
                             "--root", str(staging), *role], capture_output=True, text=True, timeout=120,
                            env=_clean_env(TMPDIR=str(scratch)))
    assert result.returncode == 0, result.stdout + result.stderr
    assert list(staging.iterdir()) == [] and list(scratch.iterdir()) == []
    assert _host_state() == before
    would = [line.split("would: ", 1)[1] for line in result.stdout.splitlines() if "would: " in line]
    box = "webdb" if role == ["--webdb"] else "signer"
    lock = str(ROOT / "requirements" / f"{box}.lock")
    assert any("--require-hashes" in line and line.endswith(f"-r {lock}") for line in would), would
    assert any("--no-deps --no-index" in line for line in would), would
    units = {"signer": ["cacert-signer.service", "cacert-signer-nats.service"],
             "signer-no-sync": ["cacert-signer.service", "cacert-signer.service.d/private-network.conf"],
             "webdb": ["cacert-signer-client.service"]}[box if role != ["--no-sync"] else "signer-no-sync"]
    for unit in units:
        assert any(line.endswith(f"{staging}/etc/systemd/system/{unit}") for line in would), (unit, would)
    if box == "signer":
        assert any(line.endswith(f"{staging}/etc/logrotate.d/cacert-signer") for line in would), would
        assert any(line.startswith("install -d -m 0700 -o cacert-signer -g cacert-signer")
                   and line.endswith(f"{staging}/var/lib/cacert-signer") for line in would), would
    assert result.stdout.rstrip().endswith('Next: docs/operations.md, "Production"')
