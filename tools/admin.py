"""`signer-admin --config FILE COMMAND [--json]`: operator commands beside the signer.

status        live status of every actor of a running signer. It joins the signer's actor
              system through the admin port (loopback only) and asks the Supervisor; it
              never calls shutdown(), which would stop the signer.
verify-audit  checks the hash chain of the repository's audit log (core/audit.py). It
              opens the repository file read-only, so it needs no actor system and runs
              whether or not the signer does. Exit 0: intact; 1: broken at the entry named.

Exit 2: the configuration or the repository file cannot be read."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from core.config import ConfigError, SignerConfig, load_config

STATUS_TIMEOUT_S = 10


def fetch_status(admin_port: int) -> list[dict[str, Any]] | None:
    """Records of every actor, or None when no signer answers on the admin port."""
    from thespian.actors import ActorSystem

    from actors.supervisor import SUPERVISOR_NAME, Supervisor
    from core.loopback import restrict_thespian_to_loopback
    from messages import SystemStatusReply, SystemStatusRequest
    from system import port_in_use

    if not port_in_use(admin_port):
        return None
    restrict_thespian_to_loopback()
    asys = ActorSystem("multiprocTCPBase", {"Admin Port": admin_port})
    supervisor = asys.createActor(Supervisor, globalName=SUPERVISOR_NAME)
    with asys.private() as private:
        reply = private.ask(supervisor, SystemStatusRequest(), STATUS_TIMEOUT_S)
    return reply.records if isinstance(reply, SystemStatusReply) else None


FIGURE_SKIP = {"name", "pid", "alive", "restarts", "messages", "errors", "last_error"}


def print_table(records: list[dict[str, Any]]) -> None:
    print(f"{'actor':<15} {'alive':<6} {'restarts':>8} {'pid':>7} {'messages':>9} {'errors':>7}  last error")
    for r in records:
        print(f"{r['name']:<15} {'yes' if r.get('alive') else 'NO':<6} {r.get('restarts', 0):>8} "
              f"{r.get('pid', '-')!s:>7} {r.get('messages', '-')!s:>9} {r.get('errors', '-')!s:>7}  "
              f"{r.get('last_error') or ''}")
    for r in records:
        figures = {k: v for k, v in r.items() if k not in FIGURE_SKIP}
        if figures:
            print(f"  {r['name']}: " + ", ".join(f"{k}={v}" for k, v in figures.items()))


def cmd_status(config: SignerConfig, args: argparse.Namespace) -> int:
    records = fetch_status(config.actor_system.admin_port)
    if records is None:
        print(f"signer-admin: no signer is running on admin port {config.actor_system.admin_port}",
              file=sys.stderr)
        return 1
    if args.json:
        print(json.dumps(records, indent=2, default=str))
    else:
        print_table(records)
    return 0 if all(r.get("alive") for r in records) else 1


def cmd_verify_audit(config: SignerConfig, args: argparse.Namespace) -> int:
    from core.repository import RepositoryError, verify_audit_file

    try:
        report = verify_audit_file(config.repository.path)
    except RepositoryError as exc:
        print(f"signer-admin: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(dataclasses.asdict(report), indent=2))
    elif report.ok:
        print(f"audit log OK: {report.entries_checked} entries")
        print(f"last hash: {report.last_hash}")
    else:
        print(f"audit log BROKEN at entry {report.first_bad_seq}: {report.problem}")
        print(f"entries before it verified: {report.entries_checked}")
    return 0 if report.ok else 1


COMMANDS = {"status": cmd_status, "verify-audit": cmd_verify_audit}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signer-admin", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--config", required=True, help="the signer's YAML configuration")
    sub = parser.add_subparsers(dest="command", required=True)
    p_status = sub.add_parser("status", help="one row per actor")
    p_status.add_argument("--json", action="store_true")
    p_audit = sub.add_parser("verify-audit", help="check the audit log's hash chain")
    p_audit.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"signer-admin: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[args.command](config, args)


if __name__ == "__main__":
    sys.exit(main())
