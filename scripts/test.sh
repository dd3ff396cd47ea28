#!/usr/bin/env bash
# Fresh machine -> test results: make .venv, install cpt-jax with its test extras (CPU torch for
# the Hugging Face parity tests) and the TPU / GPU compilers (for the ahead-of-time compile tests;
# no accelerator needed), lint with ruff, run the CPU test suite. Extra arguments go to pytest.
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh && setup_venv test && setup_aot_compilers
.venv/bin/python -m ruff check --quiet .   # the lint rules in pyproject.toml
exec .venv/bin/python -m pytest "$@"
