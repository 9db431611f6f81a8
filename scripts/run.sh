#!/usr/bin/env bash
# Set up everything, then run the main job: the seed article's three models
# (posterior tables printed, figures written to docs/figures/).
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
for example in romcom students app_reliability; do
  echo "=== examples/$example.py"
  .venv/bin/python "examples/$example.py"
done
