#!/usr/bin/env bash
# Set up, then run the whole test suite: lint, types, import layers, unit + simulation + real-process tests.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
.venv/bin/ruff check .
.venv/bin/ruff format --check .
.venv/bin/mypy $(ls -d node orchestrator chaos tui tests bench 2>/dev/null)
.venv/bin/lint-imports  # the one-way layers: [tool.importlinter] in pyproject.toml
exec .venv/bin/python -m pytest -q "$@"
