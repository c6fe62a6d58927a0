"""The sans-I/O protocol core: framing, validation and request syntax."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealroom.core.errors import ErrorCode, ProtocolError
from sealroom.core.protocol import (
    SAY_CURRENT,
    Framing,
    LineBuffer,
    Rest,
    Syntax,
    decode_line,
    encode_line,
    parse_arguments,
    split_request,
)


def drain(buffer: LineBuffer) -> list[bytes | Framing]:
    events: list[bytes | Framing] = []
    while (event := buffer.next_event()) is not None:
        events.append(event)
    return events


def feed_all(chunks: list[bytes], max_line: int = 16) -> list[bytes | Framing]:
    buffer = LineBuffer(max_line)
    events: list[bytes | Framing] = []
    for chunk in chunks:
        buffer.feed(chunk)
        events.extend(drain(buffer))
    return events


@pytest.mark.parametrize(
    ("data", "expected"),
    [
        (b"hello\n", [b"hello"]),
        (b"hello\r\n", [b"hello"]),
        (b"a\r\r\n", [b"a\r"]),  # only one CR before LF is dropped
        (b"\n", [b""]),
        (b"one\ntwo\nthr", [b"one", b"two"]),
        (b"x" * 15 + b"\n", [b"x" * 15]),  # 16 bytes with LF: exactly the limit
        (b"x" * 16 + b"\n", [Framing.LINE_TOO_LONG]),
        (b"x" * 40 + b"\nok\n", [Framing.LINE_TOO_LONG, b"ok"]),
        (b"x" * 40, []),  # too long but no LF yet: nothing reported, nothing kept
    ],
)
def test_line_buffer_table(data: bytes, expected: list[bytes | Framing]) -> None:
    assert feed_all([data]) == expected


def test_line_buffer_keeps_memory_flat_for_endless_line() -> None:
    buffer = LineBuffer(4096)
    chunk = b"A" * 65536
    for _ in range(64):  # 4 MiB without LF
        buffer.feed(chunk)
        assert buffer.next_event() is None
        assert buffer.buffered <= 4096
    buffer.feed(b"tail\nnext\n")
    assert drain(buffer) == [Framing.LINE_TOO_LONG, b"next"]


def test_line_buffer_byte_dripping_is_linear() -> None:
    """Scanning resumes where it stopped: dripping bytes never rescans the buffer."""
    buffer = LineBuffer(4096)
    for byte in b"x" * 4000:
        buffer.feed(bytes([byte]))
        assert buffer.next_event() is None
        assert buffer._scanned == buffer.buffered  # everything held has been searched once
    buffer.feed(b"\n")
    assert buffer.next_event() == b"x" * 4000


lines = st.binary(max_size=40)


@given(st.lists(lines, max_size=8), st.integers(min_value=2, max_value=32))
def test_byte_at_a_time_equals_one_chunk(parts: list[bytes], max_line: int) -> None:
    data = b"".join(parts)
    whole = feed_all([data], max_line)
    dripped = feed_all([bytes([b]) for b in data], max_line)
    assert whole == dripped


@given(st.binary(max_size=200), st.integers(min_value=1, max_value=50))
def test_any_chunking_gives_same_events(data: bytes, cut: int) -> None:
    chunks = [data[i : i + cut] for i in range(0, len(data), cut)]
    assert feed_all(chunks, 24) == feed_all([data], 24)


@given(st.binary(max_size=64))
def test_any_bytes_give_text_or_protocol_error(raw: bytes) -> None:
    try:
        text = decode_line(raw)
    except ProtocolError as error:
        assert error.code in {ErrorCode.BAD_ENCODING, ErrorCode.BAD_INPUT}
    else:
        assert text.encode("utf-8") == raw


@pytest.mark.parametrize(
    ("raw", "code"),
    [
        (b"\xff\xfe", ErrorCode.BAD_ENCODING),
        (b"caf\xc3", ErrorCode.BAD_ENCODING),  # truncated sequence
        (b"\xed\xa0\x80", ErrorCode.BAD_ENCODING),  # a UTF-16 surrogate
        (b"red \x1b[31m", ErrorCode.BAD_INPUT),  # ESC
        (b"nul\x00", ErrorCode.BAD_INPUT),
        (b"del\x7f", ErrorCode.BAD_INPUT),
        ("c1 \u0085".encode(), ErrorCode.BAD_INPUT),
        ("bidi \u202e".encode(), ErrorCode.BAD_INPUT),
        ("isolate \u2066".encode(), ErrorCode.BAD_INPUT),
        ("line separator \u2028".encode(), ErrorCode.BAD_INPUT),
        ("paragraph separator \u2029".encode(), ErrorCode.BAD_INPUT),
        (b"cr\rinside", ErrorCode.BAD_INPUT),
    ],
)
def test_validator_refuses(raw: bytes, code: ErrorCode) -> None:
    with pytest.raises(ProtocolError) as info:
        decode_line(raw)
    assert info.value.code is code


@pytest.mark.parametrize("raw", [b"tab\tok", "caf\u00e9 \u4e16\u754c \U0001f600".encode()])
def test_validator_accepts(raw: bytes) -> None:
    assert decode_line(raw) == raw.decode()


@pytest.mark.parametrize(
    ("line", "verb", "remainder"),
    [
        ("hello", SAY_CURRENT, "hello"),
        ("//etc/passwd is a path", SAY_CURRENT, "/etc/passwd is a path"),
        ("/JOIN #Room", "join", "#Room"),
        ("/quit", "quit", ""),
        ("/", "", ""),
    ],
)
def test_split_request(line: str, verb: str, remainder: str) -> None:
    assert split_request(line) == (verb, remainder)


LOGIN = Syntax("/login NAME PASSWORD", 1, rest=Rest.REQUIRED)
PART = Syntax("/part [#ROOM]", 0, 1)
PING = Syntax("/ping [TOKEN]", rest=Rest.OPTIONAL)


@pytest.mark.parametrize(
    ("syntax", "remainder", "args", "text"),
    [
        (LOGIN, "alice secret words", ("alice",), "secret words"),
        (LOGIN, "alice  lead space", ("alice",), " lead space"),
        (LOGIN, "  alice pw", ("alice",), "pw"),
        (PART, "", (), None),
        (PART, "#a", ("#a",), None),
        (PART, "#a  ", ("#a",), None),
        (PING, "", (), None),
        (PING, "x y", (), "x y"),
    ],
)
def test_parse_arguments(
    syntax: Syntax, remainder: str, args: tuple[str, ...], text: str | None
) -> None:
    request = parse_arguments("v", remainder, syntax)
    assert (request.args, request.text) == (args, text)


@pytest.mark.parametrize(
    ("syntax", "remainder"),
    [(LOGIN, ""), (LOGIN, "alice"), (LOGIN, "alice "), (PART, "#a #b")],
)
def test_parse_arguments_refuses(syntax: Syntax, remainder: str) -> None:
    with pytest.raises(ProtocolError) as info:
        parse_arguments("v", remainder, syntax)
    assert info.value.code is ErrorCode.BAD_ARGUMENT
    assert syntax.usage in info.value.text


def test_encode_line() -> None:
    assert encode_line("MSG", "#a", "bob", "héllo") == "MSG #a bob héllo\n".encode()
