#!/usr/bin/env bash
# Install what the tests need (once; see setup.sh), then lint and run the tests. Arguments go to pytest:
#   bash test.sh                  # everything (what CI runs)
#   bash test.sh -k resume -x     # some
set -euo pipefail
cd "$(dirname "$0")"
SETUP_DEV=1 source ./setup.sh
python -m ruff check .
python -m pytest -q "$@"
