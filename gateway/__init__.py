"""A WebSocket + REST pub/sub gateway on Flask and gevent.

The factory lives in `gateway.app`; this package file stays empty of imports so that
`gunicorn.conf.py` can read `gateway.config` in the master without loading Flask, JWT and
ssl before the gevent worker monkey-patches them.
"""
