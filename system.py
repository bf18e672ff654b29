"""The `signer` command: `signer dev-init --data DIR` and `signer run --config FILE`.

`run` takes the data folder's instance lock (core/runtime/instance_lock.py: one signer per
repository), starts the Thespian actor system (multiprocTCPBase, loopback only), asks the
Supervisor to create and configure every actor, prints the client end of the serial link
when it is a development pty, and shuts everything down on SIGTERM, SIGINT or SIGHUP (the
same clean shutdown for all three: logrotate uses copytruncate and sends no signal, and a
SIGHUP from a closed terminal means its operator is gone).

Who watches whom: `signer run` watches the Supervisor (its death stops the signer with exit
code 1, for the service manager to restart it: docs/decisions/
0004-supervisor-death-restarts-the-signer.md), the Supervisor restarts the other actors,
and the reaper (core/runtime/owner_reaper.py) ends every actor process once `signer run` is gone.
"""
from __future__ import annotations

import argparse
import dataclasses
import logging
import os
import signal
import socket
import sys
import time
from pathlib import Path

from core.runtime.actor_transport_auth import remove_key_file
from core.runtime.cli_contract import EXIT_OK, EXIT_PROBLEM, EXIT_USAGE, add_version_argument
from core.runtime.config import ConfigError, SignerConfig, hold_pin, load_config
from core.runtime.instance_lock import InstanceLock, InstanceLocked
from core.runtime.process_hardening import harden_process, remove_from_environment

SYSTEM_BASE = "multiprocTCPBase"
START_TIMEOUT_S = 90
THESPIAN_LOG = "thespian.log"  # Thespian's own log, in the data folder (THESPLOG_FILE)
SUPERVISOR_CHECK_S = 1.0
EXIT_SUPERVISOR_DIED = EXIT_PROBLEM  # the service manager restarts on it (Restart=on-failure)
STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGHUP)  # each one a clean shutdown


class StartupError(Exception):
    """The signer cannot start; the message says why."""


LOG_FORMAT = "%(asctime)s %(levelname)s %(name)s %(message)s"


def log_handler(log_file: str | None) -> logging.Handler:
    """A handler writing like the signer's log; the file is opened on the first record, by
    the process that writes it (so one handler made before the forks serves them all)."""
    handler = (logging.FileHandler(log_file, delay=True) if log_file
               else logging.StreamHandler())
    handler.setFormatter(logging.Formatter(LOG_FORMAT))
    return handler


def log_definitions(log_file: str | None) -> dict:
    handler = ({"class": "logging.FileHandler", "filename": log_file, "formatter": "plain"}
               if log_file else {"class": "logging.StreamHandler", "formatter": "plain"})
    return {"version": 1,
            "formatters": {"plain": {"format": LOG_FORMAT}},
            "handlers": {"main": {**handler, "level": logging.INFO}},
            "root": {"handlers": ["main"], "level": logging.INFO},
            "disable_existing_loggers": False}


def port_in_use(port: int) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as probe:
        return probe.connect_ex(("127.0.0.1", port)) == 0


def data_folder(config: SignerConfig) -> Path:
    """The repository's folder: the signer's own files (repository, logs, transport key)."""
    return Path(config.repository.path).parent


def own_files(config: SignerConfig) -> list[Path]:
    """Files that hold subjects, e-mail addresses or the log: readable by the signer only."""
    repository = config.repository.path
    files = [Path(repository + suffix) for suffix in ("", "-wal", "-shm", "-journal")]
    if config.actor_system.log_file:
        files.append(Path(config.actor_system.log_file))
    return files + [data_folder(config) / THESPIAN_LOG]


def make_private(config: SignerConfig) -> None:
    """Data folder 0700, its existing files 0600 (new ones are, by the umask): files left
    0644 by an older signer would otherwise stay readable by every local user."""
    for path, mode in [(data_folder(config), 0o700)] + [(f, 0o600) for f in own_files(config)]:
        try:
            if path.stat().st_mode & 0o077:
                os.chmod(path, mode)
        except FileNotFoundError:
            continue
        except OSError as exc:
            raise StartupError(f"cannot make {path} private to the signer's user "
                               f"(chmod {mode:o}): {exc.strerror}") from None


def preflight(config: SignerConfig) -> None:
    """Checks that give a clear message before any process is forked; holds the PIN in
    memory (the actors inherit it) and takes it out of the environment."""
    hold_pin(config.hsm)  # ConfigError when neither the variable nor the file gives one
    if config.hsm.pin_env:
        remove_from_environment(config.hsm.pin_env)
    if not os.path.exists(config.hsm.module):
        raise StartupError(f"hsm.module: PKCS#11 library {config.hsm.module} does not exist")
    repo_dir = data_folder(config)
    if not repo_dir.is_dir():
        raise StartupError(f"repository.path: folder {repo_dir} does not exist")
    make_private(config)
    if port_in_use(config.actor_system.admin_port):
        raise StartupError(f"actor_system.admin_port: port {config.actor_system.admin_port} is "
                           "in use (is a signer already running?)")


def prepare_thespian(config: SignerConfig, transport_key: bytes) -> None:
    """Before this process creates or joins the actor system: loopback sockets, every frame
    authenticated with the run's key, Thespian's own log in the data folder (not $TMPDIR),
    two per-message costs of its transport removed (core/runtime/thespian_tuning.py)."""
    from core.runtime.actor_transport_auth import install
    from core.runtime.loopback import restrict_thespian_to_loopback
    from core.runtime.thespian_tuning import tune_thespian

    restrict_thespian_to_loopback()
    tune_thespian()
    install(transport_key, log_handler(config.actor_system.log_file))
    # An explicit THESPLOG_FILE (an operator's or a test's choice) is kept.
    os.environ.setdefault("THESPLOG_FILE", str(data_folder(config) / THESPIAN_LOG))


class RunningSigner:
    """The actor system, the dev pty relay (if any) and the Supervisor's address."""

    def __init__(self, config: SignerConfig) -> None:
        from thespian.actors import ActorSystem

        from actors.supervisor import SUPERVISOR_NAME, Supervisor
        from core.runtime.actor_transport_auth import key_file_path, new_key, write_key_file
        from messages import SignerStarted, StartSigner
        from core.runtime.owner_reaper import start_reaper, track_thespian_session
        from core.runtime.ptyrelay import PtyRelay

        # Before the actor system exists: its admin announces its session to the reaper.
        self.reaper = start_reaper(config.actor_system.log_file)
        track_thespian_session(self.reaper)
        if config.hsm.softhsm_conf:
            os.environ["SOFTHSM2_CONF"] = config.hsm.softhsm_conf
        # Made here, before anything is forked: the admin and the actors inherit it in memory.
        self.transport_key = new_key()
        self.key_path = key_file_path(data_folder(config))
        prepare_thespian(config, self.transport_key)
        write_key_file(self.key_path, self.transport_key)
        self.relay = None
        try:
            self.asys = ActorSystem(SYSTEM_BASE, {"Admin Port": config.actor_system.admin_port},
                                    logDefs=log_definitions(config.actor_system.log_file))
        except BaseException:
            remove_key_file(self.key_path, self.transport_key)
            raise
        try:
            if config.serial.mode == "dev-pty":
                # Created after the actor system so its processes do not inherit the ptys.
                self.relay = PtyRelay(link_b=config.serial.link_path).start()
                config = dataclasses.replace(
                    config, serial=dataclasses.replace(config.serial, device=self.relay.path_a))
            self.supervisor = self.asys.createActor(Supervisor, globalName=SUPERVISOR_NAME)
            reply = self.asys.ask(self.supervisor, StartSigner(config), START_TIMEOUT_S)
            if not isinstance(reply, SignerStarted):
                raise StartupError(f"the supervisor did not answer within {START_TIMEOUT_S} s")
            if not reply.ok:
                raise StartupError("; ".join(reply.errors))
            self.supervisor_pid = reply.supervisor_pid
        except BaseException:
            self.stop()
            raise
        self.client_end = self.relay.path_b if self.relay else config.serial.device

    def supervisor_alive(self) -> bool:
        try:
            state = Path(f"/proc/{self.supervisor_pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
        except (OSError, IndexError):
            return False
        return state not in ("Z", "X")  # a zombie is dead, only not yet reaped

    def stop(self) -> None:
        self.asys.shutdown()
        if self.relay is not None:
            self.relay.stop()
            self.relay = None
        remove_key_file(self.key_path, self.transport_key)


class StopRequested(BaseException):
    """SIGTERM/SIGINT/SIGHUP while starting: RunningSigner stops what it started, then we exit."""


def raise_stop(signum: int, frame: object) -> None:
    raise StopRequested(signal.Signals(signum).name)


def run(args: argparse.Namespace) -> int:
    harden_process()  # before the PIN is read: umask 077, no core dumps, not dumpable
    for signum in STOP_SIGNALS:
        signal.signal(signum, raise_stop)
    instance: InstanceLock | None = None
    try:
        config = load_config(args.config)
        instance = take_instance_lock(config)
        preflight(config)
        signer = RunningSigner(config)
    except (ConfigError, StartupError, InstanceLocked) as exc:
        print(f"signer: cannot start: {exc}", file=sys.stderr)
        if instance is not None:
            instance.release()
        return EXIT_USAGE
    except StopRequested as exc:
        print(f"signer: {exc} during start-up, stopped", file=sys.stderr)
        if instance is not None:
            instance.release()
        return EXIT_OK
    try:
        return serve(config, signer)
    finally:
        instance.release()


def take_instance_lock(config: SignerConfig) -> InstanceLock:
    """Before anything else starts (no pty link, no key file, no actor): a second signer on
    this data folder stops here, naming the one that runs."""
    folder = data_folder(config)
    if not folder.is_dir():
        raise StartupError(f"repository.path: folder {folder} does not exist")
    try:
        return InstanceLock.acquire(folder, {
            "pid": os.getpid(), "node_id": config.node_id,
            "admin_port": config.actor_system.admin_port, "repository": config.repository.path,
            "started_at": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())})
    except OSError as exc:
        raise StartupError(f"cannot take the instance lock in {folder}: {exc.strerror}") from None


def serve(config: SignerConfig, signer: RunningSigner) -> int:
    # From here the signal waits in sigwait: block first, so none is lost in between.
    signal.pthread_sigmask(signal.SIG_BLOCK, set(STOP_SIGNALS))
    # Threads started before that (the pty relay) still accept the signals, and the kernel
    # may hand one to them instead of to sigtimedwait: a handler notes it, the loop below
    # sees it within SUPERVISOR_CHECK_S. (With the default action restored here instead, 1
    # SIGHUP test run in about 5 died with no shutdown; with this handler 10 of 10 were clean.)
    noted: list[int] = []
    for stop_signal in STOP_SIGNALS:
        signal.signal(stop_signal, lambda number, frame: noted.append(number))
    print(f"signer: running, node {config.node_id}, admin port {config.actor_system.admin_port}",
          file=sys.stderr)
    if config.serial.mode == "dev-pty":
        print(f"client-pty: {signer.client_end}", flush=True)
        if config.serial.link_path:
            print(f"client-link: {config.serial.link_path}", flush=True)
    exit_code = EXIT_OK
    try:
        while True:
            received = signal.sigtimedwait(set(STOP_SIGNALS), SUPERVISOR_CHECK_S)
            signum = received.si_signo if received is not None else (noted[0] if noted else None)
            if signum is not None:
                print(f"signer: {signal.Signals(signum).name}, shutting down", file=sys.stderr)
                break
            if not signer.supervisor_alive():
                # Nobody restarts a dead Supervisor's children any more: a half-alive signer
                # would stop answering some commands for good. Stop all; the service manager
                # starts a whole new signer (the repository is crash-safe).
                print(f"signer: the Supervisor (pid {signer.supervisor_pid}) died: stopping every "
                      f"actor, exit {EXIT_SUPERVISOR_DIED}", file=sys.stderr)
                exit_code = EXIT_SUPERVISOR_DIED
                break
    finally:
        signer.stop()
    return exit_code


def dev_init(args: argparse.Namespace) -> int:
    from core.dev.devca import DevCaOptions, initialise_dev_ca

    os.umask(0o077)  # the token, its PINs, the config: the signer's user's only
    options = DevCaOptions(data_dir=Path(args.data).resolve(), admin_port=args.admin_port,
                           openpgp_key=args.openpgp_key)
    config_path = initialise_dev_ca(options, log=lambda line: print(f"dev-init: {line}", file=sys.stderr))
    print(config_path)
    return 0


def ceremony(args: argparse.Namespace) -> int:
    from core.hsm.ceremony import command

    return command(args)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="signer", description="The CAcert signer")
    add_version_argument(parser)
    sub = parser.add_subparsers(dest="command", required=True)
    p_init = sub.add_parser("dev-init", help="create a SoftHSM dev token, dev CA and config")
    p_init.add_argument("--data", required=True, help="data folder (created if missing)")
    p_init.add_argument("--admin-port", type=int, default=19190)
    p_init.add_argument("--openpgp-key", default="rsa-4096",
                        choices=["rsa-4096", "ecdsa-p256", "ecdsa-p384"])
    p_run = sub.add_parser("run", help="run the signer in the foreground")
    p_run.add_argument("--config", required=True)
    p_ceremony = sub.add_parser("ceremony", help="run key ceremony steps on the HSM "
                                "(docs/operations.md, Key ceremony)")
    p_ceremony.add_argument("--config", required=True, help="the ceremony file (YAML)")
    p_ceremony.add_argument("steps", nargs="+", metavar="STEP",
                            help="names of the steps to run, in order; 'all' runs every step")
    args = parser.parse_args(argv)
    return {"dev-init": dev_init, "run": run, "ceremony": ceremony}[args.command](args)


if __name__ == "__main__":
    sys.exit(main())
