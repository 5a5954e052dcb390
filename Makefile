# `make run` and `make test` set themselves up on a fresh machine (virtualenv + pinned deps).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# Loopback unless HOST says otherwise (HOST=0.0.0.0 serves every interface).
HOST ?= 127.0.0.1
SECRET_FILE := instance/jwt-secret

.PHONY: help run dev test lint fmt clean bench

# `make` alone still only creates/refreshes .venv (the first rule below, as before); `make help`
# lists the targets. Targets with a `## text` comment show up in `make help`.
.DEFAULT_GOAL := $(BIN)/activate

# The project itself goes in last, editable and without dependencies (requirements*.txt pin
# them): that puts the `gw` command-line client in $(BIN) (docs/cli.md). Twice quiet: only
# errors, not setuptools' notice that every editable install prints.
$(BIN)/activate: requirements.txt requirements-dev.txt pyproject.toml
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	$(BIN)/pip install --quiet --quiet --no-deps -e .
	touch $(BIN)/activate

$(SECRET_FILE):
	mkdir -p instance
	$(PYTHON) -c "import secrets; print(secrets.token_urlsafe(48))" > $(SECRET_FILE)
	chmod 600 $(SECRET_FILE)

# Production server (gunicorn + gevent) on embedded defaults. A JWT secret is generated on
# first run and kept in instance/ so tokens survive restarts; set JWT_SECRET_KEY to override.
run: $(BIN)/activate $(SECRET_FILE) ## Production server: gunicorn + gevent on HOST:PORT (default 127.0.0.1:8000)
	JWT_SECRET_KEY="$${JWT_SECRET_KEY:-$$(cat $(SECRET_FILE))}" HOST="$(HOST)" PORT=$(PORT) \
		$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# Flask's development server: same routes, real threads instead of gevent. It drains open
# connections on Ctrl-C only; a SIGTERM stops it at once.
dev: $(BIN)/activate $(SECRET_FILE) ## Flask development server (threads, no gevent) on HOST:PORT
	JWT_SECRET_KEY="$${JWT_SECRET_KEY:-$$(cat $(SECRET_FILE))}" \
		$(BIN)/flask --app wsgi run --host "$(HOST)" --port $(PORT)

test: $(BIN)/activate ## ruff check, then pytest (extra pytest options in PYTEST_ARGS)
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/activate ## ruff check + ruff format --check; changes nothing
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(BIN)/activate ## ruff check --fix + ruff format; rewrites files in place
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The benchmark has its own virtualenv (picows, uvloop, Flask-SocketIO for the peer).
BENCH_VENV := .venv-bench
$(BENCH_VENV)/bin/activate: bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements.txt
	touch $(BENCH_VENV)/bin/activate

# The standard set against the gateway (memory broker; Redis with 1 and 2 workers, needs redis-server),
# Flask-SocketIO and the ceiling server (see bench/README.md).
bench: $(BIN)/activate $(BENCH_VENV)/bin/activate ## Standard benchmark set in .venv-bench (options in BENCH_ARGS; see bench/README.md)
	$(BENCH_VENV)/bin/python bench/run_standard.py --gateway-python $(BIN)/python $(BENCH_ARGS)

clean: ## Delete .venv, .venv-bench and the pytest/ruff caches (keeps instance/)
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache

help: ## List the targets (`make` alone only sets up .venv)
	@echo "Usage: make [target] [HOST=...] [PORT=...] [PYTEST_ARGS=...] [BENCH_ARGS=...]"
	@echo "  (no target)  create or refresh .venv from requirements-dev.txt"
	@grep -E '^[a-zA-Z_-]+:.*## ' $(firstword $(MAKEFILE_LIST)) | \
		awk 'BEGIN {FS = ":.*## "}; {printf "  %-12s %s\n", $$1, $$2}'
