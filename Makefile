# debias3d — two commands: `make demo` (the whole loop) and `make test` (the test suite).
# Both create .venv and install the project first when needed (see `setup`).

PYTHON ?= python3
VENV   ?= .venv
PY     := $(VENV)/bin/python
PIP    := $(VENV)/bin/pip
STAMP  := $(VENV)/.installed
# No hub downloads at run time: models come from PyPI packages or local folders.
export HF_HUB_OFFLINE := 1
export TRANSFORMERS_OFFLINE := 1
export HF_DATASETS_OFFLINE := 1
export TOKENIZERS_PARALLELISM := false

.PHONY: setup test test-all lint format demo demo-quick bench clean

setup: $(STAMP)

# torch is pinned to the local CPU wheel (2.13.0) and installed first, so that no dependency
# resolves a newer torch with CUDA packages.
$(STAMP): pyproject.toml
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --quiet --upgrade pip wheel
	$(PIP) install --quiet torch==2.13.0
	$(PIP) install --quiet -e '.[dev]'
	# OpenCLIP's model code for the HPSv2 tests, without its torchvision (a CUDA wheel on PyPI).
	$(PIP) install --quiet --no-deps open_clip_torch==3.3.0
	touch $(STAMP)

test: $(STAMP)
	$(PY) -m pytest -q -p no:cacheprovider

test-all: $(STAMP)
	$(PY) -m pytest -q -m "slow or not slow"

lint: $(STAMP)
	$(VENV)/bin/ruff check .
	$(VENV)/bin/ruff format --check .

format: $(STAMP)
	$(VENV)/bin/ruff check --fix .
	$(VENV)/bin/ruff format .

demo: $(STAMP)
	$(VENV)/bin/debias3d demo --out demo

demo-quick: $(STAMP)
	$(VENV)/bin/debias3d demo --quick --out demo-quick

# The benchmark scripts with the commands BENCHMARKS.md records (about 15 min on 2 cores). The
# long measurements (fidelity, evaluator training, demo, ablations) have their own commands there.
bench: $(STAMP)
	mkdir -p benchmarks/results
	$(PY) benchmarks/render.py --json benchmarks/results/render.json
	$(PY) benchmarks/generate.py --prompts 32 --samples 4 --naive-limit 32 --json benchmarks/results/generate.json
	$(PY) benchmarks/evaluator.py --batch 32 --threads 1 --json > benchmarks/results/evaluator.json
	$(PY) benchmarks/attribution.py --repeats 3 --threads 1 --json benchmarks/results/attribution.json
	$(PY) benchmarks/augment.py --json benchmarks/results/augment.json
	$(PY) benchmarks/finetune.py --threads 1 --steps 20 --warmup 2 --json > benchmarks/results/finetune_shipped.json
	$(PY) benchmarks/train_step.py --threads 1 --json benchmarks/results/train_step.json
	$(PY) benchmarks/refocus.py --prompts 12 --samples 4 --repeats 3 --threads 1 --json benchmarks/results/refocus.json

clean:
	rm -rf $(VENV) .pytest_cache .ruff_cache build *.egg-info
