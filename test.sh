#!/usr/bin/env bash
# Install what the tests need (once; see setup.sh), then lint and run the tests. Arguments go to pytest:
#   bash test.sh                  # everything (what CI runs)
#   bash test.sh -k resume -x     # some
#   bash test.sh --oldest         # in .venv-oldest, every requirement at the lower bound of its range
#   bash test.sh --newest         # in .venv-newest, every requirement at the newest release its range admits
set -euo pipefail
cd "$(dirname "$0")"
case "${1:-}" in --oldest | --newest) export SETUP_VERSIONS=${1#--}; shift ;; esac
SETUP_DEV=1 source ./setup.sh
python -c 'import platform, sys, torch, numpy, pandas, sentencepiece
print(f"python {platform.python_version()}, torch {torch.__version__}, numpy {numpy.__version__}, "
      f"pandas {pandas.__version__}, sentencepiece {sentencepiece.__version__}")'
python -m ruff check .
python -m pytest -q -n auto "$@"
