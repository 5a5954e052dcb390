"""The `gw` command-line client of the gateway (docs/cli.md): accounts, topics, pub and sub.

It runs in a plain process, beside the server rather than inside it: it talks to a gateway
over HTTP (`api`, the standard library's http.client) and WebSocket (`wsconn`,
simple-websocket's threaded client), keeps tokens in the user's config folder (`tokens`,
platformdirs), publishes stdin line by line (`publisher`) and follows a topic across
reconnects (`stream`); `cli` parses the command line and `commands` runs the short commands;
`errors` holds the exit codes. It may import only `gateway.client` itself, the standard
library, simple_websocket, orjson and platformdirs: never Flask, gevent or the server's
modules, so that `import gateway.client` loads none of the server.
"""
