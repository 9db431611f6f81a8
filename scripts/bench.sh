#!/usr/bin/env bash
# Set up everything (plus the benchmark peers: pgmpy, statsmodels, matplotlib;
# R's lme4 through apt-get when root), then run the benchmark suite.
# Pass --quick for the small sizes (under a minute).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
if [ "$(id -u)" = "0" ] && ! dpkg -s r-cran-lme4 >/dev/null 2>&1; then
  echo "gdag bench: installing R's lme4 (a benchmark reference only)"
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq r-cran-lme4 >/dev/null || echo "lme4 not installed: its rows will be skipped"
fi
.venv/bin/python -m pip install -q -e ".[test,bench]"
exec .venv/bin/python benchmarks/run.py "$@"
