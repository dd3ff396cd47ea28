#!/usr/bin/env bash
# Fresh machine -> the demo experiment on CPU: make .venv, install cpt-jax, run the demo.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
[ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
.venv/bin/python -m pip install -q --upgrade pip
.venv/bin/python -m pip install -q -e .
.venv/bin/cpt-jax info --config configs/tiny.py
