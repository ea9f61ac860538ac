#!/usr/bin/env bash
# Train the dense DynamicConv baseline or its K-matrix counterpart on IWSLT14 De-En with the
# "Pay Less Attention" IWSLT hyperparameters (fairseq examples/pay_less_attention_paper).
#
#   recipes/iwslt14_de_en/train.sh dense   [extra fairseq-train options]
#   recipes/iwslt14_de_en/train.sh kmatrix [extra fairseq-train options]
#
# Both use our architecture kaleidoscope_lightconv_iwslt_de_en (the same DynamicConv);
# "dense" has --kmatrix-layers none, "kmatrix" replaces every decoder linear layer
# (--kmatrix-layers decoder.all, the Kaleidoscope paper's choice). Extra options go to
# fairseq-train last and win, e.g. --kmatrix-layers encoder.all,decoder.all or, for a CPU
# smoke run, --max-update 20 --max-tokens 500 --cpu.
# Environment: DATA (default data-bin/iwslt14.tokenized.de-en), SAVE (default
# checkpoints/iwslt14_<model>), MAX_UPDATE (default 50000), KMATRIX_LR_SCALE (default 1).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
MODEL=${1:?usage: train.sh dense|kmatrix [fairseq-train options]}
shift
case $MODEL in
    dense) KMATRIX=(--kmatrix-layers none) ;;
    kmatrix) KMATRIX=(--kmatrix-layers decoder.all --kmatrix-lr-scale "${KMATRIX_LR_SCALE:-1}") ;;
    *) echo "train.sh: model must be dense or kmatrix, got $MODEL" >&2; exit 2 ;;
esac
DATA=${DATA:-$ROOT/data-bin/iwslt14.tokenized.de-en}
SAVE=${SAVE:-$ROOT/checkpoints/iwslt14_$MODEL}
[ -f "$DATA/train.de-en.de.bin" ] || { echo "train.sh: no training data in $DATA (run prepare.sh)" >&2; exit 1; }
mkdir -p "$SAVE"
fairseq train "$DATA" --user-dir "$USER_DIR" \
    --arch kaleidoscope_lightconv_iwslt_de_en "${KMATRIX[@]}" \
    --source-lang de --target-lang en \
    --clip-norm 0 --optimizer adam --adam-betas '(0.9, 0.98)' --lr 0.0005 --weight-decay 0.0001 \
    --lr-scheduler inverse_sqrt --warmup-updates 4000 --warmup-init-lr 1e-07 --stop-min-lr 1e-09 \
    --criterion label_smoothed_cross_entropy --label-smoothing 0.1 \
    --dropout 0.3 --attention-dropout 0.1 --weight-dropout 0.1 --encoder-glu 0 --decoder-glu 0 \
    --max-tokens 4000 --max-update "${MAX_UPDATE:-50000}" --keep-last-epochs 10 \
    --ddp-backend legacy_ddp --no-progress-bar --log-interval 100 --save-dir "$SAVE" "$@"
