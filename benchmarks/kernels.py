"""``python benchmarks/kernels.py`` runs ``python -m fairseq_kaleidoscope bench-kernels``.

The benchmark lives in the package (fairseq_kaleidoscope/bench/kernels.py) so the command
works from an installed package too.
"""

import sys

from fairseq_kaleidoscope.bench.kernels import main

if __name__ == "__main__":
    sys.exit(main())
