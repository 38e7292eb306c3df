#!/bin/sh
# The one install recipe for sparsepipe: `make install` (the venv) and manifests/Dockerfile (the component image)
# both run this file, so the image is built with exactly the commands a developer runs.
#
#   scripts/install.sh PYTHON [PIP_ARGS...]
#     PYTHON    the interpreter whose environment receives the packages (e.g. .venv/bin/python)
#     PIP_ARGS  what to install after torch, e.g. `-e .[dev]` (Makefile) or `.` (image); none: torch only
#
# torch and torchvision go first, as a pinned pair (torchvision from PyPI next to another torch fails to import).
# Environment: PIP_FLAGS (extra pip flags, e.g. -q); TORCH_INDEX_URL (optional wheel index for torch, e.g. a
# CPU-only one to keep the image small; empty = the default index, which is what the Makefile uses).
set -eu
PY=${1:?usage: scripts/install.sh PYTHON [PIP_ARGS...]}
shift
TORCH_PINS="torch==2.14.1 torchvision==0.29.1"

# shellcheck disable=SC2086  # PIP_FLAGS and TORCH_PINS are word lists on purpose
"$PY" -m pip install ${PIP_FLAGS:-} ${TORCH_INDEX_URL:+--index-url "$TORCH_INDEX_URL"} $TORCH_PINS
if [ "$#" -gt 0 ]; then
    # shellcheck disable=SC2086
    "$PY" -m pip install ${PIP_FLAGS:-} "$@"
fi
