#!/usr/bin/env bash
# Install (or upgrade) the CAcert signer for production on Debian 12, from this checkout:
#   signer box (default): system user cacert-signer, /etc/cacert-signer, /var/lib/cacert-signer,
#     /var/log/cacert-signer (+ logrotate), /opt/cacert-signer (venv from the hash-pinned
#     requirements/signer.lock), units cacert-signer.service and cacert-signer-nats.service
#     (user cacert-signer-nats; with --no-sync the nats unit is left out and the signer gets
#     its own network namespace: config/systemd/variants/private-network.conf);
#   WebDB box (--webdb): system user cacert-client, /etc/cacert-signer-client,
#     /var/lib/cacert-signer-client, /opt/cacert-signer from requirements/webdb.lock,
#     cacert-signer-client.service.
# Idempotent: every step checks first and says "ok:" when there is nothing to do; existing
# configuration, secrets and data are never replaced. --dry-run prints each change as
# "would:" and changes nothing. --root DIR puts the files under DIR (staging, tests); users,
# packages and systemctl stay the host's. Units are installed, not enabled or started:
# docs/operations.md, "Production", has the steps after this script.
set -euo pipefail

usage() {
  echo "usage: $0 [--webdb] [--no-sync] [--dry-run] [--root DIR]" >&2
  exit 2
}

ROLE=signer SYNC=yes DRY_RUN=no ROOT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --webdb) ROLE=webdb ;;
    --no-sync) SYNC=no ;;
    --dry-run) DRY_RUN=yes ;;
    --root) [ $# -ge 2 ] || usage; ROOT="${2%/}"; shift ;;
    -h|--help) usage ;;
    *) echo "install-production: unknown option $1" >&2; usage ;;
  esac
  shift
done

SOURCE="$(cd "$(dirname "$0")/.." && pwd)"
PREFIX=/opt/cacert-signer
if [ "$ROLE" = signer ]; then
  USER_NAME=cacert-signer ETC=/etc/cacert-signer STATE=/var/lib/cacert-signer LOGS=/var/log/cacert-signer
  LOCK="$SOURCE/requirements/signer.lock"
  UNITS="cacert-signer.service"
  [ "$SYNC" = yes ] && UNITS="$UNITS cacert-signer-nats.service"
  # python3-venv: the venv; gnupg: the signer validates user keys with gpg; softhsm2: the
  # development/staging token (a real HSM brings its own PKCS#11 module); nats-server: sync.
  PACKAGES="python3-venv gnupg softhsm2 logrotate"
  [ "$SYNC" = yes ] && PACKAGES="$PACKAGES nats-server"
else
  USER_NAME=cacert-client ETC=/etc/cacert-signer-client STATE=/var/lib/cacert-signer-client LOGS=""
  LOCK="$SOURCE/requirements/webdb.lock"
  UNITS="cacert-signer-client.service"
  PACKAGES="python3-venv"
fi

say() { echo "install-production: $*"; }
# A change: printed, and run unless --dry-run.
change() {
  if [ "$DRY_RUN" = yes ]; then say "would: $*"; else say "run: $*"; "$@"; fi
}

if [ "$DRY_RUN" = no ] && [ "$(id -u)" -ne 0 ]; then
  echo "install-production: run as root (or try --dry-run)" >&2
  exit 1
fi
[ -f "$LOCK" ] || { echo "install-production: $LOCK is missing" >&2; exit 1; }

# 1. Debian packages (host only).
if [ -z "$ROOT" ]; then
  missing=""
  for pkg in $PACKAGES; do
    dpkg-query -W -f='${Status}' "$pkg" 2>/dev/null | grep -q "install ok installed" || missing="$missing $pkg"
  done
  if [ -n "$missing" ]; then
    change apt-get install -y $missing
  else
    say "ok: packages$(printf ' %s' $PACKAGES)"
  fi
fi

# 2. System users (host only): no login, no home of their own; dialout for the serial port.
ensure_user() {  # NAME [EXTRA GROUP]
  if getent passwd "$1" >/dev/null; then
    say "ok: user $1"
  else
    change adduser --system --group --no-create-home --home /nonexistent --shell /usr/sbin/nologin "$1"
  fi
  if [ -n "${2:-}" ] && ! id -nG "$1" 2>/dev/null | tr ' ' '\n' | grep -qx "$2"; then
    change adduser "$1" "$2"
  fi
}
if [ -z "$ROOT" ]; then
  ensure_user "$USER_NAME" dialout
  [ "$ROLE" = signer ] && [ "$SYNC" = yes ] && ensure_user cacert-signer-nats
fi

# 3. Folders and files with their owner and mode.
ensure_dir() {  # PATH MODE OWNER:GROUP
  local path="$ROOT$1"
  if [ ! -d "$path" ]; then
    change install -d -m "$2" -o "${3%%:*}" -g "${3##*:}" "$path"
  elif [ "$(stat -c '%a %U:%G' "$path")" != "${2#0} $3" ]; then
    change chown "$3" "$path"
    change chmod "$2" "$path"
  else
    say "ok: $1 ($2 $3)"
  fi
}
# Configuration the operator edits: installed only when missing, never replaced.
ensure_file() {  # SOURCE TARGET MODE OWNER:GROUP
  local target="$ROOT$2"
  if [ -e "$target" ]; then
    say "ok: $2 exists (kept)"
  else
    change install -m "$3" -o "${4%%:*}" -g "${4##*:}" "$1" "$target"
  fi
}
# Files this project owns (units, logrotate): replaced when they differ from the checkout's.
ensure_copy() {  # SOURCE TARGET MODE
  local target="$ROOT$2"
  if [ -f "$target" ] && cmp -s "$1" "$target"; then
    say "ok: $2 up to date"
  else
    change install -D -m "$3" -o root -g root "$1" "$target"
  fi
}

ensure_dir "$PREFIX" 0755 root:root
# The configuration folder: root's, readable by the service's group only; the YAML and the
# secrets belong to the service user, mode 0600 (ProtectSystem=strict keeps /etc read-only
# for the service, so it cannot change them).
ensure_dir "$ETC" 0750 "root:$USER_NAME"
ensure_dir "$ETC/secrets" 0700 "$USER_NAME:$USER_NAME"
ensure_dir "$STATE" 0700 "$USER_NAME:$USER_NAME"
[ -n "$LOGS" ] && ensure_dir "$LOGS" 0700 "$USER_NAME:$USER_NAME"
if [ "$ROLE" = signer ]; then
  ensure_file "$SOURCE/config/signer.example.yaml" "$ETC/signer.yaml" 0600 "$USER_NAME:$USER_NAME"
  # The profiles are CA policy: the operator's copy in /etc (x509.profiles: profiles).
  if [ -d "$ROOT$ETC/profiles" ]; then
    say "ok: $ETC/profiles exists (kept)"
  else
    change install -d -m 0750 -o root -g "$USER_NAME" "$ROOT$ETC/profiles"
    for profile in "$SOURCE"/config/profiles/*.yaml; do
      change install -m 0640 -o root -g "$USER_NAME" "$profile" "$ROOT$ETC/profiles/"
    done
  fi
  ensure_dir "$ETC/ca" 0750 "root:$USER_NAME"
else
  ensure_file "$SOURCE/config/client.example.yaml" "$ETC/client.yaml" 0600 "$USER_NAME:$USER_NAME"
fi

# 4. The virtualenv: every third-party package pinned by version and hash, then the project
#    itself from this checkout (no dependencies, no index, no build isolation: the build
#    tool setuptools comes from the lock file too).
#    The interpreter is Debian's (not one in root's home, such as pyenv's: the service user
#    could not reach it, and ProtectHome= hides it).
PYTHON="${PYTHON:-/usr/bin/python3}"
"$PYTHON" -c 'import sys; sys.exit(sys.version_info[:2] < (3, 11))' ||
  { echo "install-production: $PYTHON is not Python 3.11 or newer" >&2; exit 1; }
VENV="$ROOT$PREFIX"
PYTHON_HOME="$(dirname "$(readlink -f "$PYTHON")")"
if [ -x "$VENV/bin/python" ] && grep -qx "home = $PYTHON_HOME" "$VENV/pyvenv.cfg"; then
  say "ok: venv $PREFIX on $PYTHON_HOME"
else
  change "$PYTHON" -m venv --clear "$VENV"
fi
change "$VENV/bin/pip" install --quiet --require-hashes --no-deps -r "$LOCK"
if [ "$DRY_RUN" = yes ]; then
  BUILD="\$TMPDIR"  # not made: a dry run creates nothing, not even a temporary folder
else
  BUILD="$(mktemp -d)"
  trap 'rm -rf "$BUILD"' EXIT
fi
# A copy: the build writes build/ and *.egg-info into the tree it builds.
change tar -C "$SOURCE" --exclude=./.git --exclude=./.venv --exclude=./data --exclude=./build \
  --exclude='*.egg-info' --exclude=__pycache__ -cf "$BUILD/source.tar" .
change mkdir "$BUILD/source"
change tar -C "$BUILD/source" -xf "$BUILD/source.tar"
change "$VENV/bin/pip" install --quiet --no-deps --no-index --no-build-isolation --force-reinstall "$BUILD/source"

# 5. Logs: the journal gets stderr; the signer's own log_file is rotated by logrotate with
#    copytruncate (the signer keeps its file open; what SIGHUP does is decided separately).
if [ "$ROLE" = signer ]; then
  ensure_copy "$SOURCE/config/logrotate/cacert-signer" /etc/logrotate.d/cacert-signer 0644
fi

# 6. systemd units (installed, not enabled: the configuration comes first).
for unit in $UNITS; do
  ensure_copy "$SOURCE/config/systemd/$unit" "/etc/systemd/system/$unit" 0644
done
if [ "$ROLE" = signer ] && [ "$SYNC" = no ]; then
  ensure_copy "$SOURCE/config/systemd/variants/private-network.conf" \
    /etc/systemd/system/cacert-signer.service.d/private-network.conf 0644
fi
if [ -z "$ROOT" ] && [ -d /run/systemd/system ]; then
  change systemctl daemon-reload
else
  say "ok: no running systemd here (or --root): no daemon-reload"
fi

say "done ($ROLE$([ "$DRY_RUN" = yes ] && echo ', dry run: nothing changed')). Next: docs/operations.md, \"Production\""
