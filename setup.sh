# Sourced by quickstart.sh and test.sh: picks the Python environment and installs what the project needs into it,
# once (a stamp in the environment remembers the requirements it was set up for, so a second run is instant).
#   environment: $PYTHON if set; else the active virtualenv or conda environment; else .venv here (made if missing)
#   torch:       kept if one in the range of requirements.txt is there; else $TORCH (default below), the CPU build
#                unless nvidia-smi finds a GPU (then PyPI's CUDA build); TORCH_INDEX overrides the index
#   SETUP_DEV=1  also the test tools (requirements-dev.txt); SKIP_SETUP=1 installs nothing
# Afterwards `python` in the sourcing script is that environment's interpreter ($PY).
TORCH=${TORCH:-torch==2.13.0}  # the torch CI runs on
if [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || [ "${SKIP_SETUP:-}" = 1 ]; then
    PY=$(command -v python || command -v python3)
else
    [ -x .venv/bin/python ] || { echo "setup: making .venv"; python3 -m venv .venv; }
    PY=$PWD/.venv/bin/python
fi
python() { "$PY" "$@"; }

if [ "${SKIP_SETUP:-}" != 1 ]; then
    reqs=(-r requirements.txt)
    [ "${SETUP_DEV:-}" = 1 ] && reqs+=(-r requirements-dev.txt)
    want=$({ cat requirements.txt; [ "${SETUP_DEV:-}" = 1 ] && cat requirements-dev.txt; echo "$TORCH"; } |
        sha1sum | cut -c1-12)
    stamp="$("$PY" -c 'import sys; print(sys.prefix)')/.korean-bert-setup-$want"
    if [ ! -e "$stamp" ]; then
        torch_ok=$("$PY" - 2>/dev/null <<'PY'
import importlib.metadata, re
lo, hi = re.findall(r"^torch>=([\d.]+),<([\d.]+)", open("requirements.txt").read(), re.M)[0]
v = lambda s: tuple(int(x) for x in re.findall(r"\d+", s)[:2])
print(int(v(lo) <= v(importlib.metadata.version("torch")) < v(hi)))
PY
        )
        if [ "$torch_ok" = 1 ]; then
            echo "setup: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
        elif command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
            echo "setup: installing $TORCH (CUDA build: nvidia-smi finds a GPU)"
            "$PY" -m pip install -q ${TORCH_INDEX:+--index-url "$TORCH_INDEX"} "$TORCH"
        else
            echo "setup: installing $TORCH (CPU build: no GPU found)"
            "$PY" -m pip install -q --index-url "${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}" \
                --extra-index-url https://pypi.org/simple "$TORCH"
        fi
        echo "setup: installing ${reqs[*]} into $("$PY" -c 'import sys; print(sys.prefix)')"
        "$PY" -m pip install -q "${reqs[@]}"
        touch "$stamp"
    fi
fi
