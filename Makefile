# `make run` and `make test` set themselves up on a fresh machine (virtualenv + pinned deps).
PYTHON ?= python3
VENV := .venv
BIN := $(VENV)/bin
PORT ?= 8000
# Loopback unless HOST says otherwise (HOST=0.0.0.0 serves every interface).
HOST ?= 127.0.0.1
SECRET_FILE := instance/jwt-secret

.PHONY: run dev test lint fmt clean bench

$(BIN)/activate: requirements.txt requirements-dev.txt
	$(PYTHON) -m venv $(VENV)
	$(BIN)/pip install --quiet --upgrade pip
	$(BIN)/pip install --quiet -r requirements-dev.txt
	touch $(BIN)/activate

$(SECRET_FILE):
	mkdir -p instance
	$(PYTHON) -c "import secrets; print(secrets.token_urlsafe(48))" > $(SECRET_FILE)
	chmod 600 $(SECRET_FILE)

# Production server (gunicorn + gevent) on embedded defaults. A JWT secret is generated on
# first run and kept in instance/ so tokens survive restarts; set JWT_SECRET_KEY to override.
run: $(BIN)/activate $(SECRET_FILE)
	JWT_SECRET_KEY="$${JWT_SECRET_KEY:-$$(cat $(SECRET_FILE))}" HOST="$(HOST)" PORT=$(PORT) \
		$(BIN)/gunicorn -c gunicorn.conf.py wsgi:app

# Flask's development server: same routes, same behaviour, real threads instead of gevent.
dev: $(BIN)/activate $(SECRET_FILE)
	JWT_SECRET_KEY="$${JWT_SECRET_KEY:-$$(cat $(SECRET_FILE))}" \
		$(BIN)/flask --app wsgi run --host "$(HOST)" --port $(PORT)

test: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/python -m pytest $(PYTEST_ARGS)

lint: $(BIN)/activate
	$(BIN)/ruff check .
	$(BIN)/ruff format --check .

fmt: $(BIN)/activate
	$(BIN)/ruff check --fix .
	$(BIN)/ruff format .

# The benchmark has its own virtualenv (picows, uvloop, Flask-SocketIO for the peer).
BENCH_VENV := .venv-bench
$(BENCH_VENV)/bin/activate: bench/requirements.txt
	$(PYTHON) -m venv $(BENCH_VENV)
	$(BENCH_VENV)/bin/pip install --quiet -r bench/requirements.txt
	touch $(BENCH_VENV)/bin/activate

# The standard set against the gateway, Flask-SocketIO and the ceiling server (see bench/README.md).
bench: $(BIN)/activate $(BENCH_VENV)/bin/activate
	$(BENCH_VENV)/bin/python bench/run_standard.py --gateway-python $(BIN)/python $(BENCH_ARGS)

clean:
	rm -rf $(VENV) $(BENCH_VENV) .pytest_cache .ruff_cache
