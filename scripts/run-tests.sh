#!/usr/bin/env bash
# Set up everything and run the whole test suite. Extra arguments go to pytest.
# Each test starts the services it needs (SoftHSM tokens in temporary folders, the signer
# as its own process on a pty pair, nats-server where sync is tested) on ports it picks.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
export PYTHONDONTWRITEBYTECODE=1
.venv/bin/ruff check .  # style and unused names (pyproject.toml [tool.ruff]); fails the run
.venv/bin/mypy  # types: strict for core/, default checks elsewhere (pyproject.toml [tool.mypy]); fails the run
exec .venv/bin/python -m pytest -q "$@"
