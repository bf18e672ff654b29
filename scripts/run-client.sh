#!/usr/bin/env bash
# Run the WebDB client daemon next to the development signer (start that one first with
# scripts/run-signer.sh): a development WebDB in SQLite (DATA/webdb.sqlite, CAcert's tables
# created on first run), CSR/key files under DATA/www, CRLs published to DATA/crl.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
DATA="${DATA:-$PWD/data}"
mkdir -p "$DATA"
if [ ! -f "$DATA/client.yaml" ]; then
  sed "s#@DATA@#$DATA#g" config/client.dev.yaml > "$DATA/client.yaml"
fi
.venv/bin/signer-client init-webdb --config "$DATA/client.yaml" >/dev/null
exec .venv/bin/signer-client run --config "$DATA/client.yaml"
