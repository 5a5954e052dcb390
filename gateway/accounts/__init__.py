"""Accounts: users, their roles, their passwords and their tokens.

`store` holds the User record, validation, password hashing and the UserStore contract;
`sqlite` (the embedded default) and `postgres` (shared by every worker and host) implement
it; `tokens` sets up flask-jwt-extended and checks tokens where no Flask view runs (the
WebSocket upgrade); `offload` runs scrypt off the event loop; `cli` is the `flask users`
command group (list, create, delete, promote, demote). The package may import
`gateway.config` and `gateway.http` (for the 401 answers JWT failures get), and nothing
else of the gateway, except `cli`, which runs on a whole app: it may also import
`gateway.state` (the app's store) and `gateway.protocol` (timestamps as the API shows them),
and `click`. Brokers and transport know nothing of accounts.
"""
