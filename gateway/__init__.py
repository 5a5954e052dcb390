"""A WebSocket + REST pub/sub gateway on Flask and gevent.

The packages, each with its own docstring saying what it owns and may import:
- `brokers`: topics, history rings, seqs and fan-out (memory or Redis); no Flask, no sockets.
- `transport`: WebSocket connections and SSE streams, from socket bytes to broker calls.
- `accounts`: users, password hashing, the user stores and JWT set-up.
- `guards`: rate limits and connection limits.
- `http`: the JSON error shape and request-body helpers for the blueprints in `blueprints/`.

Beside them: `app` (the factory), `config` (Settings from the environment), `state`
(per-app objects), `protocol` (every WebSocket frame shape), `jsondoc` (depth-bounded JSON
parsing), `logs`, `supervisor` (restarting background loops) and `worker` (the gunicorn
worker class). docs/architecture.md follows one message through them.

This file imports nothing, so that `gunicorn.conf.py` can read `gateway.config` in the
master without loading Flask, JWT and ssl before the gevent worker monkey-patches them.
"""
