"""The store service: messages keyed by id, leased to bot streams, settled exactly once.

Modules, each with one job: `config` (settings), `validation` (request rules), `errors` (domain
errors), `models` (tables), `types` (domain dataclasses and the change record), `database`
(engine, dialect, driver errors), `repository` (every transaction), `tables` (the SQL, one
module per table), `group_commit` (shared write transactions), `manager` (delivery: each write's
changes told, the streams' claim loop, shutdown), `stream` (one stream's state and transitions),
`stream_board` (across streams: leases and timed wakes), `servicer` (gRPC <-> manager; with
`mapping`, `grpc_errors`, `settlements` and `consume`), `server` (wiring, start and graceful
stop).
"""
