"""One client session as a state machine: lines in, replies and effects out."""

from sealroom.session.machine import COMMANDS, Command, Services, Session

__all__ = ["COMMANDS", "Command", "Services", "Session"]
