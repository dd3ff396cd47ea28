#!/usr/bin/env bash
# Fresh machine -> test results: make .venv, install cpt-jax with its test extras (CPU torch for
# the Hugging Face parity tests), lint with ruff, run the CPU test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e '.[test]'
.venv/bin/python -m ruff check --quiet .   # the lint rules in pyproject.toml
exec .venv/bin/python -m pytest "$@"
