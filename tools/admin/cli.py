"""`signer-admin --config FILE COMMAND [--json]`: operator commands beside the signer.

status        live status of every actor of a running signer. It joins the signer's actor
              system through the admin port (loopback only) and asks the Supervisor; it
              never calls shutdown(), which would stop the signer. It checks that the signer
              it reached is the one its config names (node id, repository): exit 2 if not.
              Exit 0: every actor answered; 1: some did not; 3: no signer runs there, or
              its Supervisor does not answer.
verify-audit  checks the hash chain of the repository's audit log (core/repository/audit.py), every
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
import-openssl-ca
              the history of the CA taken over, from its `openssl ca` folder (index.txt,
              newcerts/, serial, crlnumber) and its last CRL (--crl), into the repository
              as issuer --issuer (docs/MIGRATION.md). Runs with the signer STOPPED: it
              refuses while anything listens on the admin port or a signer holds the data
              folder's instance lock, and holds that lock itself meanwhile (a signer
              start is refused until it ends). A re-run imports nothing twice. Exit 0: all
              imported; 1: imported, but some lines or certificates were refused (listed;
              e.g. not signed by the issuer's key).
backup        an online, consistent copy of the repository (SQLite's backup API) into a
              new file, mode 0600, verified before it gets its name (integrity_check, the
              audit chain and seals); prints the backup's audit head. Exit 0: written and
              verified; 1: the copy did not verify (nothing written).

Exit 2: usage, the configuration or a file cannot be read, the wrong signer reached.
With --json every error is {"error": {"code", "message"}} on stdout. One exit-code table
for every command: docs/operations.md, "The command-line contract"."""
from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
from pathlib import Path
from typing import Any

from core.runtime.cli_contract import (EXIT_NO_ANSWER, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE,
                               add_version_argument, fail, flattened, shown, wants_json)
from core.runtime.config import ConfigError, SignerConfig, load_config

PROG = "signer-admin"

STATUS_TIMEOUT_S = 10


class SupervisorSilent(Exception):
    """The admin port is taken (an actor system runs) but the Supervisor does not answer:
    it died or hangs. `signer run` stops the signer within seconds after its death."""


class WrongSigner(Exception):
    """The admin port leads to another signer than the config names (or to none of ours)."""


def check_instance(config: SignerConfig) -> None:
    """Before joining: the instance lock of the config's data folder says which signer runs
    on this repository. Raises WrongSigner when that is not the one on the config's admin
    port. An unreadable lock file (another user) proves nothing: the reply is checked too."""
    from core.runtime.instance_lock import running_holder
    from system import data_folder, port_in_use

    port, folder = config.actor_system.admin_port, data_folder(config)
    try:
        holder = running_holder(folder)
    except OSError:
        return
    if holder is not None and holder.get("admin_port") not in (None, port):
        raise WrongSigner(f"the signer on {folder} (pid {holder.get('pid')}, node "
                          f"{holder.get('node_id')}) uses admin port {holder.get('admin_port')}, "
                          f"not {port} as {config.source} says")
    if holder is None and port_in_use(port):
        raise WrongSigner(f"admin port {port} is in use, but no signer runs on {folder}: it is "
                          "another signer's port, or another program's (check actor_system.admin_port)")


def check_identity(config: SignerConfig, records: list[dict[str, Any]]) -> None:
    """The Supervisor's record names the node and repository of the signer reached."""
    supervisor = next((r for r in records if r.get("name") == "supervisor"), {})
    node, repository = supervisor.get("node_id"), supervisor.get("repository")
    same_repository = (repository is not None
                       and os.path.realpath(repository) == os.path.realpath(config.repository.path))
    if node != config.node_id or not same_repository:
        raise WrongSigner(f"admin port {config.actor_system.admin_port} leads to signer node {node} "
                          f"with repository {repository}, but {config.source} names node "
                          f"{config.node_id} with repository {config.repository.path}: "
                          "two signers share this admin port number (check actor_system.admin_port)")


def fetch_status(config: SignerConfig) -> list[dict[str, Any]] | None:
    """Records of every actor, or None when nothing listens on the admin port.
    Raises SupervisorSilent when something does but the Supervisor does not answer, and
    WrongSigner when the signer that answers is not the one the config names."""
    from thespian.actors import ActorSystem

    from actors.supervisor import SUPERVISOR_NAME, Supervisor
    from core.runtime.actor_transport_auth import key_file_path, read_key_file
    from messages import SystemStatusReply, SystemStatusRequest
    from system import SYSTEM_BASE, data_folder, port_in_use, prepare_thespian

    admin_port = config.actor_system.admin_port
    check_instance(config)
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
                               "(dead or hung; `signer run` stops a signer whose Supervisor died), "
                               "or the signer on this port uses another actor-transport key")
    check_identity(config, reply.records)
    return reply.records


FIGURE_SKIP = {"name", "pid", "alive", "restarts", "messages", "errors", "last_error",
               "node_id", "repository"}


def print_table(records: list[dict[str, Any]]) -> None:
    supervisor = next((r for r in records if r.get("name") == "supervisor"), {})
    print(f"signer node {supervisor.get('node_id')}, repository {supervisor.get('repository')}")
    print(f"{'actor':<15} {'alive':<6} {'restarts':>8} {'pid':>7} {'messages':>9} {'errors':>7}  last error")
    for r in records:
        print(f"{r['name']:<15} {'yes' if r.get('alive') else 'NO':<6} {r.get('restarts', 0):>8} "
              f"{r.get('pid', '-')!s:>7} {r.get('messages', '-')!s:>9} {r.get('errors', '-')!s:>7}  "
              f"{r.get('last_error') or ''}")
    for r in records:
        figures = {k: v for k, v in r.items() if k not in FIGURE_SKIP}
        if figures:
            print(f"  {r['name']}: " + ", ".join(f"{k}={shown(v)}" for k, v in flattened("", figures)))


def cmd_status(config: SignerConfig, args: argparse.Namespace) -> int:
    from core.runtime.actor_transport_auth import TransportKeyError

    port = config.actor_system.admin_port
    try:
        records = fetch_status(config)
    except TransportKeyError as exc:
        return fail(PROG, EXIT_USAGE, "no_transport_key", f"cannot reach the signer on admin port "
                    f"{port}: no actor transport key: {exc}", wants_json(args))
    except WrongSigner as exc:
        return fail(PROG, EXIT_USAGE, "wrong_signer", str(exc), wants_json(args))
    except SupervisorSilent as exc:
        return fail(PROG, EXIT_NO_ANSWER, "no_answer", str(exc), wants_json(args))
    if records is None:
        return fail(PROG, EXIT_NO_ANSWER, "not_running",
                    f"no signer is running on admin port {port}", wants_json(args))
    if args.json:
        print(json.dumps(records, indent=2, default=str))
    else:
        print_table(records)
    return EXIT_OK if all(r.get("alive") for r in records) else EXIT_PROBLEM


def audit_public_key(config: SignerConfig, args: argparse.Namespace) -> Any:
    """The audit public key (--public-key, else audit.public_key); ValueError says why not."""
    from core.repository import audit

    key_path = args.public_key or config.audit.public_key
    if not key_path:
        raise ValueError("no audit public key to check the seals with: set audit.public_key"
                         " in the configuration or pass --public-key FILE")
    try:
        with open(key_path, "rb") as handle:
            return audit.load_seal_public_key(handle.read())
    except OSError as exc:
        raise ValueError(f"cannot read the audit public key {key_path}: {exc.strerror}") from None


def cmd_verify_audit(config: SignerConfig, args: argparse.Namespace) -> int:
    from core.repository import audit
    from core.repository.store import RepositoryError, verify_sealed_audit_file

    try:
        head = None if args.head is None else audit.parse_head(args.head)
        public_key = audit_public_key(config, args)
    except ValueError as exc:
        return fail(PROG, EXIT_USAGE, "usage", str(exc), wants_json(args))
    try:
        report = verify_sealed_audit_file(config.repository.path, public_key, head)
    except RepositoryError as exc:
        return fail(PROG, EXIT_USAGE, "repository_unreadable", exc.message, wants_json(args))
    if args.json:
        fields = dataclasses.asdict(report)
        chain = fields.pop("chain")
        print(json.dumps(chain | {"chain_ok": chain["ok"]} | fields | {"ok": report.ok},
                         indent=2))
    else:
        print("\n".join(audit_report_lines(report)))
    return EXIT_OK if report.ok else EXIT_PROBLEM


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
    from core.repository.store import RepositoryError
    from core.repository.peer_apply import read_quarantine_file

    try:
        rows = read_quarantine_file(config.repository.path)
    except RepositoryError as exc:
        return fail(PROG, EXIT_USAGE, "repository_unreadable", exc.message, wants_json(args))
    if args.json:
        print(json.dumps(rows, indent=2, default=lambda v: v.hex() if isinstance(v, bytes) else str(v)))
    else:
        print(f"{len(rows)} quarantined peer event(s)")
        for row in rows:
            print(f"{row['id']:>5} {row['quarantined_at']:%Y-%m-%dT%H:%M:%SZ} {row['origin_node']}"
                  f" {row['type']} {row['event_id']}: {row['reason']}")
    return EXIT_PROBLEM if rows else EXIT_OK


def cmd_backup(config: SignerConfig, args: argparse.Namespace) -> int:
    from core.repository.backup import BackupError, backup_repository

    try:
        public_key = audit_public_key(config, args)
        report = backup_repository(config.repository.path, Path(args.to), public_key)
    except ValueError as exc:
        return fail(PROG, EXIT_USAGE, "usage", str(exc), wants_json(args))
    except BackupError as exc:
        return fail(PROG, EXIT_USAGE, "backup_failed", str(exc), wants_json(args))
    if not report.ok:
        problems = ([report.integrity] if report.integrity != "ok" else
                    audit_report_lines(report.audit) if report.audit else [])
        return fail(PROG, EXIT_PROBLEM, "backup_not_verified",
                    f"the copy of {config.repository.path} did not verify, {args.to} was not written: "
                    + "; ".join(problems), wants_json(args))
    assert report.audit is not None  # a verified copy (report.ok) has its audit report
    if args.json:
        print(json.dumps({"backup": report.path, "bytes": report.size_bytes, "integrity": report.integrity,
                          "audit_entries": report.audit.chain.entries_checked,
                          "seals_checked": report.audit.seals_checked,
                          "unsealed_entries": report.audit.unsealed_entries,
                          "audit_head": report.audit_head}, indent=2))
    else:
        print(f"backup {report.path}: {report.size_bytes} bytes, mode 0600, integrity_check ok")
        print("\n".join(audit_report_lines(report.audit)))
        print(f"audit head: {report.audit_head}")
    return EXIT_OK


def cmd_import_openssl_ca(config: SignerConfig, args: argparse.Namespace) -> int:
    from core.runtime.instance_lock import InstanceLock, InstanceLocked
    from core.x509.issuers import load_issuers
    from system import data_folder, port_in_use

    as_json = wants_json(args)
    admin_port = config.actor_system.admin_port
    if port_in_use(admin_port):
        # One writer at a time, and a running signer would build CRLs from half an import.
        return fail(PROG, EXIT_USAGE, "signer_running",
                    f"a signer is running (admin port {admin_port} is in use): stop it first;"
                    " import-openssl-ca runs with the signer stopped", as_json)
    try:
        issuers = load_issuers(config)
    except ValueError as exc:
        return fail(PROG, EXIT_USAGE, "config_error", str(exc), as_json)
    if args.issuer not in issuers:
        return fail(PROG, EXIT_USAGE, "unknown_issuer", f"no issuer {args.issuer!r} in the"
                    f" configuration (known: {', '.join(sorted(issuers))})", as_json)
    # The signer's own instance lock, held for the whole import: a signer on this
    # repository (whatever its admin port) refuses to start meanwhile, and one running
    # already makes the import refuse.
    try:
        lock = InstanceLock.acquire(data_folder(config), {
            "pid": os.getpid(), "node_id": config.node_id, "admin_port": None,
            "command": "signer-admin import-openssl-ca"})
    except InstanceLocked as exc:
        return fail(PROG, EXIT_USAGE, "signer_running", f"{exc}; import-openssl-ca runs with"
                    " the signer stopped", as_json)
    except OSError as exc:
        return fail(PROG, EXIT_USAGE, "config_error", f"cannot lock the data folder"
                    f" {data_folder(config)}: {exc.strerror}", as_json)
    try:
        return _import_openssl_ca_locked(config, args, issuers[args.issuer].certificate, as_json)
    finally:
        lock.release()


def _import_openssl_ca_locked(config: SignerConfig, args: argparse.Namespace, issuer_cert: Any,
                              as_json: bool) -> int:
    from core.repository.openssl_ca_import import ImportRefused, import_openssl_ca
    from core.repository.store import Repository, RepositoryError

    try:
        repository = Repository(config.repository.path, config.node_id)
    except RepositoryError as exc:
        return fail(PROG, EXIT_USAGE, exc.code, exc.message, as_json)
    from core.runtime.cli_contract import Progress

    progress = Progress(f"import-openssl-ca {args.issuer}", unit="index lines")  # a terminal only
    try:
        summary = import_openssl_ca(repository, args.issuer, issuer_cert, Path(args.ca_dir),
                                    None if args.crl is None else Path(args.crl),
                                    progress=progress.update)
    except ImportRefused as exc:
        return fail(PROG, EXIT_USAGE, "import_refused", f"{exc} (nothing was imported)", as_json)
    except RepositoryError as exc:
        return fail(PROG, EXIT_USAGE, exc.code, f"{exc.message} (the batches before it are"
                    " stored; run the import again)", as_json)
    finally:
        progress.close()
        repository.close()
    fields = summary.as_dict()
    if as_json:
        print(json.dumps(fields, indent=2))
    else:
        for name, value in fields.items():
            if name not in ("refused", "refusal_examples"):
                print(f"{name}: {value}")
        for kind, count in sorted(summary.refused.items()):
            print(f"refused {kind}: {count}")
        for line in summary.refusal_examples:
            print(f"  {line}")
    return EXIT_PROBLEM if summary.refused else EXIT_OK


COMMANDS = {"status": cmd_status, "verify-audit": cmd_verify_audit, "quarantine": cmd_quarantine,
            "backup": cmd_backup, "import-openssl-ca": cmd_import_openssl_ca}


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signer-admin", description=__doc__.split("\n")[0],
                                     formatter_class=argparse.RawDescriptionHelpFormatter,
                                     epilog=__doc__.split("\n", 2)[2])
    add_version_argument(parser)
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
    p_import = sub.add_parser(
        "import-openssl-ca", help="import the old CA's history (run with the signer STOPPED)",
        description="Import an `openssl ca` folder and its last CRL as one issuer's history."
                    " Run it with the signer stopped: it refuses while the admin port is in use"
                    " or a signer holds the data folder's lock.")
    p_import.add_argument("--issuer", required=True, help="the issuer id (issuers.<id>)")
    p_import.add_argument("--ca-dir", required=True, metavar="DIR",
                          help="the openssl ca folder: index.txt, newcerts/, serial, crlnumber")
    p_import.add_argument("--crl", metavar="FILE", help="the last published CRL (DER or PEM)")
    p_import.add_argument("--json", action="store_true")
    p_backup = sub.add_parser("backup", help="an online, verified copy of the repository")
    p_backup.add_argument("--to", required=True, metavar="FILE",
                          help="the backup file to create (never overwritten)")
    p_backup.add_argument("--public-key", metavar="FILE",
                          help="the audit public key (PEM); default: audit.public_key")
    p_backup.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        return fail(PROG, EXIT_USAGE, "config_error", str(exc), wants_json(args))
    return COMMANDS[args.command](config, args)


if __name__ == "__main__":
    sys.exit(main())
