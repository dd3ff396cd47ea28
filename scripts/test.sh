#!/usr/bin/env bash
# Fresh machine -> test results: make .venv, install cpt-jax with its test extras (CPU torch for
# the Hugging Face parity tests), lint with ruff, run the CPU test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh && setup_venv test
.venv/bin/python -m ruff check --quiet .   # the lint rules in pyproject.toml
exec .venv/bin/python -m pytest "$@"
