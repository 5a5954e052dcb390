"""HTTP helpers shared by the blueprints: one JSON error shape, bounded JSON bodies.

`errors` holds ApiError and the handlers that turn every HTTP error (ours, werkzeug's,
the brokers' exceptions) into `{"error": ...}`; `bodies` parses request bodies with the
depth limit and writes JSON replies; `openapi` (with `openapi_components` and
`openapi_schemas`) is the OpenAPI document of every route. The package may import `gateway.jsondoc`,
`gateway.protocol` (error codes), `gateway.state` and `gateway.brokers` (its exceptions).
"""
