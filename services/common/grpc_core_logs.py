"""Quiets gRPC core's own log lines in our three commands; imported by each entry point before
anything imports grpc, because gRPC core reads GRPC_VERBOSITY once, when grpc is first imported.

gRPC core writes to stderr itself, bypassing Python's logging: a failed TLS handshake is an
`I1208 ... ssl_transport_security.cc ... Handshake failed` line between the JSON lines of
`--log-format json`, and before the CLI's own one-line error. What those lines say reaches the
caller as the call's status (the CLI's error, the store's and bot's own log lines), so by default
none are written. Setting GRPC_VERBOSITY (DEBUG, INFO, ERROR; with GRPC_TRACE) in the
environment brings them back to debug gRPC itself. Library users are left alone: only the
entry points import this module.
"""

from __future__ import annotations

import os

VERBOSITY_ENV = "GRPC_VERBOSITY"

os.environ.setdefault(VERBOSITY_ENV, "NONE")
