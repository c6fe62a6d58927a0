"""Connection admission (sealroom.policy.admission) against a fake clock: the caps, the
per-address bucket, and a connection whose client is named after it is admitted (a trusted
load balancer's, by its PROXY header)."""

from __future__ import annotations

from helpers import FakeClock
from sealroom.policy.admission import Admission


def admission(*, total: int = 3, per_address: int = 1, burst: float = 10) -> Admission:
    return Admission(
        max_connections=total,
        max_per_address=per_address,
        rate=1.0,
        burst=burst,
        clock=FakeClock(),
        max_tracked_addresses=100,
    )


def test_caps_per_address_and_in_total() -> None:
    gate = admission(total=2)
    assert gate.admit("192.0.2.1")
    assert not gate.admit("192.0.2.1")
    assert gate.admit("192.0.2.2")
    assert not gate.admit("192.0.2.3")
    assert gate.rejected == {"max_connections": 1, "per_address": 1, "rate": 0}
    gate.release("192.0.2.1")
    assert gate.admit("192.0.2.1")
    assert gate.total == 2


def test_a_connection_named_later_counts_in_the_total_at_once() -> None:
    gate = admission(total=2)
    assert gate.admit(None)
    assert gate.admit(None)
    assert not gate.admit("192.0.2.1")  # the balancer's unnamed connections fill the total
    assert gate.rejected["max_connections"] == 1
    assert gate.admitted == 0  # let in once named


def test_naming_applies_the_per_address_cap_and_bucket() -> None:
    gate = admission(burst=1)
    assert gate.admit(None)
    assert gate.admit_address("192.0.2.1")
    assert gate.admit(None)
    assert not gate.admit_address("192.0.2.1")  # over its cap of one
    assert gate.rejected["per_address"] == 1
    gate.release(None)  # the refused one: counted in the total only
    assert gate.total == 1
    gate.release("192.0.2.1")
    assert gate.total == 0
    assert gate.admit(None)
    assert not gate.admit_address("192.0.2.1")  # its bucket of one is spent
    assert gate.rejected["rate"] == 1
    assert gate.admitted == 1


def test_a_named_connection_shares_its_address_with_direct_ones() -> None:
    gate = admission()
    assert gate.admit(None)
    assert gate.admit_address("192.0.2.1")
    assert not gate.admit("192.0.2.1")
    gate.release("192.0.2.1")
    assert gate.admit("192.0.2.1")
