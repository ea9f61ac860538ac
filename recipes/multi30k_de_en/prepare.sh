#!/usr/bin/env bash
# Multi30k task 1 German->English (29,000 / 1,014 / 1,000 pairs), binarized for fairseq.
#
#   recipes/multi30k_de_en/prepare.sh [--bpe-size 8000]
#
# Input: the tokenized lower-cased files {train,val,test_2016_flickr}.lc.norm.tok.{de,en}
# from $SRC (default ../shared/data/multi30k when present), else downloaded from the
# multi30k/dataset repository. Joint BPE with sentencepiece in the '@@ ' format, then
# fairseq-preprocess with a joined dictionary; test = test_2016_flickr.
# Environment: SRC, OUT (default data-bin/multi30k.de-en), WORK (default runs/multi30k),
# MAX_TRAIN (use only the first N training pairs: smoke tests).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
OUT=${OUT:-$ROOT/data-bin/multi30k.de-en}
WORK=${WORK:-$ROOT/runs/multi30k}
URL=${URL:-https://raw.githubusercontent.com/multi30k/dataset/master/data/task1/tok}
BPE_SIZE=8000
while [ $# -gt 0 ]; do
    case $1 in
        --bpe-size) BPE_SIZE=$2; shift 2 ;;
        -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
        *) echo "prepare.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
if [ -z "${SRC:-}" ]; then
    if [ -f "$SHARED_DATA/multi30k/train.lc.norm.tok.de" ]; then
        SRC=$SHARED_DATA/multi30k
    else
        SRC=$WORK/orig
        mkdir -p "$SRC"
        for split in train val test_2016_flickr; do
            for l in de en; do
                f=$split.lc.norm.tok.$l
                [ -f "$SRC/$f" ] || { echo "==> downloading $f"; curl -fL --retry 3 -o "$SRC/$f" "$URL/$f"; }
            done
        done
    fi
fi
mkdir -p "$WORK/text"
for l in de en; do
    head -n "${MAX_TRAIN:-100000000}" "$SRC/train.lc.norm.tok.$l" > "$WORK/text/train.tok.$l"
    cp "$SRC/val.lc.norm.tok.$l" "$WORK/text/valid.tok.$l"
    cp "$SRC/test_2016_flickr.lc.norm.tok.$l" "$WORK/text/test.tok.$l"
done
echo "==> learning joint BPE ($BPE_SIZE) on $(wc -l < "$WORK/text/train.tok.de") training pairs"
"$PY" -m fairseq_kaleidoscope.recipes.subword learn "$WORK/bpe" "$WORK/text/train.tok.de" "$WORK/text/train.tok.en" \
    --vocab-size "$BPE_SIZE"
for split in train valid test; do
    for l in de en; do
        "$PY" -m fairseq_kaleidoscope.recipes.subword apply "$WORK/bpe.model" "$WORK/text/$split.tok.$l" \
            "$WORK/text/$split.$l"
    done
done
rm -rf "$OUT"
fairseq preprocess --source-lang de --target-lang en --trainpref "$WORK/text/train" --validpref "$WORK/text/valid" \
    --testpref "$WORK/text/test" --destdir "$OUT" --joined-dictionary --workers 1
echo "prepared: $OUT"
