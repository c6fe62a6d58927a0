"""Process life: build the server from settings, run it, and shut it down in order.

Shutdown follows uvicorn's order: stop accepting, tell every connection ``BYE
shutting-down``, wait for them with a deadline, then force what is left. Signal handlers only
record the signal; the main thread notices through the wake-up descriptor and does the work:
SIGHUP becomes :meth:`App.reload`, SIGTERM and SIGINT :meth:`App.stop`. The service manager
hears about each step (:mod:`sealroom.ops.notify`), and the housekeeping thread feeds its watchdog
only while every listener's serving loop keeps turning.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import dataclasses
import logging
import os
import resource
import select
import signal
import socket
import threading
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from types import FrameType
from typing import TYPE_CHECKING, Any

from sealroom import __version__
from sealroom.config import ConfigError, Settings, load_settings, node_name, parse_address
from sealroom.core.errors import ProtocolError, UserError
from sealroom.core.storage import Store
from sealroom.net.connection import Registry, Shared
from sealroom.net.listener import SealroomServer
from sealroom.net.reactor import Reactor
from sealroom.net.tls import build_server_context
from sealroom.net.web import Site, WebServer
from sealroom.net.workers import AnyPool, LaterPool, WorkerPool
from sealroom.ops.commands import ControlCommands
from sealroom.ops.control import ControlServer
from sealroom.ops.logs import set_level
from sealroom.ops.metrics import Family, MetricsServer
from sealroom.ops.notify import Notifier
from sealroom.ops.observe import Snapshot, metric_families
from sealroom.ops.reload import (
    Validity,
    certificate_validity,
    check_certificate_dates,
    effective_settings,
)
from sealroom.policy.admission import Admission
from sealroom.policy.auth import Authenticator, ResumeTokens, ServerBusy
from sealroom.policy.ratelimit import KeyedBuckets
from sealroom.session.effects import Outcome, Pool
from sealroom.session.machine import Services
from sealroom.state.hub import Hub, HubLimits
from sealroom.state.messages import HistoryWriter, MessageIds, MessageLog
from sealroom.store import open_store

if TYPE_CHECKING:  # a single node never imports the cluster's package (nor Redis)
    from sealroom.cluster.plane import RedisBus

log = logging.getLogger("sealroom")

TICKET_KEY_LIFETIME_S = 24 * 3600  # the TLS context (and its ticket key) is rebuilt daily
HOUSEKEEPING_INTERVAL_S = 0.5  # account changes from the CLI must reach sessions within 2 s
THREAD_STACK_BYTES = 512 * 1024  # our threads (workers, listeners) need little; 8 MiB is waste
# Requests waiting on the cluster's bus at once (each waits for a batched round trip, or
# the store's commit): enough to keep batches full, bounded like every other pool.
CLUSTER_BUS_THREADS = 32


class App:
    """A running Sealroom: listeners, shared state and housekeeping."""

    # One statement per part of the server, in the order they depend on each other.
    def __init__(
        self, settings: Settings, notifier: Notifier | None = None, *, listen: Sequence[str] = ()
    ) -> None:
        # `serve --listen` replaces the configured addresses for the life of the process.
        self.listen_override = tuple(listen)
        if listen:
            settings = dataclasses.replace(settings, listen=self.listen_override)
        self.settings = settings
        # Only the process entry point, serve(), listens to NOTIFY_SOCKET: an App built
        # elsewhere (tests, tools) must not speak for the process to its service manager.
        self.notifier = Notifier({}) if notifier is None else notifier
        self.started_at = datetime.now(UTC)
        self._started = time.monotonic()
        self._context_built = self._started
        clock = time.monotonic
        limits, rate = settings.limits, settings.rate
        context = build_server_context(
            settings.tls.cert, settings.tls.key, settings.tls.client_ca, settings.tls.profile
        )
        self.store: Store = open_store(settings.storage.database, serving=True)
        self.bus: RedisBus | None = None  # in a cluster (cluster.redis): the real-time plane
        services = self._build_services(settings, clock)
        admission = Admission(
            max_connections=limits.max_connections,
            max_per_address=limits.max_connections_per_ip,
            rate=rate.connections_per_ip.rate,
            burst=rate.connections_per_ip.burst,
            clock=clock,
            max_tracked_addresses=limits.max_tracked_addresses,
        )
        self.reactor = Reactor()
        self.shared = Shared(
            services, admission, Registry(), context, self.pools, complete=self.reactor.complete
        )
        if self.bus is not None:
            self.shared.cluster_admit = self._cluster_admit
            _drive_bus(self.reactor, self.bus)
        self.counters = services.counters
        self.certificate: Validity | None = _startup_certificate(settings)
        self.reloads = {"ok": 0, "failed": 0}
        self.last_reload: tuple[datetime, str | None] | None = None  # when, and why it failed
        # SIGHUP reloads on the main thread, `sealroom reload` on the control thread: one
        # at a time (re-entrant: the control command reads the outcome under it too).
        self.reload_lock = threading.RLock()
        self.servers: list[SealroomServer] = []
        self.web: WebServer | None = None  # the web door (web.listen), beside the TLS port
        self.commands = ControlCommands(self)  # what the control socket's commands do
        self.control: ControlServer | None = None
        self.metrics: MetricsServer | None = None
        self._threads: list[threading.Thread] = []
        self._side_threads: list[threading.Thread] = []  # control and metrics
        self._stopping = threading.Event()
        self._seen_accounts_version = self.store.accounts_version()
        # Rooms are stored: the default one exists from the start, open and without owner.
        self.store.create_room(settings.rooms.default, None)
        self._seen_rooms_version = -1
        self.apply_room_changes()
        self._next_watchdog = 0.0
        self._stuck = False  # a serving loop stopped turning (said once per episode)
        self._last_status = ""
        try:
            self._listen(settings)
            if settings.control.socket is not None:
                self.control = ControlServer(settings.control.socket, self.commands.table())
            if settings.metrics.listen is not None:
                self.metrics = MetricsServer(
                    parse_address(settings.metrics.listen),
                    self.metric_families,
                    unready=self.unready,
                )
        except BaseException:
            self.close()
            raise

    def _build_services(self, settings: Settings, clock: Callable[[], float]) -> Services:
        """The state and policies every session shares, and the pools that run its effects."""
        limits, rate = settings.limits, settings.rate
        auth = Authenticator.from_settings(
            self.store,
            settings.auth.argon2,
            max_concurrent=settings.auth.max_concurrent_verifications,
            wait_s=settings.auth.verification_wait_s,
        )
        # Blocking work runs here, never on the reactor: argon2 on exactly as many threads
        # as verifications may run at once, database calls on a few of their own.
        self.pools = _worker_pools(settings)
        store_pool = self.pools[Pool.STORE]
        ids = MessageIds(
            self.store, prefetch=lambda refill: store_pool.submit(refill, _ignore_outcome)
        )
        cluster = settings.cluster.redis is not None
        self.hub = Hub(_hub_limits(settings), next_id=ids.take, replica=cluster)
        if cluster:
            self.bus = _cluster_bus(settings, self.hub, self.store)
        history = settings.history
        self.writer = HistoryWriter(
            open_store(settings.storage.database), history.per_room, history.private_per_user
        )
        messages = MessageLog(
            self.store,
            self.hub,
            self.writer,
            ids,
            private_quota=history.private_per_user,
            private_per_sender=history.private_per_sender,
            store_rooms=history.rooms,
            claimer=None if self.bus is None else f"{self.bus.node_name}/{self.bus.node}",
            background=lambda work: store_pool.submit(work, _ignore_outcome),
        )
        if self.bus is not None:  # one time text per millisecond, as room messages use
            self.bus.now = messages.now
        login_buckets = KeyedBuckets(
            rate.logins_per_ip.rate,
            rate.logins_per_ip.burst,
            clock,
            max_keys=limits.max_tracked_addresses,
        )
        tokens = ResumeTokens(self.store, settings.auth.resume_token_days)
        account_buckets = KeyedBuckets(
            rate.messages.rate,
            rate.messages.burst,
            clock,
            max_keys=limits.max_connections,  # at most one account per connection
        )
        return Services(
            settings,
            self.hub,
            auth,
            self.store,
            messages,
            tokens,
            login_buckets,
            clock,
            account_buckets=account_buckets,
            bus=self.bus,
        )

    def _listen(self, settings: Settings) -> None:
        """Bind the TLS port's listeners, and the web door's when ``web.listen`` is set."""
        for address in settings.listen:
            try:
                server = SealroomServer(parse_address(address), self.shared, self.reactor)
                self.servers.append(server)
            except OSError as error:
                raise UserError(f"cannot listen on {address}: {error.strerror}") from None
        web = settings.web.listen
        if web is None:
            return
        try:
            self.web = WebServer(parse_address(web), self.shared, self.reactor, Site.from_package())
        except OSError as error:
            raise UserError(f"cannot listen on {web} (web.listen): {error.strerror}") from None

    @property
    def addresses(self) -> list[str]:
        return [server.bound for server in self.servers]

    @property
    def listeners(self) -> list[SealroomServer]:
        """Every listening socket's server: the TLS port's, then the web door's."""
        return [*self.servers, *([self.web] if self.web is not None else [])]

    def start(self) -> None:
        _raise_fd_limit()
        _big_blocks_by_mmap()
        threading.stack_size(THREAD_STACK_BYTES)
        if self.bus is not None:  # first: a node the cluster refuses starts nothing
            self.bus.on_census = self.commands.session_rows
            try:  # before listening; a Redis that would lose acknowledged data is refused
                self.bus.start()
            except BaseException:
                self._stopping.set()  # nothing to stop in order: no loop is turning yet
                self.close()
                raise
        self.writer.start()
        for pool in self.pools.values():
            pool.start()
        self.reactor.start()
        for server in self.listeners:
            thread = threading.Thread(
                target=server.serve_forever,
                args=(0.5,),
                name=f"listen {server.bound}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
            log.info("listening on %s", server.bound)
        if self.web is not None:  # the address a browser must use: the origin is checked
            port = self.web.door.port
            shown = "" if port == 443 else f":{port}"
            log.info("web client at https://%s%s/", self.settings.server_name, shown)
        for side, what in ((self.control, "control socket"), (self.metrics, "metrics")):
            if side is None:
                continue
            thread = threading.Thread(
                target=side.serve_forever, args=(0.5,), name=what, daemon=True
            )
            thread.start()
            self._side_threads.append(thread)
        if self.control is not None:
            log.info("control socket at %s", self.control.path)
        if self.metrics is not None:
            log.info("metrics on http://%s/metrics", self.metrics.bound)
        housekeeping = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        housekeeping.start()
        self._threads.append(housekeeping)
        # Every listener is bound (in __init__) and serving: now we are ready.
        self._last_status = self.status_line()
        self.notifier.ready(self._last_status)

    def _cluster_admit(self, address: str) -> bool:
        """Whether ``address`` may connect once more by the budget every node shares (on
        the bus's pool). Redis away: yes; this node's own limits were checked before."""
        bus = self.bus
        if bus is None or not bus.up:
            return True
        bucket = self.settings.rate.connections_per_ip
        try:
            return bus.take("connections", address, bucket.rate, bucket.burst) == 0
        except ProtocolError:
            return True

    def _housekeeping(self) -> None:
        interval = HOUSEKEEPING_INTERVAL_S
        if self.notifier.watchdog_interval is not None:
            interval = min(interval, self.notifier.watchdog_interval)
        while not self._stopping.wait(interval):
            try:
                self.apply_account_changes()
                self.apply_room_changes()
                self.shared.services.login_buckets.sweep()
                if self.shared.services.account_buckets is not None:
                    self.shared.services.account_buckets.sweep()
                self.shared.admission.buckets.sweep()
                if time.monotonic() - self._context_built >= TICKET_KEY_LIFETIME_S:
                    self.renew_ticket_key()
            except Exception:
                log.exception("housekeeping failed")
            self._tend_service_manager()

    def _tend_service_manager(self) -> None:
        """Feed the watchdog while every serving loop turns; keep STATUS= current."""
        if not self.notifier.enabled:
            return
        now = time.monotonic()
        interval = self.notifier.watchdog_interval
        if interval is not None and now >= self._next_watchdog:
            # A listener that stopped turning is a wedged server: let the watchdog fire.
            loops = [(s.bound, s.heartbeat) for s in self.listeners]
            loops.append(("reactor", self.reactor.heartbeat))
            stale = [name for name, beat in loops if now - beat > max(interval, 1.5)]
            if stale and not self._stuck:
                log.error("serving loop of %s is stuck; not feeding the watchdog", stale)
            elif not stale:
                if self._stuck:
                    log.warning("serving loops turn again; feeding the watchdog")
                self.notifier.watchdog()
                self._next_watchdog = now + interval
            self._stuck = bool(stale)
        status = self.status_line()
        if status != self._last_status:
            self._last_status = status
            self.notifier.status(status)

    def renew_ticket_key(self) -> None:
        """Rebuild the TLS context from the running settings: a fresh context has a fresh
        session-ticket key, so a stolen key can decrypt at most a day of resumed sessions.
        Tickets issued before stop resuming; those clients do one full handshake."""
        tls = self.settings.tls
        try:
            context = build_server_context(tls.cert, tls.key, tls.client_ca, tls.profile)
        except (UserError, ValueError) as error:
            log.warning("could not renew the session-ticket key (the old one stays): %s", error)
            return
        self.shared.context = context
        self._context_built = time.monotonic()
        log.info("renewed the TLS session-ticket key")

    # -- reload -----------------------------------------------------------------------------

    def reload(self) -> bool:
        """Re-read the configuration and TLS files and apply them without dropping anyone.

        All or nothing: a missing, mismatched or expired certificate or key, or a broken
        configuration, is logged and the running context and settings stay in service.
        """
        with self.reload_lock:
            self.notifier.reloading("reloading configuration and TLS certificates")
            try:
                problem = self._reload()
            except Exception:
                log.exception("reload failed; the running configuration stays in service")
                problem = "unexpected error (see the log)"
            self.reloads["failed" if problem else "ok"] += 1
            self.last_reload = (datetime.now(UTC), problem)
            self._last_status = self.status_line()
            self.notifier.ready(self._last_status)
            return problem is None

    def _reload(self) -> str | None:
        """Reload; None on success, else what was wrong (already logged)."""
        running = self.settings
        source = running.source
        try:
            loaded = running if source is None else load_settings(source)
            if self.listen_override:  # the file's listen is not what this process serves
                loaded = dataclasses.replace(loaded, listen=self.listen_override)
        except ConfigError as error:
            # A problem with the file itself already starts with its path; a key's does not.
            problems = [
                problem if problem.startswith(f"{source}:") else f"{source}: {problem}"
                for problem in error.problems
            ]
            return _refused(f"configuration {'; '.join(problems)}")
        settings, restart_only = effective_settings(running, loaded)
        tls = settings.tls
        try:
            validity = check_certificate_dates(tls.cert)
            context = build_server_context(tls.cert, tls.key, tls.client_ca, tls.profile)
        except (UserError, ValueError) as error:
            return _refused(str(error))
        for name in restart_only:
            log.warning("reload: %s changed; it takes effect only after a restart", name)
        self._apply(settings, context)
        self.certificate = validity
        log.info(
            "reloaded %s; TLS certificate %s valid until %s",
            source or "built-in defaults",
            tls.cert,
            validity.not_after.strftime("%Y-%m-%dT%H:%M:%SZ"),
        )
        return None

    def _apply(self, settings: Settings, context: Any) -> None:
        """Swap in checked settings: shared policy now, per-connection bounds for new ones."""
        limits, rate = settings.limits, settings.rate
        shared = self.shared
        shared.admission.reconfigure(
            max_connections=limits.max_connections,
            max_per_address=limits.max_connections_per_ip,
            rate=rate.connections_per_ip.rate,
            burst=rate.connections_per_ip.burst,
            max_tracked_addresses=limits.max_tracked_addresses,
        )
        services = shared.services
        if services.account_buckets is not None:
            services.account_buckets.reconfigure(
                rate.messages.rate, rate.messages.burst, limits.max_connections
            )
        services.login_buckets.reconfigure(
            rate.logins_per_ip.rate, rate.logins_per_ip.burst, limits.max_tracked_addresses
        )
        self.hub.limits = _hub_limits(settings)
        self.writer.per_room = settings.history.per_room
        self.writer.per_user = settings.history.private_per_user
        services.messages.private_quota = settings.history.private_per_user
        services.messages.private_per_sender = settings.history.private_per_sender
        services.messages.store_rooms = settings.history.rooms
        if self.bus is not None:
            self.bus.store_rooms = settings.history.rooms
        if settings.log.level != self.settings.log.level:
            set_level(settings.log.level)
        # A connection reads ``shared.services`` once, when it starts: sessions already
        # running keep the per-connection bounds they began with (line length, queue size,
        # timeouts, message and error buckets); every new connection gets the new ones.
        shared.services = dataclasses.replace(services, settings=settings)
        shared.context = context  # the next accepted connection handshakes with it
        self._context_built = time.monotonic()  # and it brings a new session-ticket key
        self.settings = settings

    # -- status, metrics and the control channel ---------------------------------------------

    def status_line(self) -> str:
        sessions, rooms = self.hub.counts()
        return f"{len(self.shared.registry)} connections, {sessions} sessions, {rooms} rooms"

    def snapshot(self) -> Snapshot:
        """Every number status and metrics show, read once."""
        shared = self.shared
        services = shared.services
        auth = services.auth
        sessions, rooms = self.hub.counts()
        queued = shared.registry.queued()
        counters = self.counters
        web = self.web
        web_connections, web_sessions = web.door.counts() if web is not None else (0, 0)
        return Snapshot(
            version=__version__,
            pid=os.getpid(),
            server_name=self.settings.server_name,
            listeners=tuple(self.addresses),
            control=str(self.control.path) if self.control else None,
            metrics=self.metrics.bound if self.metrics else None,
            started_at=self.started_at,
            uptime_s=time.monotonic() - self._started,
            connections=len(shared.registry),
            sessions=sessions,
            rooms=rooms,
            outbox_bytes=sum(queued),
            outbox_bytes_max=max(queued, default=0),
            history_lag=self.writer.lag,
            history_dropped=self.writer.dropped,
            argon2_waiting=auth.waiting,
            argon2_slots_taken=auth.slots_taken,
            argon2_wait_seconds=auth.wait_seconds,
            argon2_busy=auth.busy,
            admitted=shared.admission.admitted,
            connection_rejections=dict(shared.admission.rejected),
            login_rate_limited=services.login_buckets.rejected,
            message_rate_limited=counters.messages_rate_limited,
            handshake_failures=shared.handshake_failures,
            logins_ok=counters.logins_ok,
            logins_failed=counters.logins_failed,
            messages_room=counters.messages_room,
            messages_private=counters.messages_private,
            deliveries=self.hub.deliveries,
            delivered_bytes=self.hub.delivered_bytes,
            bytes_received=counters.bytes_received,
            bytes_sent=counters.bytes_sent,
            closed=dict(counters.closed),
            reloads=dict(self.reloads),
            last_reload=self.last_reload,
            certificate_not_after=self.certificate.not_after if self.certificate else None,
            web=web.bound if web is not None else None,
            web_connections=web_connections,
            web_sessions=web_sessions,
            web_answers=dict(web.door.answered) if web is not None else {},
        )

    def unready(self) -> str | None:
        """Why this server does not serve now (``GET /ready`` answers 503 with it), or None.
        A node cut off from Redis accepts connections but answers server-busy: a balancer
        asking this sends clients elsewhere meanwhile."""
        if self._stopping.is_set():
            return "shutting down"
        bus = self.bus
        if bus is not None and not bus.up:
            return "not in the cluster: Redis cannot be reached, or this node was fenced"
        if bus is not None and not bus.store_up:
            return "the database refuses what this node stores"
        return None

    def metric_families(self) -> list[Family]:
        families = metric_families(self.snapshot())
        bus = self.bus
        if bus is not None:  # labelled with this node's name, as its logs are
            node = {"node": bus.node_name}
            families += [
                Family(
                    "sealroom_cluster_up",
                    "gauge",
                    "1 while this node is in the cluster (not fenced).",
                    [(node, 1 if bus.up else 0)],
                ),
                Family(
                    "sealroom_cluster_fenced_total",
                    "counter",
                    "Times this node cut itself off (BYE node-unavailable).",
                    [(node, bus.fenced)],
                ),
                Family(
                    "sealroom_cluster_reaped_total",
                    "counter",
                    "Dead nodes whose sessions this node took back.",
                    [(node, bus.reaped)],
                ),
            ]
        return families

    def apply_account_changes(self) -> None:
        """End the live sessions of account records that changed: removed, disabled, or
        given a new password or role (a new stamp). A session belongs to the record it
        logged in as, so a name removed and created again does not inherit its sessions."""
        version = self.store.accounts_version()
        if version == self._seen_accounts_version:
            return
        self._seen_accounts_version = version
        for name in self.hub.online_names():
            account = self.store.get_account(name)
            if account is None:
                reason, stamp = "account-removed", None
            elif not account.enabled:
                reason, stamp = "account-disabled", None
            else:
                reason, stamp = "account-changed", account.stamp
            count = self.hub.disconnect_stale(name, stamp, reason)
            if count:
                log.info("account %s: %s, closed %d sessions", name, reason, count)

    def apply_room_changes(self) -> None:
        """Bring the hub's rooms in line with the store, where `sealroom room …` (or another
        process) changed them: destroyed rooms are emptied, bans take effect at once."""
        version = self.store.rooms_version()
        if version == self._seen_rooms_version:
            return
        self._seen_rooms_version = version
        records = self.store.list_rooms()
        # A room the hub has and the list lacks may have been created after the list was
        # read: only a second look at the store says it is gone.
        gone = [name for name in self.hub.missing(records) if self.store.get_room(name) is None]
        self.hub.load_rooms(records, gone)

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown; safe to call once from any thread but a listener's."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        self.notifier.stopping("shutting down")
        grace = self.settings.limits.shutdown_grace_s if grace_s is None else grace_s
        # The control and metrics loops end alongside the listeners' (each shutdown() waits
        # up to one poll interval); only started ones: shutdown() would wait forever otherwise.
        sides = [side for side in (self.control, self.metrics) if side is not None]
        ending = [threading.Thread(target=side.shutdown, daemon=True) for side in sides]
        for thread in ending if self._side_threads else ():
            thread.start()
        for server in self.listeners:
            server.shutdown()
        for server in self.listeners:
            server.server_close()
        registry = self.shared.registry
        log.info("shutting down: closing %d connections", len(registry))
        registry.close_all("shutting-down")
        if not registry.wait_empty(grace):
            log.warning("%d connections did not close in %.0fs; forcing", len(registry), grace)
            registry.force_close()
            registry.wait_empty(1.0)
        self.reactor.stop()
        if self.bus is not None:
            self.bus.stop()
        for thread in self._threads:
            thread.join(timeout=2.0)
        for thread in (*ending, *self._side_threads) if self._side_threads else ():
            thread.join(timeout=2.0)
        self.close()

    def close(self) -> None:
        for server in self.listeners:
            server.server_close()
        for side in (self.control, self.metrics):
            if side is not None:
                side.server_close()
        self.reactor.stop()
        for pool in self.pools.values():
            pool.stop()
        self.writer.stop()  # commits what is queued
        self.store.close()
        self.notifier.close()


def _drive_bus(reactor: Reactor, bus: RedisBus) -> None:
    """The reactor's part in a cluster's bus: its two Redis links' sockets sit in the
    reactor's epoll (cluster/link.py). Once a turn, before it waits, the publisher sends what
    the turn queued (one script call for a turn's room messages), and what the reader reads
    is applied in the turn it arrives."""
    for link in (bus.caller, bus.reader):
        link.attach(reactor.watch, reactor.unwatch, reactor.wake, reactor.writable)
        reactor.after_turn(link.on_turn)


def _cluster_bus(settings: Settings, hub: Hub, store: Store) -> RedisBus:
    """The bus of a cluster node; the Redis client is imported here, and only here."""
    from sealroom.cluster.plane import RedisBus  # noqa: PLC0415 -- never on a single node

    cluster = settings.cluster
    assert cluster.redis is not None  # noqa: S101 -- the caller checked
    name = node_name(cluster) or "?"
    history = settings.history
    return RedisBus(
        cluster.redis,
        name,
        cluster.node_timeout_s,
        hub,
        store,
        keep_per_room=history.per_room,
        keep_per_recipient=history.private_per_user,
        store_rooms=history.rooms,
    )


def _worker_pools(settings: Settings) -> dict[Pool, AnyPool]:
    if settings.cluster.redis is not None:  # threads that wait on Redis, batched
        return {
            **_single_node_pools(settings),
            Pool.BUS: WorkerPool("bus", CLUSTER_BUS_THREADS),
            Pool.LATER: LaterPool(),
        }
    return _single_node_pools(settings)


def _single_node_pools(settings: Settings) -> dict[Pool, AnyPool]:
    return {
        Pool.ARGON2: WorkerPool(
            "argon2",
            settings.auth.max_concurrent_verifications,
            max_wait_s=settings.auth.verification_wait_s,
            overloaded=ServerBusy,
        ),
        Pool.STORE: WorkerPool("store", settings.storage.workers),
    }


def _ignore_outcome(outcome: Outcome) -> None:
    """Background work whose result nobody waits for; a failure is logged where it happens."""
    if outcome.error is not None:
        log.error("background work failed: %s", outcome.error)


def _refused(problem: str) -> str:
    # A user's mistake, not a bug: one line, no traceback.
    log.error("reload refused: %s; the running configuration and certificate stay", problem)
    return problem


def _hub_limits(settings: Settings) -> HubLimits:
    limits = settings.limits
    return HubLimits(
        max_rooms=limits.max_rooms,
        max_rooms_per_session=limits.max_rooms_per_session,
        max_room_members=limits.max_room_members,
        allow_create=settings.rooms.allow_create,
        default_room=settings.rooms.default,
        max_created_per_user=settings.rooms.max_created_per_user,
    )


def _startup_certificate(settings: Settings) -> Validity | None:
    """The served certificate's validity; a warning (not a refusal) if it is out of date."""
    try:
        validity = certificate_validity(settings.tls.cert)
    except UserError:
        return None  # build_server_context loaded it; cryptography is only stricter
    now = datetime.now(UTC)
    if not validity.not_before <= now < validity.not_after:
        log.warning(
            "TLS certificate %s is outside its validity period (%s to %s); clients will refuse it",
            settings.tls.cert,
            validity.not_before.isoformat(),
            validity.not_after.isoformat(),
        )
    return validity


# glibc's mallopt parameter: allocations of at least this many bytes are served by mmap.
_M_MMAP_THRESHOLD = -3
MMAP_THRESHOLD_BYTES = 1 << 20


def _big_blocks_by_mmap() -> None:
    """Serve blocks of 1 MiB and more from mmap, so that freeing one returns it at once.

    An argon2 verification allocates its whole memory cost (8 or 64 MiB) in one block. glibc
    raises its mmap threshold after the first such block is freed, up to 32 MiB, so an
    8 MiB block then comes from the worker thread's arena and stays resident after it is
    freed: with two argon2 workers that was 16 MiB kept for nothing (3 KiB per connection at
    5,000). A fixed threshold keeps such blocks out of the arenas. Not glibc: nothing to do.
    """
    try:
        libc = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True)
        libc.mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
    except (OSError, AttributeError):
        return


def _raise_fd_limit() -> None:
    """Every connection holds a socket: ask for the hard limit up front."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(settings: Settings, *, listen: Sequence[str] = ()) -> int:
    """Run in the foreground until SIGTERM or SIGINT, reloading on SIGHUP; ``sealroom serve``.

    ``listen``, when given, replaces the configured listen addresses (``serve --listen``).
    """
    app = App(settings, Notifier(), listen=listen)
    received: list[int] = []
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)  # only record it: the main loop acts

    previous_fd = signal.set_wakeup_fd(wake_w.fileno())
    handled = (signal.SIGTERM, signal.SIGINT, signal.SIGHUP)
    previous = {sig: signal.signal(sig, on_signal) for sig in handled}
    try:
        app.start()
        stop_signal = None
        while stop_signal is None:
            select.select([wake_r], [], [], 1.0)
            with contextlib.suppress(BlockingIOError):
                wake_r.recv(512)
            pending: list[int] = []
            while received:  # pop one by one: a handler may append between two steps
                pending.append(received.pop(0))
            stop_signal = next((sig for sig in pending if sig != signal.SIGHUP), None)
            if stop_signal is None and signal.SIGHUP in pending:
                log.info("received SIGHUP: reloading")
                app.reload()  # several SIGHUPs that arrived together make one reload
        log.info("received %s", signal.Signals(stop_signal).name)
        app.stop()
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)
        signal.set_wakeup_fd(previous_fd)
        wake_r.close()
        wake_w.close()
        if not app._stopping.is_set():
            app.stop(grace_s=1.0)
    log.info("stopped")
    return 0
