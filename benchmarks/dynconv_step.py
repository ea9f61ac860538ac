"""``python benchmarks/dynconv_step.py`` runs ``python -m fairseq_kaleidoscope bench-dynconv``.

The benchmark lives in the package (fairseq_kaleidoscope/bench/dynconv_step.py) so the command
works from an installed package too.
"""

import sys

from fairseq_kaleidoscope.bench.dynconv_step import main

if __name__ == "__main__":
    sys.exit(main())
