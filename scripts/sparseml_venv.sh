#!/bin/sh
# Build the side venv with SparseML 1.8 (fixture generation only; never the project venv).
# SparseML reached end of life in 2025 and needs torch <= 2.1, numpy < 2: it cannot share our venv.
# Usage: sh scripts/sparseml_venv.sh [DIR]   (default /work/sidevenvs/sparseml18; ~90 s, ~5.4 GB)
set -eu
V=${1:-/work/sidevenvs/sparseml18}
PY=${PYTHON311:-python3.11}
test -x "$V/bin/python" || "$PY" -m venv "$V"
"$V/bin/pip" install -q "sparseml[ultralytics]==1.8.0" "sparsezoo==1.8.1" \
    "torch==2.1.2" "torchvision==0.16.2" "numpy<2"
"$V/bin/pip" freeze > "$V/freeze.txt"
echo "$V ready: $(grep -E '^(sparseml|sparsezoo|torch|torchvision|ultralytics|numpy|onnx)==' "$V/freeze.txt" | tr '\n' ' ')"
