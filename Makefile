# The two commands: `make run` (the app on http://127.0.0.1:8000/) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test faults bench audit clean

$(BIN)/python:
	$(PYTHON) -m venv $(VENV)

$(VENV)/.runtime-installed: requirements.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements.txt
	touch $@

$(VENV)/.dev-installed: requirements.txt requirements-dev.txt | $(BIN)/python
	$(BIN)/pip install --quiet --disable-pip-version-check -r requirements-dev.txt
	touch $(VENV)/.runtime-installed $@

# Development server: DEBUG, SQLite, local-memory cache, mail to the console.
run: export DEBUG = true
run: $(VENV)/.runtime-installed
	$(BIN)/python manage.py migrate --no-input
	$(BIN)/python manage.py collectstatic --no-input --verbosity 0
	$(BIN)/python manage.py create_dev_superuser
	@# The outbox worker runs beside the server and prints each mail; Ctrl-C
	@# stops both, and the worker also stops when the server exits.
	$(BIN)/python manage.py send_outbox --loop & worker=$$!; \
	trap 'kill $$worker 2>/dev/null; wait $$worker' EXIT INT TERM; \
	$(BIN)/python manage.py runserver 127.0.0.1:8000

# The whole suite. Tests needing a missing service skip and name it;
# with CI=true such a skip fails the run (tests/conftest.py).
test: $(VENV)/.dev-installed
	DEBUG=true $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest -m "not faults" $(PYTEST_ARGS)

# Fault injection against gunicorn on PostgreSQL (tests/faults); .ci/run runs it too.
FAULTS_DATABASE_URL ?= postgres://postgres@127.0.0.1:5432/rvi_faults
faults: $(VENV)/.dev-installed
	DATABASE_URL=$${DATABASE_URL:-$(FAULTS_DATABASE_URL)} $(BIN)/python -m pytest -m faults $(PYTEST_ARGS)

# Benchmarks, not tests (bench/__main__.py lists them): each prints its
# measurements, then one table of the targets; all also go to bench/results.md.
# They need PostgreSQL and Redis on 127.0.0.1, Debian's wrk and nginx.
bench: $(VENV)/.dev-installed
	$(BIN)/python -m bench

# Known vulnerabilities in the pinned requirements (pip-audit). Says plainly when
# its vulnerability database cannot be reached: exit 2, "NOT AUDITED".
audit: $(VENV)/.dev-installed
	$(BIN)/python tools/audit.py requirements.txt requirements-dev.txt

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
