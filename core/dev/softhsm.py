"""SoftHSM2 token set-up for development and tests.

Production signs on a real HSM; SoftHSM2 stands in for it in dev and tests. This module
only writes a ``softhsm2.conf`` and initialises a token with ``softhsm2-util``; all
signing goes through :mod:`core.hsm.session`, which reads ``SOFTHSM2_CONF`` when the PKCS#11
library is initialised (once per process).

PINs are passed to ``softhsm2-util`` as arguments (its only non-interactive interface)
but never appear in an exception message or a log line.
"""
from __future__ import annotations

import os
import subprocess
from pathlib import Path

SOFTHSM_MODULE = "/usr/lib/softhsm/libsofthsm2.so"
SOFTHSM_UTIL = "softhsm2-util"
MAX_LABEL_BYTES = 32  # CK_TOKEN_INFO.label is a blank-padded 32-byte field
_UTIL_TIMEOUT_S = 60


class SoftHsmSetupError(RuntimeError):
    """softhsm2-util failed or is missing; the message never contains a PIN."""


def softhsm_env(conf_path: str) -> dict[str, str]:
    """A copy of this process's environment that points SoftHSM2 at conf_path."""
    env = dict(os.environ)
    env["SOFTHSM2_CONF"] = str(conf_path)
    return env


def init_softhsm_token(token_dir: str, conf_path: str, label: str, so_pin: str,
                       pin: str) -> None:
    """Write the conf and initialise a token called `label`, unless it already exists."""
    _check_label(label)
    write_softhsm_conf(token_dir, conf_path)
    if label in token_labels(conf_path):
        return
    _run_util(conf_path,
              ["--init-token", "--free", "--label", label, "--so-pin", so_pin, "--pin", pin],
              secrets=(so_pin, pin))


def write_softhsm_conf(token_dir: str, conf_path: str) -> None:
    """Write a file-backed softhsm2.conf for token_dir; leave an identical file alone."""
    # The token directory holds the key material: only this user may read it.
    Path(token_dir).mkdir(mode=0o700, parents=True, exist_ok=True)
    text = (f"directories.tokendir = {token_dir}\n"
            "objectstore.backend = file\n"
            "log.level = ERROR\n")
    conf = Path(conf_path)
    if conf.exists() and conf.read_text() == text:
        return
    conf.parent.mkdir(parents=True, exist_ok=True)
    tmp = conf.with_name(conf.name + ".tmp")
    tmp.write_text(text)
    os.replace(tmp, conf)  # a concurrent reader sees the old or the new file, never half


def token_labels(conf_path: str) -> list[str]:
    """Labels of the initialised tokens that SoftHSM2 sees with this conf."""
    output = _run_util(conf_path, ["--show-slots"], secrets=())
    return [line.split(":", 1)[1].strip()
            for line in output.splitlines()
            if line.strip().startswith("Label:") and line.split(":", 1)[1].strip()]


def _check_label(label: str) -> None:
    if not label or label != label.strip():
        raise ValueError("token label must be non-empty, without leading/trailing blanks")
    if len(label.encode("utf-8")) > MAX_LABEL_BYTES:
        raise ValueError(f"token label longer than {MAX_LABEL_BYTES} bytes: {label!r}")


def _run_util(conf_path: str, args: list[str], secrets: tuple[str, ...]) -> str:
    """Run softhsm2-util with SOFTHSM2_CONF=conf_path; return stdout or raise without PINs."""
    command = [SOFTHSM_UTIL, *args]
    try:
        result = subprocess.run(command, env=softhsm_env(conf_path), capture_output=True,
                                text=True, timeout=_UTIL_TIMEOUT_S, check=False)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise SoftHsmSetupError(f"{SOFTHSM_UTIL} {args[0]} could not run: "
                                f"{type(exc).__name__}") from None
    if result.returncode != 0:
        detail = _redact((result.stderr or result.stdout).strip(), secrets)
        raise SoftHsmSetupError(f"{SOFTHSM_UTIL} {args[0]} failed "
                                f"(exit {result.returncode}): {detail}")
    return result.stdout


def _redact(text: str, secrets: tuple[str, ...]) -> str:
    """Hide any PIN the tool might echo back, so it cannot leak through our message."""
    for secret in secrets:
        if secret:
            text = text.replace(secret, "***")
    return text
