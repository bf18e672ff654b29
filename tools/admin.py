"""`signer-admin --config FILE status [--json]`: live status of every actor of a running
signer. It joins the signer's actor system through the admin port (loopback only) and asks
the Supervisor; it never calls shutdown(), which would stop the signer."""
from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from core.config import ConfigError, load_config

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


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signer-admin", description=__doc__.split("\n")[0])
    parser.add_argument("--config", required=True, help="the signer's YAML configuration")
    sub = parser.add_subparsers(dest="command", required=True)
    p_status = sub.add_parser("status", help="one row per actor")
    p_status.add_argument("--json", action="store_true")
    args = parser.parse_args(argv)
    try:
        config = load_config(args.config)
    except ConfigError as exc:
        print(f"signer-admin: {exc}", file=sys.stderr)
        return 2
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


if __name__ == "__main__":
    sys.exit(main())
