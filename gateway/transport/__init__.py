"""Transport: WebSocket connections and server-sent event streams, from socket to broker.

One WebSocket is a `connection.Connection`: a `reader.FrameReader` (client bytes in, whole
messages out), a `session.Session` (commands to broker calls; the broker's Subscriber) and
an `outbox.Outbox` (one bounded queue, one writer, whole frames out), writing through
`sockets.Sender`. `wsframes` builds server frames once per event; `sse.SseStream` is the
same Subscriber role for `GET /topics/<name>/events`; `delivery` holds what both kinds of
subscriber share (holding live events during a replay, drop-oldest accounting);
`registry.Registry` knows every open connection of the worker (heartbeats, capacity,
graceful shutdown); `upgrade` takes a WebSocket from the upgrade request to a served
connection; `libraries` is the one place that touches flask-sock, simple-websocket,
wsproto and gunicorn internals. The package may import `gateway.brokers`,
`gateway.protocol`, `gateway.config`, `gateway.supervisor`, `gateway.guards` and
`gateway.metrics` (counters of drops, slow consumers, resumes); it never imports Flask
views or accounts.
"""
