"""The daemon's status: a JSON file in state_dir, replaced atomically after every round, read
by `signer-client status` (another process, so no socket or shared memory is needed).
"""
from __future__ import annotations

import json
import os
import time
from pathlib import Path
from typing import Any

from tools.webdb.work import now_text

STATUS_NAME = "status.json"


class StatusFile:
    def __init__(self, state_dir: Path) -> None:
        self.path = state_dir / STATUS_NAME
        self.data: dict[str, Any] = {"pid": os.getpid(), "running": True, "started_at": now_text(),
                                     "signer": {"reachable": False}, "health": None, "queue": {},
                                     "counters": {}, "last_error": None, "crl": {},
                                     "audit_heads": previous_audit_heads(state_dir),
                                     "audit_warning": None}

    def update(self, **sections: Any) -> None:
        self.data.update(sections)

    def error(self, message: str) -> None:
        self.data["last_error"] = {"at": now_text(), "message": message}

    def count(self, name: str) -> None:
        counters = self.data.setdefault("counters", {})
        counters[name] = counters.get(name, 0) + 1

    def write(self) -> None:
        self.data["updated_at"] = now_text()
        self.data["updated_unix"] = time.time()
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_name(f".{self.path.name}.tmp{os.getpid()}")
        tmp.write_text(json.dumps(self.data, indent=2, sort_keys=True))
        os.replace(tmp, self.path)


def read_status(state_dir: Path) -> dict[str, Any] | None:
    try:
        return json.loads((state_dir / STATUS_NAME).read_text())
    except (OSError, ValueError):
        return None


def previous_audit_heads(state_dir: Path) -> dict[str, Any]:
    """The audit heads the last run kept: a restart must not forget them (they are the
    evidence a cut log is checked against)."""
    heads = (read_status(state_dir) or {}).get("audit_heads")
    return heads if isinstance(heads, dict) else {}


def daemon_alive(status: dict[str, Any], stale_after_s: float) -> bool:
    """The daemon that wrote `status` still runs and still writes it: its pid exists (a pid of
    another user's process answers EPERM: it exists) and the file is younger than
    `stale_after_s` (a hung daemon, or a reused pid, is not alive)."""
    if not status.get("running"):
        return False
    try:
        os.kill(int(status["pid"]), 0)
    except PermissionError:
        pass
    except (OSError, KeyError, ValueError):
        return False
    return time.time() - float(status.get("updated_unix", 0)) <= stale_after_s


def status_lines(status: dict[str, Any], alive: bool) -> list[str]:
    signer, health = status.get("signer") or {}, status.get("health") or {}
    queue = status.get("queue") or {}
    lines = [f"daemon: {'running' if alive else 'NOT running'} (pid {status.get('pid')}, "
             f"started {status.get('started_at')}, updated {status.get('updated_at')})",
             f"signer: {'reachable' if signer.get('reachable') else 'AWAY'} since {signer.get('since')}"
             + (f" ({signer.get('reason')})" if not signer.get("reachable") and signer.get("reason") else "")]
    webdb = status.get("webdb") or {}
    if webdb.get("reachable") is False:
        lines.append(f"webdb: UNREACHABLE ({webdb.get('error')})")
    lines += [f"blocked: {kind}: {why}" for kind, why in sorted((status.get("blocked") or {}).items())]
    if health:
        lines.append(f"last health {health.get('at')}: {'healthy' if health.get('healthy') else 'UNHEALTHY'}"
                     f", version {health.get('version')}, node {health.get('node_id')}")
        if health.get("clock_skew_s") is not None:
            lines.append(f"  signer clock: {health['clock_skew_s']:+g} s against this host's")
        lines += [f"  problem: {p}" for p in health.get("problems") or []]
    else:
        lines.append("last health: none yet")
    lines.append(f"queue: {sum(queue.values())} rows waiting"
                 + "".join(f"\n  {name}: {count}" for name, count in sorted(queue.items()) if count))
    counters = status.get("counters") or {}
    lines.append("done since start: " + (", ".join(f"{k} {v}" for k, v in sorted(counters.items())) or "nothing"))
    for issuer, crl in sorted((status.get("crl") or {}).items()):
        lines.append(f"crl {issuer}: number {crl.get('number')} at {crl.get('at')} -> {crl.get('file')}")
    lines += [f"crl {issuer}: ERROR {line}" for issuer, line in sorted((status.get("crl_errors") or {}).items())]
    for node, head in sorted((status.get("audit_heads") or {}).items()):
        lines.append(f"audit head {node}: {head.get('seq')}:{head.get('hash')} (seen {head.get('at')})")
    if status.get("audit_warning"):
        lines.append(f"audit WARNING: {status['audit_warning']}")
    error = status.get("last_error")
    lines.append(f"last error: {error['at']} {error['message']}" if error else "last error: none")
    return lines


def health_age_s(status: dict[str, Any], now: float | None = None) -> float | None:
    """Seconds since the daemon's last health answer from the signer (None: none yet)."""
    at = (status.get("health") or {}).get("at")
    try:
        moment = time.mktime(time.strptime(str(at), "%Y-%m-%d %H:%M:%S")) - time.timezone
    except ValueError:
        return None
    return max(0.0, (time.time() if now is None else now) - moment)


def stale_signer_line(age_s: float | None, bound_s: float) -> str | None:
    """Why the signer's state cannot be trusted as green: its last answer is too old (a
    signer that stopped answering is only noticed at the next health poll or request)."""
    if age_s is None:
        return "signer: no health answer yet"
    if age_s > bound_s:
        return (f"signer: STALE: last health answer {age_s:.0f} s ago (more than {bound_s:g} s): "
                "the signer may not answer")
    return None
