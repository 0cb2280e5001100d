"""Wires the store together and runs it: database, repository, manager, servicer, gRPC server.

`StoreServer` is the composition root. `start()` returns the bound port; `stop()` is safe to call
twice and shuts down in the order that loses nothing: health NOT_SERVING, the retention
sweeper stopped after its batch in flight, other stores no longer listened to, streams ended
and their leases released, in-flight unary calls given the grace period, the store
deregistered (on PostgreSQL), engine disposed. A store that another declared dead stops itself
the same way, and `failure` says why.
"""

from __future__ import annotations

import asyncio
import logging
import signal
import time

import grpc
from grpc_health.v1._async import HealthServicer

from ackbot.common.auth import AuthInterceptor
from ackbot.common.metrics import MetricsInterceptor, MetricsServer
from ackbot.common.serving import (
    add_health_and_reflection,
    bind,
    check_listen,
    create_server,
    server_credentials,
    set_serving,
)
from ackbot.store import migrations
from ackbot.store.config import ALLOW_INSECURE_FLAG, StoreConfig
from ackbot.store.database import Database
from ackbot.store.errors import CannotOpenDatabase, DeclaredDead, StoreError
from ackbot.store.ids import new_store_id
from ackbot.store.listener import WorkListener
from ackbot.store.manager import MessageManager
from ackbot.store.metrics import StateSampler, StoreMetrics
from ackbot.store.ownership import FileOwnership, claim_database
from ackbot.store.registry import StoreRegistry
from ackbot.store.repository import MessageRepository
from ackbot.store.servicer import SERVICE_NAME, MessageStoreServicer, add_to_server
from ackbot.store.session_bounds import SessionBounds, store_application_name
from ackbot.store.sweeper import RetentionSweeper

log = logging.getLogger(__name__)


def _server_options(config: StoreConfig) -> list[tuple[str, int]]:
    return [
        # gRPC itself rejects larger requests with RESOURCE_EXHAUSTED before they are decoded.
        ("grpc.max_receive_message_length", config.limits.max_request_bytes),
        # Pings find a bot whose network vanished without a FIN, or that hangs (SIGSTOP: its
        # kernel still ACKs, only the ping goes unanswered), so its stream ends and its leases
        # are released ~30 s later instead of at lease expiry.
        ("grpc.keepalive_time_ms", 20_000),
        ("grpc.keepalive_timeout_ms", 10_000),
        # Measured: without it an unanswered keepalive ping is given gRPC core's ping timeout
        # (60 s), not keepalive_timeout_ms, and a hung bot kept its stream ~80 s (20 + 60).
        ("grpc.http2.ping_timeout_ms", 10_000),
        # By default a server sends only 2 pings while it sends no data: a stream idle for
        # a minute (no work) would then stop being checked at all.
        ("grpc.http2.max_pings_without_data", 0),
        ("grpc.http2.min_ping_interval_without_data_ms", 5_000),
        ("grpc.keepalive_permit_without_calls", 1),
    ]


def _describe_tls(config: StoreConfig) -> str:
    if not config.tls:
        return "plaintext"
    return "mutual TLS" if config.tls_client_ca else "TLS"


class StoreServer:
    def __init__(self, config: StoreConfig) -> None:
        self._config = config
        self._server: grpc.aio.Server | None = None
        self._repository: MessageRepository | None = None
        self._manager: MessageManager | None = None
        self._listener: WorkListener | None = None
        self._health: HealthServicer | None = None
        self._ownership: FileOwnership | None = None
        self._started = False
        self._registry: StoreRegistry | None = None
        self._sampler: StateSampler | None = None
        self._sweeper: RetentionSweeper | None = None
        self._metrics_server: MetricsServer | None = None
        self._stopped = asyncio.Event()
        self._stopping = False
        self._self_stop: asyncio.Task[None] | None = None
        #: why the store stopped by itself, if it did
        self.failure: StoreError | None = None

    async def start(self) -> int:
        """Opens the database, serves, and returns the port bound. Raises DatabaseInUse when
        another store holds the SQLite file, AddressInUse when the port is taken, InsecureListen
        when a non-loopback address would be served without TLS and authentication."""
        config = self._config
        authenticator = config.authenticator()
        # First of all: a store that must not serve this address touches nothing.
        check_listen(
            config.listen,
            tls=config.tls,
            authenticated=authenticator.enabled,
            allow_flag=ALLOW_INSECURE_FLAG,
            allowed=config.allow_insecure_listen,
        )
        credentials = None
        if config.tls_cert is not None and config.tls_key is not None:
            credentials = server_credentials(config.tls_cert, config.tls_key, config.tls_client_ca)
        # Before anything touches the database: a second store on an SQLite file would hand
        # out the first one's leases below (see ownership.py).
        try:
            self._ownership = claim_database(config.db_url, config.listen)
        except OSError as exc:  # the folder or the lock file next to the database
            if isinstance(exc, FileExistsError):  # mkdir found a file where the folder goes
                why = f"{exc.filename} is a file, not a folder"
            else:
                why = f"{exc.strerror or exc} ({exc.filename})" if exc.filename else str(exc)
            raise CannotOpenDatabase(f"cannot open the database {config.db_url}: {why}") from exc
        # The port next, still before the database: a store that cannot listen must not
        # upgrade the schema or hand out leases either. It serves only from server.start().
        metrics = StoreMetrics()
        # Metrics outermost: a call the auth interceptor refuses is counted with its code.
        interceptors: list[grpc.aio.ServerInterceptor] = [MetricsInterceptor(metrics.grpc)]
        if authenticator.enabled:
            interceptors.append(AuthInterceptor(authenticator))
        self._server = server = create_server(_server_options(config), interceptors)
        address = bind(server, config.listen, credentials)
        # Made here, not by the repository: every database session carries it in its name,
        # so that the other stores can end them if this one is declared dead (registry.py).
        store_id = new_store_id()
        database = Database.from_url(
            config.db_url,
            lock_timeout_seconds=config.lock_timeout_seconds,
            sqlite_synchronous=config.sqlite_synchronous,
            bounds=SessionBounds(
                application_name=store_application_name(store_id),
                idle_in_transaction_seconds=config.idle_in_transaction_seconds,
                statement_seconds=config.statement_timeout_seconds,
                lock_seconds=config.lock_timeout_seconds,
                keepalive_seconds=config.keepalive_seconds,
            ),
        )
        # Before the schema: a database that cannot be opened is one line naming it and why.
        await database.check_open()

        self._repository = repository = MessageRepository(
            database,
            max_attempts=config.max_attempts,
            store_id=store_id,
            on_commit=metrics.group_commit_batch.observe,
        )
        if config.no_migrate:
            # Migrated as a step of its own (`ackbot-store migrate upgrade`): only checked here.
            await migrations.check_current(database)
        else:
            await migrations.upgrade_to_head(database)
        if database.single_owner:
            # This store holds the file's lock, so any lease in it belongs to a stream of a
            # store that is gone: hand those messages out again now instead of at lease expiry.
            released = await repository.release_all_leases()
            if released:
                log.info("released %d leases left by a previous run", released)
        self._manager = manager = MessageManager(
            repository, metrics=metrics, hold_new_messages=config.hold_new_messages
        )
        if config.metrics_listen is not None:
            self._sampler = StateSampler(metrics, repository.sample_states)
            self._sampler.start()
            self._metrics_server = MetricsServer(metrics.registry, config.metrics_listen)
            self._metrics_server.start()

        add_to_server(MessageStoreServicer(manager, config), server)
        self._health = health = await add_health_and_reflection(server, [SERVICE_NAME])
        # Several stores may share the database: each lease records this store's id
        # (repository.store_id), so that the others can hand its leases back if it dies.
        if repository.shared:
            # Registered before the first stream opens: every lease has a registered owner.
            self._registry = StoreRegistry(
                database,
                repository,
                listen_address=address,
                heartbeat_seconds=config.heartbeat_seconds,
                dead_after_seconds=config.dead_after_seconds,
                on_work_made=manager.work_made_elsewhere,
                on_declared_dead=self._declared_dead,
            )
            await self._registry.start()
        await server.start()
        await manager.start()
        if repository.shared:
            # Other stores may write to this database: hear their work (before SERVING, so a
            # serving store hears it at once).
            self._listener = WorkListener(
                database,
                repository.store_id,
                manager.work_made_elsewhere,
                poll_seconds=config.wake_poll_seconds,
                check_seconds=config.listener_check_seconds,
            )
            await self._listener.start(first_listen_within=config.listener_check_seconds)
        if config.retention_seconds:
            self._sweeper = RetentionSweeper(
                manager, config.retention_seconds, interval_seconds=config.sweep_seconds
            )
            self._sweeper.start()
        await set_serving(health, [SERVICE_NAME], serving=True)
        if self._ownership is not None:
            self._ownership.announce(address)
        self._started = True
        store = f", store={repository.store_id}" if repository.shared else ""
        log.info(
            "listening on %s (database %s%s; %s; %s)",
            address,
            database.url,
            store,
            _describe_tls(config),
            authenticator,
        )
        return int(address.rpartition(":")[2])

    async def stop(self) -> None:
        if self._stopping:
            await self._stopped.wait()
            return
        self._stopping = True
        started = time.monotonic()
        try:
            if self._health is not None:
                await self._health.enter_graceful_shutdown()
            if self._sweeper is not None:
                # First: its batch in flight commits while the database is still open.
                await self._sweeper.stop()
            if self._listener is not None:
                await self._listener.stop()
            if self._manager is not None:
                await self._manager.close_streams(handler_wait_seconds=self._config.grace_seconds)
            if self._server is not None:
                await self._server.stop(self._config.grace_seconds)
            if self._manager is not None:
                # server.stop() may return before cancelled handlers ran their finally blocks.
                await self._manager.close_streams(handler_wait_seconds=0)
            if self._registry is not None:
                await self._registry.stop()
            if self._sampler is not None:
                await self._sampler.stop()
            if self._metrics_server is not None:
                self._metrics_server.stop()
            if self._repository is not None:
                await self._repository.dispose()
            if self._started:
                # A store that failed to start says only why (__main__).
                log.info("stopped in %.2fs", time.monotonic() - started)
        finally:
            if self._ownership is not None:
                # Last, once the database is closed: the next store may have the file.
                self._ownership.release()
            self._stopped.set()

    async def wait_stopped(self) -> None:
        await self._stopped.wait()

    def _declared_dead(self) -> None:
        assert self._registry is not None
        self.failure = DeclaredDead(f"store {self._registry.store_id} was declared dead")
        self._self_stop = asyncio.create_task(self.stop(), name="store-stop")


async def run(config: StoreConfig) -> None:
    """Runs until SIGTERM or SIGINT, then stops gracefully; or until the store stops by itself
    (another store declared it dead), then raises why."""
    server = StoreServer(config)
    stop_requested = asyncio.Event()
    loop = asyncio.get_running_loop()
    # Signal handlers, not KeyboardInterrupt: with grpc.aio the interrupt would surface at an
    # arbitrary await and skip the orderly shutdown.
    for signum in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(signum, stop_requested.set)
    try:
        await server.start()
        requested = asyncio.create_task(stop_requested.wait())
        stopped = asyncio.create_task(server.wait_stopped())
        await asyncio.wait([requested, stopped], return_when=asyncio.FIRST_COMPLETED)
        requested.cancel()
        stopped.cancel()
        if stop_requested.is_set():
            log.info("shutdown requested")
    finally:
        await server.stop()
    if server.failure is not None:
        raise server.failure
