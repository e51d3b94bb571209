# Each target creates or reuses .venv and installs what it needs (torch==2.13.0 first, pinned).
PY ?= python3
VENV := .venv
BIN := $(VENV)/bin
# the shared data folder, when it is there; without it, tests that need data files skip (saying so)
ifneq ($(wildcard ../shared/data),)
export VAELAB_DATA ?= $(abspath ../shared/data)
endif

.PHONY: venv demo test bench bench-lda bench-text bench-vqvae lint clean

$(BIN)/python:
	$(PY) -m venv $(VENV)
	$(BIN)/python -m pip install -q --upgrade pip

venv: $(BIN)/python
	$(BIN)/pip install -q torch==2.13.0
	$(BIN)/pip install -q -e '.[dev]'

demo: venv
	$(BIN)/vaelab demo

test: venv
	$(BIN)/python -m pytest -q

lint: venv
	$(BIN)/ruff check src tests benchmarks

bench: venv
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_train.py

bench-lda: venv
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_lda.py

bench-text: venv
	$(BIN)/python benchmarks/bench_text.py --threads 2 --steps 800

# the CIFAR-10 VQ-VAE: training speed against a plain loop, quantizers at equal steps, prior sampling
bench-vqvae: venv
	$(BIN)/pip install -q -e '.[dev,bench]'
	$(BIN)/python benchmarks/bench_vqvae.py speed --threads 2 --steps 600
	$(BIN)/python benchmarks/bench_vqvae.py peers --threads 2 --steps 3000
	$(BIN)/python benchmarks/bench_vqvae.py sampling --threads 2

clean:
	rm -rf $(VENV) runs .pytest_cache
