#!/usr/bin/env bash
# The GPU row of the README results (issue 6) in one call: config_half pretrained for a fixed wall-clock budget
# on one GPU (masked LM + NSP on the Korean Wikipedia text, then on the NSMC training reviews, one review to an
# instance), then fine-tuned on NSMC with 3 seeds side by side on the same GPU. The step counts come from a
# timed 40-step run on each data set, so the pretraining fills BUDGET_S seconds on whatever card runs it, and
# the learning rate still warms up and decays to 0 at the last step.
#
#   bash gpu_results.sh                     # ../shared/data, 300 s of pretraining on GPU 0, everything in runs/gpu
#   GPU= BUDGET_S=20 CONFIG=config_tiny.json EPOCH=1 WIKI=data/sample/kowiki-sample.txt.xz N=data/sample \
#       RUN=runs/gpu_dry bash gpu_results.sh --vocab_size 4000   # the same stages on the CPU, tiny budget (minutes)
# Finished stages in $RUN are not redone, so a dry run needs its own RUN.
#
# Settings are the environment variables below; arguments are passed on to every results.py call (e.g.
# --vocab_size 4000). The row lands in $RUN/results.md and $RUN/results.csv; every stage's log is in $RUN.
set -euo pipefail
cd "$(dirname "$0")"
WIKI=${WIKI:-../shared/data/kowiki}   # Wikipedia text: WikiExtractor output, a directory or a file
N=${N:-../shared/data/nsmc}           # holds ratings_train.txt and ratings_test.txt
RUN=${RUN:-runs/gpu}
GPU=${GPU-0}                          # CUDA device; empty: the CPU
BUDGET_S=${BUDGET_S:-300}             # seconds of pretraining steps in all
WIKI_SHARE=${WIKI_SHARE:-0.5}         # the share of them on Wikipedia; the rest on the NSMC training reviews
CONFIG=${CONFIG:-config_half.json}
SEEDS=${SEEDS:-42,43,44}
EPOCH=${EPOCH:-3}
WORKERS=${WORKERS:-4}                 # DataLoader processes for pretraining (masking on the fly)
PY=${PY:-$(command -v python || command -v python3)}
SECONDS=0

# one gpu_results.sh per RUN: a second one (the same command in another terminal) would share its timing run and
# stages. fd 9 holds the lock while this script or a command it started lives (the kernel drops it then).
mkdir -p "$RUN"
exec 9>>"$RUN/gpu_results.lock"
if ! flock -n 9; then
    echo "error: $RUN is in use by another gpu_results.sh; wait for it or pass another RUN" >&2
    exit 2
fi

ARGS=(--wiki "$WIKI" --train "$N/ratings_train.txt" --test "$N/ratings_test.txt" --out "$RUN" --img "$RUN/img"
      --config "$CONFIG" --vocab_text both --n_seq 128 --tapt_doc 1 --tapt_dupe 1 --dynamic_mask
      --pretrain_batch 128 --pretrain_lr 1e-3 --pretrain_workers "$WORKERS" --lr 3e-4 --batch 64 --epoch "$EPOCH")
[ -n "$GPU" ] && ARGS+=(--gpu "$GPU")

# 1. the vocabulary (Wikipedia + training reviews) and both sets of instances; the step counts do not matter yet
"$PY" results.py "${ARGS[@]}" --wiki_steps 1 --tapt_steps 1 --stop_after data "$@"

# 2. seconds per step on each set of instances, from log rows 10 steps apart (the first 10 steps warm up)
steps_for() {  # instances, seconds -> the steps that fill them
    rm -rf "$RUN/timing"
    "$PY" pretrain.py --config "$CONFIG" --vocab "$RUN/kowiki+nsmc_vocab.model" --input "$1" --save "$RUN/timing/t.pth" \
        --epoch 1000 --max_steps 40 --batch 128 --dynamic_mask --workers "$WORKERS" --log_every 10 --log_dir "$RUN/timing" \
        ${GPU:+--gpu "$GPU"} > "$RUN/timing.log" 2>&1 || { tail -c 500 "$RUN/timing.log"; exit 1; }
    "$PY" - "$RUN/timing/log.csv" "$2" <<'EOF'
import csv, sys
rows = list(csv.DictReader(open(sys.argv[1])))
per_step = (float(rows[-1]["elapsed_s"]) - float(rows[0]["elapsed_s"])) / (int(rows[-1]["step"]) - int(rows[0]["step"]))
print(max(1, int(float(sys.argv[2]) / per_step)))
EOF
}
W=$(steps_for "$RUN/wiki128.json" "$(awk "BEGIN {print $BUDGET_S * $WIKI_SHARE}")")
T=$(steps_for "$RUN/nsmc128_doc1_dupe1.json" "$(awk "BEGIN {print $BUDGET_S * (1 - $WIKI_SHARE)}")")
ROW="wiki $W + nsmc $T"
echo "budget ${BUDGET_S} s: $W steps on Wikipedia, then $T on the NSMC training reviews"

# 3. pretraining, then one results.py per seed side by side (a small model leaves most of a GPU idle)
"$PY" results.py "${ARGS[@]}" --wiki_steps "$W" --tapt_steps "$T" --rows "$ROW" --stop_after pretrain "$@"
pids=()
for s in ${SEEDS//,/ }; do
    "$PY" results.py "${ARGS[@]}" --wiki_steps "$W" --tapt_steps "$T" --rows "$ROW" --seeds "$s" "$@" > "$RUN/seed$s.log" 2>&1 &
    pids+=("$!")
done
for p in "${pids[@]}"; do wait "$p" || { tail -n 3 "$RUN"/seed*.log; exit 1; }; done

# 4. the table over all seeds (every stage is done, so this runs nothing again)
"$PY" results.py "${ARGS[@]}" --wiki_steps "$W" --tapt_steps "$T" --rows "$ROW" --seeds "$SEEDS" "$@"
echo "gpu_results.sh: ${SECONDS} s in all; pretraining steps logged in $RUN/pretrain_wiki/log.csv and $RUN/pretrain_wiki+nsmc/log.csv"
