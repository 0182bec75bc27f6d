PYTHON ?= python3
VENV ?= .venv
PY := $(VENV)/bin/python
STAMP := $(VENV)/.installed-dev
PYTEST_ARGS ?=

.PHONY: install test test-all lint format demo notebooks bench bench-flex clean

$(PY):
	$(PYTHON) -m venv $(VENV)
	$(PY) -m pip install --quiet --upgrade pip

$(STAMP): pyproject.toml | $(PY)
	$(PY) -m pip install --quiet -e '.[dev,experiments]'
	$(PY) -m ipykernel install --user --name attention_jax --display-name "attention_jax (.venv)" >/dev/null
	touch $(STAMP)

install: $(STAMP)

# CI and `make test`: everything but the tests marked slow.
test: install
	$(PY) -m pytest -m "not slow" -n 2 --dist worksteal -q $(PYTEST_ARGS)

test-all: install
	$(PY) -m pytest -n 2 --dist worksteal -q $(PYTEST_ARGS)

lint: install
	$(PY) -m ruff check .
	$(PY) -m ruff format --check .

format: install
	$(PY) -m ruff check --fix .
	$(PY) -m ruff format .

demo: install
	$(PY) experiments/synthetic.py --demo --out out/demo

notebooks: install
	$(PY) -m pip install --quiet -e '.[dev,experiments,notebooks]'
	$(VENV)/bin/jupyter lab notebooks/

bench: install
	$(PY) benchmarks/attention.py --out out/bench

bench-flex: install
	$(PY) benchmarks/flex.py --out out/bench-flex

clean:
	rm -rf $(VENV) out .pytest_cache .ruff_cache .hypothesis
