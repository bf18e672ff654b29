#!/usr/bin/env bash
# Set up everything, create the development CA on a SoftHSM token (first run only), and run
# the signer in the foreground on a development pty pair. DATA defaults to ./data.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA="${DATA:-$PWD/data}"
.venv/bin/signer dev-init --data "$DATA" >/dev/null
exec .venv/bin/signer run --config "$DATA/signer.yaml"
