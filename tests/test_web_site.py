"""The web door without sockets: its HTTP answers, the upgrade's checks, messages to lines,
and the frames shared between recipients."""

from __future__ import annotations

from pathlib import Path

import h11
import pytest
from hypothesis import given
from hypothesis import strategies as st
from wsproto.connection import Connection as WsConnection
from wsproto.connection import ConnectionType
from wsproto.events import TextMessage

from sealroom.config import WebSettings, settings_from_mapping
from sealroom.core.protocol import Framing, LineBuffer
from sealroom.net.web.door import FRAME_CACHE_BYTES, WebDoor
from sealroom.net.web.framing import MessageAssembler
from sealroom.net.web.site import (
    ROUTES,
    SECURITY_HEADERS,
    Answer,
    Refusal,
    Site,
    Upgrade,
    allowed_origins,
)
from sealroom.ops.reload import effective_settings

SITE = Site.from_package()
ORIGINS = allowed_origins("Chat.Example.org", 8443, ["https://other.example"])
LIMITS = WebSettings()
KEY = b"dGhlIHNhbXBsZSBub25jZQ=="
UPGRADE = [
    (b"host", b"chat.example.org:8443"),
    (b"upgrade", b"websocket"),
    (b"connection", b"keep-alive, Upgrade"),
    (b"sec-websocket-key", KEY),
    (b"sec-websocket-version", b"13"),
    (b"origin", b"https://chat.example.org:8443"),
]


def request(
    target: bytes, headers: list[tuple[bytes, bytes]], method: bytes = b"GET"
) -> h11.Request:
    return h11.Request(method=method, target=target, headers=headers or [(b"host", b"x")])


def answer(
    target: bytes, headers: list[tuple[bytes, bytes]] | None = None, method: bytes = b"GET"
) -> Answer | Upgrade | Refusal:
    return SITE.answer(request(target, headers or [], method), origins=ORIGINS, limits=LIMITS)


def status(result: Answer | Upgrade | Refusal) -> int:
    if isinstance(result, Upgrade):
        return 101
    return (result.answer if isinstance(result, Refusal) else result).status


def replace(headers: list[tuple[bytes, bytes]], name: bytes, value: bytes | None) -> list:
    kept = [(n, v) for n, v in headers if n != name]
    return kept if value is None else [*kept, (name, value)]


# -- origins ------------------------------------------------------------------------------------


def test_the_servers_own_origin_as_a_browser_shows_it() -> None:
    assert allowed_origins("Chat.Example.org", 8443, []) == {"https://chat.example.org:8443"}
    assert allowed_origins("chat.example.org", 443, []) == {"https://chat.example.org"}
    assert "https://other.example" in ORIGINS


@pytest.mark.parametrize(
    ("origin", "expected"),
    [
        (b"https://chat.example.org:8443", 101),
        (b"HTTPS://CHAT.EXAMPLE.ORG:8443", 101),
        (b"https://other.example", 101),
        (b"https://chat.example.org", 403),  # the port as the browser shows it
        (b"http://chat.example.org:8443", 403),
        (b"https://chat.example.org:8443.evil.example", 403),
        (b"https://evil.example", 403),
        (b"null", 403),
        (b"", 403),
        (None, 403),
    ],
)
def test_the_upgrade_checks_the_origin(origin: bytes | None, expected: int) -> None:
    assert status(answer(b"/ws", replace(UPGRADE, b"origin", origin))) == expected


# -- the upgrade ----------------------------------------------------------------------------------


def test_a_good_upgrade_gets_the_accept_token() -> None:
    result = answer(b"/ws", UPGRADE)
    assert isinstance(result, Upgrade)
    # RFC 6455 section 1.3's example key and its accept value.
    assert (b"sec-websocket-accept", b"s3pPLMBiTxaQ9kYGzzhZRbK+xOo=") in result.headers
    assert not any(name == b"sec-websocket-extensions" for name, _ in result.headers)


@pytest.mark.parametrize(
    ("name", "value", "expected"),
    [
        (b"upgrade", None, 426),
        (b"upgrade", b"h2c", 426),
        (b"connection", b"keep-alive", 400),
        (b"sec-websocket-version", b"8", 426),
        (b"sec-websocket-key", None, 400),
        (b"sec-websocket-key", b"short", 400),
        (b"sec-websocket-key", b"not base64 at all!!!!!!!", 400),
    ],
)
def test_a_broken_upgrade_is_refused_and_closed(
    name: bytes, value: bytes | None, expected: int
) -> None:
    result = answer(b"/ws", replace(UPGRADE, name, value))
    assert isinstance(result, Refusal)
    assert result.answer.status == expected
    assert result.answer.close


def test_ws_takes_get_only() -> None:
    result = answer(b"/ws", UPGRADE, method=b"POST")
    assert status(result) == 405


# -- pages ----------------------------------------------------------------------------------------


@pytest.mark.parametrize("path", list(ROUTES))
def test_each_page_has_the_security_headers_and_a_type(path: str) -> None:
    result = answer(path.encode())
    assert isinstance(result, Answer)
    assert result.status == 200
    for header in SECURITY_HEADERS:
        assert header in result.headers
    assert (b"content-type", ROUTES[path][1]) in result.headers
    assert result.body


def test_a_query_string_does_not_change_the_page() -> None:
    plain, queried = answer(b"/"), answer(b"/?utm=1")
    assert isinstance(plain, Answer)
    assert isinstance(queried, Answer)
    assert plain.body == queried.body


@pytest.mark.parametrize(
    ("target", "method", "expected"),
    [
        (b"/nowhere", b"GET", 404),
        (b"/index.html", b"GET", 404),
        (b"/", b"POST", 405),
        (b"/", b"DELETE", 405),
        (b"/", b"HEAD", 200),
        (b"*", b"OPTIONS", 400),
        (b"http://chat.example.org/", b"GET", 400),
    ],
)
def test_paths_and_methods(target: bytes, method: bytes, expected: int) -> None:
    assert status(answer(target, method=method)) == expected


def test_head_sends_no_body() -> None:
    result = answer(b"/")
    assert isinstance(result, Answer)
    events = result.events(b"HEAD")
    assert not any(isinstance(event, h11.Data) for event in events)
    response = events[0]
    assert isinstance(response, h11.Response)
    assert (b"content-length", str(len(result.body)).encode()) in response.headers


def test_bounds_on_headers_and_size_and_bodies() -> None:
    many = [(b"host", b"x"), *((b"x-%d" % i, b"1") for i in range(LIMITS.max_headers))]
    assert status(answer(b"/", many)) == 431
    big = [(b"host", b"x"), (b"x-big", b"a" * LIMITS.max_request_bytes)]
    assert status(answer(b"/", big)) == 431
    assert status(answer(b"/", [(b"host", b"x"), (b"content-length", b"5")])) == 413
    assert status(answer(b"/", [(b"host", b"x"), (b"transfer-encoding", b"chunked")])) == 413


def test_error_answers_carry_the_headers_too() -> None:
    result = answer(b"/nowhere")
    assert isinstance(result, Refusal)
    for header in SECURITY_HEADERS:
        assert header in result.answer.headers


# -- messages to lines ----------------------------------------------------------------------------


def lines_of(assembler: MessageAssembler, fragments: list[str]) -> bytes | None:
    result = None
    for index, fragment in enumerate(fragments):
        result = assembler.add(fragment, index == len(fragments) - 1)
        if index < len(fragments) - 1:
            assert result is None
    return result


@pytest.mark.parametrize(
    ("message", "line"),
    [
        ("hello", b"hello\n"),
        ("", b"\n"),
        ("/join #dev", b"/join #dev\n"),
        ("a\nb", b"a\x00b\n"),
        ("a\r", b"a\x00\n"),
        ("é", "é\n".encode()),
    ],
)
def test_a_message_is_one_line(message: str, line: bytes) -> None:
    assert lines_of(MessageAssembler(64), [message]) == line


def test_a_line_may_hold_max_line_bytes_minus_one() -> None:
    buffer = LineBuffer(64)
    assembler = MessageAssembler(64)
    line = assembler.add("x" * 63, True)
    assert line is not None
    buffer.feed(line)
    assert buffer.next_event() == b"x" * 63
    line = assembler.add("x" * 64, True)
    assert line is not None
    buffer.feed(line)
    assert buffer.next_event() is Framing.LINE_TOO_LONG
    assert lines_of(assembler, ["ok"]) == b"ok\n"  # the next message is fine again


def test_an_oversized_message_is_not_stored_as_it_arrives() -> None:
    assembler = MessageAssembler(64)
    for _ in range(1000):
        assert assembler.add("y" * 1000, False) is None
    assert len(assembler._message) == 0
    assert assembler.add("", True) == bytes(64) + b"\n"


@given(st.text(max_size=80), st.data())
def test_fragments_or_whole_give_the_same_line_and_the_session_one_event(
    text: str, data: st.DataObject
) -> None:
    """As h11's fuzzer does: the same input in one piece and in pieces, the same result."""
    cuts = sorted(data.draw(st.lists(st.integers(0, len(text)), max_size=5)))
    pieces = [text[a:b] for a, b in zip([0, *cuts], [*cuts, len(text)], strict=True)]
    whole = lines_of(MessageAssembler(64), [text])
    assert lines_of(MessageAssembler(64), pieces) == whole
    assert whole is not None
    buffer = LineBuffer(64)
    buffer.feed(whole)
    first = buffer.next_event()
    assert first is not None
    assert buffer.next_event() is None  # exactly one line (or one framing event)
    if len(text.encode()) < 64:
        assert first == text.encode().replace(b"\r", b"\x00").replace(b"\n", b"\x00")
    else:
        assert first is Framing.LINE_TOO_LONG


# -- frames shared between recipients -------------------------------------------------------------


def fresh_frame(line: str) -> bytes:
    return WsConnection(ConnectionType.SERVER).send(TextMessage(data=line))


def test_cached_frames_are_what_wsproto_makes() -> None:
    door = WebDoor(SITE, 443)
    made: list[str] = []

    def make(line: str) -> bytes:
        made.append(line)
        return fresh_frame(line)

    data = "MSG #a bob hi\nDM bob é\n".encode()
    expected = fresh_frame("MSG #a bob hi") + fresh_frame("DM bob é")
    assert door.frames(data, make) == expected
    assert door.frames(bytes(data), make) == expected  # another object, same lines
    assert made == ["MSG #a bob hi", "DM bob é"]  # framed once


def test_the_frame_cache_is_bounded_in_bytes() -> None:
    door = WebDoor(SITE, 443)
    line = "x" * 1000
    for n in range(3 * FRAME_CACHE_BYTES // 2000):
        door.frames(f"{n} {line}\n".encode(), fresh_frame)
    assert door._frames_bytes <= FRAME_CACHE_BYTES
    assert sum(len(k) + len(v) for k, v in door._frames.items()) == door._frames_bytes


def test_a_reload_keeps_web_listen_and_applies_the_other_web_keys(tmp_path: Path) -> None:
    running = settings_from_mapping({"web": {"listen": "127.0.0.1:7444"}}, tmp_path)
    new = settings_from_mapping(
        {"web": {"listen": "127.0.0.1:9999", "origins": ["https://a.example"]}}, tmp_path
    )
    merged, restart_only = effective_settings(running, new)
    assert merged.web.listen == "127.0.0.1:7444"
    assert merged.web.origins == ("https://a.example",)
    assert restart_only == ["web.listen"]
