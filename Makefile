# One entry point for people and CI. The venv is rebuilt only when pyproject.toml changes.
PY ?= python3
VENV := .venv
STAMP := $(VENV)/.installed-$(shell cat pyproject.toml scripts/install.sh | sha256sum | cut -c1-16)
BIN := $(VENV)/bin
export YOLO_OFFLINE := 1
export SPARSEPIPE_HOME ?= $(CURDIR)/.sparsepipe

.PHONY: install services test demo bench bench-quick bench-speed clean sparseml-venv deepsparse-venv

install: $(STAMP)
	@# Debian chromium: the MLflow UI compare-page test renders the page headless (~80 s to apt-get once, as root)
	@command -v chromium >/dev/null 2>&1 || { apt-get update -qq && DEBIAN_FRONTEND=noninteractive \
		apt-get install -y -qq chromium >/dev/null; } || echo "warning: could not apt-get install chromium"

# scripts/install.sh is the one install recipe (manifests/Dockerfile runs it too): torch pair first, then the project.
# pip's output goes to a log (a fresh `make demo > log` stays short; pip warns once per index folder on some hosts);
# on failure its last 40 lines are printed.
INSTALL_LOG := $(SPARSEPIPE_HOME)/logs/install.log
$(STAMP): pyproject.toml scripts/install.sh
	@mkdir -p $(dir $(INSTALL_LOG))
	@echo "building $(VENV): torch, then sparsepipe and its dependencies (a few minutes; log: $(INSTALL_LOG))"
	@{ test -x $(BIN)/python || $(PY) -m venv $(VENV); } > $(INSTALL_LOG) 2>&1 && \
		PIP_FLAGS=-q sh scripts/install.sh $(BIN)/python -e '.[dev]' >> $(INSTALL_LOG) 2>&1 || \
		{ tail -n 40 $(INSTALL_LOG); echo "make install failed: see $(INSTALL_LOG)"; exit 1; }
	@rm -f $(VENV)/.installed-*
	@touch $@

# The DeepSparse side venv is optional for the tests: without it they check the one-line "build it" error instead
test: install services
	-@$(MAKE) --no-print-directory deepsparse-venv || echo "warning: DeepSparse side venv not built"
	$(BIN)/python -m pytest -x -q tests

# PostgreSQL backs the MLflow server tests; it runs on this machine kind, but start it if it is down.
services:
	@pg_isready -q -h 127.0.0.1 -p 5432 || pg_ctlcluster --skip-systemctl-redirect $$(ls /etc/postgresql) main start

# Quiet: a line per stage and step, the full output in a log file (its path is printed). VERBOSE=1 prints it all.
demo: install
	$(BIN)/python -m pipelines.demo $(if $(VERBOSE),--verbose)

# The accuracy/speed frontier on the hard data set (benchmarks/frontier.py -> benchmarks/results/frontier.md/.png),
# resumable across sessions: every model comes from the committed benchmark zoo (benchmarks/zoo, keyed by what made
# it); what is missing is trained and published there first (commit benchmarks/zoo afterwards), then every model is
# re-validated and all are timed together. Models: dense YOLOv8n (160 px, 400 images, 160 epochs) trained on in
# 50-epoch stages until one gains < 0.5 point (the stage before is the reference, the last one the budget control),
# the OpenVINO INT8 baseline, structured 50/75% + KD from the reference with and without QAT, and per variant the
# smaller dense model of the same measured latency trained from scratch as long, plainly and distilled. With the zoo complete it
# trains nothing; BENCH_ARGS="--no-train" never trains; "--models yolov8n yolov8s" adds YOLOv8s; "--device 0" trains
# on a GPU (timing always on this CPU). bench-quick: tiny data and epochs in a zoo of its own (<= 15 min on 2 cores).
bench: install deepsparse-venv
	$(BIN)/python benchmarks/frontier.py $(BENCH_ARGS)

bench-quick: install deepsparse-venv
	$(BIN)/python benchmarks/frontier.py --quick $(BENCH_ARGS)

bench-speed: install deepsparse-venv
	$(BIN)/python benchmarks/speed.py

# DeepSparse 1.8 needs numpy<2: its own venv (gitignored), driven by `benchmark --engine deepsparse` in a subprocess
deepsparse-venv:
	PIP_FLAGS=-q sh scripts/deepsparse_venv.sh .venv-deepsparse

# SparseML 1.8 in its own venv (torch 2.1, numpy<2), only to regenerate tests/fixtures/sparseml
sparseml-venv:
	sh scripts/sparseml_venv.sh $(SPARSEML_VENV)

clean:
	rm -rf $(VENV) .venv-deepsparse .sparsepipe runs
