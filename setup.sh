# Sourced by quickstart.sh and test.sh: picks the Python environment and installs what the project needs into it,
# once (a stamp in the environment remembers the requirements it was set up for, so a second run is instant).
#   environment: $PYTHON if set; else the active virtualenv or conda environment; else .venv here (made if missing)
#   torch:       kept if one in the range of requirements.txt is there; else $TORCH (default below), the CPU build
#                unless nvidia-smi finds a GPU (then PyPI's CUDA build); TORCH_INDEX overrides the CPU index
#   SETUP_DEV=1  also the test tools (requirements-dev.txt); SKIP_SETUP=1 installs nothing
#   SETUP_VERSIONS=oldest|newest  a .venv-oldest / .venv-newest with every requirement at the lower bound of its
#                range, or at the newest release its range admits (test.sh --oldest / --newest)
# Afterwards `python` in the sourcing script is that environment's interpreter ($PY).
TORCH=${TORCH:-torch==2.13.0}  # the torch CI runs on
versions=${SETUP_VERSIONS:-}
if [ -n "$versions" ]; then
    [ -x ".venv-$versions/bin/python" ] || { echo "setup: making .venv-$versions"; python3 -m venv ".venv-$versions"; }
    PY=$PWD/.venv-$versions/bin/python
elif [ -n "${PYTHON:-}" ]; then
    PY=$PYTHON
elif [ -n "${VIRTUAL_ENV:-}${CONDA_PREFIX:-}" ] || [ "${SKIP_SETUP:-}" = 1 ]; then
    PY=$(command -v python || command -v python3)
else
    [ -x .venv/bin/python ] || { echo "setup: making .venv"; python3 -m venv .venv; }
    PY=$PWD/.venv/bin/python
fi
python() { "$PY" "$@"; }

pip_torch() {  # pip install torch "$@": the CPU build unless there is a GPU
    if command -v nvidia-smi >/dev/null && nvidia-smi -L >/dev/null 2>&1; then
        echo "setup: installing $* (CUDA build: nvidia-smi finds a GPU)"
        "$PY" -m pip install -q "$@"
    elif "$PY" -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=10)' "$cpu_index" 2>/dev/null
    then
        echo "setup: installing $* (CPU build: no GPU found)"
        "$PY" -m pip install -q --index-url "$cpu_index" --extra-index-url https://pypi.org/simple "$@"
    else
        echo "setup: installing $* (no GPU found, but $cpu_index is out of reach: the build pip finds)"
        "$PY" -m pip install -q "$@"
    fi
}
cpu_index=${TORCH_INDEX:-https://download.pytorch.org/whl/cpu}

if [ "${SKIP_SETUP:-}" != 1 ]; then
    files=(requirements.txt)
    [ "${SETUP_DEV:-}" = 1 ] && files+=(requirements-dev.txt)
    want=$({ cat "${files[@]}"; echo "$TORCH $versions"; } | sha1sum | cut -c1-12)
    stamp="$("$PY" -c 'import sys; print(sys.prefix)')/.korean-bert-setup-$want"
    if [ ! -e "$stamp" ]; then
        reqs=$(cat "${files[@]}" | sed -e 's/#.*//' -e 's/ //g' | grep .)  # one "name>=low,<high" a line
        if [ "$versions" = oldest ]; then
            reqs=$(sed -E 's/^([A-Za-z0-9_.-]+)>=([^,]+),.*/\1==\2/' <<<"$reqs")
            pip_torch "$(grep '^torch==' <<<"$reqs")"
        elif [ "$versions" = newest ]; then
            pip_torch --upgrade "$(grep '^torch[><=]' <<<"$reqs")"
        elif [ "$("$PY" - 2>/dev/null <<'PY'
import importlib.metadata, re
lo, hi = re.findall(r"^torch>=([\d.]+),<([\d.]+)", open("requirements.txt").read(), re.M)[0]
v = lambda s: tuple(int(x) for x in re.findall(r"\d+", s)[:2])
print(int(v(lo) <= v(importlib.metadata.version("torch")) < v(hi)))
PY
        )" = 1 ]; then
            echo "setup: keeping torch $("$PY" -c 'import torch; print(torch.__version__)')"
        else
            pip_torch "$TORCH"
        fi
        echo "setup: installing ${files[*]} into $("$PY" -c 'import sys; print(sys.prefix)')"
        # shellcheck disable=SC2086
        "$PY" -m pip install -q ${versions:+--upgrade} $(grep -v '^torch[><=]' <<<"$reqs")
        touch "$stamp"
    fi
fi
