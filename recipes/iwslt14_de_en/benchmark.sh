#!/usr/bin/env bash
# Single-thread CPU decoding benchmark, dense vs K-matrix DynamicConv, on the IWSLT14 test set.
#
#   recipes/iwslt14_de_en/benchmark.sh                 # randomly initialised IWSLT-sized models, forced lengths
#   recipes/iwslt14_de_en/benchmark.sh --trained       # the averaged checkpoints of train.sh/generate.sh, natural
#   recipes/iwslt14_de_en/benchmark.sh --ctranslate2   # + fairseq's Transformer and lightconv, CTranslate2 fp32/int8
#   ... [decode_bench options], e.g. --max-sentences 300 --repeats 2
#
# Settings: batch 1 greedy (latency, the paper's setting) and batch 128 beam 4 (fairseq's
# standard). Untrained models decode with every hypothesis forced to its reference length,
# so both models run exactly the same decoder steps (counted and reported); only the
# generation loop is timed. Writes decode_bench.{md,json,png} to OUT.
# Rows: dense fp32; dense with every linear layer in int8 (PyTorch dynamic quantization, what
# any user can apply); the K-matrix model (KMATRIX_LAYERS); the K-matrix model with its dense
# remainder (encoder, vocabulary projection) in int8 (--int8-dense INT8_DENSE); and the same
# K-matrix weights through the plain-PyTorch reference decoding step (identical outputs).
# Environment: DATA (default data-bin/iwslt14.tokenized.de-en; prepare.sh --bpe-dir
# ../shared/data/iwslt14.tokenized.de-en makes one from valid/test), OUT (default
# runs/results/iwslt14_benchmark), KMATRIX_LAYERS (default decoder.all), INT8_DENSE (default
# encoder,output_projection), SAVE_DENSE, SAVE_KMATRIX,
# ARCH_OPTIONS (more model options for the random-init models, e.g. smaller sizes for a smoke test).
# --ctranslate2: random-init rows against what users run today, every hypothesis forced to
# FIXED_LENGTH (default 25) tokens (CTranslate2 takes one length per call): stock fairseq
# lightconv and Transformer (fp32), CTranslate2 fp32 and int8 on that Transformer (needs pip
# install ctranslate2), our dense lightconv (fp32, int8) and K-matrix lightconv (fp32; int8 remainder, also
# searched by fairseq's SequenceGenerator instead of the lean search loop); settings batch 1 greedy, batch 32
# and batch 128 beam 4. TRANSFORMER_OPTIONS: more model options for the Transformer.
set -euo pipefail
source "$(dirname "$0")/../common.sh"
DATA=${DATA:-$ROOT/data-bin/iwslt14.tokenized.de-en}
OUT=${OUT:-$ROOT/runs/results/iwslt14_benchmark}
ARCH="--arch kaleidoscope_lightconv_iwslt_de_en --encoder-glu 0 --decoder-glu 0 ${ARCH_OPTIONS:-}"
[ -f "$DATA/dict.en.txt" ] || { echo "benchmark.sh: no data in $DATA (run prepare.sh)" >&2; exit 1; }
if [ "${1:-}" = "--trained" ]; then
    shift
    DENSE=${SAVE_DENSE:-$ROOT/checkpoints/iwslt14_dense}/checkpoint_last10_avg.pt
    KMAT=${SAVE_KMATRIX:-$ROOT/checkpoints/iwslt14_kmatrix}/checkpoint_last10_avg.pt
    MODELS=(--checkpoint "dense=$DENSE" --checkpoint "dense-int8=$DENSE"
            --checkpoint "kmatrix=$KMAT" --checkpoint "kmatrix-int8=$KMAT")
    TITLE="IWSLT14 De-En test, trained models, natural decoding"
elif [ "${1:-}" = "--ctranslate2" ]; then
    shift
    KMAT="$ARCH --kmatrix-layers ${KMATRIX_LAYERS:-decoder.all}"
    MODELS=(--random "fairseq-lightconv=--arch lightconv_iwslt_de_en --encoder-glu 0 --decoder-glu 0 ${ARCH_OPTIONS:-}"
            --random "fairseq-transformer=--arch transformer_iwslt_de_en ${TRANSFORMER_OPTIONS:-}"
            --ctranslate2 ct2-fp32=fairseq-transformer:float32 --ctranslate2 ct2-int8=fairseq-transformer:int8
            --random "dense=$ARCH --kmatrix-layers none" --random "dense-int8=$ARCH --kmatrix-layers none"
            --random "kmatrix=$KMAT" --random "kmatrix-int8=$KMAT"
            --random "kmatrix-int8-fairseq-search=$KMAT" --int8 "kmatrix-int8-fairseq-search=${INT8_DENSE:-encoder,output_projection}"
            --fairseq-search kmatrix-int8-fairseq-search --fixed-length "${FIXED_LENGTH:-25}"
            --setting batch1-greedy:1:1 --setting batch32-beam4:32:4 --setting batch128-beam4:128:4)
    TITLE="IWSLT14 De-En test, random-init IWSLT-sized models, ${FIXED_LENGTH:-25} tokens per sentence"
else
    KMAT="$ARCH --kmatrix-layers ${KMATRIX_LAYERS:-decoder.all}"
    MODELS=(--random "dense=$ARCH --kmatrix-layers none" --random "dense-int8=$ARCH --kmatrix-layers none"
            --random "kmatrix=$KMAT" --random "kmatrix-int8=$KMAT" --random "kmatrix-reference=$KMAT"
            --reference-step kmatrix-reference --forced-length)
    TITLE="IWSLT14 De-En test, random-init IWSLT-sized models, forced reference lengths"
fi
"$PY" -m fairseq_kaleidoscope.recipes.decode_bench "$DATA" "${MODELS[@]}" --remove-bpe --threads 1 \
    --int8 dense-int8=all --int8 "kmatrix-int8=${INT8_DENSE:-encoder,output_projection}" \
    --out-dir "$OUT" --title "$TITLE" "$@"
