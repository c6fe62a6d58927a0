"""Cluster scenarios: two (then three) `sealroom serve` nodes on 127.0.0.1, each on its own
port, over a PostgreSQL and a Redis that each scenario starts for itself (bench/engines.py:
PostgreSQL with fsync and synchronous_commit on, Redis with its append-only file).

CPU is counted for the whole cluster: every node (utime + stime from /proc/PID/stat), Redis
(the server and any AOF-rewrite child it reaped) and PostgreSQL (the postmaster, every live
backend and auxiliary process, and the backends it has reaped): ``cpu_s_*`` per component
and ``cluster_cpu_*`` for their sum. The same load generator drives the same clients as the
single-node scenarios; where a single-node figure stands beside a cluster one (``single_*``),
it was measured in the same scenario run, on a fresh single-node server (SQLite), just
before the cluster.

* ``cluster_fanout_saturated`` -- the saturated fan-out (100 subscribers, 2 publishers)
  with the subscribers split over both nodes and one publisher on each; zero loss is
  counted, not assumed. Beside it, ``fanout_saturated`` on one node, and the ratio.
* ``cluster_steady`` -- 10,000 deliveries/s with both publishers on node 1 and all 100
  subscribers on node 2: every delivery crosses the bus. p50/p99 from the publisher's send
  time (in the payload) to the kernel's receive stamp on the subscriber's socket, one
  machine's clocks. Beside it, ``fanout_steady`` on one node.
* ``cluster_idle_latency`` -- one message at a time, 20 ms apart, from node 1 to a member
  on node 1 and one on node 2: the bus's cost when nothing queues. Beside it, one node.
* ``cluster_reconnect_storm`` -- N accounts (inserted straight into PostgreSQL, one cheap
  argon2 hash for all) log in, each gets a resume token with ``/token``, all disconnect at
  once; then all come back with ``/resume``, half through each node. Once per entry of
  ``Sizes.cluster_storm_accounts``, each on fresh engines and nodes.
* ``cluster_node_churn`` -- N sessions in rooms of 50, half on each node; a third node
  joins (CPU of the others, Redis and PostgreSQL meanwhile, beside an idle window as long);
  then node 2 is killed with SIGKILL: the time until every PART has reached every
  surviving member, and the CPU that took on the survivors, Redis and PostgreSQL.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import re
import time
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

import yaml

from bench import engines, loadgen
from bench.harness import (
    BENCH_CONFIG,
    CHEAP_ARGON2,
    PASSWORD,
    ServerProcess,
    Workspace,
    _free_port,
    argon2_config,
    merge,
    server,
    wait_for,
    workspace,
)
from bench.scenarios import (
    CAPPED_LOBBY,
    Sizes,
    _collect,
    _fanout,
    _latency_figures,
    _percentile,
    _stagger,
)
from sealroom.config import Argon2Settings
from sealroom.policy.auth import password_hasher

if TYPE_CHECKING:
    from redis import Redis
    from tests.engines import PostgresEngine, RedisEngine


class Rig:
    """A workspace (certificates), the engines, and the nodes started so far."""

    def __init__(
        self,
        space: Workspace,
        postgres: PostgresEngine,
        redis: RedisEngine,
        *,
        argon2: Argon2Settings,
        timeout_s: float,
        extra: dict[str, Any],
    ) -> None:
        self.space = space
        self.postgres = postgres
        self.database = postgres.url(engines.DATABASE)
        self.redis = redis
        self.argon2 = argon2
        self.timeout_s = timeout_s
        self.extra = extra
        self.nodes: dict[str, ServerProcess] = {}
        self.dead: dict[str, float] = {}  # a killed node's CPU seconds, read just before

    def start(self, name: str) -> ServerProcess:
        """Start node ``name`` on a free port of 127.0.0.1; returns once it accepts."""
        port = _free_port()
        config = merge(
            BENCH_CONFIG,
            {
                "listen": [f"127.0.0.1:{port}"],
                "auth": {"argon2": argon2_config(self.argon2)},
                "storage": {"database": self.database},
                "control": {"socket": str(self.space.root / f"{name}.sock")},
                "cluster": {
                    "redis": self.redis.url,
                    "node": name,
                    "node_timeout_s": self.timeout_s,
                },
            },
        )
        path = self.space.root / f"{name}.yaml"  # beside certs/: the same relative paths
        path.write_text(yaml.safe_dump(merge(config, self.extra)))
        node = ServerProcess(self.space, config=path, port=port)
        self.nodes[name] = node
        return node

    def add_accounts(self, names: list[str]) -> None:
        """Straight into PostgreSQL, all with one hash of PASSWORD at the nodes' cost (the
        tests do the same): no argon2 per account, and nothing to rehash at login."""
        from sealroom.store.postgres import PostgresStore  # noqa: PLC0415 -- cluster extra

        cost = self.argon2
        password_hash = password_hasher(
            cost.time_cost, cost.memory_cost_kib, cost.parallelism
        ).hash(PASSWORD)
        with PostgresStore(self.database) as store:  # creates the schema if need be
            store.add_accounts([(name, password_hash) for name in names])

    def cpu(self) -> dict[str, float]:
        """CPU seconds so far of every live node, Redis and PostgreSQL."""
        out = {
            name: node.cpu_seconds()
            for name, node in self.nodes.items()
            if name not in self.dead and node.process.poll() is None
        }
        out["redis"] = self.redis.cpu_seconds()
        out["postgres"] = self.postgres.cpu_seconds()
        return out

    def kill(self, name: str) -> None:
        """``kill -9`` node ``name``, its CPU time read just before."""
        node = self.nodes[name]
        self.dead[name] = node.cpu_seconds()
        node.kill()

    def redis_client(self) -> Redis:
        """The engine's client (no retries), with 10 s for a reply, not the tests' 5: the
        load generator and the nodes keep the machine busy while it asks."""
        return self.redis.client(timeout=10.0)

    def durability(self) -> str:
        """What the engines say of their durability, read back from them."""
        pg = " ".join(f"{k}={v}" for k, v in self.postgres.settings().items())
        with self.redis_client() as client:
            aof = client.config_get("appendonly")["appendonly"]
            fsync = client.config_get("appendfsync")["appendfsync"]
        return f"postgres {pg}; redis appendonly={aof} appendfsync={fsync}"

    def calls(self) -> dict[str, int]:
        """How many script calls (every publish, heartbeat and bucket) and reads of the bus
        Redis has served so far: with the messages, how large the batches were."""
        with self.redis_client() as client:
            stats = client.info("commandstats")
        return {
            what: int(stats.get(f"cmdstat_{command}", {}).get("calls", 0))
            for what, command in (("script_calls", "evalsha"), ("bus_reads", "xread"))
        }

    def online(self) -> int:
        """Accounts with a session anywhere, as Redis counts them."""
        with self.redis_client() as client:
            return int(client.hlen("sealroom:online"))

    def problems(self) -> dict[str, Any]:
        """What the nodes logged at WARNING or above (the bench's log level): how many
        lines, and the first few distinct ones with numbers and ids masked."""
        lines = [line for node in self.nodes.values() for line in node.log if " WARNING " in line]
        errors = [
            line
            for node in self.nodes.values()
            for line in node.log
            if " ERROR " in line or " CRITICAL " in line or "Traceback" in line
        ]
        distinct: list[str] = []
        for line in errors + lines:
            text = re.sub(r"\b[0-9a-f]{6,}\b|\d+(\.\d+)?", "N", line.split(" ", 2)[-1])
            if text not in distinct:
                distinct.append(text)
        return {
            "node_log_warnings": len(lines),
            "node_log_errors": len(errors),
            "node_log_said": " | ".join(distinct[:4]) or "nothing",
        }

    def logs(self) -> str:
        return "\n".join(
            f"--- {name}\n" + "\n".join(node.log[-15:]) for name, node in self.nodes.items()
        )


@contextlib.contextmanager
def rig(
    *,
    argon2: Argon2Settings = CHEAP_ARGON2,
    timeout_s: float = 5.0,
    extra: dict[str, Any] | None = None,
) -> Iterator[Rig]:
    """Fresh engines and a workspace; every node started is stopped (by PID) first."""
    with workspace() as space, engines.engines() as (postgres, redis):
        made = Rig(space, postgres, redis, argon2=argon2, timeout_s=timeout_s, extra=extra or {})
        try:
            yield made
        finally:
            for name, node in made.nodes.items():
                if name not in made.dead:
                    node.stop()


def _spent(before: dict[str, float], after: dict[str, float]) -> dict[str, float]:
    """CPU seconds per component between two readings (a node gone since counts to its
    reading just before it was killed: Rig.kill)."""
    return {name: after.get(name, before[name]) - before[name] for name in before}


def _cpu_figures(spent: dict[str, float], per: int, unit: str) -> dict[str, Any]:
    """``cpu_s_<component>``, ``cluster_cpu_s`` and ``cluster_cpu_us_per_<unit>``."""
    out: dict[str, Any] = {f"cpu_s_{name}": round(value, 3) for name, value in spent.items()}
    total = sum(spent.values())
    out["cluster_cpu_s"] = round(total, 3)
    out[f"cluster_cpu_us_per_{unit}"] = round(total / max(per, 1) * 1e6, 3)
    return out


def _skipped() -> dict[str, Any] | None:
    why = engines.missing()
    return {"skipped": why} if why else None


# -- fan-out ------------------------------------------------------------------------------------


def _cluster_fanout(
    sizes: Sizes, *, rate: float | None, across: bool, publishers_per_node: int = 1
) -> dict[str, Any]:
    """The fan-out of scenarios._fanout on two nodes. ``across``: both publishers on node1,
    every subscriber on node2; else subscribers and publishers split over both.

    ``publishers_per_node`` above 1 (saturated only): that many publishing sessions on each
    node, in one client process per node, sharing the same total of messages."""
    subs = [f"sub{i}" for i in range(sizes.subscribers)]
    room = "#bench"
    wide = publishers_per_node > 1
    publishers = 2 * publishers_per_node
    if rate is None:
        per_publisher, publish_rate = sizes.saturated_messages * 2 // publishers, None
    else:
        per_publisher = int(rate / sizes.subscribers / 2 * sizes.steady_seconds)
        publish_rate = rate / sizes.subscribers / 2
    pub_names = [[f"pub{n}_{k}" for k in range(publishers_per_node)] for n in (1, 2)]
    with rig(argon2=sizes.argon2, timeout_s=sizes.cluster_node_timeout_s) as made:
        made.add_accounts([*subs, *pub_names[0], *pub_names[1]])
        one, two = made.start("node1"), made.start("node2")
        ca = made.space.ca
        ready, results, start = mp.Queue(), mp.Queue(), mp.Event()
        groups = [subs[i::2] for i in range(2)]
        sub_ports = [two.port, two.port] if across else [one.port, two.port]
        pub_ports = [one.port, one.port] if across else [one.port, two.port]
        # Each subscriber gets every message but its own, and so does each publisher.
        workers = [
            loadgen.spawn(
                loadgen.subscriber,
                port,
                ca,
                group,
                PASSWORD,
                room,
                per_publisher * publishers,
                ready,
                start,
                results,
                120.0 if rate is not None else 240.0,
                rate is not None,  # steady: kernel receive stamps
            )
            for port, group in zip(sub_ports, groups, strict=True)
            if group
        ]
        for turn, (port, names) in enumerate(zip(pub_ports, pub_names, strict=True)):
            # Wide: one client process per node for all its publishing sessions, unpaced.
            target, who, pace, after = (
                (loadgen.publisher_group, (names,), (), ())
                if wide
                else (
                    loadgen.publisher,
                    (names[0],),
                    (publish_rate,),
                    (_stagger(publish_rate, turn, 2),),
                )
            )
            workers.append(
                loadgen.spawn(
                    target,
                    port,
                    ca,
                    *who,
                    PASSWORD,
                    room,
                    per_publisher,
                    *pace,
                    200,
                    ready,
                    start,
                    results,
                    180.0,
                    *after,
                )
            )
        _collect(ready, len(workers), timeout=300)
        cpu0, calls0, t0 = made.cpu(), made.calls(), time.monotonic()
        start.set()
        outcomes = _collect(results, len(workers), timeout=300)
        cpu1, calls1, t1 = made.cpu(), made.calls(), time.monotonic()
        for worker in workers:
            worker.join(30)
        durability = made.durability()
        problems = made.problems()
    counts = [c for o in outcomes if "counts" in o for c in o["counts"]]
    senders = [o for o in outcomes if "sent" in o]
    messages = per_publisher * publishers
    deliveries = messages * (sizes.subscribers + publishers - 1)
    out: dict[str, Any] = {
        "publishers": publishers,
        "deliveries": deliveries,
        "lost": messages * sizes.subscribers - sum(counts),
        "refused": sum(o["refused"] for o in senders),
        "acked": sum(o["acked"] for o in senders),
        "seconds": round(t1 - t0, 3),
        "deliveries_per_s": round(deliveries / (t1 - t0)),
        "messages_per_s": round(messages / max(o["seconds"] for o in senders)),
        **_latency_figures(outcomes, per_message=rate is not None),  # steady: where it goes
    }
    out.update(_cpu_figures(_spent(cpu0, cpu1), deliveries, "delivery"))
    for what, calls in calls1.items():  # per message, for both nodes
        out[f"{what}_per_message"] = round((calls - calls0[what]) / messages, 3)
    out["engines"] = durability
    out.update(problems)
    return out


def _ratio(single: dict[str, Any], cluster: dict[str, Any]) -> float | str:
    one, many = single["cpu_us_per_delivery"], cluster["cluster_cpu_us_per_delivery"]
    return round(many / one, 2) if one else "n/a: too little CPU"


def _beside(single: dict[str, Any], cluster: dict[str, Any]) -> dict[str, Any]:
    out = {f"single_{key}": value for key, value in single.items()}
    out.update(cluster)
    out["cluster_over_single_cpu"] = _ratio(single, cluster)
    return out


def cluster_fanout_saturated(sizes: Sizes) -> dict[str, Any]:
    """Single node (SQLite) first, then the cluster with the same two publishers, then the
    cluster with ``cluster_publishers_per_node`` publishing sessions on each node (``wide_*``),
    each on fresh servers and engines."""
    if skipped := _skipped():
        return skipped
    with workspace() as space:
        single = _fanout(space, sizes, rate=None, history=True)
    out = _beside(single, _cluster_fanout(sizes, rate=None, across=False))
    if sizes.cluster_publishers_per_node > 1:
        wide = _cluster_fanout(
            sizes, rate=None, across=False, publishers_per_node=sizes.cluster_publishers_per_node
        )
        out.update({f"wide_{key}": value for key, value in wide.items()})
        out["wide_over_single_cpu"] = _ratio(single, wide)
    return out


def cluster_steady(sizes: Sizes) -> dict[str, Any]:
    """Single node (SQLite) first, then the cluster with every delivery across the bus."""
    if skipped := _skipped():
        return skipped
    with workspace() as space:
        single = _fanout(space, sizes, rate=sizes.steady_rate, history=True)
    return _beside(single, _cluster_fanout(sizes, rate=sizes.steady_rate, across=True))


# -- reconnect storm ----------------------------------------------------------------------------


def cluster_reconnect_storm(sizes: Sizes) -> dict[str, Any]:
    if skipped := _skipped():
        return skipped
    out: dict[str, Any] = {}
    for accounts in sizes.cluster_storm_accounts:
        out.update({f"n{accounts}_{k}": v for k, v in _storm(sizes, accounts).items()})
    return out


def _storm(sizes: Sizes, total: int) -> dict[str, Any]:
    names = [f"storm{i}" for i in range(total)]
    halves = [names[0::2], names[1::2]]
    with rig(timeout_s=sizes.cluster_node_timeout_s, extra=CAPPED_LOBBY) as made:
        made.add_accounts(names)
        nodes = [made.start("node1"), made.start("node2")]
        ca = made.space.ca
        # Everyone logs in (cheap argon2) and asks for a token, two client processes a node.
        ready, release = mp.Queue(), mp.Event()
        t0 = time.monotonic()
        holders = [
            loadgen.spawn(loadgen.token_holder, node.port, ca, half[i::2], PASSWORD, ready, release)
            for node, half in zip(nodes, halves, strict=True)
            for i in range(2)
        ]
        issued = _collect(ready, len(holders), timeout=600)
        login_seconds = time.monotonic() - t0
        tokens = {name: token for o in issued for name, token in o["tokens"].items()}
        # All disconnect at once; the cluster counts them out.
        t0 = time.monotonic()
        release.set()
        for worker in holders:
            worker.join(60)
        gone = wait_for(lambda: made.online() == 0, 120, 0.05)
        disconnect_seconds = time.monotonic() - t0
        # The storm: everyone back with /resume, two client processes a node.
        results, start, release = mp.Queue(), mp.Event(), mp.Event()
        ready = mp.Queue()
        workers = [
            loadgen.spawn(
                loadgen.resumer,
                node.port,
                ca,
                [(name, tokens[name]) for name in half[i::2]],
                ready,
                start,
                results,
                release,
            )
            for node, half in zip(nodes, halves, strict=True)
            for i in range(2)
        ]
        _collect(ready, len(workers))
        cpu0, t0 = made.cpu(), time.monotonic()
        start.set()
        outcomes = _collect(results, len(workers), timeout=600)
        cpu1 = made.cpu()
        online = made.online()
        release.set()
        for worker in workers:
            worker.join(60)
        problems = made.problems()
    back = sum(o["back"] for o in outcomes)
    out: dict[str, Any] = {
        "accounts": total,
        "login_and_token_per_s": round(total / login_seconds),
        "refusals_at_login": sum(o["refusals"] for o in issued),
        "all_disconnected": gone,
        "seconds_until_all_counted_out": round(disconnect_seconds, 2),
        "back": back,
        "online_in_redis_after": online,
        "resume_failures": sum(o["failures"] for o in outcomes),
        "seconds_until_all_back": round(max(o["at"] for o in outcomes) - t0, 2),
    }
    out.update(_cpu_figures(_spent(cpu0, cpu1), back, "resume"))
    out.update(problems)
    return out


# -- a node joins, a node dies ------------------------------------------------------------------


def cluster_node_churn(sizes: Sizes) -> dict[str, Any]:
    if skipped := _skipped():
        return skipped
    total, size = sizes.churn_sessions, sizes.churn_room_size
    names = [f"u{i}" for i in range(total)]
    room_of = {name: f"#c{i // size}" for i, name in enumerate(names)}
    on_one, on_two = names[0::2], names[1::2]  # every room: half on each node
    dying = set(on_two)
    in_room: dict[str, int] = {}  # each room's members on node2: the PARTs it will see
    for name in on_two:
        in_room[room_of[name]] = in_room.get(room_of[name], 0) + 1
    out: dict[str, Any] = {
        "sessions": total,
        "rooms": len(set(room_of.values())),
        "node_timeout_s": sizes.cluster_node_timeout_s,
        "window_s": sizes.churn_window_s,
    }
    with rig(timeout_s=sizes.cluster_node_timeout_s, extra=CAPPED_LOBBY) as made:
        made.add_accounts(names)
        one, two = made.start("node1"), made.start("node2")
        ready, results, start, release = mp.Queue(), mp.Queue(), mp.Event(), mp.Event()
        deadline = sizes.cluster_node_timeout_s + 120
        workers = [
            loadgen.spawn(
                loadgen.member_holder,
                node.port,
                made.space.ca,
                [
                    (n, room_of[n], 0 if n in dying else in_room.get(room_of[n], 0))
                    for n in group[i::2]
                ],
                PASSWORD,
                ready,
                start,
                results,
                release,
                deadline,
            )
            for node, group in ((one, on_one), (two, on_two))
            for i in range(2)
        ]
        t0 = time.monotonic()
        logged = _collect(ready, len(workers), timeout=900)
        out["logins_per_s"] = round(total / (time.monotonic() - t0))
        out["refusals_at_login"] = sum(o["refusals"] for o in logged)
        out["online_before"] = made.online()
        time.sleep(1.0)  # the last JOINs settle
        out.update(_join(made, sizes.churn_window_s))
        # node2 dies: kill -9. Its members' clients see their connections close; node1's
        # count the PARTs of their rooms.
        start.set()
        cpu0 = made.cpu()
        killed_ns = time.monotonic_ns()
        made.kill("node2")
        outcomes = _collect(results, len(workers), timeout=deadline + 60)
        after = _spent(cpu0, made.cpu())
        seconds = (time.monotonic_ns() - killed_ns) / 1e9
        out["online_after"] = made.online()
        release.set()
        for worker in workers:
            worker.join(60)
        out.update(made.problems())
    firsts = [o["first_ns"] for o in outcomes if o["first_ns"]]
    lasts = [o["last_ns"] for o in outcomes if o["last_ns"]]
    out.update(
        {
            "killed_sessions": len(on_two),
            "parts_expected": sum(o["expected"] for o in outcomes),
            "parts_delivered": sum(o["parts"] for o in outcomes),
            "sessions_closed_by_the_kill": sum(o["closed"] for o in outcomes),
            "seconds_kill_to_first_part": _after(firsts, min, killed_ns),
            "seconds_kill_to_last_part": _after(lasts, max, killed_ns),
            "seconds_measured": round(seconds, 2),
        }
    )
    survivors = {name: value for name, value in after.items() if name != "node2"}
    out.update({f"death_cpu_s_{name}": round(value, 3) for name, value in survivors.items()})
    out["death_cluster_cpu_s"] = round(sum(survivors.values()), 3)
    return out


def _after(stamps: list[int], pick: Any, since_ns: int) -> float | None:
    return round((pick(stamps) - since_ns) / 1e9, 2) if stamps else None


def _join(made: Rig, window: float) -> dict[str, Any]:
    """An idle window, for scale (heartbeats, housekeeping), then node3 joins: the others'
    CPU over a window as long from its start, and its own."""
    out: dict[str, Any] = {}
    cpu0 = made.cpu()
    time.sleep(window)
    for name, value in _spent(cpu0, made.cpu()).items():
        out[f"idle_cpu_s_{name}"] = round(value, 3)
    cpu0, t0 = made.cpu(), time.monotonic()
    three = made.start("node3")
    out["join_seconds_until_accepting"] = round(time.monotonic() - t0, 2)
    time.sleep(max(0.0, t0 + window - time.monotonic()))
    for name, value in _spent(cpu0, made.cpu()).items():
        out[f"join_cpu_s_{name}"] = round(value, 3)
    out["join_cpu_s_node3_itself"] = round(three.cpu_seconds(), 3)  # start-up and join
    return out


# -- one message at a time ----------------------------------------------------------------------


def cluster_idle_latency(sizes: Sizes) -> dict[str, Any]:
    """One room message at a time, ``PROBE_GAP_S`` apart, from a publisher on node 1 to a
    member on node 1 and one on node 2: what the bus costs a message when nothing queues
    (every hand-off a wake-up). Beside it the same on a single node (``single_*``)."""
    if skipped := _skipped():
        return skipped
    names = ["probe_pub", "probe_here", "probe_there"]
    with workspace() as space:
        space.configure({}, argon2=CHEAP_ARGON2)
        space.add_accounts(names)
        with server(space) as proc:
            single = _probe(space.ca, proc.port, [proc.port], sizes.probe_messages)
    with rig(timeout_s=sizes.cluster_node_timeout_s) as made:
        made.add_accounts(names)
        one, two = made.start("node1"), made.start("node2")
        cluster = _probe(made.space.ca, one.port, [one.port, two.port], sizes.probe_messages)
        problems = made.problems()
    out = {f"single_{key}": value for key, value in single.items() if key.startswith("here")}
    out.update(cluster)
    out.update(problems)
    return out


PROBE_GAP_S = 0.02


def _probe(ca: Path, port: int, ports: list[int], count: int) -> dict[str, float]:
    """``count`` messages from a publisher on ``port`` to one member on each of ``ports``
    (``here``, then ``there``), each sent once the last reached everyone; p50/p90/p99 per
    member, from the send to the kernel's receive stamp."""
    ctx = loadgen.client_context(ca)
    publisher = loadgen.Line(port, ctx)
    publisher.login("probe_pub", PASSWORD)
    members = []
    for name, where in zip(("probe_here", "probe_there"), ports, strict=False):
        member = loadgen.Line(where, ctx)
        member.login(name, PASSWORD)
        members.append((name.removeprefix("probe_"), member, loadgen.ArrivalStamps(member.sock)))
    try:
        time.sleep(0.5)  # the logins' JOINs said and read
        latencies: dict[str, list[int]] = {where: [] for where, _, _ in members}
        for _ in range(count):
            sent = time.monotonic_ns()
            publisher.sock.sendall(f"/say #lobby {sent} probe\n".encode())
            for where, member, stamps in members:
                latencies[where].append(_arrival(member, stamps, str(sent)) - sent)
            while not publisher.line().startswith("OK say"):
                pass
            time.sleep(PROBE_GAP_S)
    finally:
        for _, member, stamps in members:
            stamps.close()
            member.close()
        publisher.close()
    out: dict[str, float] = {}
    for where, values in latencies.items():
        for label, fraction in (("p50", 0.50), ("p90", 0.90), ("p99", 0.99)):
            out[f"{where}_{label}_ms"] = round(_percentile(values, fraction), 3)
    return out


def _arrival(member: loadgen.Line, stamps: loadgen.ArrivalStamps, key: str) -> int:
    """When the line carrying ``key`` reached ``member``'s socket (the kernel's stamp of
    the bytes a read starts with; the read's time if there was none)."""
    arrived = 0  # of the last read; a message is sent once the one before it arrived
    while True:
        if b"\n" in member.buf:
            line, _, member.buf = member.buf.partition(b"\n")
            if line.startswith(b"MSG ") and key.encode() in line:
                return arrived or time.monotonic_ns()
            continue
        stamp = stamps.next_arrival()
        chunk = member.sock.recv(65536)
        if not chunk:
            raise EOFError("closed")
        arrived = stamp or time.monotonic_ns()
        member.buf += chunk


SCENARIOS = {
    "cluster_fanout_saturated": cluster_fanout_saturated,
    "cluster_steady": cluster_steady,
    "cluster_idle_latency": cluster_idle_latency,
    "cluster_reconnect_storm": cluster_reconnect_storm,
    "cluster_node_churn": cluster_node_churn,
}

__all__ = ["SCENARIOS", "Rig", "rig"]
