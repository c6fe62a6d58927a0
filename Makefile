# Two commands for a newcomer: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SEALROOM := $(BIN)/sealroom

.PHONY: run test lint typecheck clean system-deps

# Debian packages the tests use (openssl for s_client); installed only when missing.
system-deps:
	@sh scripts/ensure-system-deps.sh

$(BIN)/activate:
	@sh scripts/ensure-system-deps.sh
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip

$(VENV)/.installed: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet -e .
	@touch $@

$(VENV)/.installed-test: $(BIN)/activate pyproject.toml
	$(BIN)/pip install --quiet -e '.[test]'
	@touch $(VENV)/.installed $@

run: $(VENV)/.installed
	@test -f certs/server.crt || $(SEALROOM) certs init --dir certs
	@sh scripts/dev-admin.sh $(SEALROOM)
	@echo "Connect with:  openssl s_client -quiet -CAfile certs/ca.crt -connect 127.0.0.1:7443"
	$(SEALROOM) serve

test: $(VENV)/.installed-test
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

clean:
	rm -rf $(VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
