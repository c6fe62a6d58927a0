"""The PROXY protocol parser (sealroom.core.proxy), without sockets.

Tables for what each version must accept and refuse; then h11's fuzzer properties with
Hypothesis: the same bytes give the same result whole, byte by byte and in the chunks a
socket shell reads, and nothing but ``ProxyHeaderError`` is ever raised.
"""

from __future__ import annotations

import ipaddress
import struct

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sealroom.core.proxy import (
    MAX_HEADER,
    V1_MAX,
    V2_SIGNATURE,
    NeedMore,
    ProxyHeader,
    ProxyHeaderError,
    TrustedProxies,
    canonical_address,
    parse_proxy_header,
)

TLS_HELLO = b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03"  # what follows the header


def v2(command: int, family: int, body: bytes, *, version: int = 2) -> bytes:
    fixed = bytes([version << 4 | command, family]) + struct.pack("!H", len(body))
    return V2_SIGNATURE + fixed + body


def v2_inet(src: str, dst: str, sport: int, dport: int, tlvs: bytes = b"") -> bytes:
    source, destination = ipaddress.ip_address(src), ipaddress.ip_address(dst)
    family = 0x11 if source.version == 4 else 0x21
    body = source.packed + destination.packed + struct.pack("!HH", sport, dport) + tlvs
    return v2(0x1, family, body)


# -- what each version accepts ----------------------------------------------------------------

ACCEPTED: list[tuple[bytes, ProxyHeader]] = [
    (
        b"PROXY TCP4 192.0.2.7 198.51.100.1 56324 443\r\n",
        ProxyHeader(1, 45, ("192.0.2.7", 56324), ("198.51.100.1", 443)),
    ),
    (
        b"PROXY TCP6 2001:db8::1 2001:DB8:0:0::2 0 65535\r\n",
        ProxyHeader(1, 48, ("2001:db8::1", 0), ("2001:db8::2", 65535)),
    ),
    # An IPv4 client spelled as an IPv6 address is the IPv4 client: one budget, not two.
    (
        b"PROXY TCP6 ::ffff:192.0.2.7 ::1 1 2\r\n",
        ProxyHeader(1, 37, ("192.0.2.7", 1), ("::1", 2)),
    ),
    (b"PROXY UNKNOWN\r\n", ProxyHeader(1, 15, None, None)),
    (b"PROXY UNKNOWN ffff::1 ffff::2 1 2\r\n", ProxyHeader(1, 35, None, None)),
    (
        b"PROXY TCP6 ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff ffff:ffff:ffff:ffff:ffff:ffff:ffff:"
        b"ffff 65535 65535\r\n",
        ProxyHeader(
            1,
            V1_MAX - 3,
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
            ("ffff:ffff:ffff:ffff:ffff:ffff:ffff:ffff", 65535),
        ),
    ),
    (
        v2_inet("192.0.2.7", "198.51.100.1", 56324, 443),
        ProxyHeader(2, 28, ("192.0.2.7", 56324), ("198.51.100.1", 443)),
    ),
    (
        v2_inet("2001:db8::1", "2001:db8::2", 1, 2),
        ProxyHeader(2, 52, ("2001:db8::1", 1), ("2001:db8::2", 2)),
    ),
    (
        v2_inet("::ffff:127.0.0.2", "::1", 1, 2),
        ProxyHeader(2, 52, ("127.0.0.2", 1), ("::1", 2)),
    ),
    # TLVs (here ALPN and a unique id) are skipped, not read.
    (
        v2_inet("192.0.2.7", "198.51.100.1", 1, 2, b"\x01\x00\x02h2" + b"\x05\x00\x03abc"),
        ProxyHeader(2, 39, ("192.0.2.7", 1), ("198.51.100.1", 2)),
    ),
    # LOCAL: the balancer's own connection (a health check); its addresses are ignored.
    (v2(0x0, 0x00, b""), ProxyHeader(2, 16, None, None)),
    (v2(0x0, 0x11, bytes(12)), ProxyHeader(2, 28, None, None)),
    # PROXY for a client without an IP address: the connection keeps the balancer's.
    (v2(0x1, 0x00, b""), ProxyHeader(2, 16, None, None)),
    (v2(0x1, 0x31, bytes(216)), ProxyHeader(2, 232, None, None)),
    # The largest header accepted.
    (
        v2(0x1, 0x11, b"\x7f\x00\x00\x02" + bytes(516)),
        ProxyHeader(2, MAX_HEADER, ("127.0.0.2", 0), ("0.0.0.0", 0)),  # noqa: S104 - parsed, not bound
    ),
]


@pytest.mark.parametrize(("header", "expected"), ACCEPTED)
def test_a_header_is_read_and_nothing_after_it(header: bytes, expected: ProxyHeader) -> None:
    assert parse_proxy_header(header) == expected
    assert parse_proxy_header(header + TLS_HELLO) == expected
    assert expected.length == len(header)


@pytest.mark.parametrize(("header", "expected"), ACCEPTED)
def test_every_shorter_prefix_needs_more_and_says_how_much_at_most(
    header: bytes, expected: ProxyHeader
) -> None:
    for size in range(len(header)):
        result = parse_proxy_header(header[:size])
        assert isinstance(result, NeedMore), size
        assert 1 <= result.at_most <= MAX_HEADER - size
        # Reading that much never reads past a header of this kind.
        if expected.version == 2 and size >= 16:
            assert size + result.at_most == len(header)


# -- what each version refuses ----------------------------------------------------------------

REFUSED: list[tuple[bytes, str]] = [
    (TLS_HELLO, "not a PROXY protocol header"),  # a trusted balancer that sent no header
    (b"GET / HTTP/1.1\r\n", "not a PROXY protocol header"),
    (b"PROXY\r\n", "not a PROXY protocol header"),
    (b"proxy TCP4 1.2.3.4 1.2.3.5 1 2\r\n", "not a PROXY protocol header"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\n", "v1 header does not end in CRLF"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2\rX", "v1 header does not end in CRLF"),
    (b"PROXY TCP4 1.2.3.4\r1.2.3.5 1 2\r\n", "v1 header does not end in CRLF"),
    (b"PROXY UNKNOWN" + b" " * 100, f"v1 header longer than {V1_MAX} bytes"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2" + b" " * 80 + b"\r\n", "v1 header longer than 107 bytes"),
    (b"PROXY TCP4 1.2.3.\xc4\xb0 1.2.3.5 1 2\r\n", "v1 header is not ASCII"),
    (b"PROXY UDP4 1.2.3.4 1.2.3.5 1 2\r\n", "v1 header names no known protocol"),
    (b"PROXY \r\n", "v1 header names no known protocol"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 1\r\n", "v1 header needs two addresses and two ports"),
    (b"PROXY TCP4  1.2.3.4 1.2.3.5 1 2\r\n", "v1 header needs two addresses and two ports"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 2 \r\n", "v1 header needs two addresses and two ports"),
    (b"PROXY TCP4 ::1 1.2.3.5 1 2\r\n", "v1 header holds a bad IPv4 address"),
    (b"PROXY TCP4 01.2.3.4 1.2.3.5 1 2\r\n", "v1 header holds a bad IPv4 address"),
    (b"PROXY TCP4 localhost 1.2.3.5 1 2\r\n", "v1 header holds a bad IPv4 address"),
    (b"PROXY TCP6 1.2.3.4 ::1 1 2\r\n", "v1 header holds a bad IPv6 address"),
    (b"PROXY TCP6 fe80::1%eth0 ::1 1 2\r\n", "v1 header holds a bad IPv6 address"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 01 2\r\n", "v1 header holds a bad port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 1 65536\r\n", "v1 header holds a bad port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 -1 2\r\n", "v1 header holds a bad port"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 \xd9\xa1 2\r\n", "v1 header is not ASCII"),
    (b"PROXY TCP4 1.2.3.4 1.2.3.5 +1 2\r\n", "v1 header holds a bad port"),
    (V2_SIGNATURE[:5] + b"X", "not a PROXY protocol header"),
    (v2(0x1, 0x11, bytes(12), version=1), "v2 header says it is version 1"),
    (v2(0x2, 0x11, bytes(12)), "v2 header has an unknown command"),
    (v2(0x1, 0x41, bytes(12)), "v2 header has an unknown address family or protocol"),
    (v2(0x1, 0x13, bytes(12)), "v2 header has an unknown address family or protocol"),
    (v2(0x1, 0x11, bytes(521)), "v2 header longer than 536 bytes"),
    (V2_SIGNATURE + b"\x21\x11\xff\xff", "v2 header longer than 536 bytes"),  # before the body
    (v2(0x1, 0x11, bytes(11)), "v2 header too short for its address family"),
    (v2(0x1, 0x21, bytes(35)), "v2 header too short for its address family"),
    (v2(0x1, 0x31, bytes(215)), "v2 header too short for its address family"),
    (v2(0x0, 0x11, bytes(4)), "v2 header too short for its address family"),
    (v2(0x1, 0x12, bytes(12)), "v2 header forwards a protocol other than TCP"),
    (v2(0x1, 0x10, bytes(12)), "v2 header forwards a protocol other than TCP"),
]


@pytest.mark.parametrize(("data", "message"), REFUSED)
def test_a_bad_header_is_refused_with_its_reason(data: bytes, message: str) -> None:
    with pytest.raises(ProxyHeaderError) as caught:
        parse_proxy_header(data)
    assert str(caught.value) == message


def test_nothing_yet_needs_more() -> None:
    assert parse_proxy_header(b"") == NeedMore(MAX_HEADER)


# -- the fuzzer's properties --------------------------------------------------------------------


def outcome(data: bytes) -> NeedMore | ProxyHeader | str:
    """What the parser says of ``data``; a refusal as its message."""
    try:
        return parse_proxy_header(data)
    except ProxyHeaderError as error:
        return f"refused: {error}"


def fed_in_chunks(data: bytes, sizes: list[int]) -> NeedMore | ProxyHeader | str:
    """The result as a socket shell gets it: reading no more than ``at_most`` at a time, in
    chunks of the given sizes (1 = byte by byte), and stopping at the first answer."""
    buffer = b""
    result = outcome(buffer)
    for size in sizes:
        if not isinstance(result, NeedMore) or len(buffer) == len(data):
            break
        assert 1 <= result.at_most <= MAX_HEADER - len(buffer)
        buffer += data[len(buffer) : len(buffer) + min(size, result.at_most)]
        result = outcome(buffer)
    return result


def valid_headers() -> st.SearchStrategy[bytes]:
    ipv4 = st.ip_addresses(v=4).map(str)
    ipv6 = st.ip_addresses(v=6).map(str)
    port = st.integers(0, 65535)
    v1 = st.one_of(
        st.tuples(ipv4, ipv4, port, port).map(lambda t: f"PROXY TCP4 {t[0]} {t[1]} {t[2]} {t[3]}"),
        st.tuples(ipv6, ipv6, port, port).map(lambda t: f"PROXY TCP6 {t[0]} {t[1]} {t[2]} {t[3]}"),
        st.just("PROXY UNKNOWN"),
    ).map(lambda line: line.encode() + b"\r\n")
    v2_addresses = st.one_of(st.tuples(ipv4, ipv4), st.tuples(ipv6, ipv6))
    v2_headers = st.tuples(v2_addresses, port, port, st.binary(max_size=40)).map(
        lambda t: v2_inet(t[0][0], t[0][1], t[1], t[2], t[3])
    )
    return st.one_of(v1, v2_headers, st.just(v2(0x0, 0x00, b"")))


def mutated(header: bytes, data: st.DataObject) -> bytes:
    """``header`` with a few bytes changed, cut short or followed by other bytes."""
    out = bytearray(header)
    for _ in range(data.draw(st.integers(0, 3))):
        if out:
            out[data.draw(st.integers(0, len(out) - 1))] = data.draw(st.integers(0, 255))
    out = out[: data.draw(st.integers(0, len(out)))] if data.draw(st.booleans()) else out
    return bytes(out) + data.draw(st.binary(max_size=40))


@given(header=valid_headers(), tail=st.binary(max_size=600))
def test_valid_headers_round_trip_and_leave_the_rest(header: bytes, tail: bytes) -> None:
    result = parse_proxy_header(header + tail)
    assert isinstance(result, ProxyHeader)
    assert result.length == len(header)
    if result.source is not None:
        assert canonical_address(result.source[0]) == result.source[0]
    assert fed_in_chunks(header + tail, [1] * len(header)) == result


@given(data=st.data(), header=valid_headers(), sizes=st.lists(st.integers(1, 64), min_size=1))
def test_the_same_bytes_give_the_same_result_whole_and_in_pieces(
    data: st.DataObject, header: bytes, sizes: list[int]
) -> None:
    stream = mutated(header, data)
    whole = outcome(stream)
    assert fed_in_chunks(stream, [1] * (len(stream) + 1)) == whole
    assert fed_in_chunks(stream, sizes * (len(stream) + 1)) == whole


@given(st.binary(max_size=700))
def test_any_bytes_give_a_result_or_a_refusal_and_nothing_else(stream: bytes) -> None:
    whole = outcome(stream)  # any other exception fails the test: a bug
    assert fed_in_chunks(stream, [1] * (len(stream) + 1)) == whole
    if isinstance(whole, NeedMore):
        assert len(stream) + whole.at_most <= MAX_HEADER


@given(st.sampled_from([b"P", b"\r"]), st.binary(max_size=700))
def test_bytes_that_start_like_a_header_are_never_taken_beyond_the_bound(
    first: bytes, rest: bytes
) -> None:
    stream = first + rest
    result = outcome(stream)
    if isinstance(result, ProxyHeader):
        assert result.length <= (V1_MAX if stream[:1] == b"P" else MAX_HEADER)
    elif isinstance(result, NeedMore):
        assert len(stream) < (V1_MAX if stream[:1] == b"P" else MAX_HEADER)


# -- trusted addresses --------------------------------------------------------------------------


def test_trusted_proxies_match_addresses_in_any_spelling() -> None:
    trusted = TrustedProxies(["127.0.0.1", "2001:DB8::1"])
    assert trusted
    assert "127.0.0.1" in trusted
    assert "::ffff:127.0.0.1" in trusted
    assert "2001:db8:0::1" in trusted
    assert "127.0.0.2" not in trusted
    assert "2001:db8::2" not in trusted
    assert "not an address" not in trusted
    assert "fe80::1%eth0" not in trusted
    assert None not in trusted


def test_no_trusted_proxies_trusts_nobody() -> None:
    trusted = TrustedProxies([])
    assert not trusted
    assert "127.0.0.1" not in trusted


@pytest.mark.parametrize(
    ("text", "canonical"),
    [("127.0.0.1", "127.0.0.1"), ("::FFFF:10.0.0.1", "10.0.0.1"), ("2001:DB8:0::1", "2001:db8::1")],
)
def test_canonical_address(text: str, canonical: str) -> None:
    assert canonical_address(text) == canonical


@pytest.mark.parametrize("text", ["", "localhost", "10.0.0.0/8", "fe80::1%eth0", "1.2.3"])
def test_canonical_address_refuses_what_is_not_one_address(text: str) -> None:
    with pytest.raises(ValueError, match=r"."):
        canonical_address(text)
