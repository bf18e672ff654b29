#!/usr/bin/env bash
# Regenerate the hash-pinned lock files for production installs (docs/operations.md,
# "Production"): requirements/signer.lock (the signer box) and requirements/webdb.lock (the
# WebDB box), from setup.cfg's install_requires + extra `signer` / `webdb`, plus the build
# tools in requirements/build.in. Needs pip-tools (pip-compile) and Python 3.11, the Python
# of the production machines (Debian 12).
#
# The versions already in a lock file are kept (pip-compile prefers them); pass --upgrade
# to move to the newest ones, then run the whole test suite with exactly those versions
# (pip install --require-hashes -r requirements/signer.lock into .venv) before shipping.
set -euo pipefail
cd "$(dirname "$0")/.."
PIP_TOOLS="${PIP_TOOLS:-pip-compile}"  # not PIP_*: pip reads those as its own options
export CUSTOM_COMPILE_COMMAND="requirements/make-locks.sh"
for box in signer webdb; do
  "$PIP_TOOLS" --quiet --generate-hashes --allow-unsafe --strip-extras \
    --no-emit-index-url --no-emit-find-links --extra "$box" \
    --output-file "requirements/$box.lock" "$@" setup.cfg requirements/build.in
done
