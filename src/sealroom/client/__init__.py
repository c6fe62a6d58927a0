"""A small, typed, synchronous client for Sealroom's wire protocol (SPEC.md section 1).

One :class:`Client` is one TLS connection owned by one thread (OpenSSL forbids two threads
on one SSL object, so the library never starts a thread of its own). A request sends one
line and reads until its final reply (``OK VERB …``, ``ERR CODE TEXT`` or ``BYE``); events
that arrive meanwhile are queued, in order, for :meth:`Client.events`. Every wait has a
timeout and every buffer a bound.

    with Client("chat.example.org", ca_file="ca.crt", reconnect=Backoff()) as client:
        client.login("bot", password)
        client.join("#ops")
        for event in client.events():
            if isinstance(event, Message) and event.sender != client.user:
                client.say(f"{event.sender} said {event.text}", room=event.room)

Errors form one tree under :class:`SealroomError`: :class:`RequestError` is the server's
``ERR`` with its :class:`~sealroom.core.errors.ErrorCode`; :class:`ConnectionClosed` means the
connection ended (:class:`RequestTimeout` and :class:`ReconnectFailed` are kinds of it);
:class:`ConnectError` means it could not be opened; :class:`InvalidArgument` is a request
this client refuses to send (it would be refused, or would smuggle a second line).

With ``reconnect=Backoff()`` a lost connection is opened again with jittered exponential
backoff, a bounded number of attempts per outage, and the session is restored: by resume
token when the server offers ``/token``, else by the password given to :meth:`Client.login`
(kept in memory for that alone, never logged or shown in a repr), then every room is joined
again and the current room made current again. A request that was on the wire when the
connection broke is not repeated (it may or may not have happened): it raises
:class:`ConnectionClosed`, and the next call reconnects.

The package is cut along h11's line, so the part that decides what the server meant can be
tested, and reused, without a socket:

- :mod:`~sealroom.client.events`: the server's lines as typed values, and their parser;
- :mod:`~sealroom.client.protocol`: :class:`~sealroom.client.protocol.ClientProtocol`, bytes
  in and events out, requests out as bytes, replies matched to requests -- no I/O at all;
- :mod:`~sealroom.client.blocking`: :class:`Client`, the socket, the clock and reconnecting;
- :mod:`~sealroom.client.errors`, :mod:`~sealroom.client.backoff`,
  :mod:`~sealroom.client.credentials` and :mod:`~sealroom.client.tls`: what those share.

The client depends only on :mod:`sealroom.core` and the package root, never on the server.
"""

from __future__ import annotations

from sealroom.client.backoff import Backoff
from sealroom.client.blocking import DEFAULT_PORT, Client
from sealroom.client.credentials import Token
from sealroom.client.errors import (
    ConnectError,
    ConnectionClosed,
    InvalidArgument,
    ProtocolViolation,
    ReconnectFailed,
    RequestError,
    RequestTimeout,
    SealroomError,
)
from sealroom.client.events import (
    Banned,
    Bye,
    Destroyed,
    Event,
    History,
    Info,
    Invited,
    Joined,
    Message,
    ModeChanged,
    Parted,
    PrivateMessage,
    Reconnected,
    Reply,
    RoomListing,
    TopicChanged,
    Wall,
    parse_event,
    parse_room,
)

__all__ = [
    "DEFAULT_PORT",
    "Backoff",
    "Banned",
    "Bye",
    "Client",
    "ConnectError",
    "ConnectionClosed",
    "Destroyed",
    "Event",
    "History",
    "Info",
    "InvalidArgument",
    "Invited",
    "Joined",
    "Message",
    "ModeChanged",
    "Parted",
    "PrivateMessage",
    "ProtocolViolation",
    "ReconnectFailed",
    "Reconnected",
    "Reply",
    "RequestError",
    "RequestTimeout",
    "RoomListing",
    "SealroomError",
    "Token",
    "TopicChanged",
    "Wall",
    "parse_event",
    "parse_room",
]
