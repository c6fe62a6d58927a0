"""How every ``sealroom`` command is declared: its parser, its ``-c``, its examples.

One table builds the parser, so what ``--help`` shows, what the shell completes and what
the tests check are the same thing, written once. Each command's examples end its
``--help`` (argparse's epilog); ``tests/test_cli.py`` parses every example with the real
parser, so an example cannot drift from the options it shows.

``-c/--config`` is added to the top-level parser, to each group (``user``, ``db`` …) and to
each command, all with a suppressed default: whichever is given last on the command line
wins, and one given early is not reset by a later parser's default.
"""

from __future__ import annotations

import argparse
from collections.abc import Callable, Sequence
from typing import Final, TypeAlias

Handler: TypeAlias = Callable[[argparse.Namespace], int]
# (command line, what it does); the second part may be empty.
Examples: TypeAlias = Sequence[tuple[str, str]]
Group: TypeAlias = "argparse._SubParsersAction[argparse.ArgumentParser]"

CONFIG_HELP: Final = "configuration file (default: $SEALROOM_CONFIG, else built-in defaults)"


def add_config_option(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-c", "--config", metavar="PATH", default=argparse.SUPPRESS, help=CONFIG_HELP
    )


def build_parser(prog: str, description: str, *, version: str) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog=prog, description=description)
    parser.add_argument("--version", action="version", version=version)
    add_config_option(parser)
    return parser


def examples_epilog(examples: Examples) -> str:
    width = max(len(line) for line, _ in examples)
    rows = [f"  {line:<{width}}  # {what}" if what else f"  {line}" for line, what in examples]
    return "examples:\n" + "\n".join(rows)


class CommandTable:
    """The parser under construction, with helpers to add groups and commands to it."""

    def __init__(self, parser: argparse.ArgumentParser) -> None:
        self.parser = parser
        self.commands: Group = parser.add_subparsers(metavar="COMMAND", title="commands")

    def group(self, name: str, help_text: str) -> Group:
        """A command group such as ``user``; alone on the command line it prints its help."""
        parser = self.commands.add_parser(name, help=help_text, description=help_text)
        add_config_option(parser)
        parser.set_defaults(help_parser=parser)
        return parser.add_subparsers(metavar="COMMAND", title="commands")

    def command(
        self,
        group: Group,
        name: str,
        handler: Handler,
        help_text: str,
        *,
        examples: Examples,
    ) -> argparse.ArgumentParser:
        if not examples:
            raise ValueError(f"the command {name!r} needs examples for its --help")
        sub = group.add_parser(
            name,
            help=help_text,
            description=help_text,
            epilog=examples_epilog(examples),
            formatter_class=argparse.RawDescriptionHelpFormatter,
        )
        add_config_option(sub)
        sub.set_defaults(handler=handler)
        return sub
