"""``python -m fairseq_kaleidoscope <command>``: every command-line tool of the package.

    python -m fairseq_kaleidoscope --user-dir      # the directory to pass to fairseq's --user-dir
    python -m fairseq_kaleidoscope --version
    python -m fairseq_kaleidoscope COMMAND -h      # the options of one command
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

# command -> (module with a ``main(argv)``, one line of help). Modules are imported only when run.
COMMANDS: dict[str, tuple[str, str]] = {
    "convert": ("fairseq_kaleidoscope.convert", "convert a dense fairseq checkpoint into a K-matrix one"),
    "demo": ("fairseq_kaleidoscope.recipes.main_job", "the main job: train dense and K-matrix models, compare"),
    "distill": ("fairseq_kaleidoscope.recipes.distill", "a teacher translates a corpus: a student's training data"),
    "layer-demo": ("fairseq_kaleidoscope.demo", "KaleidoscopeLinear against nn.Linear on a few sizes"),
    "bench-kernels": ("fairseq_kaleidoscope.bench.kernels", "CPU benchmark: K-matrix multiply against nn.Linear"),
    "bench-decode": ("fairseq_kaleidoscope.recipes.decode_bench", "decoding speed and BLEU of fairseq models"),
    "bench-dynconv": ("fairseq_kaleidoscope.bench.dynconv_step", "CPU benchmark of one DynamicConv decoding step"),
    "fit-transforms": ("fairseq_kaleidoscope.bench.fit_transforms", "can a K-matrix learn the DFT, Hadamard, ...?"),
    "average-checkpoints": ("fairseq_kaleidoscope.compat.average_checkpoints", "average fairseq checkpoints"),
    "param-count": ("fairseq_kaleidoscope.models.param_count", "parameter counts of the fairseq architectures"),
}
PROG = "python -m fairseq_kaleidoscope"


def _parser() -> argparse.ArgumentParser:
    table = "\n".join(f"  {name:<20} {help_line}" for name, (_, help_line) in COMMANDS.items())
    parser = argparse.ArgumentParser(
        prog=PROG,
        usage=f"{PROG} [--user-dir | --version | COMMAND [options]]",
        description=__doc__.split("\n")[0].replace("``", ""),
        epilog=f"commands:\n{table}\n\n'{PROG} COMMAND -h' lists a command's options.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--user-dir", action="store_true", help="print the directory to pass to fairseq's --user-dir")
    parser.add_argument("--version", action="store_true", help="print the package version")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv and argv[0] in COMMANDS:
        module = importlib.import_module(COMMANDS[argv[0]][0])
        saved, sys.argv[0] = sys.argv[0], f"{PROG} {argv[0]}"  # argparse's default prog in the command's help
        try:
            return module.main(argv[1:]) or 0
        finally:
            sys.argv[0] = saved
    parser = _parser()
    if argv and not argv[0].startswith("-"):
        parser.error(f"unknown command {argv[0]!r}; commands: {', '.join(COMMANDS)}")
    args = parser.parse_args(argv)
    if not (args.user_dir or args.version):
        parser.print_help()
        return 0
    if args.version:
        from . import __version__

        print(__version__)
    if args.user_dir:
        print(os.path.dirname(os.path.abspath(__file__)))
    return 0


if __name__ == "__main__":
    sys.exit(main())
