# Two commands for a newcomer: `make run` and `make test`. Everything else is optional.
PYTHON ?= python3
VENV   := .venv
BIN    := $(VENV)/bin
SEALROOM := $(BIN)/sealroom

FUZZ_SECONDS ?= 60
SOAK_MINUTES ?= 5
SSLYZE_VENV := .venv-sslyze

.PHONY: run test lint typecheck clean system-deps fuzz scan soak bench

# Debian packages the tests use (openssl for s_client, systemd-nspawn for the unit's tests,
# chromium for the browser test); installed only when missing (as root; otherwise the script
# says what to install).
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
	@sh scripts/ensure-sslyze.sh $(SSLYZE_VENV)
	@touch $(VENV)/.installed $@

$(VENV)/.installed-fuzz: $(VENV)/.installed-test
	$(BIN)/pip install --quiet -e '.[test,fuzz]'
	@touch $@

# `make run PORT=7444` serves on another port (the built-in configuration's is 7443).
PORT ?= 7443
run: $(VENV)/.installed
	@test -f certs/server.crt || $(SEALROOM) certs init --dir certs
	@sh scripts/dev-admin.sh $(SEALROOM)
	@echo "Connect with:  openssl s_client -quiet -CAfile certs/ca.crt -connect 127.0.0.1:$(PORT)"
	$(SEALROOM) serve --listen 127.0.0.1:$(PORT)

test: $(VENV)/.installed-test
	@sh scripts/ensure-system-deps.sh
	@sh scripts/ensure-test-deps.sh
	$(BIN)/ruff check src tests
	$(BIN)/mypy
	$(BIN)/lint-imports
	@$(MAKE) --no-print-directory fuzz FUZZ_SECONDS=10
	$(BIN)/python -m pytest -q

lint: $(VENV)/.installed-test
	$(BIN)/ruff check src tests
	$(BIN)/ruff format --check src tests

typecheck: $(VENV)/.installed-test
	$(BIN)/mypy

# Coverage-guided fuzzing of the protocol core (atheris, libFuzzer flags); inputs it finds go
# to var/fuzz/corpus, crashes to var/fuzz/ (copy one into fuzz/corpus as a regression test).
fuzz: $(VENV)/.installed-fuzz
	@mkdir -p var/fuzz/corpus
	$(BIN)/python fuzz/fuzz_protocol.py -max_total_time=$(FUZZ_SECONDS) -print_final_stats=1 \
		-artifact_prefix=var/fuzz/ var/fuzz/corpus fuzz/corpus

# testssl.sh (Debian) against live servers, one per TLS profile; reports in var/scan/.
scan: $(VENV)/.installed
	$(BIN)/python scripts/scan_tls.py

# Mixed traffic with churn for SOAK_MINUTES; fails unless memory, threads and descriptors
# come back near the baseline.
soak: $(VENV)/.installed
	$(BIN)/python scripts/soak.py --minutes $(SOAK_MINUTES)

# The benchmark suite against servers it starts; figures in docs/benchmarks.md. Mosquitto is
# the handshakes scenario's reference broker (optional: skipped with a note if missing). The
# cluster scenarios start their own PostgreSQL and Redis (the tests' packages and extra).
bench: $(VENV)/.installed-test
	@mkdir -p var
	@sh scripts/ensure-test-deps.sh
	-@sh scripts/ensure-mosquitto.sh
	$(BIN)/python -m bench --json var/bench.json

clean:
	rm -rf $(VENV) $(SSLYZE_VENV) var .pytest_cache .mypy_cache .ruff_cache .hypothesis
