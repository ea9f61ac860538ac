"""fairseq dictionaries built from text files, optionally padded to a fixed size.

The decoding benchmark runs on the IWSLT14 valid/test text only (the training set is not
available offline), whose vocabulary is smaller than the standard one built from the
training set (8,848 German / 6,632 English types with fairseq's preparation). Padding
the dictionaries with unused ``madeupwordNNNN`` entries to the standard sizes keeps the
embedding and output-projection costs of an IWSLT-sized model realistic.

CLI: ``python -m fairseq_kaleidoscope.recipes.vocab OUT.txt FILE... [--size N]``.
"""

from __future__ import annotations

import argparse
from pathlib import Path


def build_dictionary(files: list[str], size: int | None = None):
    """A fairseq ``Dictionary`` of the tokens in ``files``, padded to ``size`` entries if given."""
    from fairseq.data import Dictionary

    d = Dictionary()
    for path in files:
        if not Path(path).is_file():
            raise FileNotFoundError(f"vocab: input file {path!r} does not exist")
        Dictionary.add_file_to_dictionary(path, d, str.split, 1)
    d.finalize()
    if size is not None:
        if size < len(d):
            raise ValueError(f"vocab: {len(d)} types already exceed the requested size {size}")
        i = 0
        while len(d) < size:
            d.add_symbol(f"madeupword{i:05d}", n=0)
            i += 1
    return d


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("out", help="dictionary file to write (fairseq dict.txt format)")
    parser.add_argument("files", nargs="+", help="tokenized text files")
    parser.add_argument("--size", type=int, default=None, help="pad to this many entries (special symbols included)")
    args = parser.parse_args(argv)
    d = build_dictionary(args.files, args.size)
    d.save(args.out)
    print(f"vocab: {len(d)} entries -> {args.out}")


if __name__ == "__main__":
    main()
