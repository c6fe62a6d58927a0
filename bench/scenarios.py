"""The benchmark scenarios. Each returns a dict of figures; `python -m bench` prints them."""

from __future__ import annotations

import itertools
import multiprocessing as mp
import statistics
import time
from dataclasses import dataclass
from typing import Any

from bench import loadgen, reference, tlscost
from bench.harness import (
    ARGON2_8MIB,
    CHEAP_ARGON2,
    DEFAULT_ARGON2,
    PASSWORD,
    ServerProcess,
    Workspace,
    argon2_label,
    server,
    wait_for,
    workspace,
)
from sealroom.config import Argon2Settings


@dataclass(frozen=True)
class IdleLogins:
    """How the idle scenario logs its connections in at one argon2 cost.

    Every ``password_every``-th login of each client process, its first one included, is a
    password login at this cost; the others present a resume token (as a client that
    reconnects does), so that an expensive cost still fits in minutes. 1: all by password.
    """

    argon2: Argon2Settings
    password_every: int = 1


@dataclass(frozen=True)
class Sizes:
    """How big each scenario is, and what its logins cost; `--quick` shrinks them to a
    smoke test (and makes most logins cheap)."""

    subscribers: int = 100
    saturated_messages: int = 10000  # per publisher
    steady_rate: float = 10_000.0  # deliveries per second
    steady_seconds: float = 10.0
    idle_connections: int = 10000  # RSS is also measured at half of them
    # The idle scenario runs once per entry, each on a fresh server. At 8 MiB every login
    # is a password login; at 64 MiB one in ten (1,000 of 10,000: a minute or two).
    idle_logins: tuple[IdleLogins, ...] = (
        IdleLogins(ARGON2_8MIB, 1),
        IdleLogins(DEFAULT_ARGON2, 10),
    )
    handshakes: int = 2000  # the CPU clock ticks at 10 ms: 5 µs resolution per handshake
    handshake_rounds: int = 4  # full handshakes go ABCABC… across the servers compared
    storm_accounts: int = 5000
    flood_connections: int = 100
    flood_seconds: float = 10.0
    argon2: Argon2Settings = ARGON2_8MIB  # the accounts of every other scenario that logs in
    default_argon2: Argon2Settings = DEFAULT_ARGON2  # the reconnect storm and the login flood
    # The cluster scenarios (bench/cluster.py).
    cluster_storm_accounts: tuple[int, ...] = (1000, 5000)  # one storm each, fresh engines
    cluster_publishers_per_node: int = 16  # the wide saturated run (1: none)
    probe_messages: int = 300  # cluster_idle_latency: one at a time, 20 ms apart
    churn_sessions: int = 5000
    churn_room_size: int = 50
    churn_window_s: float = 3.0  # the idle window, and the one a joining node is watched for
    cluster_node_timeout_s: float = 5.0  # the built-in default of cluster.node_timeout_s


QUICK = Sizes(
    subscribers=5,
    saturated_messages=100,
    steady_rate=500,
    steady_seconds=1,
    idle_connections=40,  # still at the real costs: 8 of the 40 logins run argon2 at 64 MiB
    handshakes=20,
    handshake_rounds=2,
    storm_accounts=40,
    flood_connections=10,
    flood_seconds=1,
    argon2=CHEAP_ARGON2,
    default_argon2=ARGON2_8MIB,
    cluster_storm_accounts=(40,),
    cluster_publishers_per_node=1,
    probe_messages=20,
    churn_sessions=40,
    churn_room_size=10,
    churn_window_s=0.5,
    cluster_node_timeout_s=2.0,
)


def _percentile(values: list[int], fraction: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(fraction * len(ordered)))] / 1e6  # ms


def _latency_figures(outcomes: list[dict[str, Any]], *, per_message: bool) -> dict[str, float]:
    """p50 and p99 of every delivery the subscribers timed; with ``per_message`` (a steady
    fan-out), also where each message's time went (:func:`_per_message`)."""
    latencies = [v for o in outcomes for v in o.get("latencies_ns", ())]
    out = {
        "p50_ms": round(_percentile(latencies, 0.50), 3),
        "p99_ms": round(_percentile(latencies, 0.99), 3),
    }
    seen = [v for o in outcomes for v in o.get("seen_latencies_ns", ())]
    if seen:  # when the load generator read them: its own share of two busy cores added
        out["seen_p50_ms"] = round(_percentile(seen, 0.50), 3)
        out["seen_p99_ms"] = round(_percentile(seen, 0.99), 3)
        stamped = sum(o.get("stamped", 0) for o in outcomes)
        out["kernel_stamped"] = round(stamped / len(seen), 3)  # the rest: as seen
    if per_message:
        out.update(_per_message(outcomes))
    return out


def _per_message(outcomes: list[dict[str, Any]]) -> dict[str, float]:
    """Each message's first recipient, and its spread (first to last recipient): what
    the server adds before the fan-out starts, apart from how long the fan-out takes."""
    received: dict[int, list[int]] = {}
    for outcome in outcomes:
        for sent, latency in zip(
            outcome.get("sent_ns", ()), outcome.get("latencies_ns", ()), strict=True
        ):
            received.setdefault(sent, []).append(latency)
    firsts = [min(latencies) for latencies in received.values()]
    spreads = [max(latencies) - min(latencies) for latencies in received.values()]
    sends = sorted(received)
    gaps = [later - earlier for earlier, later in itertools.pairwise(sends)]
    return {
        # A steady rate sends one message a period apart, not several at one instant.
        "send_gap_p50_ms": round(_percentile(gaps, 0.50), 3),
        "first_recipient_p50_ms": round(_percentile(firsts, 0.50), 3),
        "first_recipient_p99_ms": round(_percentile(firsts, 0.99), 3),
        "spread_p50_ms": round(_percentile(spreads, 0.50), 3),
        "spread_p99_ms": round(_percentile(spreads, 0.99), 3),
    }


def _stagger(rate: float | None, turn: int, publishers: int) -> float:
    """Where publisher ``turn`` of ``publishers`` sending at ``rate`` each starts its
    schedule: evenly apart, so that a steady rate is one message at a time, not bursts."""
    return turn / (rate * publishers) if rate else 0.0


def _collect(queue: Any, count: int, timeout: float = 600) -> list[Any]:
    return [queue.get(timeout=timeout) for _ in range(count)]


def _fanout(
    space: Workspace, sizes: Sizes, *, rate: float | None, history: bool, web: bool = False
) -> dict[str, Any]:
    """Subscribers in one room and two publishers; with ``web`` the subscribers come through
    the web door (WebSocket), the publishers through the TLS port either way."""
    subs = [f"sub{i}" for i in range(sizes.subscribers)]
    space.configure(
        {"history": {"rooms": history}} if not history else {}, argon2=sizes.argon2, web=web
    )
    space.add_accounts([*subs, "pub0", "pub1"])
    room = "#bench"
    if rate is None:
        per_publisher = sizes.saturated_messages
        publish_rate = None
    else:
        per_publisher = int(rate / sizes.subscribers / 2 * sizes.steady_seconds)
        publish_rate = rate / sizes.subscribers / 2
    with server(space) as proc:
        ready, results, start = mp.Queue(), mp.Queue(), mp.Event()
        groups = [subs[i::2] for i in range(2)]
        workers = [
            loadgen.spawn(
                loadgen.web_subscriber if web else loadgen.subscriber,
                space.web_port if web else proc.port,
                space.ca,
                group,
                PASSWORD,
                room,
                per_publisher * 2,
                ready,
                start,
                results,
                120.0,
                *(() if web else (rate is not None,)),  # steady: kernel receive stamps
            )
            for group in groups
            if group
        ]
        workers += [
            loadgen.spawn(
                loadgen.publisher,
                proc.port,
                space.ca,
                name,
                PASSWORD,
                room,
                per_publisher,
                publish_rate,
                200,
                ready,
                start,
                results,
                600.0,
                _stagger(publish_rate, turn, 2),
            )
            for turn, name in enumerate(("pub0", "pub1"))
        ]
        _collect(ready, len(workers))
        cpu0, t0 = proc.cpu_seconds(), time.monotonic()
        start.set()
        outcomes = _collect(results, len(workers))
        cpu1, t1 = proc.cpu_seconds(), time.monotonic()
        for worker in workers:
            worker.join(30)
    counts = [c for o in outcomes if "counts" in o for c in o["counts"]]
    # Each message reaches every subscriber and the other publisher.
    deliveries = per_publisher * 2 * (sizes.subscribers + 1)
    return {
        "deliveries": deliveries,
        "lost": per_publisher * 2 * sizes.subscribers - sum(counts),
        "seconds": round(t1 - t0, 3),
        "deliveries_per_s": round(deliveries / (t1 - t0)),
        "server_cpu_s": round(cpu1 - cpu0, 3),
        "cpu_us_per_delivery": round((cpu1 - cpu0) / deliveries * 1e6, 3),
        # steady, through the TLS port: where the latency goes
        **_latency_figures(outcomes, per_message=rate is not None and not web),
    }


def fanout_saturated(sizes: Sizes) -> dict[str, Any]:
    with workspace() as space:
        return _fanout(space, sizes, rate=None, history=True)


def fanout_saturated_no_history(sizes: Sizes) -> dict[str, Any]:
    with workspace() as space:
        return _fanout(space, sizes, rate=None, history=False)


def fanout_steady(sizes: Sizes) -> dict[str, Any]:
    with workspace() as space:
        return _fanout(space, sizes, rate=sizes.steady_rate, history=True)


def web(sizes: Sizes) -> dict[str, Any]:
    """Server CPU per delivery to WebSocket subscribers, beside the same saturated fan-out to
    TLS subscribers on a fresh server (``tls_*``): what one text frame per line costs."""
    out: dict[str, Any] = {}
    for door in ("tls", "web"):
        with workspace() as space:
            figures = _fanout(space, sizes, rate=None, history=True, web=door == "web")
        out.update({f"{door}_{key}": value for key, value in figures.items()})
    tls, websocket = out["tls_cpu_us_per_delivery"], out["web_cpu_us_per_delivery"]
    # The CPU clock ticks at 10 ms: a --quick run may see none at all.
    out["web_over_tls_cpu"] = round(websocket / tls, 2) if tls else "n/a: too little CPU to see"
    return out


# Thousands of sessions in one default room would make every login a JOIN broadcast to all
# the others (quadratic); the idle and storm scenarios cap the lobby as an operator would.
CAPPED_LOBBY = {"limits": {"max_room_members": 50}}


def idle_connections(sizes: Sizes) -> dict[str, Any]:
    """RSS and threads with idle logged-in connections, once per argon2 cost in
    ``sizes.idle_logins``, each on a fresh server (the allocator's state is the point)."""
    out: dict[str, Any] = {"connections": sizes.idle_connections}
    for plan in sizes.idle_logins:
        out.update(_idle_at(sizes.idle_connections, plan))
    return out


def _idle_at(total: int, plan: IdleLogins) -> dict[str, Any]:
    """Log in half the connections and measure, then the other half and measure again.

    The accounts' hashes have the plan's cost, and so has the server's configuration. The
    warm-up login (and the baseline after it) uses a resume token, so that the baseline
    holds no argon2 memory: what argon2 leaves behind counts against the connections.
    """
    label = f"argon2_{argon2_label(plan.argon2)}"
    every = max(1, plan.password_every)
    with workspace() as space:
        space.configure(CAPPED_LOBBY, argon2=plan.argon2)
        names = [f"idle{i}" for i in range(total)]
        space.add_accounts([*names, "warm"])
        tokens = space.issue_tokens(["warm", *(names if every > 1 else [])])
        halves = [names[: len(names) // 2], names[len(names) // 2 :]]
        password_logins = 0
        with server(space) as proc:
            warm = loadgen.Line(proc.port, loadgen.client_context(space.ca))  # warm the caches
            if not warm.request(f"/resume warm {tokens['warm']}").startswith("OK login"):
                raise RuntimeError("the warm-up resume failed")
            warm.close()
            time.sleep(0.5)
            rss0, threads0 = proc.rss_kib(), proc.threads()
            ready, release = mp.Queue(), mp.Event()
            workers, durations, rss, threads = [], [], [], []
            t0 = time.monotonic()
            for half in halves:
                groups = [g for g in (half[i::4] for i in range(4)) if g]
                for group in groups:
                    logins = [
                        (name, PASSWORD, True) if j % every == 0 else (name, tokens[name], False)
                        for j, name in enumerate(group)
                    ]
                    password_logins += sum(1 for login in logins if login[2])
                    workers.append(
                        loadgen.spawn(
                            loadgen.idle_holder, proc.port, space.ca, logins, ready, release
                        )
                    )
                durations += _collect(ready, len(groups))
                time.sleep(1.0)  # let every connection settle
                rss.append(proc.rss_kib())
                threads.append(proc.threads())
            elapsed = time.monotonic() - t0 - len(halves)
            peak = proc.peak_rss_kib()
            release.set()
            for worker in workers:
                worker.join(60)
            wait_for(lambda: proc.threads() <= threads0 + 2, 30, 0.1)
            rss_after = proc.rss_kib()
    first = len(halves[0])
    return {
        f"{label}_rss_kib_per_connection_at_{first}": round((rss[0] - rss0) / first, 2),
        f"{label}_threads_at_{first}": threads[0],
        f"{label}_rss_kib_per_connection": round((rss[1] - rss0) / total, 2),
        f"{label}_threads": threads[1],
        f"{label}_server_rss_mib": round(rss[1] / 1024, 1),
        f"{label}_peak_rss_mib": round(peak / 1024, 1),
        f"{label}_baseline_rss_mib": round(rss0 / 1024, 1),
        f"{label}_password_logins": password_logins,
        f"{label}_logins_per_s": round(total / elapsed),
        f"{label}_slowest_worker_s": round(max(durations), 2),
        f"{label}_rss_mib_after_close": round(rss_after / 1024, 1),
    }


def _handshake_run(
    port: int, ca: Any, count: int, resume: bool, greeting: str, cpu: Any
) -> tuple[float, dict[str, Any]]:
    """``count`` handshakes against one server: its CPU seconds spent, and the client's
    report. The server's CPU is read again once its last connection has had time to end."""
    results: Any = mp.Queue()
    cpu0 = cpu()
    worker = loadgen.spawn(loadgen.handshaker, port, ca, count, resume, results, greeting)
    result = results.get(timeout=300)
    worker.join(30)
    time.sleep(0.1)  # the server closes the last connection
    return cpu() - cpu0, result


def handshakes(sizes: Sizes) -> dict[str, Any]:
    """Server CPU per full TLS 1.3 handshake for Sealroom and the reference servers (an
    asyncio TLS line server; Mosquitto if installed), interleaved in rounds so that noise
    hits all alike; then Sealroom's resumed handshakes, and OpenSSL's share of both."""
    out: dict[str, Any] = {}
    with (
        workspace() as space,
        server(space) as proc,
        reference.asyncio_server(space) as aio,
        reference.mosquitto(space) as mosquitto,
    ):
        targets = [
            ("sealroom", proc.port, "line", proc.cpu_seconds),
            ("asyncio", aio.port, "line", aio.cpu_seconds),
        ]
        if mosquitto is not None:
            targets.append(("mosquitto", mosquitto.port, "mqtt", mosquitto.cpu_seconds))
        rounds = max(1, sizes.handshake_rounds)
        per_round = max(1, sizes.handshakes // rounds)
        for _name, port, greeting, cpu in targets:  # warm-up, not counted
            _handshake_run(port, space.ca, min(20, per_round), False, greeting, cpu)
        spent = {name: 0.0 for name, *_ in targets}
        seconds = {name: 0.0 for name, *_ in targets}
        for _ in range(rounds):
            for name, port, greeting, cpu in targets:
                cost, result = _handshake_run(port, space.ca, per_round, False, greeting, cpu)
                spent[name] += cost
                seconds[name] += result["seconds"]
        count = per_round * rounds
        for name, *_ in targets:
            prefix = "" if name == "sealroom" else f"{name}_"
            out[f"{prefix}full_cpu_us"] = round(spent[name] / count * 1e6)
            out[f"{prefix}full_per_s"] = round(count / seconds[name])
        if mosquitto is None:
            out["mosquitto_full_cpu_us"] = "skipped: not installed (scripts/ensure-mosquitto.sh)"
        cost, result = _handshake_run(
            proc.port, space.ca, sizes.handshakes, True, "line", proc.cpu_seconds
        )
        out["resumed_cpu_us"] = round(cost / sizes.handshakes * 1e6)
        out["resumed_per_s"] = round(sizes.handshakes / result["seconds"])
        out["resumed_fraction"] = round(result["reused"] / sizes.handshakes, 3)
        # OpenSSL's share alone, in this process: what resumption can save at most.
        for resume in (False, True):
            kind = "resumed" if resume else "full"
            out[f"{kind}_openssl_us"] = round(
                tlscost.server_handshake_us(space.config, space.ca, sizes.handshakes, resume=resume)
            )
    # The floor: a bare ThreadingMixIn TCP server, no TLS, writing one line per connection.
    out["plain_tcp_cpu_us"] = round(tlscost.plain_connection_us(sizes.handshakes))
    return out


def reconnect_storm(sizes: Sizes) -> dict[str, Any]:
    """Accounts with the default argon2 cost come back after a restart using resume tokens."""
    with workspace() as space:
        names = [f"storm{i}" for i in range(sizes.storm_accounts)]
        space.configure(CAPPED_LOBBY, argon2=sizes.default_argon2)
        space.add_accounts(names)
        tokens = space.issue_tokens(names)  # what each client got from /token before
        pairs = [(name, tokens[name]) for name in names]
        with server(space) as proc:
            # For contrast: the password path at this cost.
            probe = loadgen.Line(proc.port, loadgen.client_context(space.ca))
            t0 = time.monotonic()
            for _ in range(3):
                probe.request(f"/login {names[0]} wrong password")
            password_rate = 3 / (time.monotonic() - t0)
            probe.close()
            ready, results, start, release = mp.Queue(), mp.Queue(), mp.Event(), mp.Event()
            groups = [pairs[i::4] for i in range(4)]
            workers = [
                loadgen.spawn(
                    loadgen.resumer, proc.port, space.ca, g, ready, start, results, release
                )
                for g in groups
                if g
            ]
            _collect(ready, len(workers))
            cpu0, t0 = proc.cpu_seconds(), time.monotonic()
            start.set()
            outcomes = _collect(results, len(workers))
            cpu = proc.cpu_seconds() - cpu0
            release.set()
            for worker in workers:
                worker.join(60)
    back = sum(o["back"] for o in outcomes)
    seconds = max(o["at"] for o in outcomes) - t0
    return {
        "accounts": sizes.storm_accounts,
        "back": back,
        "seconds_until_all_back": round(seconds, 2),
        "server_cpu_us_per_resume": round(cpu / max(back, 1) * 1e6),
        "password_logins_per_s_at_this_cost": round(password_rate, 1),
    }


def login_flood(sizes: Sizes) -> dict[str, Any]:
    """Wrong-password floods with the default argon2 cost while two users chat."""
    with workspace() as space:
        argon2 = sizes.default_argon2
        space.configure(argon2=argon2)
        # Every hash has the configured cost: each wrong guess at the victim's password
        # costs a full verification, and the chatters' logins one each.
        space.add_accounts(["chat0", "chat1", "victim"])
        with server(space) as proc:
            time.sleep(0.5)
            baseline = proc.rss_kib()
            ready, results, start = mp.Queue(), mp.Queue(), mp.Event()
            flooder = loadgen.spawn(
                loadgen.login_flooder,
                proc.port,
                space.ca,
                sizes.flood_connections,
                sizes.flood_seconds,
                ready,
                start,
                results,
            )
            rate = 50.0  # chat messages per second, to measure their latency
            count = int(rate * sizes.flood_seconds)
            chatters = [
                loadgen.spawn(
                    loadgen.subscriber,
                    proc.port,
                    space.ca,
                    ["chat0"],
                    PASSWORD,
                    "#chat",
                    count,
                    ready,
                    start,
                    results,
                    sizes.flood_seconds + 30,
                ),
                loadgen.spawn(
                    loadgen.publisher,
                    proc.port,
                    space.ca,
                    "chat1",
                    PASSWORD,
                    "#chat",
                    count,
                    rate,
                    50,
                    ready,
                    start,
                    results,
                ),
            ]
            _collect(ready, 3)
            start.set()
            peak = baseline
            deadline = time.monotonic() + sizes.flood_seconds
            while time.monotonic() < deadline:
                peak = max(peak, proc.rss_kib())
                time.sleep(0.05)
            outcomes = _collect(results, 3)
            for worker in (flooder, *chatters):
                worker.join(60)
    replies = next(o for o in outcomes if "counts" not in o and "sent" not in o)
    latencies = next(o for o in outcomes if "counts" in o)["latencies_ns"]
    memory_bound = 2 * argon2.memory_cost_kib  # max_concurrent_verifications x memory
    return {
        "flood_replies": replies,
        "chat_p50_ms": round(_percentile(latencies, 0.5), 2),
        "chat_p99_ms": round(_percentile(latencies, 0.99), 2),
        "chat_messages": len(latencies),
        "rss_growth_mib": round((peak - baseline) / 1024, 1),
        "rss_bound_mib": round(memory_bound / 1024, 1),
    }


SCENARIOS = {
    "fanout_saturated": fanout_saturated,
    "fanout_saturated_no_history": fanout_saturated_no_history,
    "fanout_steady": fanout_steady,
    "idle_connections": idle_connections,
    "handshakes": handshakes,
    "reconnect_storm": reconnect_storm,
    "login_flood": login_flood,
    "web": web,
}


def median_of(results: list[dict[str, Any]]) -> dict[str, Any]:
    """The median of each numeric figure over repeated runs, with min and max beside it."""
    out: dict[str, Any] = {}
    for key, value in results[0].items():
        values = [r[key] for r in results]
        if isinstance(value, int | float) and not isinstance(value, bool):
            out[key] = statistics.median(values)
            if len(values) > 1:
                out[f"{key}_spread"] = [min(values), max(values)]
        else:
            out[key] = value
    return out


__all__ = ["QUICK", "SCENARIOS", "ServerProcess", "Sizes", "median_of"]
