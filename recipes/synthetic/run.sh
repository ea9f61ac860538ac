#!/usr/bin/env bash
# The main job on the synthetic corpus (what `make demo` runs): no download, a few minutes on 2 cores.
#
#   recipes/synthetic/run.sh [main_job options]     # e.g. --max-update 1000 --embed-dim 128
#
# Generates a synthetic German->English corpus (word reordering and agreement), trains a tiny
# dense and a tiny K-matrix DynamicConv for the same number of updates, decodes the test set
# with both on one thread and prints the BLEU / time / parameters table. Output in runs/demo.
# On real data: --data-bin DIR --remove-bpe (a directory from the other recipes' prepare.sh).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
cd "$ROOT"
exec "$PY" -m fairseq_kaleidoscope.recipes.main_job "$@"
