"""The outbox on its own: a fake wake-up that counts, no sockets, no threads.

Each table row is a short script of what the owner and the senders do, and what the outbox
must then hold, refuse or wake.
"""

from __future__ import annotations

from collections.abc import Callable

import pytest

from sealroom.state.outbox import Outbox, Receipt

LIMIT = 64


class Wake:
    """A fake wake-up descriptor: counts how often the outbox pulls it."""

    def __init__(self) -> None:
        self.count = 0

    def __call__(self) -> None:
        self.count += 1


def line(n: int = 6) -> bytes:
    """An encoded line of ``n`` bytes, newline included."""
    return b"x" * (n - 1) + b"\n"


# -- push and take -------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("pushes", "taken"),
    [
        pytest.param([], b"", id="nothing queued"),
        pytest.param([b"MSG #a bob hi\n"], b"MSG #a bob hi\n", id="one line"),
        pytest.param([b"A\n", b"B\n", b"C\n"], b"A\nB\nC\n", id="lines in order, one buffer"),
    ],
)
def test_take_returns_everything_queued_once(pushes: list[bytes], taken: bytes) -> None:
    outbox = Outbox(LIMIT, Wake())
    assert all(outbox.push(data) for data in pushes)
    assert outbox.size == len(taken)
    assert outbox.take() == (taken, [])
    assert outbox.size == 0
    assert outbox.take() == (b"", [])


# -- the bound: a slow consumer is cut off ---------------------------------------------------


@pytest.mark.parametrize(
    ("sizes", "accepted"),
    [
        pytest.param([LIMIT], [True], id="exactly the bound fits"),
        pytest.param([LIMIT + 1], [False], id="one line over the bound"),
        pytest.param([40, 24], [True, True], id="lines adding up to the bound fit"),
        pytest.param([40, 25], [True, False], id="the line that would pass the bound"),
        pytest.param([40, 25, 1], [True, False, False], id="nothing after slow-consumer"),
    ],
)
def test_the_bound_replaces_the_queue_with_bye_slow_consumer(
    sizes: list[int], accepted: list[bool]
) -> None:
    wake = Wake()
    outbox = Outbox(LIMIT, wake)
    got = [outbox.push(line(n), wake=False, on_sent=lambda: None) for n in sizes]
    assert got == accepted
    if all(accepted):
        assert outbox.closing is None
        assert wake.count == 0
        assert outbox.take()[0] == b"".join(line(n) for n in sizes)
    else:
        # What was queued is dropped, receipts and all; the owner is woken to say goodbye
        # even though nobody asked for a wake-up.
        assert outbox.closing == "slow-consumer"
        assert wake.count == 1
        assert outbox.take() == (b"BYE slow-consumer\n", [])


# -- close -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("reason", "closing", "bye"),
    [
        pytest.param("shutting-down", "shutting-down", b"BYE shutting-down\n", id="a code"),
        pytest.param("kicked by root", "kicked", b"BYE kicked by root\n", id="code and text"),
    ],
)
def test_close_says_bye_after_what_is_queued(reason: str, closing: str, bye: bytes) -> None:
    wake = Wake()
    outbox = Outbox(LIMIT, wake)
    outbox.push(b"OK ping\n", wake=False)
    outbox.close(reason)
    outbox.close("shutting-down")  # only the first close counts
    assert outbox.closing == closing
    assert wake.count == 1
    assert not outbox.push(b"MSG #a bob late\n")
    assert outbox.take() == (b"OK ping\n" + bye, [])


@pytest.mark.parametrize(("wake_it", "wakes"), [(True, 1), (False, 0)])
def test_close_wakes_the_owner_unless_told_not_to(wake_it: bool, wakes: int) -> None:
    wake = Wake()
    outbox = Outbox(LIMIT, wake)
    outbox.close("shutting-down", wake=wake_it)
    assert wake.count == wakes


# -- sleeping and waking ---------------------------------------------------------------------


def run(outbox: Outbox, step: str) -> object:
    """One owner or sender action, by name; returns what the outbox answered."""
    actions: dict[str, Callable[[], object]] = {
        "sleep": outbox.sleep,
        "push": lambda: outbox.push(line()),
        "reply": lambda: outbox.push(line(), wake=False),  # the owner's own reply
        "take": lambda: outbox.take()[0],
        "close": lambda: outbox.close("shutting-down", wake=False),
    }
    return actions[step]()


@pytest.mark.parametrize(
    ("steps", "answers", "wakes"),
    [
        pytest.param(["push"], [True], 0, id="a busy owner is not woken"),
        pytest.param(["sleep", "push"], [True, True], 1, id="a sleeping owner is woken"),
        pytest.param(["sleep", "push", "push"], [True, True, True], 1, id="woken once"),
        pytest.param(["sleep", "reply"], [True, True], 0, id="own replies never wake"),
        pytest.param(["push", "sleep"], [True, False], 0, id="no sleep with data queued"),
        pytest.param(["close", "sleep"], [None, False], 0, id="no sleep when closing"),
        pytest.param(
            ["close", "take", "sleep"],
            [None, b"BYE shutting-down\n", False],
            0,
            id="nor once the BYE is taken",
        ),
        pytest.param(
            ["push", "take", "sleep", "push"],
            [True, line(), True, True],
            1,
            id="sleep again once drained",
        ),
    ],
)
def test_sleep_and_wake(steps: list[str], answers: list[object], wakes: int) -> None:
    wake = Wake()
    outbox = Outbox(LIMIT, wake)
    assert [run(outbox, step) for step in steps] == answers
    assert wake.count == wakes


# -- a new owner ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("after", "old_wakes", "new_wakes"),
    [
        pytest.param(["push"], 0, 0, id="routed awake: the new owner looks before sleeping"),
        pytest.param(["sleep", "push"], 0, 1, id="then its own sleep is woken"),
        pytest.param(["sleep", "push", "push"], 0, 1, id="once"),
    ],
)
def test_route_wakeups(after: list[str], old_wakes: int, new_wakes: int) -> None:
    old, new = Wake(), Wake()
    outbox = Outbox(LIMIT, old)
    run(outbox, "sleep")
    outbox.route_wakeups(new)
    for step in after:
        run(outbox, step)
    assert (old.count, new.count) == (old_wakes, new_wakes)


def test_a_retired_outbox_is_never_routed_again() -> None:
    old, new = Wake(), Wake()
    outbox = Outbox(LIMIT, old)
    outbox.retire()
    outbox.route_wakeups(new)
    assert not outbox.push(b"x\n")
    assert (old.count, new.count) == (0, 0)


# -- retire ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("before", "reason", "closing"),
    [
        pytest.param([], None, "closed", id="default reason"),
        pytest.param(["push", "push"], "idle-timeout", "idle-timeout", id="queue dropped"),
        pytest.param(["push", "close"], "closed", "shutting-down", id="an earlier BYE stays"),
        pytest.param(["sleep"], "closed", "closed", id="while asleep"),
    ],
)
def test_retire_refuses_everything_and_never_wakes_again(
    before: list[str], reason: str | None, closing: str
) -> None:
    wake = Wake()
    outbox = Outbox(LIMIT, wake)
    for step in before:
        run(outbox, step)
    if reason is None:
        outbox.retire()
    else:
        outbox.retire(reason)
    woken = wake.count
    assert outbox.closing == closing
    assert outbox.take() == (b"", [])
    assert outbox.size == 0
    assert not outbox.push(line())
    assert not outbox.push(line(LIMIT + 1))  # not even to say slow-consumer
    outbox.close("shutting-down")
    assert wake.count == woken


# -- receipts ----------------------------------------------------------------------------------


class Receipts:
    """Receipts that record, by label, when the owner runs them."""

    def __init__(self) -> None:
        self.ran: list[str] = []

    def __call__(self, label: str) -> Receipt:
        return lambda: self.ran.append(label)


@pytest.mark.parametrize(
    ("labels", "then", "returned"),
    [
        pytest.param(["a", None, "b"], None, ["a", "b"], id="taken in order"),
        pytest.param([None, None], None, [], id="none asked for"),
        pytest.param(["a", "b"], "close", ["a", "b"], id="a close keeps them"),
        pytest.param(["a", "b"], "overflow", [], id="slow-consumer drops them"),
        pytest.param(["a", "b"], "retire", [], id="retire drops them"),
    ],
)
def test_receipts_run_only_when_taken(
    labels: list[str | None], then: str | None, returned: list[str]
) -> None:
    receipts = Receipts()
    outbox = Outbox(LIMIT, Wake())
    for label in labels:
        outbox.push(line(), on_sent=receipts(label) if label else None)
    if then == "close":
        outbox.close("shutting-down")
    elif then == "overflow":
        outbox.push(line(LIMIT))
    elif then == "retire":
        outbox.retire()
    assert receipts.ran == []  # queueing never runs one
    _, taken = outbox.take()
    assert receipts.ran == []  # nor does taking: the owner runs them once written
    for receipt in taken:
        receipt()
    assert receipts.ran == returned
    assert outbox.take() == (b"", [])
