# fedrec: the two commands a new user needs are `make demo` and `make test`.
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
# torch is installed first and on its own so that pip takes the CPU build that
# this machine keeps on disk instead of downloading a multi-GB CUDA build.
TORCH_SPEC ?= torch==2.13.0
DEMO_OUT ?= runs/demo

.PHONY: venv demo test lint typecheck pytest clean

$(BIN)/fedrec: pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet "$(TORCH_SPEC)" || $(BIN)/pip install --quiet "torch>=2.4,<3"
	$(BIN)/pip install --quiet -e ".[dev]"
	touch $(BIN)/fedrec

venv: $(BIN)/fedrec

demo: venv
	rm -rf $(DEMO_OUT)
	$(BIN)/fedrec simulate --data synthetic --rounds 20 --eval-every 2 --out $(DEMO_OUT)
	@echo "report: $(DEMO_OUT)/report.md"

lint: venv
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

typecheck: venv
	$(BIN)/mypy fedrec

pytest: venv
	$(BIN)/python -m pytest -q; rc=$$?; if [ $$rc -eq 5 ]; then exit 0; else exit $$rc; fi

test: lint typecheck pytest

clean:
	rm -rf $(VENV) runs .pytest_cache .mypy_cache .ruff_cache
