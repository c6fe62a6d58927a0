"""What an operator sees: one snapshot of the server's numbers, as status and as metrics.

:meth:`App.snapshot <sealroom.ops.app.App.snapshot>` reads every number once; the functions here
only reshape it, for ``sealroom status`` (a JSON object) and for Prometheus (metric families),
so the two can never disagree about what a number means.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from datetime import datetime
from typing import Any

from sealroom.ops.metrics import Family


@dataclass(frozen=True, slots=True)
class Snapshot:
    version: str
    pid: int
    server_name: str
    listeners: tuple[str, ...]
    control: str | None
    metrics: str | None
    started_at: datetime
    uptime_s: float
    # gauges
    connections: int
    sessions: int
    rooms: int
    outbox_bytes: int
    outbox_bytes_max: int
    history_lag: int
    argon2_waiting: int
    # counters
    history_dropped: int
    argon2_slots_taken: int
    argon2_wait_seconds: float
    argon2_busy: int
    admitted: int
    connection_rejections: Mapping[str, int]  # Admission.rejected: max_connections, ...
    login_rate_limited: int
    message_rate_limited: int
    handshake_failures: int
    logins_ok: int
    logins_failed: int
    messages_room: int
    messages_private: int
    deliveries: int
    delivered_bytes: int
    bytes_received: int
    bytes_sent: int
    closed: Mapping[str, int]  # by the first word of the BYE reason
    reloads: Mapping[str, int]  # "ok", "failed"
    last_reload: tuple[datetime, str | None] | None
    certificate_not_after: datetime | None
    # the web door (web.listen): its address, its share of the connections and sessions above
    web: str | None = None
    web_connections: int = 0
    web_sessions: int = 0
    web_answers: Mapping[int, int] = field(default_factory=dict)  # HTTP status -> count


def _iso(moment: datetime | None) -> str | None:
    return None if moment is None else moment.strftime("%Y-%m-%dT%H:%M:%SZ")


def rejected_by_limit(snap: Snapshot) -> dict[str, int]:
    """Everything refused by a bound, named after the setting that refused it."""
    rejections = snap.connection_rejections
    return {
        "limits.max_connections": rejections.get("max_connections", 0),
        "limits.max_connections_per_ip": rejections.get("per_address", 0),
        "rate.connections_per_ip": rejections.get("rate", 0),
        "rate.logins_per_ip": snap.login_rate_limited,
        "rate.messages": snap.message_rate_limited,
        "rate.errors": snap.closed.get("too-many-errors", 0),
        "limits.outbound_queue_bytes": snap.closed.get("slow-consumer", 0),
        "auth.max_concurrent_verifications": snap.argon2_busy,
    }


def status_report(snap: Snapshot) -> dict[str, Any]:
    """The JSON object ``sealroom status --json`` prints."""
    last = snap.last_reload
    return {
        "server": {
            "name": snap.server_name,
            "version": snap.version,
            "pid": snap.pid,
            "started": _iso(snap.started_at),
            "uptime_s": round(snap.uptime_s, 1),
            "listeners": list(snap.listeners),
            "control": snap.control,
            "metrics": snap.metrics,
        },
        "connections": snap.connections,
        "sessions": snap.sessions,
        "rooms": snap.rooms,
        "queues": {
            "outbox_bytes": snap.outbox_bytes,
            "outbox_bytes_max": snap.outbox_bytes_max,
            "history_writer_lag": snap.history_lag,
            "argon2_waiting": snap.argon2_waiting,
        },
        "rejected": rejected_by_limit(snap),
        "handshake_failures": snap.handshake_failures,
        "logins": {"ok": snap.logins_ok, "failed": snap.logins_failed},
        "messages": {
            "room": snap.messages_room,
            "private": snap.messages_private,
            "deliveries": snap.deliveries,
            "history_dropped": snap.history_dropped,
        },
        "closed": dict(sorted(snap.closed.items())),
        "reload": {
            **snap.reloads,
            "last": _iso(last[0]) if last else None,
            "last_error": last[1] if last else None,
        },
        "tls": {"certificate_expires": _iso(snap.certificate_not_after)},
        "web": {
            "listener": snap.web,
            "connections": snap.web_connections,
            "sessions": snap.web_sessions,
            "http_answers": {str(status): n for status, n in sorted(snap.web_answers.items())},
        },
    }


def _p(name: str) -> str:
    return f"sealroom_{name}"


def metric_families(snap: Snapshot) -> list[Family]:
    """The Prometheus view of ``snap``."""
    gauge, counter = "gauge", "counter"
    families = [
        Family(
            _p("info"), gauge, "Version of the running server.", [({"version": snap.version}, 1)]
        ),
        Family.single(
            _p("start_time_seconds"),
            gauge,
            "Unix time the server started.",
            snap.started_at.timestamp(),
        ),
        Family.single(_p("connections"), gauge, "Open client connections.", snap.connections),
        Family.single(_p("sessions"), gauge, "Logged-in sessions.", snap.sessions),
        Family.single(_p("rooms"), gauge, "Rooms with at least one member.", snap.rooms),
        Family.single(
            _p("outbox_bytes"),
            gauge,
            "Bytes queued for clients, all connections.",
            snap.outbox_bytes,
        ),
        Family.single(
            _p("outbox_bytes_max"),
            gauge,
            "Bytes queued for the most backed-up connection.",
            snap.outbox_bytes_max,
        ),
        Family.single(
            _p("connections_accepted_total"), counter, "Connections admitted.", snap.admitted
        ),
        Family.single(
            _p("tls_handshake_failures_total"),
            counter,
            "TLS handshakes that failed.",
            snap.handshake_failures,
        ),
        Family(
            _p("connections_closed_total"),
            counter,
            "Connections closed after the handshake, by reason (peer: the client left).",
            [({"reason": reason}, count) for reason, count in sorted(snap.closed.items())],
        ),
        Family.single(
            _p("slow_consumer_drops_total"),
            counter,
            "Connections dropped because they did not read (BYE slow-consumer).",
            snap.closed.get("slow-consumer", 0),
        ),
        Family(
            _p("logins_total"),
            counter,
            "Login and resume attempts by result.",
            [({"result": "success"}, snap.logins_ok), ({"result": "failure"}, snap.logins_failed)],
        ),
        Family(
            _p("rate_limited_total"),
            counter,
            "Requests or connections refused by a limit, by the setting that refused them.",
            [({"limit": key}, value) for key, value in rejected_by_limit(snap).items()],
        ),
        Family(
            _p("messages_received_total"),
            counter,
            "Messages accepted from clients, by kind.",
            [({"kind": "room"}, snap.messages_room), ({"kind": "private"}, snap.messages_private)],
        ),
        Family.single(
            _p("deliveries_total"),
            counter,
            "Message lines (MSG, DM, WALL) queued to recipients.",
            snap.deliveries,
        ),
        Family.single(
            _p("delivered_bytes_total"), counter, "Bytes of those lines.", snap.delivered_bytes
        ),
        Family(
            _p("bytes_total"),
            counter,
            "Application bytes over TLS, by direction.",
            [({"direction": "in"}, snap.bytes_received), ({"direction": "out"}, snap.bytes_sent)],
        ),
        Family.single(
            _p("argon2_waiting"),
            gauge,
            "Password checks waiting for an argon2 slot.",
            snap.argon2_waiting,
        ),
        Family.single(
            _p("argon2_queue_wait_seconds_total"),
            counter,
            "Time password checks waited for an argon2 slot.",
            snap.argon2_wait_seconds,
        ),
        Family.single(
            _p("argon2_slots_taken_total"),
            counter,
            "Argon2 slots granted (divide the wait by this for the mean).",
            snap.argon2_slots_taken,
        ),
        Family.single(
            _p("history_writer_lag"),
            gauge,
            "Room messages accepted but not yet on disk.",
            snap.history_lag,
        ),
        Family.single(
            _p("history_dropped_total"),
            counter,
            "Messages the history writer could not keep up with (not stored).",
            snap.history_dropped,
        ),
        Family(
            _p("reloads_total"),
            counter,
            "Reloads (SIGHUP) by result.",
            [
                ({"result": "success"}, snap.reloads.get("ok", 0)),
                ({"result": "failure"}, snap.reloads.get("failed", 0)),
            ],
        ),
    ]
    if snap.web is not None:
        families += [
            Family.single(
                _p("web_connections"),
                gauge,
                "Open connections to the web door (also counted in sealroom_connections).",
                snap.web_connections,
            ),
            Family.single(
                _p("web_sessions"),
                gauge,
                "Logged-in sessions over WebSocket (also counted in sealroom_sessions).",
                snap.web_sessions,
            ),
            Family(
                _p("web_http_answers_total"),
                counter,
                "HTTP answers of the web door, by status (101: WebSocket upgrades).",
                [({"status": str(status)}, n) for status, n in sorted(snap.web_answers.items())],
            ),
        ]
    if snap.certificate_not_after is not None:
        families.append(
            Family.single(
                _p("tls_certificate_expiry_seconds"),
                gauge,
                "Unix time the served certificate expires.",
                snap.certificate_not_after.timestamp(),
            )
        )
    return families


def status_text(report: Mapping[str, Any]) -> list[str]:
    """``sealroom status`` for people: the report of :func:`status_report`, in lines."""
    server, queues, logins = report["server"], report["queues"], report["logins"]
    reload, rejected = report["reload"], report["rejected"]
    refused = ", ".join(f"{key} {value}" for key, value in rejected.items() if value) or "none"
    lines = [
        f"sealroom {server['version']} ({server['name']}), pid {server['pid']}, "
        f"up {_duration(server['uptime_s'])} since {server['started']}",
        f"listening on {', '.join(server['listeners'])}",
        f"connections {report['connections']}, sessions {report['sessions']}, "
        f"rooms {report['rooms']}",
        f"queues: outbox {queues['outbox_bytes']} bytes (largest {queues['outbox_bytes_max']}), "
        f"history writer lag {queues['history_writer_lag']}, "
        f"argon2 waiting {queues['argon2_waiting']}",
        f"rejected by limits: {refused}",
        f"logins: {logins['ok']} ok, {logins['failed']} failed; "
        f"TLS handshake failures {report['handshake_failures']}",
    ]
    if reload["last"] is not None:
        outcome = f"failed: {reload['last_error']}" if reload["last_error"] else "ok"
        lines.append(
            f"reloads: {reload['ok']} ok, {reload['failed']} failed; "
            f"last at {reload['last']} ({outcome})"
        )
    expires = report["tls"]["certificate_expires"]
    if expires is not None:
        lines.append(f"TLS certificate expires {expires}")
    cluster = report.get("cluster")
    if cluster:
        lines.append(
            f"cluster node {cluster['node']}: fenced {cluster['fenced']} times, "
            f"took back {cluster['reaped']} dead nodes"
        )
        for node in cluster.get("nodes", ()):
            mark = " (this node)" if node.get("self") else ""
            lines.append(
                f"  node {node['name']}{mark}: {node['sessions']} sessions, "
                f"last heartbeat {node['last_heartbeat_s']}s ago"
            )
    web = report.get("web") or {}
    if web.get("listener"):
        lines.append(
            f"web door on https://{web['listener']}/: connections {web['connections']}, "
            f"sessions {web['sessions']}"
        )
    if server["metrics"]:
        lines.append(f"metrics on http://{server['metrics']}/metrics")
    return lines


def _duration(seconds: float) -> str:
    minutes, secs = divmod(int(seconds), 60)
    hours, minutes = divmod(minutes, 60)
    days, hours = divmod(hours, 24)
    if days:
        return f"{days}d {hours}h"
    if hours:
        return f"{hours}h {minutes}m"
    return f"{minutes}m {secs}s"
