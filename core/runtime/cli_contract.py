"""What every command of the project (`signer`, `signer-admin`, `signer-client`) promises a
script: one exit-code table, `--version`, errors as JSON under `--json`, and a progress line
for long operations on a terminal. docs/operations.md ("The command-line contract") is the
reference; tests/e2e/test_cli_contract.py checks each command against it.
"""
from __future__ import annotations

import argparse
import json
import sys
import time
from importlib import metadata
from typing import IO, Any

# One table for all commands.
EXIT_OK = 0            # done; healthy
EXIT_PROBLEM = 1       # refused by the signer, degraded, unhealthy, a check failed
EXIT_USAGE = 2         # usage, configuration, a local file, the wrong signer reached
EXIT_NO_ANSWER = 3     # not running, or no answer within the timeout

PACKAGE = "cacert-signer"


def package_version() -> str:
    try:
        return metadata.version(PACKAGE)
    except metadata.PackageNotFoundError:
        return "unknown"


def add_version_argument(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--version", action="version",
                        version=f"%(prog)s {package_version()} (python {sys.version.split()[0]})")


def fail(prog: str, exit_code: int, code: str, message: str, as_json: bool) -> int:
    """Report an error the way the caller asked: `{"error": {"code", "message"}}` on stdout
    under --json (a script reads one place), else `prog: message` on stderr."""
    if as_json:
        print(json.dumps({"error": {"code": code, "message": message}}))
    else:
        print(f"{prog}: {message}", file=sys.stderr)
    return exit_code


def wants_json(args: argparse.Namespace) -> bool:
    return bool(getattr(args, "json", False))


class Progress:
    """A one-line progress display on stderr, only when stderr is a terminal (a script or a
    log file gets no carriage returns). `update(done, total=None)` at any rate: the line is
    redrawn at most every `every_s`; `close()` ends the line."""

    def __init__(self, label: str, unit: str = "bytes", stream: IO[str] | None = None,
                 every_s: float = 0.5) -> None:
        self.stream = stream if stream is not None else sys.stderr
        self.enabled = bool(getattr(self.stream, "isatty", lambda: False)())
        self.label, self.unit, self.every_s = label, unit, every_s
        self.started = time.monotonic()
        self.last_drawn = self.started  # nothing for an operation shorter than every_s
        self.drawn = False

    def update(self, done: int, total: int | None = None) -> None:
        now = time.monotonic()
        if not self.enabled or now - self.last_drawn < self.every_s:
            return
        self.last_drawn = now
        self.stream.write("\r" + progress_text(self.label, done, total, now - self.started, self.unit)
                          + "\x1b[K")
        self.stream.flush()
        self.drawn = True

    def close(self) -> None:
        if self.drawn:
            self.stream.write("\n")
            self.stream.flush()
            self.drawn = False


def human_count(value: float, unit: str) -> str:
    if unit != "bytes":
        return f"{value:,.0f} {unit}"
    if value < 1000:
        return f"{value:.0f} B"
    for step in ("kB", "MB"):
        value /= 1000
        if value < 1000:
            return f"{value:.1f} {step}"
    return f"{value / 1000:.1f} GB"


def progress_text(label: str, done: int, total: int | None, elapsed_s: float, unit: str = "bytes") -> str:
    rate = done / elapsed_s if elapsed_s > 0 else 0.0
    text = f"{label}: {human_count(done, unit)}"
    if total:
        text += f" of {human_count(total, unit)} ({100 * done / total:.0f} %)"
    text += f", {human_count(rate, unit)}/s, {elapsed_s:.0f} s"
    if total and rate > 0 and done < total:
        text += f", about {(total - done) / rate:.0f} s left"
    return text


def shown(value: Any) -> str:
    """One value for a human: yes/no, rounded numbers, lists joined; never a repr."""
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return f"{value:.2f}" if abs(value) < 10 else f"{value:.1f}" if abs(value) < 1000 else f"{value:.0f}"
    if isinstance(value, (list, tuple)):
        return ", ".join(shown(v) for v in value) or "-"
    if isinstance(value, bytes):
        return value.hex()
    if isinstance(value, dict):
        return ", ".join(f"{k}={shown(v)}" for k, v in flattened("", value)) or "-"
    return "-" if value is None else str(value)


def flattened(prefix: str, value: Any) -> list[tuple[str, Any]]:
    if isinstance(value, dict):
        return [row for key, inner in value.items()
                for row in flattened(f"{prefix}.{key}" if prefix else str(key), inner)]
    return [(prefix, value)]


def table(headers: list[str], rows: list[list[Any]]) -> list[str]:
    """Rows as aligned text columns (numbers right-aligned), for human output."""
    cells = [[str(c) for c in headers]] + [["" if c is None else str(c) for c in row] for row in rows]
    widths = [max(len(row[i]) for row in cells) for i in range(len(headers))]
    numeric = [all(isinstance(row[i], (int, float)) or row[i] in (None, "")
                   for row in rows) and bool(rows) for i in range(len(headers))]
    return ["  ".join((cell.rjust(w) if numeric[i] else cell.ljust(w))
                      for i, (cell, w) in enumerate(zip(row, widths))).rstrip()
            for row in cells]
