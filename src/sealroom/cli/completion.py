"""``sealroom completion bash``: a completion script made by shtab from the real parser.

shtab (a maintained library, in the dependencies) walks the parser, so every command,
option and choice completes as ``--help`` shows it; nothing is listed twice. The options
that name files or folders are marked here for it, by what their values are, so the
parser itself does not depend on shtab.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Final

import shtab

# Option and argument destinations whose values are paths (files, or a folder for --dir).
FILE_DESTS: Final = frozenset({"config", "path", "file", "ca", "cert", "key", "password_file"})
DIRECTORY_DESTS: Final = frozenset({"dir"})


def completion_script(parser: argparse.ArgumentParser, shell: str) -> str:
    _mark_paths(parser)
    return shtab.complete(parser, shell=shell)


def _mark_paths(parser: argparse.ArgumentParser) -> None:
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            for sub in action.choices.values():
                _mark_paths(sub)
        elif action.dest in DIRECTORY_DESTS:
            action.complete = shtab.DIRECTORY  # type: ignore[attr-defined]
        elif action.dest in FILE_DESTS or action.type is Path:
            action.complete = shtab.FILE  # type: ignore[attr-defined]
