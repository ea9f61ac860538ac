#!/usr/bin/env bash
# The steps both recipes' distill.sh share: the teacher translates the training set (once per
# teacher), then a K-matrix student trains on that output with the recipe's train.sh.
#
#   recipes/distill_student.sh RECIPE_DIR scratch|convert [fairseq-train options]
#
# Set by the caller: DATA (the teacher's data-bin), TEACHER (its checkpoint), SAVE (the student's
# checkpoints). Optional: DISTILLED (default $DATA.distilled, or $DATA.distilled-mix with MIX=1),
# BEAM (5), BATCH (128), THREADS (all cores), MIX (1: original plus distilled targets), TARGETS
# (distilled, the default, or original: the student trains on the original data, no teacher decoding;
# with convert, what measured best on Multi30k),
# ACTIVATIONS (convert: recorded inputs per layer, default 2048), CONVERT_OPTIONS (more options for
# python -m fairseq_kaleidoscope convert, e.g. "--steps 200"), LR_SCALE (twiddle lr scale; default
# the recipe's for scratch, 1 for convert: the converted twiddles are already fitted).
set -euo pipefail
source "$(dirname "$0")/common.sh"
RECIPE_DIR=${1:?usage: distill_student.sh RECIPE_DIR scratch|convert [fairseq-train options]}
INIT=${2:?usage: distill_student.sh RECIPE_DIR scratch|convert [fairseq-train options]}
shift 2
case $INIT in
    scratch|convert) ;;
    *) echo "distill: the student's start must be scratch or convert, got $INIT" >&2; exit 2 ;;
esac
: "${DATA:?}" "${TEACHER:?}" "${SAVE:?}"
[ -f "$TEACHER" ] || { echo "distill: no teacher checkpoint $TEACHER (train one: $RECIPE_DIR/train.sh dense)" >&2; exit 1; }
TARGETS=${TARGETS:-distilled}
case $TARGETS in
    distilled|original) ;;
    *) echo "distill: TARGETS must be distilled (the teacher's translations) or original, got $TARGETS" >&2; exit 2 ;;
esac
MIX_ARGS=()
if [ "${MIX:-0}" = 1 ]; then MIX_ARGS=(--mix); fi
DISTILLED=${DISTILLED:-$DATA.distilled$([ "${MIX:-0}" = 1 ] && echo -mix || true)}
MARK=$DISTILLED/teacher.txt  # which teacher wrote the data: redo it when the teacher changes
if [ "$TARGETS" = original ]; then
    DISTILLED=$DATA
    echo "==> TARGETS=original: the student trains on the original targets (no teacher translations)"
elif [ -f "$MARK" ] && [ "$(cat "$MARK")" = "$(realpath "$TEACHER") $(stat -c %Y "$TEACHER")" ]; then
    echo "==> reusing $DISTILLED (written by this teacher)"
else
    echo "==> the teacher translates the training set: $TEACHER"
    rm -rf "$DISTILLED"
    "$PY" -m fairseq_kaleidoscope distill --teacher "$TEACHER" --data "$DATA" --out "$DISTILLED" \
        --beam "${BEAM:-5}" --batch-size "${BATCH:-128}" --threads "${THREADS:-$(nproc)}" "${MIX_ARGS[@]}"
    echo "$(realpath "$TEACHER") $(stat -c %Y "$TEACHER")" > "$MARK"
fi
RESTORE=()
if [ "$INIT" = convert ]; then
    mkdir -p "$SAVE"
    echo "==> converting the teacher's decoder to K-matrices (${ACTIVATIONS:-2048} recorded inputs per layer)"
    OMP_NUM_THREADS=${THREADS:-$(nproc)} "$PY" -m fairseq_kaleidoscope convert --input "$TEACHER" \
        --output "$SAVE/converted.pt" --kmatrix-layers decoder.all --data-bin "$DATA" --activations "${ACTIVATIONS:-2048}" ${CONVERT_OPTIONS:-}
    RESTORE=(--restore-file "$SAVE/converted.pt" --reset-optimizer --reset-dataloader --reset-meters --reset-lr-scheduler)
    export LR_SCALE=${LR_SCALE:-1} KMATRIX_LR_SCALE=${LR_SCALE:-1}
fi
echo "==> training the K-matrix student on $DISTILLED"
DATA=$DISTILLED SAVE=$SAVE "$RECIPE_DIR/train.sh" kmatrix "${RESTORE[@]}" "$@"
