#!/usr/bin/env bash
# Set up everything gdag needs on a fresh Debian/Ubuntu machine, idempotently:
# system packages (SuiteSparse headers, graphviz, OpenBLAS), a virtual
# environment in .venv and the package itself.  Sourced by run.sh and test.sh.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

system_packages="libsuitesparse-dev graphviz libopenblas0-pthread python3-venv python3-dev build-essential"
missing=""
for pkg in $system_packages; do
  dpkg -s "$pkg" >/dev/null 2>&1 || missing="$missing $pkg"
done
if [ -n "$missing" ]; then
  if [ "$(id -u)" = "0" ]; then
    echo "gdag setup: installing system packages:$missing"
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq $missing >/dev/null
  else
    echo "gdag setup: missing system packages:$missing" >&2
    echo "Run:  sudo apt-get update && sudo apt-get install -y$missing" >&2
    exit 1
  fi
fi

PYTHON=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
  echo "gdag setup: creating .venv"
  "$PYTHON" -m venv .venv
fi
stamp=.venv/.gdag-installed
if [ ! -f "$stamp" ] || [ pyproject.toml -nt "$stamp" ]; then
  echo "gdag setup: installing gdag and its dependencies into .venv"
  .venv/bin/python -m pip install -q --upgrade pip
  .venv/bin/python -m pip install -q -e ".[test]"
  touch "$stamp"
fi
