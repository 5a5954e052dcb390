"""Guards: how much a client may do, checked where its input enters.

`rates` holds the rate limits (Flask-Limiter for logins and HTTP publishes, a token bucket
per WebSocket); `admission` the connection limits (the worker's capacity, connections per
user) applied before a WebSocket or SSE stream is accepted. Refusals are the one JSON error
shape (429 with Retry-After, or 503). The package may import `gateway.config`,
`gateway.state`, `gateway.brokers`, `gateway.protocol` (error codes), `gateway.http` and
`gateway.metrics` (the count of refusals).
"""
