# Two entry points for a fresh clone (see README): `make demo` and `make test`.
# Both create .venv themselves (Python >= 3.10 as `python3`, or PYTHON=...).
PYTHON ?= python3
VENV ?= .venv
BIN := $(VENV)/bin
PYTEST_ARGS ?=

.PHONY: venv demo test lint clean

$(BIN)/.installed: pyproject.toml setup.py $(wildcard protocol/csrc/*.c protocol/csrc/*.h)
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install -q --upgrade pip
	$(BIN)/pip install -q -e '.[postgresql,mysql,dm,dev]'
	touch $@

venv: $(BIN)/.installed

# The whole exchange on this machine: a reference platform and an agent, local transport.
demo: venv
	$(BIN)/edu-agent demo

lint: venv
	$(BIN)/ruff check .
	$(BIN)/mypy

# ruff, mypy and every test. All three always run (one CI run shows every problem); the
# target fails if any failed. pytest's exit code 5 ("no tests collected") is a failure.
test: venv
	@failed=""; \
	$(BIN)/ruff check . || failed="$$failed ruff"; \
	$(BIN)/mypy || failed="$$failed mypy"; \
	$(BIN)/pytest $(PYTEST_ARGS); rc=$$?; \
	if [ $$rc -eq 5 ]; then echo "make test: pytest collected no tests" >&2; fi; \
	if [ $$rc -ne 0 ]; then failed="$$failed pytest($$rc)"; fi; \
	if [ -n "$$failed" ]; then echo "make test: FAILED:$$failed" >&2; exit 1; fi; \
	echo "make test: ruff, mypy and pytest passed"

clean:
	rm -rf $(VENV) .pytest_cache .mypy_cache .ruff_cache
