# One entry point for people and CI. The venv is rebuilt only when pyproject.toml changes.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell sha256sum pyproject.toml | cut -c1-16)
BIN := $(VENV)/bin
export YOLO_OFFLINE := 1
export SPARSEPIPE_HOME ?= $(CURDIR)/.sparsepipe

.PHONY: install test demo bench clean

install: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(BIN)/python || $(PY) -m venv $(VENV)
	$(BIN)/pip install -q torch==2.14.1 torchvision==0.29.1
	$(BIN)/pip install -q -e '.[dev]'
	rm -f $(VENV)/.installed-*
	touch $@

test: install
	$(BIN)/python -m pytest -x -q tests

demo: install
	$(BIN)/python -m sparse_core.demo

bench: install
	$(BIN)/python benchmarks/speed.py

clean:
	rm -rf $(VENV) .sparsepipe runs
