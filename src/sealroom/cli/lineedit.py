"""Editing one line of input on a terminal while other text scrolls above it.

``chat`` edits its input line itself (a small emacs-style editor with history, on termios
and ``select``) rather than through GNU readline: Python's ``readline`` has no callback
interface, so it cannot share one thread with the socket, and a second thread blocked in
``input()`` could neither be woken when the server closes nor redraw its line exactly.

:class:`LineEditor` is the editor without I/O (keys in, lines out, the visible line
computed for a width); :class:`Screen` draws it and prints lines above it;
:func:`keys_one_by_one` puts the terminal in the mode that delivers keys as typed.
"""

from __future__ import annotations

import contextlib
import os
import termios
import unicodedata
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Final, TextIO

from sealroom.core.text import has_forbidden_chars

__all__ = [
    "HISTORY_LINES",
    "MAX_INPUT_LINE_CHARS",
    "LineEditor",
    "Screen",
    "keys_one_by_one",
]

MAX_INPUT_LINE_CHARS: Final = 4096  # longer input would be refused by the server anyway
HISTORY_LINES: Final = 500


def _char_width(char: str) -> int:
    """Terminal columns of ``char``: the cursor must land where the terminal puts it."""
    if unicodedata.combining(char):
        return 0
    return 2 if unicodedata.east_asian_width(char) in ("W", "F") else 1


def _width(chars: list[str] | str) -> int:
    return sum(_char_width(char) for char in chars)


_CONTROL_KEYS: Final = {
    "\x01": "home",
    "\x02": "left",
    "\x05": "end",
    "\x06": "right",
    "\x08": "backspace",
    "\x7f": "backspace",
    "\x0b": "kill-end",
    "\x0c": "redraw",
    "\x0e": "next",
    "\x10": "previous",
    "\x15": "kill-start",
    "\x17": "kill-word",
}
_ESCAPE_KEYS: Final = {
    "[A": "previous",
    "[B": "next",
    "[C": "right",
    "[D": "left",
    "[H": "home",
    "[F": "end",
    "OA": "previous",
    "OB": "next",
    "OC": "right",
    "OD": "left",
    "OH": "home",
    "OF": "end",
    "[1~": "home",
    "[7~": "home",
    "[4~": "end",
    "[8~": "end",
    "[3~": "delete",
}
MAX_ESCAPE_CHARS: Final = 16


@dataclass
class LineEditor:
    """One line of input: keys in, submitted lines out; rendering without I/O.

    ``feed`` returns the lines completed by Enter, and None for Ctrl-D on an empty line
    (end of input). Long lines scroll sideways, so the line never wraps and redrawing it
    is exact.
    """

    history_size: int = HISTORY_LINES
    buffer: list[str] = field(default_factory=list)
    cursor: int = 0
    history: list[str] = field(default_factory=list)
    _index: int = 0
    _draft: list[str] = field(default_factory=list)
    _escape: str | None = None
    _scroll: int = 0

    @property
    def text(self) -> str:
        return "".join(self.buffer)

    def feed(self, keys: str) -> list[str | None]:
        done: list[str | None] = []
        for key in keys:
            if self._escape is not None:
                self._escape_key(key)
            elif key == "\x1b":
                self._escape = ""
            elif key in "\r\n":
                done.append(self._submit())
            elif key == "\x04":
                if not self.buffer:
                    done.append(None)
                else:
                    self._edit("delete")
            elif key in _CONTROL_KEYS:
                self._edit(_CONTROL_KEYS[key])
            elif key == "\t":
                self._insert(" ")
            elif unicodedata.category(key) != "Cc" and not has_forbidden_chars(key):
                self._insert(key)
        return done

    def _escape_key(self, key: str) -> None:
        assert self._escape is not None  # noqa: S101
        sequence = self._escape + key
        if not sequence.startswith(("[", "O")) or len(sequence) > MAX_ESCAPE_CHARS:
            self._escape = None  # Alt+key or garbage: ignored
        elif len(sequence) >= 2 and "@" <= key <= "~":
            self._escape = None
            action = _ESCAPE_KEYS.get(sequence)
            if action:
                self._edit(action)
        else:
            self._escape = sequence

    def _insert(self, char: str) -> None:
        if len(self.buffer) < MAX_INPUT_LINE_CHARS:
            self.buffer.insert(self.cursor, char)
            self.cursor += 1

    def _submit(self) -> str:
        line = self.text
        if line.strip() and (not self.history or self.history[-1] != line):
            self.history.append(line)
            del self.history[: -self.history_size]
        self.buffer, self.cursor, self._scroll = [], 0, 0
        self._index, self._draft = len(self.history), []
        return line

    def _edit(self, action: str) -> None:  # noqa: PLR0912 -- one branch per key, a table in effect
        if action == "left":
            self.cursor = max(0, self.cursor - 1)
        elif action == "right":
            self.cursor = min(len(self.buffer), self.cursor + 1)
        elif action == "home":
            self.cursor = 0
        elif action == "end":
            self.cursor = len(self.buffer)
        elif action == "backspace":
            if self.cursor:
                del self.buffer[self.cursor - 1]
                self.cursor -= 1
        elif action == "delete":
            if self.cursor < len(self.buffer):
                del self.buffer[self.cursor]
        elif action == "kill-end":
            del self.buffer[self.cursor :]
        elif action == "kill-start":
            del self.buffer[: self.cursor]
            self.cursor = 0
        elif action == "kill-word":
            start = self.cursor
            while start and self.buffer[start - 1] == " ":
                start -= 1
            while start and self.buffer[start - 1] != " ":
                start -= 1
            del self.buffer[start : self.cursor]
            self.cursor = start
        elif action in ("previous", "next"):
            self._browse(-1 if action == "previous" else 1)

    def _browse(self, step: int) -> None:
        index = self._index + step
        if not 0 <= index <= len(self.history):
            return
        if self._index == len(self.history):
            self._draft = list(self.buffer)
        self._index = index
        self.buffer = list(self.history[index]) if index < len(self.history) else self._draft
        self.cursor = len(self.buffer)

    def render(self, prompt: str, columns: int) -> tuple[str, int]:
        """The visible line (prompt plus a window on the buffer) and the cursor's column."""
        room = max(columns - _width(prompt) - 1, 8)
        self._scroll = min(self._scroll, self.cursor)
        while _width(self.buffer[self._scroll : self.cursor]) > room:
            self._scroll += 1
        visible: list[str] = []
        used = 0
        for char in self.buffer[self._scroll :]:
            used += _char_width(char)
            if used > room:
                break
            visible.append(char)
        column = _width(prompt) + _width(self.buffer[self._scroll : self.cursor])
        return prompt + "".join(visible), column


class Screen:
    """Lines printed above the input line, which is then drawn again as it was.

    Without a terminal (``interactive`` false) lines are printed plain and no input line is
    drawn, so that ``chat`` can be scripted.
    """

    def __init__(self, out: TextIO, editor: LineEditor, interactive: bool) -> None:
        self.out = out
        self.editor = editor
        self.interactive = interactive
        self.prompt = "> "

    def show(self, line: str) -> None:
        if self.interactive:
            self.out.write("\r\x1b[K" + line + "\n")
            self.redraw()
        else:
            self.out.write(line + "\n")
            self.out.flush()

    def redraw(self) -> None:
        if not self.interactive:
            return
        try:
            columns = os.get_terminal_size(self.out.fileno()).columns
        except OSError:
            columns = 80
        line, column = self.editor.render(self.prompt, columns)
        self.out.write("\r\x1b[K" + line + "\r" + (f"\x1b[{column}C" if column else ""))
        self.out.flush()

    def clear(self) -> None:
        if self.interactive:
            self.out.write("\r\x1b[K")
            self.out.flush()


@contextlib.contextmanager
def keys_one_by_one(fd: int) -> Iterator[None]:
    """No echo, no line buffering; Ctrl-C and Ctrl-Z still signal. Restored on exit."""
    saved = termios.tcgetattr(fd)
    changed = termios.tcgetattr(fd)
    changed[3] &= ~(termios.ECHO | termios.ICANON | termios.IEXTEN)
    changed[6][termios.VMIN] = 1
    changed[6][termios.VTIME] = 0
    termios.tcsetattr(fd, termios.TCSANOW, changed)
    try:
        yield
    finally:
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)
