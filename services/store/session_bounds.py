"""The bounds of every PostgreSQL session of a store, and the name it shows under.

A store that stalls inside a transaction (SIGSTOP, a frozen VM, a lost host) holds its locks for
seconds, not for as long as it is stalled, because the server ends its session; and its sessions
can be found and ended by the other stores (registry.py) by their application_name.
"""

from __future__ import annotations

from dataclasses import dataclass

# A store's sessions show in pg_stat_activity.application_name as this prefix and its id, so
# that an operator can find them, and another store that declares it dead can end them
# (registry.py). Store ids are 16 characters: well inside PostgreSQL's 63.
STORE_APPLICATION_PREFIX = "ackbot-store:"
# TCP keepalive probes sent before the server gives up on a store's host.
_KEEPALIVE_PROBES = 3


def store_application_name(store_id: str) -> str:
    """The application_name of every session of the store `store_id`."""
    return STORE_APPLICATION_PREFIX + store_id


def _ms(seconds: float) -> str:
    return str(max(1, round(seconds * 1000)))


@dataclass(frozen=True)
class SessionBounds:
    """How long a PostgreSQL session of the store may sit or wait, enforced by the server.

    A store stopped (SIGSTOP, a frozen VM, a lost host) inside a transaction keeps its locks,
    the insert turn among them, until its session ends: without bounds every other store's
    writes wait behind it for as long as it is stopped (docs/scaling.md, "A store that
    stalls"). The server, not the store, must end such a session, since the store cannot.
    Sent as server settings at connect time, so they hold for every session of the pool, the
    registry's and the listener's alike. Ignored on SQLite (one process, no sessions).
    """

    # Shown in pg_stat_activity; "" leaves the driver's default.
    application_name: str = ""
    # A session idle inside a transaction this long is ended by the server (its transaction
    # rolled back, its locks released). A healthy store's transactions run whole, in one hop
    # to the driver, and are never idle for more than milliseconds.
    idle_in_transaction_seconds: float = 3.0
    # The longest any one statement may run (schema changes excepted: Database.schema_change).
    statement_seconds: float = 30.0
    # The longest any statement may wait for a lock (the insert turn, a row another store is
    # updating); then UNAVAILABLE, as on SQLite.
    lock_seconds: float = 5.0
    # The server probes a silent store's host after this long and gives up on it after
    # about twice as long: a partitioned host's session ends in seconds, not in the OS's
    # two hours. The same bound applies to data the host does not acknowledge.
    keepalive_seconds: float = 3.0

    def server_settings(self) -> dict[str, str]:
        """The bounds as PostgreSQL settings (milliseconds or whole seconds, as each wants)."""
        idle = max(1, round(self.keepalive_seconds))
        interval = max(1, round(self.keepalive_seconds / _KEEPALIVE_PROBES))
        settings = {
            "idle_in_transaction_session_timeout": _ms(self.idle_in_transaction_seconds),
            "statement_timeout": _ms(self.statement_seconds),
            "lock_timeout": _ms(self.lock_seconds),
            "tcp_keepalives_idle": str(idle),
            "tcp_keepalives_interval": str(interval),
            "tcp_keepalives_count": str(_KEEPALIVE_PROBES),
            "tcp_user_timeout": _ms(idle + interval * _KEEPALIVE_PROBES),
        }
        if self.application_name:
            settings["application_name"] = self.application_name
        return settings
