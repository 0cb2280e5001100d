"""The store's SQL, one module per table (River's one SQL file per table is the model).

`messages` creates, reads and settles messages; `leases` hands them out and back (the only
place a message goes DEAD); `stores` is the registry of stores sharing a PostgreSQL database.
Each write is a plain function of an open `Transaction` (transaction.py), which records what it
changed in one `Changes` (types.py). The repository (repository.py) runs them under group commit
and owns the transactions; nothing here awaits, knows gRPC, or tells anyone anything.

The queries are the same on SQLite and PostgreSQL; the database module (database.py) decides
everything that differs, and wraps driver errors. What the queries count on:
- SQLite allows one writer at a time. Every write transaction starts with an INSERT or an
  UPDATE, so the write lock is taken before anything is read.
- PostgreSQL has concurrent writers: claims use FOR UPDATE SKIP LOCKED so two stores never hand
  out the same row, and every UPDATE re-checks its WHERE on the row it locked. Transactions that
  insert messages take turns (`Transaction.take_insert_turn`), so that `sequence` order is
  commit order and a follower reading `sequence > cursor` never skips a row that commits late.
Each hot write is as few statements as the SQL allows (INSERT ... ON CONFLICT DO NOTHING
RETURNING, UPDATE ... RETURNING): SQLAlchemy's Python per statement, not the SQL, is most of what
a write costs. SQLAlchemy Core, not the ORM, for the same reason.
"""
