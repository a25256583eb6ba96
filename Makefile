# Two commands on a fresh machine:
#   make demo   - creates .venv, installs doorkeep, runs the demo site (Ctrl-C stops it)
#   make test   - installs what the tests need (Mosquitto included) and runs the suite
#   make dist   - builds the wheel and the sdist into dist/ (install them on a server or a Pi: docs/deploy.md)
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
STAMP := $(VENV)/.installed
DEMO_ARGS ?=

.PHONY: demo test test-postgres install dist mosquitto bench faults fuzz mutation pi-check clean

$(STAMP): pyproject.toml
	@test -x $(BIN)/python || $(PYTHON) -m venv $(VENV) || { rm -rf $(VENV); \
	    echo "$(PYTHON) cannot create a virtual environment: on Debian, apt-get install python3-venv" >&2; exit 1; }
	$(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[dev]'
	@touch $@

install: $(STAMP)

demo: $(STAMP)
	$(BIN)/doorkeep --log-level WARNING demo $(DEMO_ARGS)

# The sdist and the wheel (every package, templates, static files, the demo site), nothing else: a wheel left
# from another version would be installed by mistake. tests/e2e/test_package.py installs a wheel built like this.
dist: $(STAMP)
	rm -rf dist
	$(BIN)/python -m build --outdir dist .

mosquitto:
	@scripts/ensure-test-tools

# make test runs on TEST_WORKERS pytest-xdist workers, a test file per worker at a time (fixtures are per
# file); TEST_WORKERS=0 runs it in this process (what to use with a debugger or -x).
TEST_WORKERS ?= 2

test: $(STAMP) mosquitto
	@scripts/fetch-axe
	$(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile -m "not slow"

# make test-postgres (issue 20; docs/scale.md): the store's tests and the e2e suite with every site runner's server on a
# fresh PostgreSQL database (DOORKEEP_E2E_POSTGRES), failing instead of skipping where no PostgreSQL answers. Not part of
# make test (the e2e suite once more: about as long as make test itself).
# Left out: tests that look at the server's SQLite files themselves (its WAL, sqlite-utils through
# connection_for_tests), open a second SQLite store in its data directory before it starts, or run a command
# with --data against the runner's server (it would open SQLite there: the runner's database is in no site.toml
# and in no environment a command could read without leaking into the tests' other server processes).
PG_SQLITE_ONLY := --deselect tests/e2e/test_snapshot_encryption.py \
	--deselect tests/e2e/test_siem.py --deselect tests/e2e/test_operations_together.py \
	--deselect tests/e2e/test_remote_commands.py --deselect tests/e2e/test_replay_cli.py \
	--deselect tests/e2e/test_door.py::test_muster_lists_who_is_in_which_area_with_visitors_and_hosts \
	--deselect tests/e2e/test_site_revisions.py::test_a_site_import_beside_the_running_server_is_live_without_a_restart

test-postgres: $(STAMP) mosquitto
	DOORKEEP_E2E_POSTGRES=1 DOORKEEP_REQUIRE_POSTGRES=1 $(BIN)/python -m pytest -q -n $(TEST_WORKERS) --dist loadfile \
	    -m "not slow" $(PG_SQLITE_ONLY) tests/e2e tests/unit/test_store_engines.py tests/unit/test_store_engines_*.py

faults: $(STAMP) mosquitto
	$(BIN)/python -m pytest -q tests/faults

# make bench: issue 8's eight figures beside their baselines and targets (bench/run_all.py), written to
# docs/performance.md, then the component benches run_all does not table (site changes under decisions and
# the impact-preview replay among them: issue 13). About eight minutes on 2 cores, plus the campus (bench/campus.py:
# about 14 minutes) and the campus with 1, 2 and 4 server workers beside one server on PostgreSQL (shorter steps,
# no rush, 10,000 cardholders: about 4.6 minutes).
# BENCH_ARGS=--quick for a short check run (indicative figures; it still rewrites docs/performance.md).
BENCH_ARGS ?=

bench: $(STAMP) mosquitto
	DOORKEEP_BENCH_FROM_MAKE=1 $(BIN)/python bench/run_all.py --write $(BENCH_ARGS)
	$(BIN)/python bench/decide.py --quick
	$(BIN)/python bench/osdp.py
	$(BIN)/python bench/outbox.py --events 100000
	$(BIN)/python bench/desk.py
	$(BIN)/python bench/site_changes.py
	$(BIN)/python bench/site_change_to_door.py
	$(BIN)/python bench/policy_delta.py
	$(BIN)/python bench/shared_decisions.py
	$(BIN)/python bench/replay.py
	$(BIN)/python bench/backup.py
	$(BIN)/python bench/mail.py
	$(BIN)/python bench/qr_pass.py
	$(BIN)/python bench/broker_cluster.py
	$(BIN)/python bench/campus.py
	$(BIN)/python bench/campus.py --workers 1,2,4 --steps 250,500,750,1000,1250,1500,2000 --step-seconds 5 --rush-seconds 0
	$(BIN)/python bench/failover.py

# make fuzz: the long fuzz run (docs/testing.md): hypothesis with HYPOTHESIS_PROFILE=long, then each
# atheris harness for FUZZ_SECONDS. Stops by itself (about 13 minutes) and fails on any new crash.
FUZZ_SECONDS ?= 30
FUZZ_HARNESSES := framing contract policy config scenario

fuzz: $(STAMP) mosquitto
	@$(BIN)/python -c 'import atheris' 2>/dev/null || \
	    $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[fuzz]' || \
	    echo "atheris did not install here: running the hypothesis fuzzers only (docs/testing.md)"
	HYPOTHESIS_PROFILE=long $(BIN)/python -m pytest -q --timeout=1800 tests/fuzz
	@if $(BIN)/python -c 'import atheris' 2>/dev/null; then \
	    for h in $(FUZZ_HARNESSES); do \
	        echo "atheris $$h: $(FUZZ_SECONDS) s (log: var/fuzz/$$h/last-run.log)"; mkdir -p var/fuzz/$$h; \
	        $(BIN)/python -m tests.fuzz.atheris_$$h -max_total_time=$(FUZZ_SECONDS) \
	            2>var/fuzz/$$h/last-run.log || { tail -n 40 var/fuzz/$$h/last-run.log; exit 1; }; \
	        grep -E '^Done|known bug|average_exec' var/fuzz/$$h/last-run.log; \
	    done; \
	fi

# make mutation (issue 18; docs/testing.md): mutmut on the modules where a silent mistake opens a door, with
# their unit tests (both listed in pyproject.toml [tool.mutmut]), in a fresh copy under var/mutation. Installs
# the `mutation` extra if missing, lists the survivors, sets aside tests/mutation/equivalent.txt, prints each
# module's score beside MUTATION_TARGET and exits non-zero below it. Not part of `make test`: CPU-bound, one
# process by default (MUTATION_CHILDREN) since the machine is shared; about 20 minutes on one core.
MUTATION_TARGET ?= 97
MUTATION_CHILDREN ?= 1

mutation: $(STAMP)
	@test -x $(BIN)/mutmut || $(BIN)/python -m pip install --quiet --disable-pip-version-check -e '.[mutation]'
	$(BIN)/python scripts/mutation.py --target $(MUTATION_TARGET) --children $(MUTATION_CHILDREN)

# make pi-check (issue 14; docs/testing.md): the built wheel installed with [pi] in a Debian 12 arm64 root under
# QEMU user emulation (debootstrap, cached in .cache/pi-root), the edge's unit tests and a short `doorkeep edge`
# run inside it. Needs root; about 3 minutes with the root cached, 5 the first time. Not part of `make test`.
# Where emulation cannot run it says why, checks that [pi] has aarch64 wheels for Python 3.11 and exits 3.
pi-check: $(STAMP)
	PYTHON=$(BIN)/python scripts/pi-check

clean:
	rm -rf $(VENV) *.egg-info .pytest_cache var dist build
