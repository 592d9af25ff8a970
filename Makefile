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

.PHONY: setup system-packages test test-slow test-all demo corpus cluster-up cluster-down submit bench lint clean help

help:
	@echo "make setup      install Debian tools (when missing) and .venv with torch 2.11 + the project"
	@echo "make demo       synthesize the demo corpus and run it through the pipeline ($(DEMO_DIR))"
	@echo "make test       the default test suite (< 10 min on 2 cores)"
	@echo "make test-slow  the slow tests (CI runs them too)"
	@echo "make corpus CORPUS=dir OUT=dir [CONFIG=run.yaml]   build shards from a corpus (resumes)"
	@echo "make cluster-up / cluster-down   a loopback Ray head (state in $(RAY_STATE))"
	@echo "make submit CORPUS=... OUT=...   ray job submit of the build to that head (or RAY_ADDRESS)"
	@echo "make bench      every benchmark in benchmarks/ (ratios against a reference in the same run)"
	@echo "make lint       ruff"

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
	$(BIN)/pip install -q -e '.[dev]'
	$(PY) -c "import torch, torchaudio, ray, webdataset, pocketsphinx; print('torch', torch.__version__, 'torchaudio', torchaudio.__version__, 'ray', ray.__version__)"
	touch $@

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

demo:
	$(PY) -m lst_data.cli demo-corpus $(DEMO_DIR)/corpus
	$(PY) -m lst_data.cli ingest $(DEMO_DIR)/corpus --out $(DEMO_DIR)/run

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

clean:
	rm -rf build
