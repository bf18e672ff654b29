"""`signer-client run | status | init-webdb --config FILE`: the WebDB daemon's commands.

Exit codes of `status`: 0 the daemon runs, the signer is reachable and healthy (its last
health answer younger than health.interval_s + min(30, signer.timeout_s) +
webdb.poll_interval_s + 10 s), the WebDB reachable and no kind of work blocked; 1 it runs,
but one of these is not so; 2 a configuration error; 3 the daemon is not running (never
ran, stopped, died, or has not written its status for too long).
"""
from __future__ import annotations

import argparse
import fcntl
import json
import logging
import sys
from pathlib import Path

from core.runtime.cli_contract import EXIT_NO_ANSWER, EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, fail, wants_json
from core.runtime.config import ConfigError
from tools.webdb.config import load_client_config

EXIT_NOT_RUNNING = EXIT_NO_ANSWER
STALE_MARGIN_S = 10.0  # beyond the longest a healthy idle daemon goes without a health answer


def add_commands(sub: argparse._SubParsersAction, common: argparse.ArgumentParser) -> None:
    p_run = sub.add_parser("run", help="the WebDB daemon: poll the WebDB, sign, publish CRLs")
    p_run.add_argument("--config", required=True, help="the client's YAML (docs/webdb-client.md)")
    p_run.add_argument("--cycles", type=int, help=argparse.SUPPRESS)  # tests: stop after N rounds
    p_status = sub.add_parser("status", parents=[common],
                              help="the daemon's last health, queue depth and last error")
    p_status.add_argument("--config", required=True)
    p_init = sub.add_parser("init-webdb", help="create CAcert's tables in a development WebDB")
    p_init.add_argument("--config", required=True)


def run_command(args: argparse.Namespace) -> int:
    try:
        config = load_client_config(args.config)
    except ConfigError as exc:
        return fail("signer-client", EXIT_USAGE, "config_error", f"config error: {exc}", wants_json(args))
    if args.command == "run":
        return cmd_run(config, args)
    if args.command == "status":
        return cmd_status(config, args)
    return cmd_init_webdb(config)


def cmd_run(config, args: argparse.Namespace) -> int:
    from tools.webdb.daemon import ClientDaemon
    logging.basicConfig(level=logging.INFO, stream=sys.stderr,
                        format="%(asctime)s %(name)s %(levelname)s %(message)s")
    state_dir = Path(config.state_dir)
    state_dir.mkdir(parents=True, exist_ok=True)
    # One daemon per WebDB: two would send the same rows twice (harmless for the signer,
    # which answers by request id, but each would overwrite the other's status).
    with open(state_dir / "daemon.lock", "w") as lock:
        try:
            fcntl.flock(lock, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            print(f"signer-client: another daemon runs with state_dir {state_dir}", file=sys.stderr)
            return EXIT_USAGE
        daemon = ClientDaemon(config)
        daemon.run(cycles=args.cycles)
    return daemon.exit_code


def signer_stale_after_s(config) -> float:
    """The longest a daemon whose signer answers goes without a health answer: one health
    interval, the health request's own timeout, one poll round, and a margin."""
    from tools.webdb.daemon import health_timeout_s
    return (config.health.interval_s + health_timeout_s(config)
            + config.webdb.poll_interval_s + STALE_MARGIN_S)


def cmd_status(config, args: argparse.Namespace) -> int:
    from tools.webdb.status import daemon_alive, health_age_s, read_status, stale_signer_line, status_lines
    status = read_status(Path(config.state_dir))
    if status is None:
        return fail("signer-client", EXIT_NOT_RUNNING, "not_running",
                    f"no status in {config.state_dir}: the daemon has not run", wants_json(args))
    # A round may wait up to timeout_s per request window before the file is written again.
    alive = daemon_alive(status, 3 * (config.webdb.poll_interval_s + config.signer.timeout_s) + 60)
    # Never green on an old answer: a signer that stopped is noticed only at the next poll.
    age, bound = health_age_s(status), signer_stale_after_s(config)
    stale = stale_signer_line(age, bound)
    if wants_json(args):
        print(json.dumps({**status, "alive": alive, "health_age_s": None if age is None else round(age, 1),
                          "signer_stale": stale is not None}, indent=2, sort_keys=True))
    else:
        print("\n".join(status_lines(status, alive) + ([stale] if stale else [])))
    if not alive:
        return EXIT_NOT_RUNNING
    healthy = ((status.get("signer") or {}).get("reachable") and (status.get("health") or {}).get("healthy")
               and stale is None
               and (status.get("webdb") or {}).get("reachable", True) and not status.get("blocked")
               and not status.get("crl_errors"))
    return EXIT_OK if healthy else EXIT_PROBLEM


def cmd_init_webdb(config) -> int:
    from tools.webdb.db import DbUnavailable, WebDb
    db = WebDb(config.webdb)
    try:
        db.create_dev_tables()
    except DbUnavailable as exc:
        print(f"signer-client: {exc}", file=sys.stderr)
        return EXIT_PROBLEM
    finally:
        db.close()
    print(f"WebDB tables ready ({config.webdb.driver})")
    return EXIT_OK
