"""One client session as a state machine: lines in, replies and effects out."""

from sealroom.session.commands import COMMANDS
from sealroom.session.effects import Effect, Outcome, Pool
from sealroom.session.machine import Command, Services, Session

__all__ = ["COMMANDS", "Command", "Effect", "Outcome", "Pool", "Services", "Session"]
