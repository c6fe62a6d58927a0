"""Two in-process nodes over a real Redis and PostgreSQL: the plumbing, quickly."""

from __future__ import annotations

from helpers import Server, ServerFactory


def cluster_pair(
    make_server: ServerFactory, postgres_url: str, redis_url: str
) -> tuple[Server, Server]:
    common = {
        "storage": {"database": postgres_url},
        "cluster": {"redis": redis_url, "node_timeout_s": 2},
    }
    one = make_server(**common, control={"socket": None})
    two = make_server(**common, control={"socket": None})
    for name in ("alice", "bob", "carol"):
        one.add_user(name)
    return one, two


def test_room_messages_cross_nodes(
    make_server: ServerFactory, postgres_url: str, redis_url: str
) -> None:
    one, two = cluster_pair(make_server, postgres_url, redis_url)
    alice = one.client()
    alice.login("alice")
    bob = two.client()
    bob.login("bob")
    assert alice.expect("JOIN #lobby bob")
    reply = alice.request("/say #lobby hello")
    assert reply.startswith("OK say #lobby "), reply
    assert bob.expect("MSG #lobby alice hello")
    assert bob.request("/who #lobby") == "OK who #lobby alice bob"
    assert bob.request("/msg alice psst").startswith("OK msg alice ")
    assert alice.expect("DM bob psst")
    bob.request("/quit")
    assert alice.expect("PART #lobby bob")
