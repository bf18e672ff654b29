"""`signer-client`: the command line over tools.client.library.SignerClient.

The WebDB daemon's commands (run, status, init-webdb) are in tools/webdb/cli.py.

Exit codes (core/runtime/cli_contract.py, one table for every command): 0 the command succeeded
(health: healthy); 1 the signer refused the request (its error code and message are
printed) or health is unhealthy; 2 usage or local error; 3 no answer from the signer within
the timeout. With --json, errors are {"error": {"code", "message"}} on stdout.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import re
import sys
from pathlib import Path
from typing import Any, Callable

import serial
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from core.runtime.cli_contract import (EXIT_NO_ANSWER, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, Progress,
                               add_version_argument, fail, flattened, shown, table, wants_json)
from core.wire.protocol import SignerError
from core.x509.certificate import csr_der
from tools.client.library import Response, SignerClient, SignerTimeout
from tools.client.files import write_atomically
from tools.webdb import cli as webdb_cli

PROG = "signer-client"
EXIT_REFUSED = EXIT_PROBLEM
# Quick commands answer in well under a second; when nothing answers, say so soon. The
# others may wait on the signer's own 30 s HSM and repository deadlines (their typed errors
# arrive first). fetch-crl counts its timeout from the last byte received instead.
QUICK_TIMEOUT_S = 10.0
LONG_TIMEOUT_S = 90.0
QUICK_COMMANDS = ("health", "ca-info")


def default_timeout(command: str) -> float:
    return QUICK_TIMEOUT_S if command in QUICK_COMMANDS else LONG_TIMEOUT_S


def to_json(value: Any) -> Any:
    """msgpack bytes (DER and the like) become base64 strings in JSON output."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def print_refusal(response: Response, args: argparse.Namespace | None = None) -> int:
    error = response.error or {}
    if args is not None and wants_json(args):
        print(json.dumps({"error": {"code": error.get("code"), "message": error.get("message")}}))
    else:
        print(f"error: {error.get('code')}: {error.get('message')}", file=sys.stderr)
    return EXIT_REFUSED


def whole_seconds(iso_time: Any) -> str:
    """An ISO 8601 time without its fraction of a second."""
    return re.sub(r"(T\d\d:\d\d:\d\d)\.\d+", r"\1", shown(iso_time))


HEALTH_SUMMARY = ("healthy", "problems", "version", "node_id", "time", "ca_certificates")


def health_lines(body: dict[str, Any]) -> list[str]:
    lines = [f"healthy: {'yes' if body.get('healthy') else 'NO'}   version {shown(body.get('version'))}"
             f"   node {shown(body.get('node_id'))}   signer time {whole_seconds(body.get('time'))}"]
    lines += [f"problem: {problem}" for problem in body.get("problems", [])]
    cas = body.get("ca_certificates", [])
    if cas:
        lines += [""] + table(["issuer", "expires", "days left", "ok", "subject"],
                              [[ca.get("id"), ca.get("not_after"), round(float(ca.get("days_to_expiry", 0))),
                                shown(ca.get("ok")), ca.get("subject")] for ca in cas])
    parts = [(part, item, shown(value)) for part, section in body.items() if part not in HEALTH_SUMMARY
             for item, value in (flattened("", section) if isinstance(section, dict)
                                 else [("", section)])]
    if parts:
        lines += [""] + table(["part", "item", "value"], [list(row) for row in parts])
    return lines


def cmd_health(client: SignerClient, args: argparse.Namespace) -> int:
    response = client.call("health")
    if not response.ok:
        return print_refusal(response, args)
    print_body(args, response.answer, health_lines(response.answer))
    return EXIT_OK if response.answer.get("healthy") else EXIT_REFUSED


def cmd_ca_info(client: SignerClient, args: argparse.Namespace) -> int:
    response = client.call("ca_info")
    if not response.ok:
        return print_refusal(response, args)
    body = response.answer
    if args.out_dir:
        out = Path(args.out_dir)
        out.mkdir(parents=True, exist_ok=True)
        for issuer in body.get("issuers", []):
            cert = x509.load_der_x509_certificate(issuer["certificate"])
            (out / f"{issuer['id']}.pem").write_bytes(cert.public_bytes(Encoding.PEM))
        if body.get("openpgp"):
            (out / "openpgp-ca.asc").write_text(body["openpgp"]["public_key"])
    print_body(args, body, [f"issuer {i['id']}: {i['subject']} (until {i['not_after']})"
                            for i in body.get("issuers", [])]
               + [f"openpgp CA key: {'present' if body.get('openpgp') else 'none'}"])
    return EXIT_OK


def print_body(args: argparse.Namespace, body: dict[str, Any], lines: list[str]) -> None:
    if args.json:
        print(json.dumps(to_json(body), indent=2))
    else:
        print("\n".join(lines))


def cmd_sign_x509(client: SignerClient, args: argparse.Namespace) -> int:
    # Only the PEM wrapping is removed here: the signer judges the CSR and answers a typed
    # error (malformed_csr, hash_not_allowed, ...) for one it refuses.
    try:
        csr = csr_der(Path(args.csr).read_bytes())
    except SignerError as exc:
        return fail(PROG, EXIT_USAGE, exc.code, f"{args.csr}: {exc.message}", wants_json(args))
    body: dict[str, Any] = {"issuer": args.issuer, "profile": args.profile, "csr": csr, "hash": args.hash,
                            "subject": [pair.split("=", 1) for pair in args.subject],
                            "sans": [san.split(":", 1) for san in args.san]}
    if args.days is not None:
        body["days"] = args.days
    response = client.call("sign_x509", body, request_id=args.request_id)
    if not response.ok:
        return print_refusal(response, args)
    result = response.answer
    cert = x509.load_der_x509_certificate(result["certificate"])
    out = Path(args.out)
    write_atomically(out, cert.public_bytes(Encoding.DER if out.suffix in (".der", ".cer", ".crt")
                                            else Encoding.PEM))
    print_body(args, result, [f"serial {result['serial']} valid {result['not_before']} .. "
                              f"{result['not_after']} -> {out}"])
    return EXIT_OK


def cmd_revoke_x509(client: SignerClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"issuer": args.issuer, "serial": args.serial}
    if args.reason is not None:
        body["reason"] = int(args.reason) if args.reason.isdigit() else args.reason
    if args.time is not None:
        body["time"] = args.time
    response = client.call("revoke_x509", body, request_id=args.request_id)
    if not response.ok:
        return print_refusal(response, args)
    result = response.answer
    print_body(args, result, [f"revoked {result['serial']} at {result['revoked_at']} reason "
                              f"{result['reason']}{' (already revoked)' if result['already_revoked'] else ''}"])
    return EXIT_OK


def cmd_fetch_crl(client: SignerClient, args: argparse.Namespace) -> int:
    from tools.client.crl_fetch import fetch_crl_into
    # A full CRL at 115200 baud takes minutes: the timeout counts silence, not the whole
    # answer, and a terminal shows the bytes as they come.
    client.timeout_is_silence = True
    progress = Progress(f"fetch-crl {args.issuer}")
    client.progress = progress.update
    try:
        ca_cert = x509.load_pem_x509_certificate(Path(args.ca_cert).read_bytes()) if args.ca_cert else None
        outcome = fetch_crl_into(client, args.issuer, Path(args.out), ca_cert)
    except ValueError as exc:
        return fail(PROG, EXIT_REFUSED, "crl_unusable", str(exc), wants_json(args))
    finally:
        progress.close()
        client.progress = None
    if outcome.error is not None:
        return print_refusal(outcome.error, args)
    print_body(args, outcome.summary, [f"CRL {args.issuer} number {outcome.summary['number']}: "
                                       f"{outcome.summary['status']}, {outcome.summary['bytes_moved']} "
                                       f"bytes moved -> {args.out}"])
    return EXIT_OK


def cmd_sign_openpgp(client: SignerClient, args: argparse.Namespace) -> int:
    body: dict[str, Any] = {"key": Path(args.key).read_bytes(), "uids": args.uid}
    if args.digest is not None:
        body["digest"] = args.digest
    if args.days is not None:
        body["days"] = args.days
    response = client.call("sign_openpgp", body, request_id=args.request_id)
    if not response.ok:
        return print_refusal(response, args)
    result = response.answer
    write_atomically(Path(args.out), result["key"].encode())
    print_body(args, result, [f"certified {', '.join(result['certified_uids'])} on {result['fingerprint']} "
                              f"until {result['expires_at']} -> {args.out}"])
    return EXIT_OK


COMMANDS: dict[str, Callable[[SignerClient, argparse.Namespace], int]] = {
    "sign-openpgp": cmd_sign_openpgp,
    "health": cmd_health,
    "ca-info": cmd_ca_info,
    "sign-x509": cmd_sign_x509,
    "revoke-x509": cmd_revoke_x509,
    "fetch-crl": cmd_fetch_crl,
}


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="signer-client", description="Talk to the signer")
    add_version_argument(parser)
    parser.add_argument("--port", default=os.environ.get("SIGNER_PORT"),
                        help="serial port or pty of the signer (default: $SIGNER_PORT)")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--timeout", type=float, default=None,
                        help=f"seconds to wait for an answer (default: {QUICK_TIMEOUT_S:g} for "
                             f"{' and '.join(QUICK_COMMANDS)}, {LONG_TIMEOUT_S:g} for the others: "
                             "above the signer's own 30 s HSM and repository deadlines, so their "
                             "typed errors arrive first; fetch-crl: seconds of silence)")
    parser.add_argument("--json", action="store_true", help="print the answer body as JSON")
    # --json is accepted before or after the command name.
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--json", action="store_true", default=argparse.SUPPRESS,
                        help="print the answer body as JSON")
    sub = parser.add_subparsers(dest="command", required=True)
    sub.add_parser("health", parents=[common], help="the signer's health; exit 0 only when healthy")
    p_info = sub.add_parser("ca-info", parents=[common], help="issuer certificates and the OpenPGP CA key")
    p_info.add_argument("--out-dir", help="write <issuer>.pem and openpgp-ca.asc here")
    p_sign = sub.add_parser("sign-x509", parents=[common], help="sign a CSR with a profile")
    p_sign.add_argument("--issuer", required=True)
    p_sign.add_argument("--profile", required=True)
    p_sign.add_argument("--csr", required=True, help="CSR file, PEM or DER")
    p_sign.add_argument("--subject", action="append", default=[], metavar="ATTR=VALUE",
                        help="verified subject attribute, e.g. CN=www.example.org (repeatable)")
    p_sign.add_argument("--san", action="append", default=[], metavar="TYPE:VALUE",
                        help="verified SAN: dns:NAME, email:ADDR or xmpp:JID (repeatable)")
    p_sign.add_argument("--days", type=int)
    p_sign.add_argument("--hash", default="sha256", choices=["sha256", "sha384", "sha512"])
    p_sign.add_argument("--request-id", help="idempotency key: a retry returns the same certificate")
    p_sign.add_argument("--out", required=True, help="certificate file (.der/.cer/.crt: DER, else PEM)")
    p_revoke = sub.add_parser("revoke-x509", parents=[common], help="revoke a certificate")
    p_revoke.add_argument("--issuer", required=True)
    p_revoke.add_argument("--serial", required=True, help="serial in hex")
    p_revoke.add_argument("--reason", help="RFC 5280 reason name (keyCompromise, ...) or code")
    p_revoke.add_argument("--time", help="revocation time, ISO 8601 with zone (default: now)")
    p_revoke.add_argument("--request-id")
    p_crl = sub.add_parser("fetch-crl", parents=[common],
                           help="fetch an issuer's CRL into FILE (a diff when FILE holds an older one)")
    p_crl.add_argument("--issuer", required=True)
    p_crl.add_argument("--out", required=True, help="CRL file (.pem: PEM, else DER)")
    p_crl.add_argument("--ca-cert", help="the issuer's certificate (PEM) to verify the CRL with; "
                                         "default: ask the signer (ca_info)")
    p_pgp = sub.add_parser("sign-openpgp", parents=[common], help="certify user ids of an OpenPGP key")
    p_pgp.add_argument("--key", required=True, help="the user's public key, binary or armoured")
    p_pgp.add_argument("--uid", action="append", required=True,
                       help='a verified user id, e.g. "Alice <alice@example.org>" (repeatable)')
    p_pgp.add_argument("--days", type=int, help="certification validity (default: the signer's, 366)")
    p_pgp.add_argument("--digest", default=None, choices=["sha256", "sha384", "sha512"])
    p_pgp.add_argument("--request-id")
    p_pgp.add_argument("--out", required=True, help="the certified key, armoured")
    webdb_cli.add_commands(sub, common)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    if args.command in ("run", "status", "init-webdb"):
        return webdb_cli.run_command(args)
    as_json = wants_json(args)
    if not args.port:
        return fail(PROG, EXIT_USAGE, "usage", "--port is required (or set SIGNER_PORT)", as_json)
    timeout = args.timeout if args.timeout is not None else default_timeout(args.command)
    try:
        with SignerClient(args.port, args.baud, timeout) as client:
            return COMMANDS[args.command](client, args)
    except SignerTimeout as exc:
        return fail(PROG, EXIT_NO_ANSWER, "no_answer", no_answer_message(exc, args, timeout), as_json)
    except serial.SerialException as exc:
        return fail(PROG, EXIT_USAGE, "cannot_open_port", f"cannot open {args.port}: {exc}", as_json)
    except (OSError, ValueError) as exc:  # an unreadable or unparsable local file
        return fail(PROG, EXIT_USAGE, "local_file", str(exc), as_json)


def no_answer_message(exc: SignerTimeout, args: argparse.Namespace, timeout: float) -> str:
    """What went wrong, the timeout that ran out, and what to check."""
    if exc.noise or exc.stopped:
        return str(exc)
    silence = " of silence" if args.command == "fetch-crl" else ""
    return (f"no answer from the signer on {args.port} within {timeout:g} s{silence} (--timeout). "
            f"Is a signer behind this port (dev: `signer run` running, and this is its client-pty "
            f"or client-link)? Is it the right port, at --baud {args.baud}? Is another client "
            f"(the WebDB daemon) using it? A signer busy with a long job: raise --timeout")


if __name__ == "__main__":
    sys.exit(main())
