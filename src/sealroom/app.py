"""Process life: build the server from settings, run it, and shut it down in order.

Shutdown follows uvicorn's order: stop accepting, tell every connection ``BYE
shutting-down``, wait for them with a deadline, then force what is left. Signal handlers only
record the signal; the main thread notices through the wake-up descriptor and does the work.
"""

from __future__ import annotations

import contextlib
import logging
import resource
import select
import signal
import socket
import threading
import time
from types import FrameType

from sealroom.admission import Admission
from sealroom.auth import Authenticator, ResumeTokens
from sealroom.config import Settings, parse_address
from sealroom.errors import UserError
from sealroom.hub import Hub, HubLimits
from sealroom.messages import HistoryWriter, MessageIds, MessageLog
from sealroom.ratelimit import KeyedBuckets
from sealroom.server import Registry, SealroomServer, Shared
from sealroom.session import Services
from sealroom.store import Store
from sealroom.tls import build_server_context

log = logging.getLogger("sealroom")

HOUSEKEEPING_INTERVAL_S = 0.5  # account changes from the CLI must reach sessions within 2 s
THREAD_STACK_BYTES = 512 * 1024  # a connection thread needs little; 8 MiB default is waste


class App:
    """A running Sealroom: listeners, shared state and housekeeping."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        clock = time.monotonic
        limits, rate = settings.limits, settings.rate
        context = build_server_context(
            settings.tls.cert, settings.tls.key, settings.tls.client_ca, settings.tls.profile
        )
        self.store = Store(settings.storage.database)
        auth = Authenticator.from_settings(
            self.store,
            settings.auth.argon2,
            max_concurrent=settings.auth.max_concurrent_verifications,
            wait_s=settings.auth.verification_wait_s,
        )
        self.hub = Hub(
            HubLimits(
                max_rooms=limits.max_rooms,
                max_rooms_per_session=limits.max_rooms_per_session,
                max_room_members=limits.max_room_members,
                allow_create=settings.rooms.allow_create,
                default_room=settings.rooms.default,
            ),
            next_id=MessageIds(self.store).next,
        )
        history = settings.history
        self.writer = HistoryWriter(
            settings.storage.database, history.per_room, history.private_per_user
        )
        messages = MessageLog(
            self.store, self.hub, self.writer, private_quota=history.private_per_user
        )
        login_buckets = KeyedBuckets(
            rate.logins_per_ip.rate,
            rate.logins_per_ip.burst,
            clock,
            max_keys=limits.max_tracked_addresses,
        )
        tokens = ResumeTokens(self.store, settings.auth.resume_token_days)
        services = Services(
            settings, self.hub, auth, self.store, messages, tokens, login_buckets, clock
        )
        admission = Admission(
            max_connections=limits.max_connections,
            max_per_address=limits.max_connections_per_ip,
            rate=rate.connections_per_ip.rate,
            burst=rate.connections_per_ip.burst,
            clock=clock,
            max_tracked_addresses=limits.max_tracked_addresses,
        )
        self.shared = Shared(services, admission, Registry(), context)
        self.servers: list[SealroomServer] = []
        self._threads: list[threading.Thread] = []
        self._stopping = threading.Event()
        self._seen_accounts_version = self.store.accounts_version()
        try:
            for address in settings.listen:
                try:
                    self.servers.append(SealroomServer(parse_address(address), self.shared))
                except OSError as error:
                    raise UserError(f"cannot listen on {address}: {error.strerror}") from None
        except BaseException:
            self.close()
            raise

    @property
    def addresses(self) -> list[str]:
        return [server.bound for server in self.servers]

    def start(self) -> None:
        _raise_fd_limit()
        threading.stack_size(THREAD_STACK_BYTES)
        self.writer.start()
        for server in self.servers:
            thread = threading.Thread(
                target=server.serve_forever,
                args=(0.5,),
                name=f"listen {server.bound}",
                daemon=True,
            )
            thread.start()
            self._threads.append(thread)
            log.info("listening on %s", server.bound)
        housekeeping = threading.Thread(target=self._housekeeping, name="housekeeping", daemon=True)
        housekeeping.start()
        self._threads.append(housekeeping)

    def _housekeeping(self) -> None:
        while not self._stopping.wait(HOUSEKEEPING_INTERVAL_S):
            try:
                self.apply_account_changes()
                self.shared.services.login_buckets.sweep()
                self.shared.admission.buckets.sweep()
            except Exception:
                log.exception("housekeeping failed")

    def apply_account_changes(self) -> None:
        """Drop live sessions of accounts the CLI disabled or removed."""
        version = self.store.accounts_version()
        if version == self._seen_accounts_version:
            return
        self._seen_accounts_version = version
        for name in self.hub.online_names():
            account = self.store.get_account(name)
            if account is None or not account.enabled:
                state = "removed" if account is None else "disabled"
                count = self.hub.disconnect(name, f"account-{state}")
                log.info("account %s was %s: closed %d sessions", name, state, count)

    def stop(self, grace_s: float | None = None) -> None:
        """Graceful shutdown; safe to call once from any thread but a listener's."""
        if self._stopping.is_set():
            return
        self._stopping.set()
        grace = self.settings.limits.shutdown_grace_s if grace_s is None else grace_s
        for server in self.servers:
            server.shutdown()
        for server in self.servers:
            server.server_close()
        registry = self.shared.registry
        log.info("shutting down: closing %d connections", len(registry))
        registry.close_all("shutting-down")
        if not registry.wait_empty(grace):
            log.warning("%d connections did not close in %.0fs; forcing", len(registry), grace)
            registry.force_close()
            registry.wait_empty(1.0)
        for thread in self._threads:
            thread.join(timeout=2.0)
        self.close()

    def close(self) -> None:
        for server in self.servers:
            server.server_close()
        self.writer.stop()  # commits what is queued
        self.store.close()


def _raise_fd_limit() -> None:
    """Every connection holds a socket and an eventfd: ask for the hard limit up front."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != hard:
        with contextlib.suppress(ValueError, OSError):
            resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


def serve(settings: Settings) -> int:
    """Run in the foreground until SIGTERM or SIGINT; the ``sealroom serve`` command."""
    app = App(settings)
    received: list[int] = []
    wake_r, wake_w = socket.socketpair()
    wake_r.setblocking(False)
    wake_w.setblocking(False)

    def on_signal(signum: int, frame: FrameType | None) -> None:
        received.append(signum)  # only record it: the main loop acts

    previous_fd = signal.set_wakeup_fd(wake_w.fileno())
    previous = {sig: signal.signal(sig, on_signal) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        app.start()
        while not received:
            select.select([wake_r], [], [], 1.0)
            with contextlib.suppress(BlockingIOError):
                wake_r.recv(512)
        log.info("received %s", signal.Signals(received[0]).name)
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
