"""What the tests share: the process fixtures (fixtures.py, loaded for every folder by
tests/conftest.py), the RPC helpers and the answered-once check (harness.py), a PostgreSQL
database of a test's own (postgres.py), the status codes the contract promises (contract.py), a
metrics scrape, and a responder that waits for a gate."""
