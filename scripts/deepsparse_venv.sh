#!/bin/sh
# DeepSparse 1.8 (the SparseML seeds' runtime, unmaintained) needs numpy<2 and onnx 1.14: it gets its own venv,
# never the main one. `sparsepipe benchmark --engine deepsparse` drives it in a subprocess.
# Usage: sh scripts/deepsparse_venv.sh [DIR]   (default .venv-deepsparse, gitignored)
set -eu
DIR=${1:-.venv-deepsparse}
PY=${PY:-python3}
if "$DIR/bin/python" -c "import deepsparse" >/dev/null 2>&1; then
    echo "$DIR: deepsparse already installed"
    exit 0
fi
"$PY" -m venv "$DIR"
"$DIR/bin/pip" install ${PIP_FLAGS:-} "deepsparse==1.8.0" "numpy<2" "onnx==1.14.1"
"$DIR/bin/python" -c "import deepsparse; print('$DIR: deepsparse', deepsparse.__version__)"
