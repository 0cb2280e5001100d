"""The `ackbot` command line: post, get, list, tail, dead and requeue messages on a store;
erase an author's messages and purge old settled ones.

It is for people and shell scripts; the services talk to the store through the generated stubs.
Output is one line per message, or with `--json` one JSON object per line (the proto's field
names, as MessageToDict writes them). A failed call prints `error: CODE: details` on stderr and
exits 1; a usage error exits 2 (argparse's convention). No traceback reaches the user.

Its modules, one job each: `options` (the commands, their flags and defaults), `output` (pure
formatting, protobuf in, text out, so that tests/cli checks it without a store), `messages`
(post, get, list, tail, watch: thin loops over the RPCs, on the sync gRPC API), `admin` (dead,
stats, requeue, delete, held, approve, erase, purge), `run` (`main`: the channel, the dispatch,
errors to exit codes). `ackbot.cli:main` is the console script; `python -m ackbot.cli` runs the
same. The names the tests and scripts use are importable from here.
"""

from __future__ import annotations

# First: gRPC core reads GRPC_VERBOSITY when grpc is first imported (see the module).
import ackbot.common.grpc_core_logs  # noqa: F401

# isort: split
from ackbot.cli.options import DEFAULT_STORE, STORE_ENV, build_parser, default_author
from ackbot.cli.output import (
    STATES,
    WATCH_EVENT_NAMES,
    format_error,
    format_message,
    format_message_details,
    format_stats,
    format_timestamp,
    json_line,
    message_to_json,
    one_line,
    proto_dict,
    render,
    state_name,
    timestamp_from_ms,
)
from ackbot.cli.run import main

__all__ = [
    "DEFAULT_STORE",
    "STATES",
    "STORE_ENV",
    "WATCH_EVENT_NAMES",
    "build_parser",
    "default_author",
    "format_error",
    "format_message",
    "format_message_details",
    "format_stats",
    "format_timestamp",
    "json_line",
    "main",
    "message_to_json",
    "one_line",
    "proto_dict",
    "render",
    "state_name",
    "timestamp_from_ms",
]
