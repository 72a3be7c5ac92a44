#!/usr/bin/env bash
# Issue 18's GPU check in one call, for a lent GPU machine (meant to fit one 10-minute command; not yet run on a GPU):
#   1. the quickstart's stages with --gpu on the bundled sample: vocab.py, data.py, pretrain.py, train.py, predict.py
#   2. pretrain.py under a 1-process torchrun (NCCL), resuming stage 1's checkpoint for one more epoch
#   3. bench.py on the GPU against transformers (its SDPA attention): the pretraining step of each config and
#      sequence length in BENCHES (MFU printed), then the fine-tuning step and predict.py
# Every command's output goes to $RUN/log.txt; what train.py and bench.py print (not their progress bars) goes to
# $RUN/figures.txt as well.
#
#   bash gpu_check.sh                         # GPU 0, everything in runs/gpu_check
#   GPU= CONFIG=config_tiny.json BENCHES=config_tiny.json:64 STEPS=1 RUN=runs/gpu_check_dry bash gpu_check.sh
#                                             # the same stages on the CPU with a tiny bench (a dry run)
# On the device tool: `bash gpu_check.sh; cp runs/gpu_check/*.txt $OUT/`.
set -euo pipefail
cd "$(dirname "$0")"
GPU=${GPU-0}                     # CUDA device; empty: the CPU (a dry run)
RUN=${RUN:-runs/gpu_check}
CONFIG=${CONFIG:-config_tiny.json}  # the model of stages 1 and 2 (the quickstart's)
WIKI=${WIKI:-data/sample/kowiki-sample.txt.xz}
N=${N:-data/sample}              # holds ratings_train.txt and ratings_test.txt
VOCAB_SIZE=${VOCAB_SIZE:-4000}
EPOCH=${EPOCH:-3}                # fine-tuning epochs of stage 1
BENCHES=${BENCHES:-"config_half.json:128 config_half.json:512 config.json:128 config.json:512"}  # CONFIG:SEQ ...
STEPS=${STEPS:-20}               # timed steps of each side in every bench
PREDICT_REVIEWS=${PREDICT_REVIEWS:-2000}  # reviews a round in the predict bench
COMPILE=${COMPILE:-1}            # on a GPU, also bench torch.compile of ours on the last of BENCHES
PY=${PY:-$(command -v python || command -v python3)}
SECONDS=0

if [ -n "$(ls -A "$RUN" 2>/dev/null)" ]; then  # every figure in it from this run: a fresh folder each time
    echo "error: $RUN is not empty (an earlier check's files); remove it or pass another RUN" >&2
    exit 2
fi
mkdir -p "$RUN"
LOG=$RUN/log.txt
FIG=$RUN/figures.txt
gpu=()
[ -n "$GPU" ] && gpu=(--gpu "$GPU")

run() {  # run a command, its output to the log (and the screen); stop the script when it fails
    echo "\$ $*" | tee -a "$LOG"
    "$@" 2>&1 | tee -a "$LOG"
}
figures() {  # the same, and the command's printed lines (its figures; progress bars go to stderr) to $FIG
    echo "\$ $*" | tee -a "$LOG" "$FIG"
    "$@" 2>>"$LOG" | tee -a "$LOG" "$FIG"
}

{
    echo "gpu_check.sh on $(hostname), $(date -u +%F' '%T) UTC"
    "$PY" -c 'import sys, torch; print(f"python {sys.version.split()[0]}, torch {torch.__version__}, cuda {torch.version.cuda}, "
                f"devices: {[torch.cuda.get_device_name(i) for i in range(torch.cuda.device_count())]}")'
    command -v nvidia-smi >/dev/null && nvidia-smi -L || echo "no nvidia-smi"
} 2>&1 | tee -a "$LOG" "$FIG"

# 1. the quickstart's stages, on the GPU where there is one
run "$PY" vocab.py --input "$WIKI" --prefix "$RUN/kowiki" --vocab_size "$VOCAB_SIZE"
run "$PY" data.py --input "$WIKI" --vocab "$RUN/kowiki.model" --output "$RUN/kowiki_bert.json" --n_seq 128 --dupe_factor 2
run "$PY" pretrain.py --config "$CONFIG" --vocab "$RUN/kowiki.model" --input "$RUN/kowiki_bert.json" \
    --save "$RUN/save_pretrain.pth" --epoch 1 --batch 32 --lr 5e-4 --log_dir "$RUN/pretrain" "${gpu[@]}"
figures "$PY" train.py --config "$CONFIG" --vocab "$RUN/kowiki.model" --pretrain "$RUN/save_pretrain.pth" \
    --train "$N/ratings_train.txt" --test "$N/ratings_test.txt" --save "$RUN/save_best.pth" --epoch "$EPOCH" \
    --batch 64 --lr 3e-4 --log_dir "$RUN/train" "${gpu[@]}"
run "$PY" predict.py --save "$RUN/save_best.pth" --vocab "$RUN/kowiki.model" "${gpu[@]}" \
    "이 영화 정말 재밌어요" "시간 낭비였다, 최악"

# 2. data parallel with one process: torchrun, NCCL on a GPU (gloo on the CPU); it resumes stage 1's checkpoint
run "$PY" -m torch.distributed.run --standalone --nproc_per_node 1 pretrain.py --config "$CONFIG" \
    --vocab "$RUN/kowiki.model" --input "$RUN/kowiki_bert.json" --save "$RUN/save_pretrain.pth" --epoch 2 --batch 32 \
    --lr 5e-4 --log_dir "$RUN/pretrain" "${gpu[@]}"
sed -n '/torch.distributed.run/,$p' "$LOG" | grep -q "epoch 2: saved" || { echo "error: torchrun's pretrain.py saved no epoch 2" | tee -a "$LOG"; exit 1; }

# 3. the benches: pretraining step per config and length, then fine-tuning and predict.py
work=(--work "$RUN/bench")
for b in $BENCHES; do
    figures "$PY" bench.py --config "${b%%:*}" --seq "${b##*:}" --steps "$STEPS" "${work[@]}" "${gpu[@]}"
done
last=$(echo $BENCHES | awk '{print $NF}')  # the last CONFIG:SEQ
figures "$PY" bench.py --task finetune --steps "$STEPS" "${work[@]}" "${gpu[@]}"
figures "$PY" bench.py --task predict --rounds 3 --predict_reviews "$PREDICT_REVIEWS" "${work[@]}" "${gpu[@]}"
if [ -n "$GPU" ] && [ "$COMPILE" = 1 ] && [ -n "$last" ]; then  # compile last: a timeout loses only this
    figures "$PY" bench.py --config "${last%%:*}" --seq "${last##*:}" --steps "$STEPS" --compile "${work[@]}" "${gpu[@]}"
fi
echo "gpu_check.sh done in ${SECONDS} s; figures in $FIG" | tee -a "$LOG" "$FIG"
