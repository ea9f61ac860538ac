#!/usr/bin/env bash
# Sequence-level distillation on IWSLT14 De-En: the dense teacher (train.sh dense) translates the
# training set and a K-matrix student (decoder.all) trains on its translations with train.sh.
#
#   recipes/iwslt14_de_en/distill.sh scratch|convert [fairseq-train options]
#
# scratch: the student starts from the usual K-matrix initialisation; convert: from the teacher,
# its decoder's linear layers fitted as K-matrices on recorded inputs, then fine-tuned.
# Environment: TEACHER (default checkpoints/iwslt14_dense/checkpoint_best.pt), DATA (default
# data-bin/iwslt14.tokenized.de-en), SAVE (default checkpoints/iwslt14_student_<start>), and those
# of ../distill_student.sh (BEAM, BATCH, THREADS, MIX, TARGETS, DISTILLED, ACTIVATIONS, LR_SCALE) and
# train.sh (MAX_UPDATE).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
INIT=${1:?usage: distill.sh scratch|convert [fairseq-train options]}
export DATA=${DATA:-$ROOT/data-bin/iwslt14.tokenized.de-en}
export TEACHER=${TEACHER:-$ROOT/checkpoints/iwslt14_dense/checkpoint_best.pt}
export SAVE=${SAVE:-$ROOT/checkpoints/iwslt14_student_$INIT}
exec "$ROOT/recipes/distill_student.sh" "$ROOT/recipes/iwslt14_de_en" "$@"
