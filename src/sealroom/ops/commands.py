"""What the control socket's commands do in a running server: ``sealroom status``,
``reload``, ``sessions`` and ``kick``. The socket (:mod:`sealroom.ops.control`) carries
the requests; the server (:class:`~sealroom.ops.app.App`) is what they ask about; here
each command checks its arguments and answers, in a cluster for every node.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from sealroom.core.errors import ProtocolError
from sealroom.core.model import iso_utc
from sealroom.core.text import has_forbidden_chars, user_name
from sealroom.ops.control import ControlError
from sealroom.ops.observe import status_report

if TYPE_CHECKING:
    from sealroom.ops.app import App

log = logging.getLogger("sealroom")

MAX_KICK_REASON = 200  # characters of an operator's kick reason

Handler = Callable[[Mapping[str, Any]], dict[str, Any]]


class ControlCommands:
    """The commands, each answered from ``app``."""

    def __init__(self, app: App) -> None:
        self._app = app

    def table(self) -> dict[str, Handler]:
        """The control socket's command names and their handlers."""
        return {
            "status": self.status,
            "kick": self.kick,
            "reload": self.reload,
            "sessions": self.sessions,
        }

    def status(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """``sealroom status``: the snapshot's report; in a cluster also this node's part
        and every live node (none listed while Redis is away: the rest of it stands)."""
        app = self._app
        report = status_report(app.snapshot())
        bus = app.bus
        if bus is not None:
            try:
                nodes = bus.nodes()
            except Exception as error:  # Redis away: say so, the rest of the report stands
                log.warning("status: could not list the cluster's nodes: %s", error)
                nodes = []
            report["cluster"] = {
                "node": bus.node_name,
                "up": bus.up,
                "fenced": bus.fenced,
                "reaped": bus.reaped,
                "nodes": nodes,
            }
        return report

    def reload(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """``sealroom reload``: as SIGHUP does; refused with the reason if it failed."""
        app = self._app
        log.info("control: reload requested")
        with app.reload_lock:
            if not app.reload():
                problem = app.last_reload[1] if app.last_reload else None
                raise ControlError(f"reload refused: {problem or 'see the log'}")
        certificate = app.certificate
        expires = certificate.not_after if certificate else None
        return {
            "source": str(app.settings.source) if app.settings.source else None,
            "certificate_expires": expires.strftime("%Y-%m-%dT%H:%M:%SZ") if expires else None,
        }

    def sessions(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """``sealroom sessions``: every logged-in session, oldest first; in a cluster, every
        node's (each answers a census on the bus)."""
        app = self._app
        if app.bus is not None:
            try:
                rows = app.bus.census()
            except ProtocolError as error:
                raise ControlError(error.text) from None
        else:
            rows = self.session_rows()
        rows.sort(key=lambda row: (str(row.get("connected_since")), str(row.get("user"))))
        return {"sessions": rows}

    def session_rows(self) -> list[dict[str, Any]]:
        """This process's logged-in sessions (in a cluster, each with its node's name)."""
        app = self._app
        node = app.bus.node_name if app.bus is not None else None
        rows = []
        for connection in app.shared.registry.snapshot():
            session = connection.session
            member = session.member if session is not None else None
            if member is None:
                continue  # not logged in (yet): a connection, not a session
            rows.append(
                {
                    "user": member.name,
                    "address": connection.peer,
                    "rooms": app.hub.rooms_of(member),
                    "connected_since": iso_utc(
                        datetime.fromtimestamp(connection.connected_at, UTC)
                    ),
                    **({"node": node} if node is not None else {}),
                }
            )
        return rows

    def kick(self, message: Mapping[str, Any]) -> dict[str, Any]:
        """``sealroom kick NAME [--reason TEXT]``: close every session of NAME."""
        app = self._app
        raw_name, reason = message.get("name"), message.get("reason") or ""
        name = user_name(raw_name) if isinstance(raw_name, str) else None
        if name is None:
            raise ControlError("a user name is [a-z0-9][a-z0-9_.-], at most 32 characters")
        if not isinstance(reason, str) or len(reason) > MAX_KICK_REASON:
            raise ControlError(f"a reason is text of at most {MAX_KICK_REASON} characters")
        if has_forbidden_chars(reason):
            raise ControlError("a reason may not hold control characters or bidi overrides")
        if not app.hub.is_online(name) and app.store.get_account(name) is None:
            raise ControlError(f"no account {name}")
        text = " ".join(reason.split())
        why = f"kicked by operator: {text}" if text else "kicked"
        if app.bus is not None:  # every node closes its sessions of the user
            count = app.hub.session_count(name)
            try:
                app.bus.broadcast("kick", {"name": name, "reason": why})
            except ProtocolError as error:
                raise ControlError(error.text) from None
            log.info("control: kicked %s on every node", name)
            return {"name": name, "sessions": count}
        count = app.hub.disconnect(name, why)
        log.info("control: kicked %s (%d sessions)", name, count)
        return {"name": name, "sessions": count}
