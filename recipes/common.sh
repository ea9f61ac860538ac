# Sourced by the recipe scripts: paths and the Python of this checkout.
# ROOT: the repository; PY: its virtualenv's python (override with PY=..., a path or a
# command on PATH such as PY=python3 on a machine without the virtualenv);
# USER_DIR: what fairseq's --user-dir needs to load our architectures.
ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
PY=${PY:-$ROOT/.venv/bin/python}
if ! PY_FOUND=$(command -v "$PY"); then
    echo "recipes: $PY not found; run 'make setup' first (or set PY=/path/to/python)" >&2
    exit 1
fi
PY=$PY_FOUND
USER_DIR=$ROOT/fairseq_kaleidoscope
SHARED_DATA=${SHARED_DATA:-$ROOT/../shared/data}
fairseq() {  # fairseq <preprocess|train|generate> ARGS...: the fairseq CLIs of $PY's environment
    local cmd=$1
    shift
    "$PY" -m "fairseq_cli.$cmd" "$@"
}
