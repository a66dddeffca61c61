# The two commands: `make run` (the app on http://127.0.0.1:8000/) and `make test`.
PYTHON ?= python3.11
VENV := .venv
BIN := $(VENV)/bin

.PHONY: run test lint clean audit

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
	$(BIN)/python manage.py runserver 127.0.0.1:8000

# The whole suite. Tests needing a missing service skip and name it;
# with CI=true such a skip fails the run (tests/conftest.py).
test: $(VENV)/.dev-installed
	DEBUG=true $(BIN)/python manage.py makemigrations --check --dry-run
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

# Known vulnerabilities in the pinned requirements (pip-audit). Says plainly when
# its vulnerability database cannot be reached: exit 2, "NOT AUDITED".
audit: $(VENV)/.dev-installed
	$(BIN)/python tools/audit.py requirements.txt requirements-dev.txt

clean:
	rm -rf $(VENV) staticfiles .pytest_cache
