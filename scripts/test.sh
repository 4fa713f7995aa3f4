#!/usr/bin/env bash
# Set up, then run the whole test suite: lint, types, unit + simulation + real-process tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy $(ls -d node orchestrator chaos tui tests bench 2>/dev/null)
exec .venv/bin/python -m pytest -q "$@"
