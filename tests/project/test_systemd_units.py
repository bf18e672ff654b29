"""The shipped systemd units (config/systemd/, issue 16.1): `systemd-analyze verify` finds no
problem in any of them, alone or with each variant drop-in; `systemd-analyze security` rates
each no worse than docs/operations.md says; and the unit's restart rules match the exit codes
`signer run` really uses.

The units name /opt/cacert-signer/bin/... and /usr/sbin/nats-server, which verify requires to
be executable: the checks run with --root on a scratch root holding systemd's own unit files,
the units, and an executable stand-in at each path the units run (what is checked is the
units, not the programs).
"""
from __future__ import annotations

import configparser
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from tests.support.helpers import ROOT, run_tool

UNITS = ROOT / "config" / "systemd"
SIGNER_VARIANTS = sorted((UNITS / "variants").glob("*.conf"))
SYSTEMD_ANALYZE = shutil.which("systemd-analyze")
needs_systemd = pytest.mark.skipif(
    SYSTEMD_ANALYZE is None or not Path("/usr/lib/systemd/system").is_dir(),
    reason="systemd-analyze is not installed here: the units cannot be verified or rated")


def _unit(name: str) -> configparser.ConfigParser:
    parser = configparser.ConfigParser(strict=False, interpolation=None)
    parser.optionxform = str
    parser.read(UNITS / name)
    return parser


def _scratch_root(tmp_path: Path, drop_in: Path | None = None) -> Path:
    root = tmp_path / "root"
    shutil.copytree("/usr/lib/systemd/system", root / "usr/lib/systemd/system", symlinks=True)
    system = root / "etc/systemd/system"
    system.mkdir(parents=True)
    for unit in UNITS.glob("*.service"):
        shutil.copy(unit, system)
        for line in unit.read_text().splitlines():
            match = re.match(r"Exec\w+=[-@:+!]*(/\S+)", line)
            if match:
                stand_in = root / match.group(1).lstrip("/")
                stand_in.parent.mkdir(parents=True, exist_ok=True)
                stand_in.write_text("#!/bin/sh\n")
                stand_in.chmod(0o755)
    if drop_in is not None:
        (system / "cacert-signer.service.d").mkdir()
        shutil.copy(drop_in, system / "cacert-signer.service.d")
    return root


def _analyze(root: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([SYSTEMD_ANALYZE, f"--root={root}", *args], capture_output=True, text=True,
                          timeout=120)


def _documented_scores() -> dict[str, float]:
    """The `systemd-analyze security` table of docs/operations.md: unit (variant) -> score."""
    text = (ROOT / "docs" / "operations.md").read_text()
    return {m.group(1): float(m.group(2))
            for m in re.finditer(r"^\| `([\w.+-]+)` \| (\d+\.\d) \|", text, re.MULTILINE)}


@needs_systemd
@pytest.mark.parametrize("unit", sorted(p.name for p in UNITS.glob("*.service")))
def test_systemd_analyze_verify_finds_nothing_in_the_unit(unit: str, tmp_path: Path) -> None:
    result = _analyze(_scratch_root(tmp_path), "verify", unit)
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


@needs_systemd
@pytest.mark.parametrize("variant", SIGNER_VARIANTS, ids=lambda p: p.stem)
def test_systemd_analyze_verify_finds_nothing_in_the_signer_with_each_variant(variant: Path,
                                                                              tmp_path: Path) -> None:
    result = _analyze(_scratch_root(tmp_path, variant), "verify", "cacert-signer.service")
    assert result.returncode == 0 and not (result.stdout + result.stderr).strip(), \
        result.stdout + result.stderr


@needs_systemd
@pytest.mark.parametrize("name", [p.name for p in sorted(UNITS.glob("*.service"))]
                         + [f"cacert-signer.service+{p.stem}" for p in SIGNER_VARIANTS])
def test_security_exposure_is_no_worse_than_documented(name: str, tmp_path: Path) -> None:
    unit, _, variant = name.partition("+")
    root = _scratch_root(tmp_path, UNITS / "variants" / f"{variant}.conf" if variant else None)
    result = _analyze(root, "security", "--offline=true", "--no-pager", unit)
    match = re.search(r"Overall exposure level for \S+: (\d+\.\d)", result.stdout)
    assert match, result.stdout + result.stderr
    documented = _documented_scores()
    assert name in documented, f"docs/operations.md has no security score for {name}"
    assert float(match.group(1)) <= documented[name], \
        f"{name}: exposure {match.group(1)}, documented {documented[name]}"


def test_a_configuration_error_is_an_exit_status_the_unit_does_not_restart(tmp_path: Path) -> None:
    """`signer run` on a config it refuses exits with a status in RestartPreventExitStatus=,
    and a failure exit (1: the Supervisor died) is one Restart=on-failure restarts."""
    (tmp_path / "signer.yaml").write_text("node_id: x\nunknown_key: 1\n")
    refused = run_tool("signer", "run", "--config", str(tmp_path / "signer.yaml"), timeout=60)
    service = _unit("cacert-signer.service")["Service"]
    assert refused.returncode != 0, refused.stderr
    assert str(refused.returncode) in service["RestartPreventExitStatus"].split()
    assert service["Restart"] == "on-failure"
    assert "1" not in service["RestartPreventExitStatus"].split()
