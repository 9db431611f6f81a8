#!/usr/bin/env bash
# Set up everything (as scripts/setup.sh does), then build the documentation site into site/
# (mkdocs-material, API pages from the docstrings by mkdocstrings).  `bash scripts/docs.sh serve`
# serves it on http://127.0.0.1:8000 instead.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
bash scripts/setup.sh
.venv/bin/python -m pip install -q -e ".[docs]"
if [ "${1:-}" = "serve" ]; then
  exec .venv/bin/mkdocs serve
fi
exec .venv/bin/mkdocs build --strict
