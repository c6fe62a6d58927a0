"""The PROXY protocol (HAProxy's, versions 1 and 2) without I/O: bytes in, a header out.

A load balancer that forwards TCP connects from its own address; with the PROXY protocol it
first writes one header naming the client it speaks for. :func:`parse_proxy_header` reads
that header from the start of a stream and says one of three things: it needs more bytes
(and how many it may take at most), here is the header (and how many bytes it took), or
:class:`ProxyHeaderError`. Anything else it raises is a bug.

The header is believed only from an address in :class:`TrustedProxies`; the caller decides
that before reading a byte. The parser takes no more than it must: the client's address and
port, validated strictly; a LOCAL command (the balancer's own health check), v1 ``UNKNOWN``
and v2 families other than TCP over IPv4 or IPv6 name no client, so the connection keeps the
balancer's address. Version 2's TLVs are skipped unread.

Both versions are bounded: a v1 line is at most 107 bytes (the specification's own bound);
a v2 header at most 16 + :data:`V2_MAX_LENGTH` bytes. A bounded buffer is why this is a pure
function of the bytes so far rather than h11's remembering buffer: parsing them again as
more arrive costs a search for CRLF in at most 107 bytes.

Specification: https://www.haproxy.org/download/2.6/doc/proxy-protocol.txt
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Iterable
from dataclasses import dataclass

V1_PREFIX = b"PROXY "
V1_MAX = 107  # "PROXY TCP6 " + two full IPv6 addresses + two ports + CRLF
V2_SIGNATURE = b"\r\n\r\n\x00\r\nQUIT\n"
V2_FIXED = 16  # the signature, version and command, family and transport, length
# The address block and TLVs we accept after the fixed part. The largest address block
# (AF_UNIX) is 216 bytes; this leaves room for the TLVs balancers commonly add.
V2_MAX_LENGTH = 520
MAX_HEADER = V2_FIXED + V2_MAX_LENGTH  # 536: no header we accept is longer

_PORT = re.compile(rb"0|[1-9][0-9]{0,4}")  # decimal, no leading zeros (the v1 grammar)

# Version 2's command, address family and transport protocol codes.
_LOCAL, _PROXY = 0x0, 0x1
_UNSPEC, _INET, _INET6, _UNIX = 0x0, 0x1, 0x2, 0x3
_STREAM = 0x1
_ADDRESS_BLOCK = {_INET: 12, _INET6: 36, _UNIX: 216}

Address = tuple[str, int]


class ProxyHeaderError(ValueError):
    """The bytes are not a valid PROXY protocol header: the connection must be closed."""


@dataclass(frozen=True, slots=True)
class NeedMore:
    """No whole header yet; read at most ``at_most`` more bytes before asking again."""

    at_most: int


@dataclass(frozen=True, slots=True)
class ProxyHeader:
    """A whole header: the first ``length`` bytes of the stream.

    ``source`` is the client the balancer speaks for, and ``destination`` the address the
    client connected to; both None when the header names no client (a LOCAL command, v1
    ``UNKNOWN``, or a family other than TCP over IPv4 or IPv6): the connection is then the
    balancer's own.
    """

    version: int
    length: int
    source: Address | None
    destination: Address | None


def parse_proxy_header(data: bytes | bytearray) -> NeedMore | ProxyHeader:
    """The PROXY header at the start of ``data``; what follows it is not looked at."""
    if not data:
        return NeedMore(MAX_HEADER)
    if data[0] == V1_PREFIX[0]:
        return _parse_v1(bytes(data[:V1_MAX]))
    if data[0] == V2_SIGNATURE[0]:
        return _parse_v2(bytes(data[:MAX_HEADER]))
    raise ProxyHeaderError("not a PROXY protocol header")


# -- version 1: one line of text ------------------------------------------------------------


def _parse_v1(data: bytes) -> NeedMore | ProxyHeader:
    """``data`` holds at most :data:`V1_MAX` bytes."""
    if not data.startswith(V1_PREFIX[: len(data)]):
        raise ProxyHeaderError("not a PROXY protocol header")
    # The line ends at its first LF, which must follow its first CR; nothing else will do.
    cr, lf = data.find(b"\r"), data.find(b"\n")
    if lf < 0:
        if 0 <= cr < len(data) - 1:
            raise ProxyHeaderError("v1 header does not end in CRLF")
        if len(data) >= V1_MAX:
            raise ProxyHeaderError(f"v1 header longer than {V1_MAX} bytes")
        return NeedMore(V1_MAX - len(data))
    if cr != lf - 1:
        raise ProxyHeaderError("v1 header does not end in CRLF")
    end = cr
    line = data[len(V1_PREFIX) : end]
    if not line.isascii():
        raise ProxyHeaderError("v1 header is not ASCII")
    fields = line.split(b" ")
    length = end + 2
    if fields[0] == b"UNKNOWN":  # the rest of the line is to be ignored
        return ProxyHeader(1, length, None, None)
    if fields[0] not in (b"TCP4", b"TCP6"):
        raise ProxyHeaderError("v1 header names no known protocol")
    if len(fields) != 5:
        raise ProxyHeaderError("v1 header needs two addresses and two ports")
    version = 4 if fields[0] == b"TCP4" else 6
    source = (_v1_address(fields[1], version), _v1_port(fields[3]))
    destination = (_v1_address(fields[2], version), _v1_port(fields[4]))
    return ProxyHeader(1, length, source, destination)


def _v1_address(field: bytes, version: int) -> str:
    # A scope ("fe80::1%eth0") names an interface of the balancer's, not a client.
    if b"%" not in field:
        try:
            address = ipaddress.ip_address(field.decode("ascii"))
        except ValueError:
            pass
        else:
            if address.version == version:
                return _canonical(address)
    raise ProxyHeaderError(f"v1 header holds a bad IPv{version} address")


def _v1_port(field: bytes) -> int:
    if _PORT.fullmatch(field) and int(field) <= 65535:
        return int(field)
    raise ProxyHeaderError("v1 header holds a bad port")


# -- version 2: binary ----------------------------------------------------------------------


def _parse_v2(data: bytes) -> NeedMore | ProxyHeader:
    """``data`` holds at most :data:`MAX_HEADER` bytes."""
    signature = data[: len(V2_SIGNATURE)]
    if not V2_SIGNATURE.startswith(signature):
        raise ProxyHeaderError("not a PROXY protocol header")
    if len(data) < V2_FIXED:
        return NeedMore(MAX_HEADER - len(data))
    version, command = data[12] >> 4, data[12] & 0xF
    family, transport = data[13] >> 4, data[13] & 0xF
    length = int.from_bytes(data[14:16], "big")
    if version != 2:
        raise ProxyHeaderError(f"v2 header says it is version {version}")
    if command not in (_LOCAL, _PROXY):
        raise ProxyHeaderError("v2 header has an unknown command")
    if family > _UNIX or transport > 0x2:
        raise ProxyHeaderError("v2 header has an unknown address family or protocol")
    if length > V2_MAX_LENGTH:
        raise ProxyHeaderError(f"v2 header longer than {V2_FIXED + V2_MAX_LENGTH} bytes")
    total = V2_FIXED + length
    if len(data) < total:
        return NeedMore(total - len(data))
    if length < _ADDRESS_BLOCK.get(family, 0):
        raise ProxyHeaderError("v2 header too short for its address family")
    if command == _LOCAL or family in (_UNSPEC, _UNIX):
        # LOCAL: the balancer's own connection (a health check), whose addresses are to be
        # ignored. UNSPEC or UNIX: no IP client; the balancer's address is the one to limit.
        return ProxyHeader(2, total, None, None)
    if transport != _STREAM:
        raise ProxyHeaderError("v2 header forwards a protocol other than TCP")
    size = 4 if family == _INET else 16
    block = data[V2_FIXED:total]
    ports = block[2 * size :]
    source = (_v2_address(block[:size]), int.from_bytes(ports[0:2], "big"))
    destination = (_v2_address(block[size : 2 * size]), int.from_bytes(ports[2:4], "big"))
    return ProxyHeader(2, total, source, destination)


def _v2_address(packed: bytes) -> str:
    return _canonical(ipaddress.ip_address(packed))


# -- addresses ------------------------------------------------------------------------------


def _canonical(address: ipaddress.IPv4Address | ipaddress.IPv6Address) -> str:
    """One spelling per client: an IPv4-mapped IPv6 address is its IPv4 address, so a client
    cannot get a second budget of per-address limits by writing itself the other way."""
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return str(address.ipv4_mapped)
    return str(address)


def canonical_address(text: str) -> str:
    """``text`` as one IP address's canonical spelling; ValueError if it is none."""
    if "%" in text:
        raise ValueError(f"{text!r} has a scope; write the address alone")
    return _canonical(ipaddress.ip_address(text))


class TrustedProxies:
    """The addresses whose PROXY header is believed (``cluster.trusted_proxies``)."""

    __slots__ = ("_addresses",)

    def __init__(self, addresses: Iterable[str]) -> None:
        self._addresses = frozenset(canonical_address(address) for address in addresses)

    def __bool__(self) -> bool:
        return bool(self._addresses)

    def __contains__(self, peer: object) -> bool:
        """Whether ``peer``, a connection's address as ``accept`` gave it, is trusted."""
        if not self._addresses or not isinstance(peer, str):
            return False
        try:
            return canonical_address(peer) in self._addresses
        except ValueError:
            return False
