"""`signer-admin --config FILE COMMAND [--json]`: operator commands beside the signer.

status        live status of every actor of a running signer. It joins the signer's actor
              system through the admin port (loopback only) and asks the Supervisor; it
              never calls shutdown(), which would stop the signer.
verify-audit  checks the hash chain of the repository's audit log (core/audit.py), every
              seal's signature with the audit public key (audit.public_key or
              --public-key), and with --head SEQ:HASH that this head (e.g. the one
              `signer-client status` kept) is still in the log. It opens the repository
              file read-only, so it needs no actor system and runs whether or not the
              signer does. Entries after the last seal are shown as unsealed. Exit 0:
              intact; 1: broken chain, a bad seal, or the head not in the log (cut or
              rewritten).
quarantine    the peer events this signer refused (bad signature, a certificate our CA did
              not sign, ...) and parked instead of applying (docs/sync.md). Read-only,
              like verify-audit. Exit 0: none; 1: some are parked.

Exit 2: the configuration or the repository file cannot be read."""
from __future__ import annotations

import argparse
import dataclasses
import json
import sys
from typing import Any

from core.config import ConfigError, SignerConfig, load_config

STATUS_TIMEOUT_S = 10


class SupervisorSilent(Exception):
    """The admin port is taken (an actor system runs) but the Supervisor does not answer:
    it died or hangs. `signer run` stops the signer within seconds after its death."""


def fetch_status(config: SignerConfig) -> list[dict[str, Any]] | None:
    """Records of every actor, or None when nothing listens on the admin port.
    Raises SupervisorSilent when something does but the Supervisor does not answer."""
    from thespian.actors import ActorSystem

    from actors.supervisor import SUPERVISOR_NAME, Supervisor
    from core.actor_transport_auth import key_file_path, read_key_file
    from messages import SystemStatusReply, SystemStatusRequest
    from system import SYSTEM_BASE, data_folder, port_in_use, prepare_thespian

    admin_port = config.actor_system.admin_port
    if not port_in_use(admin_port):
        return None
    # Every frame to the signer needs this run's key (TransportKeyError when unreadable).
    prepare_thespian(config, read_key_file(key_file_path(data_folder(config))))
    asys = ActorSystem(SYSTEM_BASE, {"Admin Port": admin_port})
    supervisor = asys.createActor(Supervisor, globalName=SUPERVISOR_NAME)
    with asys.private() as private:
        reply = private.ask(supervisor, SystemStatusRequest(), STATUS_TIMEOUT_S)
    if not isinstance(reply, SystemStatusReply):
        raise SupervisorSilent(f"the signer's Supervisor did not answer within {STATUS_TIMEOUT_S} s "
                               "(dead or hung); `signer run` stops a signer whose Supervisor died")
    return reply.records


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
    from core.actor_transport_auth import TransportKeyError

    try:
        records = fetch_status(config)
    except TransportKeyError as exc:
        print(f"signer-admin: cannot reach the signer on admin port {config.actor_system.admin_port}: "
              f"no actor transport key: {exc}", file=sys.stderr)
        return 1
    except SupervisorSilent as exc:
        print(f"signer-admin: {exc}", file=sys.stderr)
        return 1
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
    from core import audit
    from core.repository import RepositoryError, verify_sealed_audit_file

    key_path = args.public_key or config.audit.public_key
    if not key_path:
        print("signer-admin: no audit public key to check the seals with: set audit.public_key"
              " in the configuration or pass --public-key FILE", file=sys.stderr)
        return 2
    try:
        head = None if args.head is None else audit.parse_head(args.head)
        with open(key_path, "rb") as handle:
            public_key = audit.load_seal_public_key(handle.read())
    except OSError as exc:
        print(f"signer-admin: cannot read the audit public key {key_path}: {exc.strerror}",
              file=sys.stderr)
        return 2
    except ValueError as exc:
        print(f"signer-admin: {exc}", file=sys.stderr)
        return 2
    try:
        report = verify_sealed_audit_file(config.repository.path, public_key, head)
    except RepositoryError as exc:
        print(f"signer-admin: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        fields = dataclasses.asdict(report)
        chain = fields.pop("chain")
        print(json.dumps(chain | {"chain_ok": chain["ok"]} | fields | {"ok": report.ok},
                         indent=2))
    else:
        print("\n".join(audit_report_lines(report)))
    return 0 if report.ok else 1


def audit_report_lines(report: Any) -> list[str]:
    chain = report.chain
    if chain.ok:
        lines = [f"audit log OK: {chain.entries_checked} entries", f"last hash: {chain.last_hash}"]
    else:
        lines = [f"audit log BROKEN at entry {chain.first_bad_seq}: {chain.problem}",
                 f"entries before it verified: {chain.entries_checked}"]
    lines.append(f"seals: {report.seals_checked} verified, last sealed entry"
                 f" {report.last_sealed_seq or 'none'}")
    if report.unsealed_entries:
        lines.append(f"unsealed: {report.unsealed_entries} entries after entry"
                     f" {report.last_sealed_seq} (not sealed yet, or the token lacks the audit key)")
    lines += [f"seal BAD: {problem}" for problem in report.seal_problems]
    if report.head is not None:
        lines.append(f"head {report.head}: " + (f"NOT in the log: {report.head_problem}"
                                                if report.head_problem else "in the log"))
    return lines


def cmd_quarantine(config: SignerConfig, args: argparse.Namespace) -> int:
    from core.repository import RepositoryError
    from core.repository_sync import read_quarantine_file

    try:
        rows = read_quarantine_file(config.repository.path)
    except RepositoryError as exc:
        print(f"signer-admin: {exc.message}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps(rows, indent=2, default=lambda v: v.hex() if isinstance(v, bytes) else str(v)))
    else:
        print(f"{len(rows)} quarantined peer event(s)")
        for row in rows:
            print(f"{row['id']:>5} {row['quarantined_at']:%Y-%m-%dT%H:%M:%SZ} {row['origin_node']}"
                  f" {row['type']} {row['event_id']}: {row['reason']}")
    return 1 if rows else 0


COMMANDS = {"status": cmd_status, "verify-audit": cmd_verify_audit, "quarantine": cmd_quarantine}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signer-admin", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    parser.add_argument("--config", required=True, help="the signer's YAML configuration")
    sub = parser.add_subparsers(dest="command", required=True)
    p_status = sub.add_parser("status", help="one row per actor")
    p_status.add_argument("--json", action="store_true")
    p_audit = sub.add_parser("verify-audit", help="check the audit log's hash chain and seals")
    p_audit.add_argument("--json", action="store_true")
    p_audit.add_argument("--head", metavar="SEQ:HASH",
                         help="a head seen earlier (signer-client status): fail if it is gone")
    p_audit.add_argument("--public-key", metavar="FILE",
                         help="the audit public key (PEM); default: audit.public_key")
    p_quarantine = sub.add_parser("quarantine", help="list the peer events refused and parked")
    p_quarantine.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"signer-admin: {exc}", file=sys.stderr)
        return 2
    return COMMANDS[args.command](config, args)


if __name__ == "__main__":
    sys.exit(main())
