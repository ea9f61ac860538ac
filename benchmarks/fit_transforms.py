"""``python benchmarks/fit_transforms.py`` runs ``python -m fairseq_kaleidoscope fit-transforms``.

The benchmark lives in the package (fairseq_kaleidoscope/bench/fit_transforms.py) so the command
works from an installed package too.
"""

import sys

from fairseq_kaleidoscope.bench.fit_transforms import main

if __name__ == "__main__":
    sys.exit(main())
