"""``python -m fairseq_kaleidoscope``: where the fairseq user dir is, the version, checkpoint averaging.

    python -m fairseq_kaleidoscope --user-dir      # prints the directory to pass to fairseq's --user-dir
    python -m fairseq_kaleidoscope --version
    python -m fairseq_kaleidoscope average-checkpoints --inputs DIR --num-epoch-checkpoints 10 --output avg.pt
    python -m fairseq_kaleidoscope param-count --src-dict dict.de.txt --tgt-dict dict.en.txt
"""

from __future__ import annotations

import argparse
import os
import sys
from collections.abc import Sequence


def main(argv: Sequence[str] | None = None) -> None:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] == "average-checkpoints":
        from .compat.average_checkpoints import main as average_main

        average_main(argv[1:])
        return
    if argv and argv[0] == "param-count":
        from .models.param_count import main as count_main

        count_main(argv[1:])
        return
    parser = argparse.ArgumentParser(prog="python -m fairseq_kaleidoscope", description=__doc__.split("\n")[0])
    parser.add_argument("--user-dir", action="store_true", help="print the directory to pass to fairseq's --user-dir")
    parser.add_argument("--version", action="store_true", help="print the package version")
    args = parser.parse_args(argv)
    if not (args.user_dir or args.version):
        parser.print_help()
        print("\nsubcommands: average-checkpoints, param-count (see: python -m fairseq_kaleidoscope SUBCOMMAND -h)")
        return
    if args.version:
        from . import __version__

        print(__version__)
    if args.user_dir:
        print(os.path.dirname(os.path.abspath(__file__)))


if __name__ == "__main__":
    main()
