#!/usr/bin/env bash
# The main job on the synthetic corpus (what `make demo` runs): no download, a few minutes on 2 cores.
#
#   recipes/synthetic/run.sh [main_job options]     # e.g. --max-update 800 --embed-dim 128
#
# Quality: generates a synthetic German->English corpus (reordering, agreement, a Zipf lexicon),
# trains a small dense and a small K-matrix DynamicConv for the same number of updates and scores
# both on the test set. Speed: times the paper's model size (dense vs K-matrix decoder, batch 1
# greedy, forced lengths, one thread). Table, plot and JSON in runs/demo.
# On real data for the quality part: --data-bin DIR --remove-bpe (from the other recipes' prepare.sh).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
cd "$ROOT"
exec "$PY" -m fairseq_kaleidoscope.recipes.main_job "$@"
