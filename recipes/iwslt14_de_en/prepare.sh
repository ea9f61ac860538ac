#!/usr/bin/env bash
# IWSLT14 German->English, fairseq's standard preparation, binarized for fairseq.
#
#   recipes/iwslt14_de_en/prepare.sh                 # download the archive and prepare everything
#   recipes/iwslt14_de_en/prepare.sh --bpe-dir DIR   # start from BPE'd text DIR/{train,valid,test}.{de,en}
#
# Full preparation (needs internet): Moses tokenisation + lower-casing (sacremoses), length
# cleaning, valid = every 23rd training line, test = TED dev2010 + tst2010-2012 + TEDX dev2012,
# joint BPE (sentencepiece, --bpe-size, default 10000) written in the '@@ ' format.
# With --bpe-dir and no train.* (e.g. ../shared/data/iwslt14.tokenized.de-en, valid and test
# only), the dictionaries come from valid+test, padded to the standard sizes (8,848 de /
# 6,632 en), and only valid/test are binarized: enough for the decoding benchmark.
#
# Environment: OUT (default data-bin/iwslt14.tokenized.de-en), WORK (default runs/iwslt14),
# URL (the archive), WORKERS (fairseq-preprocess workers, default 1).
set -euo pipefail
source "$(dirname "$0")/../common.sh"
OUT=${OUT:-$ROOT/data-bin/iwslt14.tokenized.de-en}
WORK=${WORK:-$ROOT/runs/iwslt14}
URL=${URL:-http://dl.fbaipublicfiles.com/fairseq/data/iwslt14/de-en.tgz}
WORKERS=${WORKERS:-1}
BPE_DIR=""
BPE_SIZE=10000
while [ $# -gt 0 ]; do
    case $1 in
        --bpe-dir) BPE_DIR=$2; shift 2 ;;
        --bpe-size) BPE_SIZE=$2; shift 2 ;;
        -h|--help) sed -n '2,19p' "$0"; exit 0 ;;
        *) echo "prepare.sh: unknown option $1" >&2; exit 2 ;;
    esac
done
mkdir -p "$WORK"

if [ -z "$BPE_DIR" ]; then
    if [ ! -f "$WORK/orig/de-en/train.tags.de-en.de" ]; then
        echo "==> downloading $URL"
        mkdir -p "$WORK/orig"
        curl -fL --retry 3 -o "$WORK/orig/de-en.tgz" "$URL"
        tar -xzf "$WORK/orig/de-en.tgz" -C "$WORK/orig"
    fi
    "$PY" -m fairseq_kaleidoscope.recipes.iwslt14_text "$WORK/orig/de-en" "$WORK/tok"
    echo "==> learning joint BPE ($BPE_SIZE) on train.de + train.en"
    "$PY" -m fairseq_kaleidoscope.recipes.subword learn "$WORK/bpe" "$WORK/tok/train.de" "$WORK/tok/train.en" \
        --vocab-size "$BPE_SIZE"
    mkdir -p "$WORK/bpe_text"
    for split in train valid test; do
        for l in de en; do
            "$PY" -m fairseq_kaleidoscope.recipes.subword apply "$WORK/bpe.model" "$WORK/tok/$split.$l" \
                "$WORK/bpe_text/$split.$l"
        done
    done
    BPE_DIR=$WORK/bpe_text
fi

for f in valid.de valid.en test.de test.en; do
    [ -f "$BPE_DIR/$f" ] || { echo "prepare.sh: $BPE_DIR/$f not found" >&2; exit 1; }
done
rm -rf "$OUT"
if [ -f "$BPE_DIR/train.de" ] && [ -f "$BPE_DIR/train.en" ]; then
    echo "==> fairseq-preprocess (train/valid/test) -> $OUT"
    fairseq preprocess --source-lang de --target-lang en --trainpref "$BPE_DIR/train" \
        --validpref "$BPE_DIR/valid" --testpref "$BPE_DIR/test" --destdir "$OUT" --workers "$WORKERS"
else
    echo "==> no train.{de,en} in $BPE_DIR: binarizing valid/test only (decoding benchmark)," \
        "dictionaries from valid+test padded to 8848/6632 entries"
    "$PY" -m fairseq_kaleidoscope.recipes.vocab "$WORK/dict.de.txt" "$BPE_DIR/valid.de" "$BPE_DIR/test.de" --size 8848
    "$PY" -m fairseq_kaleidoscope.recipes.vocab "$WORK/dict.en.txt" "$BPE_DIR/valid.en" "$BPE_DIR/test.en" --size 6632
    fairseq preprocess --source-lang de --target-lang en --validpref "$BPE_DIR/valid" --testpref "$BPE_DIR/test" \
        --srcdict "$WORK/dict.de.txt" --tgtdict "$WORK/dict.en.txt" --destdir "$OUT" --workers "$WORKERS"
fi
echo "prepared: $OUT"
