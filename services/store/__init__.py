"""The store service: messages keyed by id, leased to bot streams, settled exactly once.

Modules, each with one job: `config` (settings), `validation` (request rules), `errors` (domain
errors), `models` (tables), `database` (engine, dialect, driver errors), `repository` (all SQL
and transactions), `group_commit` (shared write transactions), `stream_board` (streams,
their leases and wakes), `servicer` (gRPC <-> repository), `server` (wiring, start and graceful
stop).
"""
