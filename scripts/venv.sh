# Sourced by the other scripts (from the repository root): setup_venv [EXTRAS] makes .venv if it
# is missing and installs cpt-jax into it (editable), with the extras named (e.g. "test").
# PYTHON picks the interpreter (Python >= 3.11).
setup_venv() {
  local python=${PYTHON:-python3}
  [ -x .venv/bin/python ] || "$python" -m venv .venv
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".${1:+[$1]}"
}
