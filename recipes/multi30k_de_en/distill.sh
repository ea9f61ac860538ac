#!/usr/bin/env bash
# Sequence-level distillation on Multi30k: the dense teacher translates the training set and a
# K-matrix student (decoder.all) trains on its translations with train.sh's schedule and budget.
#
#   recipes/multi30k_de_en/distill.sh scratch|convert [fairseq-train options]
#
# scratch: the student starts from the usual K-matrix initialisation; convert: from the teacher,
# its decoder's linear layers fitted as K-matrices on recorded inputs (python -m fairseq_kaleidoscope
# convert --activations), then fine-tuned. Environment: TEACHER (default
# checkpoints/multi30k_dense/checkpoint_best.pt), DATA (default data-bin/multi30k.de-en), SAVE
# (default checkpoints/multi30k_student_<start>), and those of ../distill_student.sh (BEAM, BATCH,
# THREADS, MIX, TARGETS, DISTILLED, ACTIVATIONS, LR_SCALE) and train.sh (BUDGET_HOURS, MAX_EPOCH).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
INIT=${1:?usage: distill.sh scratch|convert [fairseq-train options]}
export DATA=${DATA:-$ROOT/data-bin/multi30k.de-en}
export TEACHER=${TEACHER:-$ROOT/checkpoints/multi30k_dense/checkpoint_best.pt}
export SAVE=${SAVE:-$ROOT/checkpoints/multi30k_student_$INIT}
exec "$ROOT/recipes/distill_student.sh" "$ROOT/recipes/multi30k_de_en" "$@"
