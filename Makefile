# Two commands matter on a fresh machine: `make run` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin

.PHONY: run test lint check bench bench-cache bench-surfaces eval soak venv clean

venv: $(VENV)/.installed

$(VENV)/.installed: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[dev]'
	$(BIN)/python -c 'from memory.embedder import LocalMiniLM; LocalMiniLM()'  # builds the int8 model once
	touch $@

run: venv
	$(BIN)/cmg up

test: venv
	$(BIN)/pytest -q

lint: venv
	$(BIN)/ruff format --check core gateway memory workers bench tests
	$(BIN)/ruff check core gateway memory workers bench tests

check: lint
	$(BIN)/mypy
	$(BIN)/lint-imports

bench: venv
	$(BIN)/python -m bench.run

bench-cache: venv
	$(BIN)/python -m bench.prompt_cache

bench-surfaces: venv
	$(BIN)/python -m bench.surfaces

eval: venv
	$(BIN)/python -m bench.recall_eval

soak: venv
	$(BIN)/python -m bench.soak

clean:
	rm -rf $(VENV) .cmg
