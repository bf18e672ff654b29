"""`signer-client`: the command line over tools.client.SignerClient.

The WebDB daemon's commands (run, status, init-webdb) are in tools/webdb/cli.py.

Exit codes: 0 the command succeeded (health: healthy); 1 the signer refused the request
(its error code and message are printed) or health is unhealthy; 2 usage or local error;
3 no answer from the signer within the timeout.
"""
from __future__ import annotations

import argparse
import base64
import json
import os
import sys
from pathlib import Path
from typing import Any, Callable

import serial
from cryptography import x509
from cryptography.hazmat.primitives.serialization import Encoding

from core.protocol import SignerError
from core.x509build import csr_der
from tools.client import Response, SignerClient, SignerTimeout
from tools.files import write_atomically
from tools.webdb import cli as webdb_cli

EXIT_OK, EXIT_REFUSED, EXIT_USAGE, EXIT_NO_ANSWER = 0, 1, 2, 3


def to_json(value: Any) -> Any:
    """msgpack bytes (DER and the like) become base64 strings in JSON output."""
    if isinstance(value, bytes):
        return base64.b64encode(value).decode()
    if isinstance(value, dict):
        return {k: to_json(v) for k, v in value.items()}
    if isinstance(value, list):
        return [to_json(v) for v in value]
    return value


def print_refusal(response: Response) -> int:
    error = response.error or {}
    print(f"error: {error.get('code')}: {error.get('message')}", file=sys.stderr)
    return EXIT_REFUSED


def health_lines(body: dict[str, Any]) -> list[str]:
    hsm, repo = body.get("hsm", {}), body.get("repository", {})
    return ([f"healthy: {'yes' if body.get('healthy') else 'NO'}",
             f"version: {body.get('version')}  node: {body.get('node_id')}  time: {body.get('time')}"]
            + [f"ca {ca['id']}: {ca['subject']} expires {ca['not_after']} ({ca['days_to_expiry']:.0f} days)"
               for ca in body.get("ca_certificates", [])]
            + [f"hsm: token {hsm.get('token')} logged in {hsm.get('logged_in')} "
               f"test signature {hsm.get('test_signature_ms')} ms",
               f"repository: quick_check {repo.get('quick_check')} counts {repo.get('counts')} "
               f"last event {repo.get('last_event_seq')}"]
            + [f"problem: {problem}" for problem in body.get("problems", [])])


def cmd_health(client: SignerClient, args: argparse.Namespace) -> int:
    response = client.call("health")
    if not response.ok:
        return print_refusal(response)
    print_body(args, response.body, health_lines(response.body))
    return EXIT_OK if response.body.get("healthy") else EXIT_REFUSED


def cmd_ca_info(client: SignerClient, args: argparse.Namespace) -> int:
    response = client.call("ca_info")
    if not response.ok:
        return print_refusal(response)
    body = response.body
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
        print(f"signer-client: {args.csr}: {exc.message}", file=sys.stderr)
        return EXIT_USAGE
    body: dict[str, Any] = {"issuer": args.issuer, "profile": args.profile, "csr": csr, "hash": args.hash,
                            "subject": [pair.split("=", 1) for pair in args.subject],
                            "sans": [san.split(":", 1) for san in args.san]}
    if args.days is not None:
        body["days"] = args.days
    response = client.call("sign_x509", body, request_id=args.request_id)
    if not response.ok:
        return print_refusal(response)
    result = response.body
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
        return print_refusal(response)
    result = response.body
    print_body(args, result, [f"revoked {result['serial']} at {result['revoked_at']} reason "
                              f"{result['reason']}{' (already revoked)' if result['already_revoked'] else ''}"])
    return EXIT_OK


def cmd_fetch_crl(client: SignerClient, args: argparse.Namespace) -> int:
    from tools.crl_fetch import fetch_crl_into
    try:
        ca_cert = x509.load_pem_x509_certificate(Path(args.ca_cert).read_bytes()) if args.ca_cert else None
        outcome = fetch_crl_into(client, args.issuer, Path(args.out), ca_cert)
    except ValueError as exc:
        print(f"signer-client: {exc}", file=sys.stderr)
        return EXIT_REFUSED
    if outcome.error is not None:
        return print_refusal(outcome.error)
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
        return print_refusal(response)
    result = response.body
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
    parser.add_argument("--port", default=os.environ.get("SIGNER_PORT"),
                        help="serial port or pty of the signer (default: $SIGNER_PORT)")
    parser.add_argument("--baud", type=int, default=115200)
    parser.add_argument("--timeout", type=float, default=90.0,
                        help="seconds to wait for an answer (above the signer's own 30 s HSM and "
                             "repository deadlines, so their typed errors arrive first)")
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
    if not args.port:
        print("signer-client: --port is required (or set SIGNER_PORT)", file=sys.stderr)
        return EXIT_USAGE
    try:
        with SignerClient(args.port, args.baud, args.timeout) as client:
            return COMMANDS[args.command](client, args)
    except SignerTimeout as exc:
        print(f"signer-client: {exc}", file=sys.stderr)
        return EXIT_NO_ANSWER
    except serial.SerialException as exc:
        print(f"signer-client: cannot open {args.port}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except (OSError, ValueError) as exc:  # an unreadable or unparsable local file
        print(f"signer-client: {exc}", file=sys.stderr)
        return EXIT_USAGE


if __name__ == "__main__":
    sys.exit(main())
