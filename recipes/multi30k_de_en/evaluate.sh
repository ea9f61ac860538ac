#!/usr/bin/env bash
# test_2016 BLEU and single-thread decoding wall-clock of the two trained Multi30k models.
#
#   recipes/multi30k_de_en/evaluate.sh [decode_bench options]
#
# Averages the last NUM_AVG (default 5) epoch checkpoints of each model, then decodes
# test_2016_flickr naturally (no forced lengths) at batch 1 greedy and batch 128 beam 4 with
# one intra-op thread, each model in fp32 and with int8 dense layers (dense: all linear layers;
# K-matrix: its dense remainder, --int8-dense encoder,output_projection).
# Writes decode_bench.{md,json,png} to OUT (default runs/results/multi30k).
# A save directory holding only checkpoint_avg.pt (e.g. averaged on the GPU machine that
# trained it) is decoded from that file as is.
# Environment: DATA, SAVE_DENSE, SAVE_KMATRIX, NUM_AVG, OUT.
set -euo pipefail
source "$(dirname "$0")/../common.sh"
DATA=${DATA:-$ROOT/data-bin/multi30k.de-en}
OUT=${OUT:-$ROOT/runs/results/multi30k}
N=${NUM_AVG:-5}
ARGS=()
for model in dense kmatrix; do
    var=SAVE_${model^^}
    save=${!var:-$ROOT/checkpoints/multi30k_$model}
    n=$(find "$save" -maxdepth 1 -name 'checkpoint[0-9]*.pt' | wc -l)
    if [ "$n" -ge 1 ]; then
        n=$(( n < N ? n : N ))
        "$PY" -m fairseq_kaleidoscope average-checkpoints --inputs "$save" --num-epoch-checkpoints "$n" \
            --output "$save/checkpoint_avg.pt"
        path=$save/checkpoint_avg.pt
    elif [ -f "$save/checkpoint_avg.pt" ]; then
        path=$save/checkpoint_avg.pt
    else
        path=$save/checkpoint_last.pt
    fi
    ARGS+=(--checkpoint "$model=$path" --checkpoint "$model-int8=$path")
done
"$PY" -m fairseq_kaleidoscope.recipes.decode_bench "$DATA" "${ARGS[@]}" --remove-bpe --threads 1 \
    --int8 dense-int8=all --int8 kmatrix-int8=encoder,output_projection --out-dir "$OUT" --title "Multi30k De-En test_2016, natural decoding" "$@"
