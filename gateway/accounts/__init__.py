"""Accounts: users, their passwords and their tokens.

`store` holds the User record, validation, password hashing and the UserStore contract;
`sqlite` (the embedded default) and `postgres` (shared by every worker and host) implement
it; `tokens` sets up flask-jwt-extended and checks tokens where no Flask view runs (the
WebSocket upgrade); `offload` runs scrypt off the event loop. The package may import
`gateway.config` and `gateway.http.errors` (for the 401 answers JWT failures get), and
nothing else of the gateway: brokers and transport know nothing of accounts.
"""
