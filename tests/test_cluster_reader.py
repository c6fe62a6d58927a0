"""What the bus reader takes from Redis: bytes from an engine are hostile, so an XREAD reply
is checked for its shape before any entry is applied (the entries' fields are checked
field by field afterwards: test_cluster.py's malformed bus entries)."""

from __future__ import annotations

import pytest

from sealroom.cluster.reader import _entries


def test_a_reply_becomes_entries_in_order() -> None:
    reply = [[b"sealroom:bus", [[b"1-0", [b"k", b"say", b"room", b"#a"]], [b"2-0", []]]]]
    assert _entries(reply) == [("1-0", {b"k": b"say", b"room": b"#a"}), ("2-0", {})]


def test_a_read_that_timed_out_brings_nothing() -> None:
    assert _entries(None) == []


def test_resp3s_map_is_read_alike() -> None:
    assert _entries({b"sealroom:bus": [[b"1-0", [b"k", b"v"]]]}) == [("1-0", {b"k": b"v"})]


@pytest.mark.parametrize(
    "reply",
    [
        [],
        [[b"sealroom:bus", [[b"1-0", [b"k", b"v"]]]], [b"other", []]],  # two streams
        [[b"sealroom:bus"]],
        [[b"sealroom:bus", b"not a list"]],
        [[b"sealroom:bus", [[b"1-0"]]]],  # an entry without fields
        [[b"sealroom:bus", [[1, [b"k", b"v"]]]]],  # an id that is not bytes
        [[b"sealroom:bus", [[b"1-0", [b"k"]]]]],  # an odd field list
        [[b"sealroom:bus", [[b"1-0", [b"k", 7]]]]],  # a value that is not bytes
        [[b"sealroom:bus", [[b"1-0", [b"k", [b"nested"]]]]]],
        b"OK",
        42,
    ],
)
def test_any_other_shape_is_refused_whole(reply: object) -> None:
    assert _entries(reply) is None
