#!/usr/bin/env bash
# Average the last epoch checkpoints of a trained model and report test BLEU two ways.
#
#   recipes/iwslt14_de_en/generate.sh dense|kmatrix [decode_bench options]
#
# Tokenized BLEU (de-BPE'd hypotheses vs the tokenized lower-cased references, the number
# IWSLT14 papers report) and detokenized sacreBLEU, with fairseq's standard decoding for this
# recipe: batch 128, beam 4, natural lengths. Also the decoding time (all threads).
# Environment: DATA, SAVE (as in train.sh), NUM_AVG (default 10), OUT (default runs/results/iwslt14_<model>).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
MODEL=${1:?usage: generate.sh dense|kmatrix [options]}
shift
DATA=${DATA:-$ROOT/data-bin/iwslt14.tokenized.de-en}
SAVE=${SAVE:-$ROOT/checkpoints/iwslt14_$MODEL}
OUT=${OUT:-$ROOT/runs/results/iwslt14_$MODEL}
AVG=$SAVE/checkpoint_last${NUM_AVG:-10}_avg.pt
"$PY" -m fairseq_kaleidoscope average-checkpoints --inputs "$SAVE" --num-epoch-checkpoints "${NUM_AVG:-10}" --output "$AVG"
"$PY" -m fairseq_kaleidoscope.recipes.decode_bench "$DATA" --checkpoint "$MODEL=$AVG" --remove-bpe \
    --setting batch128-beam4:128:4 --threads "$(nproc)" --out-dir "$OUT" --title "IWSLT14 De-En test, $MODEL" "$@"
