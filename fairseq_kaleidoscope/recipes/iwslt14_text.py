"""IWSLT14 De-En text preparation, as fairseq's ``prepare-iwslt14.sh`` does it.

From the extracted ``de-en`` folder of the IWSLT14 archive:

- train: ``train.tags.de-en.{de,en}`` without the url/talkid/keywords lines and with the
  title/description tags stripped; Moses-tokenized
  (sacremoses) and lower-cased; pairs longer than 175 tokens or with a length ratio above
  1.5 dropped (Moses ``clean-corpus-n.perl -ratio 1.5 1 175``);
- valid: every 23rd line of that training text (lines 23, 46, ...), removed from train;
- test: the ``<seg>`` contents of TED dev2010, tst2010, tst2011, tst2012 and TEDX dev2012.

Writes tokenized, lower-cased ``{train,valid,test}.{de,en}`` (BPE is a separate step,
``subword.py``). CLI: ``python -m fairseq_kaleidoscope.recipes.iwslt14_text ORIG_DIR OUT_DIR``.
"""

from __future__ import annotations

import argparse
import html
import re
from pathlib import Path

from .progress import stage

LANGS = ("de", "en")
TEST_SETS = (
    "IWSLT14.TED.dev2010",
    "IWSLT14.TEDX.dev2012",
    "IWSLT14.TED.tst2010",
    "IWSLT14.TED.tst2011",
    "IWSLT14.TED.tst2012",
)
DROPPED = ("<url>", "<talkid>", "<keywords>")  # metadata lines fairseq's script removes
STRIPPED = re.compile(r"</?(title|description)>")  # tags it strips, keeping the text
SEG = re.compile(r"<seg[^>]*>(.*)</seg>")


def train_lines(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [STRIPPED.sub("", line).strip() for line in f if not any(tag in line for tag in DROPPED)]


def xml_segments(path: Path) -> list[str]:
    with open(path, encoding="utf-8") as f:
        return [html.unescape(m.group(1).strip()).replace("\u2019", "'") for line in f if (m := SEG.search(line))]


def tokenize(lines: list[str], lang: str) -> list[str]:
    from sacremoses import MosesTokenizer

    tok = MosesTokenizer(lang=lang)
    return [tok.tokenize(line, escape=False, return_str=True).lower() for line in lines]


def keep_pair(src: str, tgt: str, max_len: int = 175, ratio: float = 1.5) -> bool:
    ls, lt = len(src.split()), len(tgt.split())
    return 1 <= ls <= max_len and 1 <= lt <= max_len and ls <= ratio * lt and lt <= ratio * ls


def prepare(orig: Path, out: Path) -> dict[str, int]:
    out.mkdir(parents=True, exist_ok=True)
    text: dict[str, dict[str, list[str]]] = {"train": {}, "test": {}}
    for lang in LANGS:
        src = orig / f"train.tags.de-en.{lang}"
        if not src.is_file():
            raise FileNotFoundError(f"iwslt14_text: {src} not found (extract the IWSLT14 de-en archive there)")
        stage(f"tokenizing train.{lang} (sacremoses, lower-cased)")
        text["train"][lang] = tokenize(train_lines(src), lang)
        test: list[str] = []
        for name in TEST_SETS:
            xml = orig / f"{name}.de-en.{lang}.xml"
            if not xml.is_file():
                raise FileNotFoundError(f"iwslt14_text: {xml} not found")
            test += xml_segments(xml)
        text["test"][lang] = tokenize(test, lang)
    if len(text["train"]["de"]) != len(text["train"]["en"]):
        raise ValueError("iwslt14_text: train.tags de/en have different numbers of lines")
    pairs = [(d, e) for d, e in zip(text["train"]["de"], text["train"]["en"], strict=True) if keep_pair(d, e)]
    splits = {
        "valid": [p for i, p in enumerate(pairs, 1) if i % 23 == 0],
        "train": [p for i, p in enumerate(pairs, 1) if i % 23 != 0],
        "test": list(zip(text["test"]["de"], text["test"]["en"], strict=True)),
    }
    for split, split_pairs in splits.items():
        for k, lang in enumerate(LANGS):
            (out / f"{split}.{lang}").write_text("".join(p[k] + "\n" for p in split_pairs), encoding="utf-8")
    return {split: len(p) for split, p in splits.items()}


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("orig", help="the extracted de-en folder of the IWSLT14 archive")
    parser.add_argument("out")
    args = parser.parse_args(argv)
    sizes = prepare(Path(args.orig), Path(args.out))
    print("iwslt14_text: " + ", ".join(f"{k} {v} pairs" for k, v in sizes.items()))


if __name__ == "__main__":
    main()
