"""The store service: messages keyed by id, leased to bot streams, settled exactly once.

Modules, each with one job: `config` (settings), `validation` (request rules), `errors` (domain
errors), `models` (tables), `database` (engine, dialect, driver errors), `repository` (all SQL
and transactions), `group_commit` (shared write transactions), `manager` (delivery: writes with
their wake-ups, the streams' claim loop, shutdown), `stream_board` (the manager's ledger of
streams, leases and wakes), `servicer` (gRPC <-> manager; with
`mapping`, `grpc_errors`, `settlements` and `consume`), `server` (wiring, start and graceful
stop).
"""
