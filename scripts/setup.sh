#!/usr/bin/env bash
# Idempotent setup: a virtual environment in .venv with torch 2.13, fairseq (the
# ve-fairseq wheel, installed without its dependencies) and this package built in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3.11}
VENV=${VENV:-.venv}
FAIRSEQ_WHEEL="ve-fairseq==0.12.3"

if ! command -v "$PYTHON" >/dev/null 2>&1; then
    echo "setup: $PYTHON not found; Python 3.11 is required (set PYTHON=/path/to/python3.11)" >&2
    exit 1
fi
if [ ! -x "$VENV/bin/python" ]; then
    echo "setup: creating $VENV with $("$PYTHON" --version)"
    "$PYTHON" -m venv "$VENV"
fi
PIP=("$VENV/bin/python" -m pip --disable-pip-version-check -q)

# Skip the (slow) resolver when requirements have not changed since the last setup.
stamp="$VENV/.requirements.sha256"
want=$(cat requirements.txt scripts/setup.sh | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing requirements (torch 2.13.0, fairseq runtime needs, tools)"
    "${PIP[@]}" install -r requirements.txt
    # --no-deps: fairseq's metadata pulls torchaudio, which must not be installed.
    "${PIP[@]}" install --no-deps "$FAIRSEQ_WHEEL"
    if "$VENV/bin/python" -c "import torchaudio" 2>/dev/null; then
        echo "setup: torchaudio is installed in $VENV; it breaks torch 2.13, remove it" >&2
        exit 1
    fi
    echo "$want" > "$stamp"
fi

echo "setup: building the C++ extension (incremental)"
MAX_JOBS=${MAX_JOBS:-$(nproc)} "$VENV/bin/python" setup.py -q build_ext --inplace
# Editable install so `fairseq-train --user-dir` and `import fairseq_kaleidoscope` both work from
# anywhere. Done once per checkout location and packaging metadata: the install only records
# where the package lives (the in-place build above is what it imports), so redoing it is a no-op
# that would cost a minute of pip.
stamp="$VENV/.editable.sha256"
want=$( (pwd; cat setup.py pyproject.toml) | sha256sum | cut -d' ' -f1)
if [ "$(cat "$stamp" 2>/dev/null)" != "$want" ]; then
    echo "setup: installing fairseq_kaleidoscope in editable mode"
    KALEIDOSCOPE_SKIP_EXT=1 "${PIP[@]}" install --no-deps --no-build-isolation -e . >/dev/null
    echo "$want" > "$stamp"
fi
echo "setup: done ($("$VENV/bin/python" -c 'import torch; print("torch", torch.__version__)'))"
