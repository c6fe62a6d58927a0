"""The bus over Redis: one stream that every node appends to and applies, in one order.

Why a stream and not pub/sub: pub/sub delivers at most once, so every event would need a
sequence number to notice a gap, and a way to fill it. A stream is the log itself: a reader
asks for the entries after the last one it applied, so it cannot skip one, cannot see one
twice, and finds its place again after a reconnect or a Redis restart (with the append-only
file, the stream survives it). Entries are appended by Lua scripts that also count presence
and allocate message ids in the same atomic step, so ids increase in the stream's order.

Two Redis links run on the reactor thread (:mod:`sealroom.cluster.link`):

* the *reader* (:mod:`sealroom.cluster.reader`) applies the stream to the hub -- room
  messages to this node's members, joins and parts (with the cluster's counts, so every
  node says the same JOIN and PART), private messages, kicks, walls and room changes -- in
  the turn that read it;
* the *publisher* (:mod:`sealroom.cluster.caller`) takes what sessions asked for from a
  queue and sends it in one script call per batch, one call in flight -- never a round
  trip per message while others are waiting.

Two threads do the rest:

* the *archiver* stores room messages and live private messages in PostgreSQL, a batch per
  transaction, and only then answers ``OK say`` / ``OK msg``: an acknowledged message is
  durable in the store;
* the *heartbeat* tells Redis this node lives (on Redis's clock), takes back the share of
  dead nodes, and fences this node -- ``BYE node-unavailable`` to its sessions -- when it has
  been cut off for longer than ``cluster.node_timeout_s`` or was declared dead meanwhile.
"""

from __future__ import annotations

import collections
import itertools
import json
import logging
import secrets
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any

import redis
from redis.backoff import NoBackoff
from redis.exceptions import RedisError
from redis.retry import Retry

from sealroom.cluster import scripts
from sealroom.cluster.caller import ScriptCaller
from sealroom.cluster.checks import redis_problems
from sealroom.cluster.entries import (
    EVENTS,
    MAX_PAYLOAD,
    count,
    field_text,
    ignored,
    is_room,
    is_text,
    is_user,
    number,
)
from sealroom.cluster.reader import BusReader, Entry
from sealroom.cluster.requests import BUSY_AFTER_S, Op, Waiter, busy
from sealroom.core.errors import ErrorCode, ProtocolError, UserError
from sealroom.core.model import StoredMessage, iso_utc
from sealroom.core.protocol import encode_line
from sealroom.core.storage import Store
from sealroom.state.hub import Admit, Hub, Member

log = logging.getLogger("sealroom.cluster")

SOCKET_TIMEOUT_S = 1.0  # every Redis command; the reader's blocking read gets more
READ_BLOCK_MS = 500
READ_COUNT = 512  # entries applied per read
RELAY_BYTES = 32_768  # room messages' lines delivered in one chunk at most (see _Relay)
MAX_BATCH = 256  # operations per script call
MAX_STREAM = 100_000  # entries kept in the stream (about a minute at full speed)
ARCHIVE_BATCH = 500
ARCHIVE_KEEP_S = 30.0  # how long the archiver retries a batch the store refused
PRUNE_EVERY_S = 1.0  # how often the archiver trims history to its retention
CENSUS_WAIT_S = 1.0  # `sealroom sessions` waits this long for every node's answer
CENSUS_KEEP_S = 10
OVER_LIMIT = -2  # what the script answers a login whose user has its sessions already


def connect(url: str, timeout: float = SOCKET_TIMEOUT_S, *, protocol: int = 3) -> redis.Redis:
    """A client that fails fast: no hidden retries (they would stretch every deadline).
    (``protocol=2`` for the bus links, which parse replies themselves: no pushes, no maps.)"""
    return redis.Redis.from_url(
        url,
        socket_timeout=timeout,
        socket_connect_timeout=SOCKET_TIMEOUT_S,
        retry=Retry(NoBackoff(), 0),
        retry_on_timeout=False,
        health_check_interval=0,
        protocol=protocol,
    )


class RedisBus:
    """The :class:`~sealroom.session.bus.Bus` of a cluster node."""

    def __init__(
        self,
        url: str,
        name: str,
        timeout_s: float,
        hub: Hub,
        store: Store,
        *,
        keep_per_room: int,
        keep_per_recipient: int,
        store_rooms: bool = True,
        now: Callable[[], str] | None = None,
    ) -> None:
        self.node_name = name
        self.node = self._incarnation()
        self.timeout_s = timeout_s
        self.hub = hub
        self._store = store
        self._keep = (keep_per_room, keep_per_recipient)
        self.store_rooms = store_rooms  # history.rooms: false keeps room messages unstored
        # False while the store refuses what the archiver brings: room messages are then
        # refused before they are published, rather than delivered and not acknowledged.
        self.store_up = True
        # The wire's time text; the server passes MessageLog.now, made once a millisecond.
        self.now = now or (lambda: iso_utc(datetime.now(UTC)))
        self._redis = self.client = connect(url)
        self.reader = BusReader(
            connect(url, READ_BLOCK_MS / 1000 + SOCKET_TIMEOUT_S, protocol=2),
            scripts.BUS,
            count=READ_COUNT,
            block_ms=READ_BLOCK_MS,
            position=self._read_position,
            deliver=self._read,
            reading=lambda: self.up and not self._stopping.is_set(),
        )
        self.caller = ScriptCaller(
            connect(url, protocol=2),
            scripts.PUBLISH,
            timeout_s=SOCKET_TIMEOUT_S,
            next_call=self._next_call,
            answered=self._answered,
            refused=self._refused,
            lost=self._lost,
        )
        self._census = threading.BoundedSemaphore(2)  # census answers under way
        self._reap = self._redis.register_script(scripts.REAP)
        self._heartbeat = self._redis.register_script(scripts.HEARTBEAT)
        self._register = self._redis.register_script(scripts.REGISTER)
        self._bucket = self._redis.register_script(scripts.BUCKET)
        self._seq = itertools.count(1)
        self._queue: collections.deque[Op] = collections.deque()
        self._retry: list[Op] = []
        self._in_flight: list[Op] = []  # the caller's script call under way
        self._waiting: dict[int, Waiter] = {}  # seq -> a request the reader completes
        self._waiting_lock = threading.Lock()
        self._archive: collections.deque[Op] = collections.deque()
        self._written: collections.deque[int] = collections.deque()  # DMs written to a socket
        self._later: collections.deque[Waiter] = collections.deque()  # no thread waits on
        self._archive_wake = threading.Event()
        self._next_prune = 0.0  # monotonic time of the archiver's next trim
        self._position = "0-0"  # the last stream entry applied
        self._generation = 0  # renewed with the position when the node starts anew
        self._state_lock = threading.Lock()
        self.up = False  # registered, and heard by Redis within the timeout
        self._last_ok = 0.0
        self._connected_since = 0.0
        self._stopping = threading.Event()
        self._threads: list[threading.Thread] = []
        # This node's sessions as `sealroom sessions` lists them, for a census.
        self.on_census: Callable[[], list[dict[str, Any]]] = list
        self.fenced = 0  # times this node cut itself off (for status)
        self.reaped = 0  # dead nodes this node took back
        hub.on_leave = self._left

    @staticmethod
    def _incarnation() -> str:
        return secrets.token_hex(6)

    # -- life -------------------------------------------------------------------------------

    def start(self) -> None:
        """Join the cluster, then run; a Redis that cannot be reached, or would lose
        acknowledged data, is a UserError naming the problem (the node does not start)."""
        problems = redis_problems(self._redis)
        if problems:
            raise UserError(f"cluster.redis: {problems[0]}")
        try:
            self._join_cluster()
        except RedisError as error:
            raise UserError(f"cluster.redis: cannot join the cluster: {error}") from None
        for target, what in (
            (self._run_archiver, "bus archiver"),
            (self._run_heartbeat, "heartbeat"),
        ):
            thread = threading.Thread(target=target, name=what, daemon=True)
            thread.start()
            self._threads.append(thread)
        self.reader.start()
        self.caller.start()
        log.info("joined the cluster as node %s (%s)", self.node_name, self.node)

    def _join_cluster(self) -> None:
        """Register (anew), and read where the bus stands and who is where, in one step.
        The id counter is raised to the store's highest id each time: a Redis that lost its
        data (a new server, a flush) must not give an id that is stored already."""
        try:
            floor = self._store.highest_id()
        except Exception as error:
            raise RedisError(f"the database did not say its highest id: {error}") from None
        last, flat = self._register(args=[self.node, self.node_name, floor])
        totals: dict[tuple[str, str], int] = {}
        for field, sessions in zip(flat[::2], flat[1::2], strict=True):
            room, _, name = _str(field).partition("\t")
            totals[(room, name)] = int(sessions)
        with self._state_lock:
            self._generation += 1
            self._position = _str(last)
            self.hub.load_presence(totals)
            now = time.monotonic()
            self._last_ok = self._connected_since = now
            self.up = True
        self.caller.wake()
        self.reader.poke()  # read from the new place

    def stop(self) -> None:
        """Leave in order: our share is taken back now, not after the timeout. (After the
        reactor stopped: its sessions have left, and what they queued that was not
        published yet -- their parts -- the reaping says for them.)"""
        self._stopping.set()
        self._archive_wake.set()
        for thread in self._threads:
            thread.join(timeout=2.0)
        if self.up:
            try:
                self._reap(args=[0, MAX_STREAM, self.node])
            except RedisError as error:
                log.warning("could not leave the cluster in order (%s); others will reap", error)
        self.reader.stop()
        self.caller.stop()
        self._redis.close()

    # -- the session's side (Bus) -----------------------------------------------------------

    def login(
        self, member: Member, limit: int, room: str | None, reply: bytes, admit: Admit
    ) -> bool | None:
        name = member.name
        if room is None:
            return None if self._call("enter", [name, str(limit), "", "0"]) == OVER_LIMIT else False

        def apply(total: int) -> bool:
            return self.hub.enter_replica(member, room, reply, admit)

        entered = self._call("enter", [name, str(limit), room, str(member.serial)], apply=apply)
        if entered == OVER_LIMIT:
            return None
        if not entered:
            raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{room} does not exist")
        return True

    def join(self, member: Member, room: str, reply: bytes, admit: Admit) -> None:
        def apply(total: int) -> bool:
            return self.hub.enter_replica(member, room, reply, admit)

        if not self._call("join", [room, member.name, str(member.serial), "0"], apply=apply):
            raise ProtocolError(ErrorCode.NO_SUCH_ROOM, f"{room} does not exist")

    def part(self, member: Member, room: str) -> None:
        def apply(total: int) -> bool:
            self.hub.leave_replica(member, room)
            return True

        self._call("part", [room, member.name, str(member.serial), "0"], apply=apply)

    def leave(self, member: Member, rooms: list[str]) -> None:
        for room in rooms:
            self._background("part", [room, member.name, str(member.serial), "0"])
        self._background("logout", [member.name])

    def say_later(self, member: Member, room: str, text: str) -> Waiter:
        """A room message, handed over without blocking: the session's thread goes on
        reading; the waiter says when the message is durable (or busy, by its deadline).
        """
        args = [room, member.name, text, str(member.serial)]
        if not self.up or self._stopping.is_set():
            raise busy()
        if not self.store_rooms:
            waiter = self._submit("say", args, None, wake=False)
        elif not self.store_up:
            raise busy("the database is unreachable")
        else:
            message = StoredMessage(0, room, None, member.name, text, self.now())
            waiter = self._submit("say", args, None, archive=message, wake=False)
        self._later.append(waiter)
        return waiter

    def direct(self, sender: str, recipient: str, text: str, stamp: int) -> tuple[int, bool]:
        """Stored first (undelivered), then published: the recipient's node marks it
        delivered once its line is written to a socket. A node that dies before that
        leaves it waiting in the store for the next login, as a single server does."""
        message_id = int(self._call("id", []))
        message = StoredMessage(message_id, None, recipient, sender, text, self.now())
        try:
            self._store.add_messages([message], delivered=False)
        except Exception as error:
            log.warning("could not store a private message: %s", error)
            raise busy("the database is unreachable") from None
        online = int(self._call("dm", [recipient, sender, text, str(stamp), str(message_id)]))
        if not online and self.online(recipient):
            # A login came between the count and the store: let it look again.
            self.broadcast("mail", {"name": recipient})
        return message_id, online > 0

    def online(self, name: str) -> bool:
        try:
            return int(self._redis.hget(scripts.PREFIX + "online", name) or 0) > 0
        except RedisError:
            raise busy() from None

    def broadcast(self, kind: str, payload: Mapping[str, object]) -> None:
        body = json.dumps(payload, separators=(",", ":"), ensure_ascii=False)
        if len(body) > MAX_PAYLOAD:
            raise ProtocolError(ErrorCode.BAD_ARGUMENT, "too large to share")
        self._call(kind, [body])

    def take(self, bucket: str, key: str, rate: float, burst: float) -> float:
        if not self.up:
            raise busy()
        try:
            return float(self._bucket(args=[f"{bucket}:{key}", rate, burst]))
        except RedisError:
            raise busy() from None

    def nodes(self) -> list[dict[str, Any]]:
        """Every live node, for status: name, sessions, seconds since its last heartbeat."""
        pipe = self._redis.pipeline(transaction=False)
        pipe.time()
        pipe.zrange(scripts.NODES, 0, -1, withscores=True)
        now_pair, members = pipe.execute()
        now_ms = now_pair[0] * 1000 + now_pair[1] // 1000
        pipe = self._redis.pipeline(transaction=False)
        for member, _ in members:
            pipe.hgetall(f"{scripts.PREFIX}node:{_str(member)}:info")
        infos = pipe.execute()
        found = []
        for (member, score), info in zip(members, infos, strict=True):
            fields = {_str(k): _str(v) for k, v in info.items()}
            found.append(
                {
                    "name": fields.get("name", "?"),
                    "id": _str(member),
                    "sessions": int(fields.get("sessions", "0") or 0),
                    "last_heartbeat_s": round(max(0, now_ms - score) / 1000, 3),
                    "self": _str(member) == self.node,
                }
            )
        return found

    def census(self) -> list[dict[str, Any]]:
        """Every node's sessions: a ``census`` event asks, each node answers in a key of
        its own (expiring), and this waits for every live node, a second at most."""
        ask = secrets.token_hex(8)
        self.broadcast("census", {"ask": ask})
        deadline = time.monotonic() + CENSUS_WAIT_S
        try:
            while True:
                live = [_str(m) for m in self._redis.zrange(scripts.NODES, 0, -1)]
                keys = [f"{scripts.PREFIX}census:{ask}:{node}" for node in live]
                answers = self._redis.mget(keys) if keys else []
                if all(answers) or time.monotonic() >= deadline:
                    break
                time.sleep(0.05)
        except RedisError:
            raise busy() from None
        rows: list[dict[str, Any]] = []
        for answer in answers:
            if answer:
                found = json.loads(answer)
                rows.extend(row for row in found if isinstance(row, dict))
        return rows

    def answer_census(self, ask: str) -> None:
        """Read from the bus on the reactor thread, which must not wait for Redis: the
        answer is written by a short-lived thread, two at most (a census is an operator's
        `sealroom sessions`; one beyond that waits for the next ask)."""
        if not self._census.acquire(blocking=False):
            log.warning("a census was not answered: two answers are still under way")
            return
        threading.Thread(
            target=self._answer_census, args=(ask,), name="census", daemon=True
        ).start()

    def _answer_census(self, ask: str) -> None:
        try:
            rows = json.dumps(self.on_census(), separators=(",", ":"))
            key = f"{scripts.PREFIX}census:{ask}:{self.node}"
            self._redis.set(key, rows, ex=CENSUS_KEEP_S)
        except RedisError as error:
            log.warning("could not answer a census: %s", error)
        finally:
            self._census.release()

    # -- requests in flight -----------------------------------------------------------------

    def _call(
        self,
        kind: str,
        args: list[str],
        *,
        apply: Callable[[int], bool] | None = None,
        archive: StoredMessage | None = None,
    ) -> Any:
        return self._await(self._submit(kind, args, apply, archive=archive))

    def _submit(
        self,
        kind: str,
        args: list[str],
        apply: Callable[[int], bool] | None,
        *,
        archive: StoredMessage | None = None,
        queue: bool = True,
        wake: bool = True,
    ) -> Waiter:
        if not self.up or self._stopping.is_set():
            raise busy()
        waiter = Waiter(apply)
        op = Op(kind, next(self._seq), args, waiter, archive)
        if not queue:  # straight to the archiver (a live private message, already ordered)
            self._archive.append(op)
            self._archive_wake.set()
            return waiter
        if apply is not None:
            with self._waiting_lock:
                self._waiting[op.seq] = waiter
        self._queue.append(op)
        # Not woken (``wake`` false: asked on the reactor thread): the publisher's turn
        # comes before the reactor next waits, and takes what the whole turn queued.
        if wake:
            self.caller.wake()
        return waiter

    def _await(self, waiter: Waiter) -> Any:
        if not waiter.done.wait(BUSY_AFTER_S):
            with waiter.lock:
                if not waiter.done.is_set():
                    waiter.cancelled = True
                    raise busy()
        if waiter.error is not None:
            raise waiter.error
        return waiter.result

    def _background(self, kind: str, args: list[str]) -> None:
        self._queue.append(Op(kind, next(self._seq), args, None))
        self.caller.wake()

    def _left(self, member: Member, room: str) -> None:
        """A ban or destroy put a local session out of ``room``: count it out, quietly."""
        self._background("part", [room, member.name, str(member.serial), "1"])

    # -- the publisher (on the reactor thread: ScriptCaller's callbacks) ---------------------

    def _next_call(self) -> list[Any] | None:
        """The next batch's script arguments; None when there is nothing to send."""
        if not (self._queue or self._retry):  # most turns: once each, on the reactor
            return None
        if not self.up:
            self._fail_queued()
            return None
        batch = self._retry[:MAX_BATCH]
        del self._retry[:MAX_BATCH]
        while self._queue and len(batch) < MAX_BATCH:
            op = self._queue.popleft()
            # A request already answered (server-busy by its deadline) is not sent after all.
            if op.waiter is None or not op.waiter.done.is_set():
                batch.append(op)
        if not batch:
            return None
        self._in_flight = batch
        args: list[Any] = [self.node, MAX_STREAM]
        for op in batch:
            args += [op.kind, op.seq, *op.args]
        return args

    def _answered(self, results: Any) -> None:
        batch, self._in_flight = self._in_flight, []
        if not (
            isinstance(results, list)
            and len(results) == len(batch)
            and all(isinstance(result, int) for result in results)
        ):  # bytes from Redis are hostile
            log.error("the bus script answered a batch of %d with a malformed reply", len(batch))
            self._fail(batch, busy())
            return
        for op, result in zip(batch, results, strict=True):
            waiter = op.waiter
            if waiter is None:
                continue
            if waiter.apply is not None and result < 0:  # no entry comes for the reader
                with self._waiting_lock:
                    self._waiting.pop(op.seq, None)
                if result == OVER_LIMIT:  # a login refused, not counted
                    waiter.finish(OVER_LIMIT)
                    continue
                with waiter.lock:  # a part never counted here (taken back already)
                    waiter.apply(0)
                    waiter.finish(True)
                continue
            if op.archive is not None:
                message = op.archive
                op.archive = StoredMessage(result, *_rest(message))
                waiter.result = result
                self._archive.append(op)
            elif waiter.apply is None:
                waiter.finish(result)
        if self._archive:
            self._archive_wake.set()  # once a batch

    def _refused(self, error: str) -> None:
        batch, self._in_flight = self._in_flight, []
        self._fail(batch, busy())
        if error.startswith("FENCED"):
            self._fence("this node was declared dead")
        else:
            log.error("the bus refused a batch: %s", error)

    def _lost(self) -> None:
        """The call in flight went with its connection, or the publisher is not connected:
        what waits hears server-busy now; background work is sent once it connects again."""
        batch, self._in_flight = self._in_flight, []
        if batch:
            log.warning("lost a call to the bus with its connection (%d requests)", len(batch))
            self._fail(batch, busy())
            self._retry[:0] = [op for op in batch if op.waiter is None]
        if self._queue and self.up:
            waiting: list[Op] = []
            for _ in range(len(self._queue)):
                op = self._queue.popleft()
                (waiting if op.waiter is not None else self._retry).append(op)
            self._fail(waiting, busy())

    def _fail(self, batch: Sequence[Op], error: BaseException) -> None:
        for op in batch:
            if op.waiter is not None:
                with self._waiting_lock:
                    self._waiting.pop(op.seq, None)
                op.waiter.finish(error=error)

    def _fail_queued(self) -> None:
        failed = []
        while self._queue:
            op = self._queue.popleft()
            if op.waiter is not None:
                failed.append(op)
        self._fail(failed, busy())

    # -- the archiver -----------------------------------------------------------------------

    def _run_archiver(self) -> None:
        while not self._stopping.is_set() or self._archive:
            self._archive_wake.wait(0.5)
            self._archive_wake.clear()
            if not self.store_up and not self._archive:
                self._probe_store()
            self._expire_later()
            while self._archive:
                take = min(len(self._archive), ARCHIVE_BATCH)
                batch = [self._archive.popleft() for _ in range(take)]
                self._store_batch(batch)
            if self._written:
                self._mark_written()

    def _mark_written(self) -> None:
        """Private messages written to their recipient's socket here: delivered, in one
        statement (a message written by two sessions is marked once or twice: the same)."""
        ids = sorted({self._written.popleft() for _ in range(len(self._written))})
        try:
            self._store.mark_delivered(ids)
        except Exception as error:  # they stay waiting: the next login gets them again
            log.warning("could not mark %d private messages delivered: %s", len(ids), error)

    def _expire_later(self) -> None:
        """Requests no thread waits for get server-busy by their deadline, as waited-for
        ones do (oldest first: the deque is in the order they were made)."""
        now = time.monotonic()
        later = self._later
        while later and (later[0].done.is_set() or later[0].deadline <= now):
            waiter = later.popleft()
            if not waiter.done.is_set():
                waiter.cancelled = True
                waiter.finish(error=busy())

    def _probe_store(self) -> None:
        """The store refused the last batch: ask it something cheap, so that messages are
        taken again as soon as it answers (and not before: see :meth:`say`)."""
        try:
            self._store.highest_id()
        except Exception:  # still away; the next look is half a second later
            return
        log.warning("the database answers again: room messages are taken again")
        self.store_up = True

    def _store_batch(self, batch: list[Op]) -> None:
        """One transaction for the batch; the senders are answered once it committed.

        While the store refuses, the senders hear server-busy at their deadline (the
        message was delivered live, but is not acknowledged), and storing goes on for
        ``ARCHIVE_KEEP_S``, so history keeps what was delivered if the store comes back.
        """
        messages = [op.archive for op in batch if op.archive is not None]
        keep_room, keep_private = self._keep
        started = time.monotonic()
        # Trimming history to its retention reads the newest N ids of each room touched:
        # done at most once per PRUNE_EVERY_S, not per batch (a room may briefly hold a
        # second's messages more than history.per_room).
        prune = started >= self._next_prune
        while True:
            try:
                self._store.add_messages(
                    messages,
                    keep_per_room=keep_room if prune else None,
                    keep_per_recipient=keep_private if prune else None,
                )
                if prune:
                    self._next_prune = started + PRUNE_EVERY_S
                break
            except Exception as error:
                waited = time.monotonic() - started
                if self.store_up:
                    self.store_up = False  # new messages are refused until it answers
                    log.warning("could not store %d messages: %s", len(messages), error)
                for op in batch:
                    waiter = op.waiter
                    if waiter is not None and not waiter.done.is_set() and waited > 1.0:
                        waiter.finish(error=busy("the database is unreachable"))
                if waited > ARCHIVE_KEEP_S or self._stopping.is_set():
                    log.error("dropped %d messages the store refused", len(messages))  # noqa: TRY400
                    return
                time.sleep(0.2)
        self.store_up = True
        for op in batch:
            waiter = op.waiter
            if waiter is not None and not waiter.done.is_set():
                waiter.finish(waiter.result)

    # -- the reader -------------------------------------------------------------------------

    def _read_position(self) -> tuple[int, str]:
        with self._state_lock:
            return self._generation, self._position

    def _read(self, generation: int, entries: list[Entry]) -> None:
        """Apply what one read of the stream brought (on the reactor thread: nothing here
        blocks), unless the node started anew since it asked: then the next read asks
        from the new place."""
        with self._state_lock:
            if generation != self._generation or not self.up:
                return
            relay = _Relay(self.hub)
            for entry_id, fields in entries:
                self._position = entry_id
                try:
                    if fields.get(b"k") == b"say":
                        self._say(fields, relay)
                    else:
                        relay.flush()  # what follows comes after them for everyone
                        self._apply(fields)
                except Exception:
                    log.exception("could not apply bus entry %s", self._position)
            relay.flush()

    def _say(self, raw: Mapping[bytes, bytes], relay: _Relay) -> None:
        """A room message: checked (bytes from Redis are hostile) and queued in ``relay``,
        which delivers a run of them at once. Only the fields it uses are decoded."""
        room, sender, text = (
            field_text(raw, b"room"),
            field_text(raw, b"from"),
            field_text(raw, b"text"),
        )
        if not (is_room(room) and is_user(sender) and is_text(text)):
            return ignored("say")
        mine = field_text(raw, b"node") == self.node
        skip = number(field_text(raw, b"ser")) if mine else 0
        relay.add(str(room), encode_line("MSG", str(room), str(sender), str(text)), skip)
        return None

    def _apply(self, raw: Mapping[bytes, bytes]) -> None:
        try:
            fields = {k.decode("utf-8"): v.decode("utf-8") for k, v in raw.items()}
        except (UnicodeDecodeError, AttributeError):
            return ignored("?")
        kind, node = fields.get("k"), fields.get("node", "")
        mine = node == self.node
        seq = number(fields.get("seq"))
        if kind in ("join", "part"):
            room, name = fields.get("room"), fields.get("name")
            total = count(fields.get("total"))
            if not (is_room(room) and is_user(name)) or total is None:
                return ignored(kind)
            waiter = self._waiting_for(seq) if mine else None
            if kind == "join" and waiter is not None:
                self._complete(waiter, total, str(room), str(name), fields)
            self.hub.presence(str(room), str(name), total, quiet=fields.get("quiet") == "1")
            if kind == "part" and waiter is not None:
                self._complete(waiter, total, str(room), str(name), fields)
        elif kind == "dm":
            to, sender, text = fields.get("to"), fields.get("from"), fields.get("text")
            if not (is_user(to) and is_user(sender) and is_text(text)):
                return ignored(kind)
            line = encode_line("DM", str(sender), str(text))
            message_id = number(fields.get("id"))

            def written() -> None:  # on the recipient's thread: never blocks
                self._written.append(message_id)
                self._archive_wake.set()

            self.hub.direct_replica(str(to), line, number(fields.get("stamp")), written)
        elif kind == "gone":
            if not mine:
                log.info("node %s is gone; its sessions left their rooms", node)
        else:
            self._apply_event(kind, fields.get("p", ""), mine)
        return None

    def _apply_event(self, kind: str | None, body: str, mine: bool) -> None:
        try:
            payload = json.loads(body) if len(body) <= MAX_PAYLOAD else None
        except ValueError:
            payload = None
        if not isinstance(payload, dict):
            return ignored(kind)
        apply = EVENTS.get(kind or "")
        if apply is None:
            return ignored(kind)
        try:
            apply(self, payload, mine)
        except (KeyError, TypeError, ValueError):
            ignored(kind)
        return None

    def _waiting_for(self, seq: int) -> Waiter | None:
        with self._waiting_lock:
            return self._waiting.pop(seq, None)

    def _complete(
        self, waiter: Waiter, total: int, room: str, name: str, fields: Mapping[str, str]
    ) -> None:
        with waiter.lock:
            try:
                applied = not waiter.cancelled and waiter.apply is not None and waiter.apply(total)
            except ProtocolError as refused:  # refused as of this point of the order
                waiter.finish(error=refused)
                applied = False
            if applied:
                waiter.finish(True)
                return
            if not waiter.done.is_set():
                waiter.finish(False)
        if fields.get("k") == "join":  # the session did not stay: count it out again
            self._background("part", [room, name, fields.get("ser", "0"), "0"])

    # -- the heartbeat ----------------------------------------------------------------------

    def _run_heartbeat(self) -> None:
        interval = min(1.0, self.timeout_s / 5)
        while not self._stopping.wait(interval):
            now = time.monotonic()
            try:
                if not self.up:
                    self._join_cluster()
                    log.warning("back in the cluster as %s", self.node)
                    continue
                sessions, _ = self.hub.counts()
                beat = self._heartbeat(args=[self.node, self.node_name, sessions])
            except RedisError as error:
                # Unheard since the last good beat until now, when the call failed -- not
                # until it began: that would fence a whole failed round (up to the socket
                # timeout and an interval) after the others took this node for dead.
                failed = time.monotonic()
                if self.up and failed - self._last_ok > self.timeout_s:
                    self._fence(f"Redis unreachable for {failed - self._last_ok:.1f}s ({error})")
                self._connected_since = failed
                continue
            if not beat:
                self._fence("this node was declared dead (unheard too long)")
                continue
            self._last_ok = now
            # After a gap (ours or Redis's restart) every node's last heartbeat is old:
            # reap only once we have been heard for a whole timeout, so that the others
            # have had the time to be heard again too. No storm of false PARTs.
            if now - self._connected_since >= self.timeout_s:
                try:
                    taken = self._reap(args=[int(self.timeout_s * 1000), MAX_STREAM])
                except RedisError:
                    continue
                for node in taken:
                    self.reaped += 1
                    log.warning(
                        "node %s was unheard for %ss: took back its sessions",
                        _str(node),
                        self.timeout_s,
                    )

    def _fence(self, why: str) -> None:
        """Serve no split view: close every session and start anew once Redis answers."""
        with self._state_lock:
            if not self.up:
                return
            self.up = False
            self.fenced += 1
        log.error("fencing this node: %s; closing its sessions (node-unavailable)", why)
        self.node = self._incarnation()
        self._retry.clear()
        self._fail_queued()
        with self._waiting_lock:
            waiting, self._waiting = self._waiting, {}
        for waiter in waiting.values():
            waiter.finish(error=busy())
        self.hub.close_all("node-unavailable")


class _Relay:
    """Room messages read in one go, delivered together (:meth:`Hub.relay_many`): each
    member's outbox takes one chunk and its owner one wake-up, not one per message. Flushed
    before any other kind of entry is applied, so the order every member sees is the bus's;
    and whenever ``RELAY_BYTES`` of lines wait, which bounds a chunk well under an outbox's
    limit."""

    __slots__ = ("_hub", "_messages", "_size")

    def __init__(self, hub: Hub) -> None:
        self._hub = hub
        self._messages: list[tuple[str, bytes, int]] = []
        self._size = 0

    def add(self, room: str, line: bytes, skip: int) -> None:
        self._messages.append((room, line, skip))
        self._size += len(line)
        if self._size >= RELAY_BYTES:
            self.flush()

    def flush(self) -> None:
        if self._messages:
            messages, self._messages, self._size = self._messages, [], 0
            self._hub.relay_many(messages)


# -- ids and decoding of what this node wrote itself ----------------------------------------


def _str(value: object) -> str:
    if isinstance(value, bytes):
        return value.decode("utf-8", "replace")
    return str(value)


def _rest(message: StoredMessage) -> tuple[Any, ...]:
    return (message.room, message.recipient, message.sender, message.body, message.created_at)
