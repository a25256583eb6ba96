# Two commands on a fresh machine:
#   make demo   - creates .venv, installs doorkeep, runs the demo site (Ctrl-C stops it)
#   make test   - installs what the tests need (Mosquitto included) and runs the suite
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test install mosquitto bench clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV)
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev,demo]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/doorkeep --log-level WARNING demo $(DEMO_ARGS)

mosquitto:
	@scripts/ensure-mosquitto

test: $(STAMP) mosquitto
	$(BIN)/python -m pytest -q

bench: $(STAMP) mosquitto
	$(BIN)/python bench/badge_to_relay.py
	$(BIN)/python bench/decide.py
	$(BIN)/python bench/policy.py
	$(BIN)/python bench/outbox.py --events 100000

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache var
