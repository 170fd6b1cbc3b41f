# Two commands on a fresh machine: `make demo` and `make test`.
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
# The CPU build of torch: a plain `pip install torch` would pull a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0

.PHONY: demo test lint install clean

$(BIN)/ln-diagnostics: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q "$(TORCH_SPEC)"
	$(BIN)/pip install -q -e ".[dev,examples]"
	touch $@

install: $(BIN)/ln-diagnostics

demo: install
	$(BIN)/python examples/demo.py

test: install
	$(BIN)/ruff check ln_diagnostics tests examples benchmarks
	$(BIN)/python -m pytest -q

clean:
	rm -rf $(VENV) lightning_logs runs
