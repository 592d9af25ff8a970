# lst-data: `make setup` installs everything, `make demo` runs the main job on the demo corpus.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PY := $(BIN)/python
SUDO := $(shell [ "$$(id -u)" = 0 ] || echo sudo)
DEBIAN_PACKAGES := espeak-ng sox
DEMO_DIR ?= build/demo
PYTEST_FLAGS ?= -q -p no:cacheprovider

export RAY_USAGE_STATS_ENABLED = 0

CORPUS ?= $(DEMO_DIR)/corpus
OUT ?= build/run
CONFIG ?=
RAY_STATE ?= build/ray

.PHONY: setup system-packages setup-mfa test-mfa test test-slow test-all demo corpus cluster-up cluster-down submit bench lint clean help

help:
	@echo "make setup      install Debian tools (when missing) and .venv with torch 2.11 + the project"
	@echo "make demo       synthesize the demo corpus and run it through the pipeline ($(DEMO_DIR))"
	@echo "make test       the default test suite (< 10 min on 2 cores)"
	@echo "make test-slow  the slow tests (CI runs them too)"
	@echo "make setup-mfa  Montreal Forced Aligner $(MFA_VERSION) in $(MFA_VENV) (needs a kalpy-kaldi wheel: KALPY_WHEEL=...)"
	@echo "make test-mfa   the real-MFA tests; they fail (not skip) when $(MFA_VENV) is missing"
	@echo "make corpus CORPUS=dir OUT=dir [CONFIG=run.yaml]   build shards from a corpus (resumes)"
	@echo "make cluster-up / cluster-down   a loopback Ray head (state in $(RAY_STATE))"
	@echo "make submit CORPUS=... OUT=...   ray job submit of the build to that head (or RAY_ADDRESS)"
	@echo "make bench      every benchmark in benchmarks/ (ratios against a reference in the same run)"
	@echo "make lint       ruff (style, complexity) and mypy (types)"

setup: system-packages $(VENV)/.setup-done

system-packages:
	@missing=""; for pkg in $(DEBIAN_PACKAGES); do command -v $$pkg >/dev/null 2>&1 || missing="$$missing $$pkg"; done; \
	if [ -n "$$missing" ]; then \
	  echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; \
	else echo "Debian packages present: $(DEBIAN_PACKAGES)"; fi

# torch/torchaudio first and pinned: torchaudio 2.11 loads against no other torch.
$(VENV)/.setup-done: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q torch==2.11.0 torchaudio==2.11.0
	$(BIN)/pip install -q -e '.[dev,interop,nemo]' 'setuptools<82'
	$(PY) -c "import torch, torchaudio, ray, webdataset, pocketsphinx; print('torch', torch.__version__, 'torchaudio', torchaudio.__version__, 'ray', ray.__version__)"
	touch $@

# MFA 3.x needs kalpy-kaldi, which PyPI has only as source: it installs from a wheel built
# beside this project (../shared/mfa) or, for users, from conda-forge. MFA lives in its own
# venv; the align backend finds $(MFA_VENV) by itself. Debian: MFA shells out to sqlite3 and
# checks for fstcompile (libfst-tools). The stub Kaldi programs only answer MFA's start-up
# check (`--help`): all real work runs in-process in _kalpy. $(MFA_VENV)/mfa_root is the
# shared, read-only MFA_ROOT_DIR holding pretrained models (`mfa model save/download`).
MFA_VERSION := 3.4.3
MFA_VENV ?= .venv-mfa
MFA_PYTHON ?= python3.11
MFA_SHARED ?= ../shared/mfa
KALPY_WHEEL ?= $(firstword $(wildcard $(MFA_SHARED)/kalpy_kaldi-*-cp311-*.whl))
MFA_STUB_BIN ?= $(wildcard $(MFA_SHARED)/stub_bin)
MFA_TEST_MODEL ?= $(wildcard $(MFA_SHARED)/models/demo160_english_arpa.zip)
# pynini 2.1.6: the kalpy wheel uses the OpenFst inside it. MFA imports pgvector, jinja2, hdbscan without declaring them.
MFA_PIP_PACKAGES := montreal-forced-aligner==$(MFA_VERSION) pynini==2.1.6 pgvector jinja2 hdbscan
MFA_ENV := PATH="$(abspath $(MFA_VENV))/bin:$$PATH" MFA_ROOT_DIR="$(abspath $(MFA_VENV))/mfa_root"

setup-mfa: $(MFA_VENV)/.setup-done

$(MFA_VENV)/.setup-done:
	@if [ -z "$(KALPY_WHEEL)" ]; then \
	  echo "no kalpy-kaldi wheel found (set KALPY_WHEEL=path/to/kalpy_kaldi-*.whl); PyPI has it only as source."; \
	  echo "Install MFA the supported way instead and point lst-data at it:"; \
	  echo "  conda create -n mfa -c conda-forge montreal-forced-aligner=$(MFA_VERSION)"; \
	  echo "  align.mfa.executable: <conda prefix>/envs/mfa/bin/mfa"; \
	  exit 2; fi
	@missing=""; for pair in sqlite3:sqlite3 fstcompile:libfst-tools; do \
	  command -v $${pair%%:*} >/dev/null 2>&1 || missing="$$missing $${pair##*:}"; done; \
	if [ -n "$$missing" ]; then echo "installing Debian packages:$$missing"; \
	  $(SUDO) apt-get update -qq && DEBIAN_FRONTEND=noninteractive $(SUDO) apt-get install -y -qq $$missing; fi
	$(MFA_PYTHON) -m venv $(MFA_VENV)
	$(MFA_VENV)/bin/pip install -q $(MFA_PIP_PACKAGES) $(KALPY_WHEEL)
	@for stub in $(if $(MFA_STUB_BIN),$(MFA_STUB_BIN)/*); do \
	  [ -e $(MFA_VENV)/bin/$$(basename $$stub) ] || cp $$stub $(MFA_VENV)/bin/; done
	echo "*" > $(MFA_VENV)/.gitignore  # git ignores the venv without a line in .gitignore
	mkdir -p $(MFA_VENV)/mfa_root
	$(if $(MFA_TEST_MODEL),$(MFA_ENV) $(MFA_VENV)/bin/mfa model save acoustic $(MFA_TEST_MODEL) --overwrite)
	$(MFA_ENV) $(MFA_VENV)/bin/mfa version
	touch $@

# LST_DATA_REQUIRE_MFA turns "MFA is not installed" from a skip into a failure.
test-mfa: export LST_DATA_REQUIRE_MFA = 1
test-mfa: $(MFA_VENV)/.setup-done
	$(call run_pytest,tests/test_align_mfa.py)

# pytest exits 5 when it collected nothing: that is a failure here, never a pass.
define run_pytest
	@$(PY) -m pytest $(PYTEST_FLAGS) $(1); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "pytest collected no tests: failing"; exit 1; fi; exit $$rc
endef

test:
	$(call run_pytest,-m "not slow")

test-slow:
	$(call run_pytest,-m slow)

test-all:
	$(call run_pytest,)

# Exit code 3 means "finished, with rejects": the demo goes on and the summary lists them.
demo:
	@[ -f $(DEMO_DIR)/corpus/ground_truth.json ] || $(BIN)/lst-data demo-corpus $(DEMO_DIR)/corpus
	$(BIN)/lst-data build $(DEMO_DIR)/corpus --out $(DEMO_DIR)/run --resume || [ $$? -eq 3 ]
	$(BIN)/lst-data stats $(DEMO_DIR)/run/shards
	$(BIN)/lst-model compare --shards $(DEMO_DIR)/run/shards
	$(BIN)/lst-model train --shards $(DEMO_DIR)/run/shards --config lst_model/configs/demo.yaml --out $(DEMO_DIR)/lst
	$(BIN)/lst-model train --shards $(DEMO_DIR)/run/shards --config lst_model/configs/demo.yaml --out $(DEMO_DIR)/baseline --set model.kind=baseline
	$(BIN)/lst-model score --model $(DEMO_DIR)/lst --shards $(DEMO_DIR)/run/shards
	$(BIN)/lst-model score --model $(DEMO_DIR)/baseline --shards $(DEMO_DIR)/run/shards
	$(BIN)/lst-model score --model $(DEMO_DIR)/lst --mode minimal-pairs --shards $(DEMO_DIR)/run/shards
	$(BIN)/lst-model generate --model $(DEMO_DIR)/lst --shards $(DEMO_DIR)/run/shards --text "the river was cold" --continue-in speech --max-new-tokens 48 --out $(DEMO_DIR)/generated.json
	$(BIN)/lst-model plot lst=$(DEMO_DIR)/lst baseline=$(DEMO_DIR)/baseline --out $(DEMO_DIR)/loss_curves.png
	@echo "demo done: shards in $(DEMO_DIR)/run/shards, loss curves in $(DEMO_DIR)/loss_curves.png, a generated continuation in $(DEMO_DIR)/generated.json"

corpus:
	$(PY) -m lst_data.cli build $(CORPUS) --out $(OUT) --resume $(if $(CONFIG),--config $(CONFIG))

cluster-up:
	$(PY) -m pipelines.local_cluster up --state-dir $(RAY_STATE)

cluster-down:
	$(PY) -m pipelines.local_cluster down --state-dir $(RAY_STATE)

# Paths are made absolute: the job runs in a copy of this folder on the head.
submit:
	$(PY) -m pipelines.local_cluster submit --state-dir $(RAY_STATE) $(if $(RAY_ADDRESS),--address $(RAY_ADDRESS)) -- \
	  python -m pipelines.build_corpus $(abspath $(CORPUS)) --out $(abspath $(OUT)) --resume $(if $(CONFIG),--config $(abspath $(CONFIG)))

bench:
	@for bench in benchmarks/bench_*.py; do echo "== $$bench"; $(PY) $$bench || exit 1; done

lint:
	$(BIN)/ruff check lst_data lst_model pipelines tests benchmarks
	$(BIN)/mypy

clean:
	rm -rf build
