#!/usr/bin/env bash
# test_2016 BLEU and single-thread CPU decoding of trained Multi30k models, in one table.
#
#   recipes/multi30k_de_en/evaluate.sh [decode_bench options]
#
# MODELS: space-separated NAME=SAVE_DIR (default "dense=checkpoints/multi30k_dense
# kmatrix=checkpoints/multi30k_kmatrix"); the first is the speed baseline. From each save directory
# the CHECKPOINT rule picks the model: last (default: checkpoint_last.pt, the end of the budget), best
# (checkpoint_best.pt, lowest validation loss) or avgN (the average of the last N epoch checkpoints).
# On valid BLEU (docs/results.md) last = best > avg3 > avg5 for the dense model; for students trained on
# distilled data the validation loss against real references picks early checkpoints (best: 6 BLEU
# below last for the converted student), hence last. A directory holding only
# checkpoint_avg.pt is decoded from that file. Each model is decoded in fp32 and with int8 dense layers
# (models named dense*: all linear layers; the others, K-matrix: their dense remainder,
# --int8-dense encoder,output_projection), with one intra-op thread, natural lengths: batch 128 beam 5
# (test BLEU, the scoring docs/results.md uses), batch 1 greedy and batch 128 beam 4 (speed).
# Writes decode_bench.{md,json,png} to OUT (default runs/results/multi30k).
# Environment: DATA, MODELS, CHECKPOINT, OUT.
set -euo pipefail
source "$(dirname "$0")/../common.sh"
DATA=${DATA:-$ROOT/data-bin/multi30k.de-en}
OUT=${OUT:-$ROOT/runs/results/multi30k}
MODELS=${MODELS:-dense=$ROOT/checkpoints/multi30k_dense kmatrix=$ROOT/checkpoints/multi30k_kmatrix}
RULE=${CHECKPOINT:-last}
ARGS=()
for spec in $MODELS; do
    name=${spec%%=*} save=${spec#*=}
    [ "$name" != "$spec" ] || { echo "evaluate.sh: MODELS entries must be NAME=SAVE_DIR, got $spec" >&2; exit 2; }
    case $RULE in
        best|last) path=$save/checkpoint_$RULE.pt ;;
        avg[0-9]*)
            n=${RULE#avg}
            path=$save/checkpoint_avg$n.pt
            "$PY" -m fairseq_kaleidoscope average-checkpoints --inputs "$save" --num-epoch-checkpoints "$n" --output "$path" ;;
        *) echo "evaluate.sh: CHECKPOINT must be best, last or avgN, got $RULE" >&2; exit 2 ;;
    esac
    [ -f "$path" ] || path=$save/checkpoint_avg.pt
    case $name in dense*) int8=all ;; *) int8=encoder,output_projection ;; esac
    ARGS+=(--checkpoint "$name=$path" --checkpoint "$name-int8=$path" --int8 "$name-int8=$int8")
done
"$PY" -m fairseq_kaleidoscope.recipes.decode_bench "$DATA" "${ARGS[@]}" --remove-bpe --threads 1 \
    --setting batch128-beam5:128:5 --setting batch1-greedy:1:1 --setting batch128-beam4:128:4 \
    --out-dir "$OUT" --title "Multi30k De-En test_2016, natural decoding" "$@"
