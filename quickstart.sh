#!/usr/bin/env bash
# Install what the project needs (once; see setup.sh), then the whole pipeline on the bundled sample with a tiny
# model: vocab -> data -> pretrain -> train -> predict. About 2 minutes on a 2-core CPU. Everything goes to
# runs/quickstart/ (or $1).
set -euo pipefail
cd "$(dirname "$0")"
source ./setup.sh
OUT=${1:-runs/quickstart}
mkdir -p "$OUT"
SECONDS=0

python vocab.py --input data/sample/kowiki-sample.txt.xz --prefix "$OUT/kowiki" --vocab_size 4000
python data.py --input data/sample/kowiki-sample.txt.xz --vocab "$OUT/kowiki.model" --output "$OUT/kowiki_bert.json" \
    --n_seq 128 --dupe_factor 2
python pretrain.py --config config_tiny.json --vocab "$OUT/kowiki.model" --input "$OUT/kowiki_bert.json" \
    --save "$OUT/save_pretrain.pth" --epoch 1 --batch 32 --lr 5e-4 --log_dir "$OUT/pretrain"
python train.py --config config_tiny.json --vocab "$OUT/kowiki.model" --pretrain "$OUT/save_pretrain.pth" \
    --train data/sample/ratings_train.txt --test data/sample/ratings_test.txt \
    --save "$OUT/save_best.pth" --epoch 3 --batch 64 --lr 3e-4 --log_dir "$OUT/train"
python predict.py --save "$OUT/save_best.pth" --vocab "$OUT/kowiki.model" "이 영화 정말 재밌어요" "시간 낭비였다, 최악"

echo "quickstart done in ${SECONDS} s: test accuracy above (best-on-validation epoch), plots in $OUT/pretrain and $OUT/train"
