"""Fuzz the sans-I/O protocol core: LineBuffer, decode_line, split_request, parse_arguments.

Run it with atheris (``make fuzz``, or ``python fuzz/fuzz_protocol.py CORPUS_DIR...`` with
libFuzzer flags such as ``-max_total_time=60``); without atheris, ``check`` is a plain
function, and ``tests/test_fuzz_corpus.py`` runs every file of ``fuzz/corpus`` through it.

An input is: one byte choosing ``max_line_bytes`` (2..129), one byte choosing a chunk size
(1..16), then the byte stream a client would send. The properties are h11's:

* the same stream gives the same events whole, in chunks and byte by byte;
* a line never holds LF and never exceeds the limit; the buffer never holds more than
  the limit plus the chunk being fed;
* decoding and parsing raise only ``ProtocolError`` with the codes SPEC.md gives them, and
  what they accept really is valid: text free of forbidden characters, lower-case verbs,
  fields without spaces, as many fields as the syntax allows, names that are ASCII.

Any crash it finds goes into ``fuzz/corpus`` as a regression test.
"""

from __future__ import annotations

import sys
from pathlib import Path

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.protocol import (
    Framing,
    LineBuffer,
    Rest,
    decode_line,
    parse_arguments,
    split_request,
)
from sealroom.core.text import ROOM_NAME, USER_NAME, has_forbidden_chars, room_name, user_name
from sealroom.session import COMMANDS

SYNTAXES = tuple(command.syntax for command in COMMANDS.values())
DECODE_CODES = frozenset({ErrorCode.BAD_ENCODING, ErrorCode.BAD_INPUT})


def check(data: bytes) -> None:
    """Every property above for one input; raises AssertionError (or worse) on a bug."""
    if len(data) < 2:
        return
    max_line = 2 + data[0] % 128
    chunk = 1 + data[1] % 16
    stream = data[2:]
    whole = _events(max_line, [stream])
    chunked = _events(max_line, [stream[i : i + chunk] for i in range(0, len(stream), chunk)])
    dripped = _events(max_line, [stream[i : i + 1] for i in range(len(stream))])
    assert whole == chunked == dripped, (whole, chunked, dripped)
    for event in whole:
        if isinstance(event, bytes):
            assert b"\n" not in event
            assert len(event) + 1 <= max_line
            check_line(event)


def _events(max_line: int, chunks: list[bytes]) -> list[bytes | Framing]:
    buffer = LineBuffer(max_line)
    events: list[bytes | Framing] = []
    for piece in chunks:
        buffer.feed(piece)
        while (event := buffer.next_event()) is not None:
            events.append(event)
        assert buffer.buffered <= max_line + len(piece), (buffer.buffered, max_line)
    return events


def check_line(raw: bytes) -> None:
    """Validator and parser on one line, as the session applies them."""
    try:
        text = decode_line(raw)
    except ProtocolError as error:
        assert error.code in DECODE_CODES, error.code
        return
    assert text.encode("utf-8") == raw
    assert not has_forbidden_chars(text)
    verb, remainder = split_request(text)
    assert verb == verb.lower()
    assert " " not in verb
    for syntax in SYNTAXES:
        try:
            request = parse_arguments(verb, remainder, syntax)
        except ProtocolError as error:
            assert error.code is ErrorCode.BAD_ARGUMENT, error.code
            continue
        assert syntax.required <= len(request.args) <= syntax.required + syntax.optional
        assert all(field and " " not in field for field in request.args)
        if syntax.rest is Rest.NONE:
            assert request.text is None
        if syntax.rest is Rest.REQUIRED:
            assert request.text is not None and request.text.strip(" \t")
        for field in request.args:
            _check_names(field)


def _check_names(field: str) -> None:
    name = user_name(field)
    if name is not None:
        assert field.isascii() and USER_NAME.fullmatch(name) and user_name(name) == name
    room = room_name(field)
    if room is not None:
        assert field.isascii() and ROOM_NAME.fullmatch(room) and room_name(room) == room


def corpus_files(folder: Path | None = None) -> list[Path]:
    folder = folder or Path(__file__).with_name("corpus")
    return sorted(path for path in folder.iterdir() if path.is_file())


def main() -> None:
    import atheris  # noqa: PLC0415 -- optional: only the fuzzing run needs it

    # The modules under test are already imported; instrument their loaded code for coverage.
    atheris.instrument_all()
    atheris.Setup(sys.argv, check)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
