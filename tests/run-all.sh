#!/usr/bin/env bash
# The whole suite, in the order that fails fastest: static checks, unit tests, role scenarios,
# then the integration tests against real engines (the sandbox fleet). Called by `make test`.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${VENV:-.venv}/bin
export PATH="$PWD/$BIN:$PATH"
export ANSIBLE_HOME="${ANSIBLE_HOME:-$PWD/.ansible}" ANSIBLE_LOCAL_TEMP="${ANSIBLE_LOCAL_TEMP:-$PWD/.ansible/tmp}" ANSIBLE_NOCOLOR=1
step() { printf '\n=== %s (%s)\n' "$1" "$(date +%H:%M:%S)"; }

step "ruff"
ruff check acgs_remediate tests bench

step "ansible-lint (production profile)"
ansible-lint --offline --profile production playbooks roles

if [ "$(id -u)" = 0 ] && command -v dockerd >/dev/null; then
  for scenario in molecule/*/; do
    [ -f "$scenario/molecule.yml" ] || continue
    name=$(basename "$scenario")
    step "molecule test -s $name"
    molecule test -s "$name"
  done
else
  echo "error: the molecule scenarios and integration tests need root and dockerd (run 'make test' as root)" >&2
  exit 2
fi

step "pytest (unit + integration)"
# --durations: the slowest tests in the CI log, to keep the suite inside its 30-minute budget.
pytest -q --durations=40 tests/unit tests/integration
