"""Several `sealroom serve` processes over one PostgreSQL and one Redis are one server
(SPEC section 4): each clause a test, over real TLS, against real engines."""

from __future__ import annotations

import json
import math
import re
import time
import urllib.request
from pathlib import Path

from cluster import Cluster, read_until
from engines import RedisEngine, free_port
from helpers import PASSWORD, wait_until


def ids_of(lines: list[str]) -> list[int]:
    return [int(m.group(1)) for line in lines if (m := re.match(r"OK say \S+ (\d+)", line))]


def test_room_messages_join_and_part_cross_nodes(cluster: Cluster) -> None:
    one, two = cluster.node("one"), cluster.node("two", "127.0.0.2")
    cluster.add_user("alice")
    cluster.add_user("bob")
    alice = one.user("alice")
    bob = two.user("bob")
    alice.expect("JOIN #lobby bob")
    assert alice.request("/say #lobby hello").startswith("OK say #lobby ")
    bob.expect("MSG #lobby alice hello")
    assert bob.request("/who #lobby") == "OK who #lobby alice bob"
    assert alice.request("/who #lobby") == "OK who #lobby alice bob"
    bob.request("/quit")
    alice.expect("PART #lobby bob")
    assert alice.request("/who #lobby") == "OK who #lobby alice"
    # Every line of a node's log names it, so that many nodes' logs read together.
    assert re.search(r" INFO one sealroom\.cluster: joined the cluster", one.log.read_text())


def test_join_and_part_are_said_once_per_user_across_nodes(cluster: Cluster) -> None:
    one, two = cluster.node("one"), cluster.node("two")
    for name in ("alice", "bob"):
        cluster.add_user(name)
    alice = one.user("alice")
    bob_here = one.user("bob")
    alice.expect("JOIN #lobby bob")
    bob_there = two.user("bob")  # bob's second session: no second JOIN
    bob_here.request("/quit")  # one of two sessions left: no PART
    assert alice.request("/ping x") == "OK ping x"  # nothing came before the reply
    bob_there.request("/quit")
    alice.expect("PART #lobby bob")


def test_who_rooms_and_list_are_cluster_wide(cluster: Cluster) -> None:
    one, two = cluster.node("one"), cluster.node("two")
    for name in ("alice", "bob"):
        cluster.add_user(name)
    alice, bob = one.user("alice"), two.user("bob")
    assert alice.request("/join #ops") == "OK join #ops"

    def listed() -> list[str]:
        bob.send("/list")
        return read_until(bob, "OK list")

    assert any(line.startswith("ROOM #ops ") for line in listed()), listed()
    assert bob.request("/join #ops") == "OK join #ops"
    alice.expect("JOIN #ops bob")
    assert alice.request("/who #ops") == "OK who #ops alice bob"
    assert bob.request("/rooms") == "OK rooms #lobby #ops"
    assert "ROOM #ops 2 " in "\n".join(listed()) + " "


def test_message_ids_increase_in_every_room_as_every_member_sees_them(cluster: Cluster) -> None:
    one, two = cluster.node("one"), cluster.node("two", "127.0.0.2")
    names = ("alice", "bob", "carol")
    for name in names:
        cluster.add_user(name)
    alice, bob, carol = one.user("alice"), two.user("bob"), one.user("carol")
    for client in (alice, bob, carol):
        client.request("/join #race")
    for n in range(30):  # both nodes publish, pipelined
        alice.send(f"/say #race a{n}")
        bob.send(f"/say #race b{n}")
    seen: dict[str, list[str]] = {}
    for who, client in (("alice", alice), ("bob", bob), ("carol", carol)):
        lines: list[str] = []
        expected_msgs = 60 if who == "carol" else 30
        expected_oks = 0 if who == "carol" else 30
        deadline = time.monotonic() + 10
        while (
            sum(line.startswith("MSG #race") for line in lines) < expected_msgs
            or sum(line.startswith("OK say") for line in lines) < expected_oks
        ):
            assert time.monotonic() < deadline, lines
            lines.append(client.line(5))
        seen[who] = lines
    # Every member sees the same order: carol (a reader) sees all 60, the others 30 each
    # of the other's; the sender's own ids fit in between, increasing.
    carol_texts = [line.split(" ", 3)[3] for line in seen["carol"] if line.startswith("MSG")]
    assert len(carol_texts) == 60
    assert len(set(carol_texts)) == 60
    for who in ("alice", "bob"):
        oks = ids_of(seen[who])
        assert oks == sorted(oks)
        assert len(set(oks)) == 30
    order = {text: index for index, text in enumerate(carol_texts)}
    for who in ("alice", "bob"):
        other_texts = [line.split(" ", 3)[3] for line in seen[who] if line.startswith("MSG")]
        assert [order[t] for t in other_texts] == sorted(order[t] for t in other_texts)
    # And the ids agree with that order: /history is in id order, so is what carol saw.
    history = []
    carol.send("/history #race 60")
    while (line := carol.line(5)).startswith("HIST"):
        history.append(line.split(" ", 5)[5])
    assert line.startswith("OK history"), line
    assert history == carol_texts


def test_private_message_to_another_node_and_to_every_session(cluster: Cluster) -> None:
    one, two, three = cluster.node("one"), cluster.node("two"), cluster.node("three")
    for name in ("alice", "bob"):
        cluster.add_user(name)
    alice = one.user("alice")
    bob_two, bob_three = two.user("bob"), three.user("bob")
    reply = alice.request("/msg bob psst")
    assert re.fullmatch(r"OK msg bob \d+", reply), reply
    read_until(bob_two, "DM alice psst")
    read_until(bob_three, "DM alice psst")


def test_private_message_to_an_offline_user_is_delivered_once_on_another_node(
    cluster: Cluster,
) -> None:
    one, _, three = cluster.node("one"), cluster.node("two"), cluster.node("three")
    for name in ("alice", "bob"):
        cluster.add_user(name)
    alice = one.user("alice")
    message_id = alice.request("/msg bob while-you-were-out").split()[-1]
    bob = three.client()
    bob.send("/login bob correct horse battery")
    lines = read_until(bob, "HIST")
    assert lines[-1].split(" ")[2] == message_id, lines
    assert lines[-1].endswith("while-you-were-out")
    bob.request("/quit")
    again = three.client()
    again.send("/login bob correct horse battery")
    again.send("/ping after")
    lines = read_until(again, "OK ping after")
    assert not [line for line in lines if line.startswith("HIST")], lines


def test_kick_and_wall_reach_every_node(cluster: Cluster) -> None:
    one, two = cluster.node("one"), cluster.node("two")
    cluster.add_user("root", admin=True)
    cluster.add_user("bob")
    root = one.user("root")
    bob = two.user("bob")
    assert root.request("/wall maintenance at noon") == "OK wall"
    read_until(bob, "WALL root maintenance at noon")
    assert root.request("/kick bob enough") == "OK kick bob"
    lines = bob.closed(timeout=5)
    assert lines, "bob's connection closed without a word"
    assert lines[-1].startswith("BYE kicked by root"), lines


def test_disabling_an_account_drops_its_sessions_on_every_node_within_2s(
    cluster: Cluster,
) -> None:
    one, two = cluster.node("one"), cluster.node("two")
    cluster.add_user("root", admin=True)
    cluster.add_user("bob")
    bob_one, bob_two = one.user("bob"), two.user("bob")
    started = time.monotonic()
    result = cluster.cli("user", "disable", "bob")
    assert result.returncode == 0, result.stderr
    for client in (bob_one, bob_two):
        assert client.closed(timeout=3)[-1] == "BYE account-disabled"
    assert time.monotonic() - started < 2.5


def test_a_token_made_on_one_node_resumes_on_another_and_passwd_revokes_it(
    cluster: Cluster,
) -> None:
    one, two, three = cluster.node("one"), cluster.node("two"), cluster.node("three")
    cluster.add_user("bob", password="an-old-password")
    first = one.client()
    first.login("bob", "an-old-password")
    token = first.request("/token").split()[2]
    second = two.client()
    assert second.request(f"/resume bob {token}").startswith("OK login bob")
    third = three.client()
    third.login("bob", "an-old-password")
    assert third.request("/passwd an-old-password a-new-long-password") == "OK passwd"
    later = two.client()
    assert later.request(f"/resume bob {token}").startswith("ERR auth-failed")


def test_an_address_has_one_login_budget_across_nodes(cluster: Cluster) -> None:
    budget = {"rate": {"logins_per_ip": {"rate": 0.01, "burst": 3}}}
    one, two = cluster.node("one", **budget), cluster.node("two", **budget)
    cluster.add_user("bob")
    replies = []
    for node in (one, two, one, two):
        client = node.client()
        replies.append(client.request("/login bob wrong-password"))
    assert [r.split()[1] for r in replies] == [
        "auth-failed",
        "auth-failed",
        "auth-failed",
        "rate-limited",
    ], replies


def test_bans_and_private_rooms_hold_on_every_node(cluster: Cluster) -> None:
    one, two = cluster.node("one"), cluster.node("two")
    for name in ("alice", "bob", "carol"):
        cluster.add_user(name)
    alice, bob, carol = one.user("alice"), two.user("bob"), two.user("carol")
    assert alice.request("/join #den") == "OK join #den"
    wait_until(lambda: bob.request("/join #den") == "OK join #den", timeout=3, what="bob in")
    read_until(alice, "JOIN #den bob")
    alice.send("/ban bob #den spam")
    assert "PART #den bob" in read_until(alice, "OK ban bob #den")  # the PART comes first
    read_until(bob, "BANNED #den alice spam")
    assert bob.request("/join #den").startswith("ERR forbidden")
    assert alice.request("/mode #den private") == "OK mode #den private"
    wait_until(
        lambda: carol.request("/join #den").startswith("ERR forbidden"),
        timeout=3,
        what="#den private on two",
    )


def test_an_address_has_one_connection_budget_across_nodes(cluster: Cluster) -> None:
    budget = {"rate": {"connections_per_ip": {"rate": 0.01, "burst": 3}}}
    one, two = cluster.node("one", **budget), cluster.node("two", **budget)
    for node in (one, two, one):
        node.client(source="127.0.0.2")
    refused = False
    try:
        two.client(source="127.0.0.2")
    except (OSError, EOFError):  # closed before the handshake (ssl.SSLError is an OSError)
        refused = True
    assert refused, "a fourth connection from 127.0.0.2 got through: one budget per node?"
    two.client(source="127.0.0.3")  # another address has its own budget


def test_status_metrics_and_sessions_show_every_node(cluster: Cluster) -> None:
    metrics_port = free_port()
    one = cluster.node("one", metrics={"listen": f"127.0.0.1:{metrics_port}"})
    two = cluster.node("two", "127.0.0.2")
    for name in ("alice", "bob"):
        cluster.add_user(name)
    one.user("alice")
    two.user("bob", source="127.0.0.3")
    result = cluster.cli("status", "--json")
    assert result.returncode == 0, result.stderr
    report = json.loads(result.stdout)
    nodes = {node["name"]: node for node in report["cluster"]["nodes"]}
    assert set(nodes) == {"one", "two"}
    assert nodes["one"]["self"]
    assert nodes["two"]["last_heartbeat_s"] < 2
    wait_until(
        lambda: (
            json.loads(cluster.cli("status", "--json").stdout)["cluster"]["nodes"][0]["sessions"]
            == 1
        ),
        timeout=3,
        what="heartbeats carry the session counts",
    )
    metrics = urllib.request.urlopen(f"http://127.0.0.1:{metrics_port}/metrics", timeout=5)
    exposed = metrics.read().decode()
    assert 'sealroom_cluster_up{node="one"} 1' in exposed, exposed
    text = cluster.cli("status").stdout
    assert re.search(r"node two: 1 sessions, last heartbeat [\d.]+s ago", text), text
    result = cluster.cli("sessions", "--json")
    assert result.returncode == 0, result.stderr
    rows = sorted((row["user"], row["node"], row["address"]) for row in json.loads(result.stdout))
    assert rows == [("alice", "one", "127.0.0.1"), ("bob", "two", "127.0.0.3")]
    table = cluster.cli("sessions").stdout
    assert "NODE" in table.splitlines()[0], table


def test_check_config_reports_what_is_unsafe_in_the_engines(cluster: Cluster) -> None:
    # The tests' PostgreSQL runs without fsync (throwaway data): check-config must say so.
    cluster.node("one")
    result = cluster.cli("check-config")
    assert result.returncode == 1, result.stdout
    assert "storage.database: PostgreSQL runs with fsync off" in result.stderr, result.stderr
    assert "cluster.redis" not in result.stderr  # the tests' Redis is safe (AOF, noeviction)


def test_a_node_refuses_a_redis_that_would_lose_or_evict_data(
    cluster: Cluster, tmp_path: Path
) -> None:
    with RedisEngine.running(appendonly=False, maxmemory_policy="allkeys-lru") as unsafe:
        cluster.redis_url = unsafe.url
        result = cluster.cli_with(
            cluster.config("lone", "127.0.0.1", 0, {}), "check-config", folder=tmp_path
        )
        assert result.returncode == 1
        assert "cluster.redis: Redis has no append-only file" in result.stderr, result.stderr
        assert "maxmemory-policy allkeys-lru" in result.stderr
        served = cluster.cli_with(
            cluster.config("lone", "127.0.0.1", 0, {}), "serve", folder=tmp_path
        )
        assert served.returncode == 1, served.stderr
        assert (
            served.stderr.strip()
            .splitlines()[-1]
            .startswith("sealroom: cluster.redis: Redis has no append-only file")
        ), served.stderr


def test_a_redis_that_lost_its_data_never_gives_a_stored_id_again(
    cluster: Cluster, redis_engine: RedisEngine
) -> None:
    # A Redis replaced or flushed: the nodes are no longer in its list, fence themselves,
    # join again, and raise the id counter above every id the database holds.
    one = cluster.node("one")
    cluster.add_user("alice")
    alice = one.user("alice")
    first = int(alice.request("/say #lobby before").split()[-1])
    redis_engine.flush()
    assert alice.closed(timeout=5)[-1] == "BYE node-unavailable"

    def back() -> bool:
        try:
            again = one.user("alice")
        except (AssertionError, OSError, EOFError, TimeoutError):
            return False
        return again.request("/say #lobby after").startswith("OK say")

    wait_until(back, timeout=5, what="service after Redis lost its data")
    reader = one.user("alice")
    reader.send("/history #lobby 10")
    lines = read_until(reader, "OK history")
    ids = [int(line.split()[2]) for line in lines if line.startswith("HIST")]
    texts = [line.split(" ", 5)[5] for line in lines if line.startswith("HIST")]
    assert texts == ["before", "after"], lines
    assert ids[0] == first
    assert ids[1] > first


def test_a_room_full_on_one_node_is_full_on_every_node(cluster: Cluster) -> None:
    cap = {"limits": {"max_room_members": 3}}
    one, two = cluster.node("one", **cap), cluster.node("two", **cap)
    names = ("u1", "u2", "u3", "u4")
    for name in names:
        cluster.add_user(name)
    clients = [one.user("u1"), two.user("u2"), one.user("u3")]
    for client in clients:
        assert client.request("/join #small").startswith("OK join")
    late = two.user("u4")
    assert late.request("/join #small") == "ERR forbidden #small is full"


def test_an_account_has_one_session_bound_across_nodes(
    cluster: Cluster, redis_engine: RedisEngine
) -> None:
    # A login and its default room are one step of the bus: a login refused for the bound is
    # not counted (online, in a room, or said), and a freed slot is given back on any node.
    bound = {"limits": {"max_sessions_per_user": 3}}
    one, two = cluster.node("one", **bound), cluster.node("two", **bound)
    cluster.add_user("alice")
    cluster.add_user("mallory")
    alice = one.user("alice")
    mallory = [one.user("mallory"), two.user("mallory"), one.user("mallory")]
    alice.expect("JOIN #lobby mallory")
    extra = two.client()
    assert extra.request(f"/login mallory {PASSWORD}").startswith("ERR forbidden")
    assert extra.request(f"/login mallory {PASSWORD}").startswith("ERR forbidden")
    online = redis_engine.client()
    assert online.hget("sealroom:online", "mallory") == b"3"
    assert alice.request("/who #lobby") == "OK who #lobby alice mallory"
    mallory[0].close()
    wait_until(lambda: online.hget("sealroom:online", "mallory") == b"2", what="counted out")
    again = two.user("mallory")  # the freed slot, on the other node
    for session in mallory[1:]:
        session.close()
    again.close()
    alice.expect("PART #lobby mallory")  # once, when the last of them left
    wait_until(lambda: online.hget("sealroom:online", "mallory") is None, what="counted out")
    assert alice.request("/ping x") == "OK ping x"  # no JOIN or PART from the refused logins


def test_sealroom_kick_on_one_node_closes_the_sessions_on_every_node(cluster: Cluster) -> None:
    one, two = cluster.node("one"), cluster.node("two")
    cluster.add_user("bob")
    here, there = one.user("bob"), two.user("bob")
    result = cluster.cli("kick", "bob", "--reason", "maintenance")
    assert result.returncode == 0, result.stderr
    for client in (here, there):
        assert client.closed(timeout=3)[-1] == "BYE kicked by operator: maintenance"


def test_a_malformed_bus_entry_is_skipped(cluster: Cluster, redis_engine: RedisEngine) -> None:
    # Bytes from Redis are hostile too: what a node reads from the bus is checked before
    # it reaches anyone, and a bad entry is logged and skipped, never relayed nor a crash.
    one = cluster.node("one")
    cluster.add_user("alice")
    cluster.add_user("bob")
    alice, bob = one.user("alice"), one.user("bob")
    read_until(alice, "JOIN #lobby bob")
    client = redis_engine.client()
    forged: list[dict[str, str | bytes]] = [
        {"k": "say", "room": "#lobby", "from": "mallory", "text": "two\nMSG #lobby root lines"},
        {"k": "say", "room": "#lobby", "from": "mallory", "text": "evil \u202e override"},
        {"k": "say", "room": "lobby", "from": "mallory", "text": "no hash"},
        {"k": "say", "room": "#lobby", "from": "Not A Name", "text": "bad name"},
        {"k": "say", "room": "#lobby", "from": "mallory", "text": b"\xff\xfe not utf-8"},
        {"k": "wall", "p": "{not json"},
        {"k": "kick", "p": '{"name": "alice"}'},  # no reason: malformed, not a kick
        {"k": "wall", "p": json.dumps({"from": "mallory", "text": "x" * 20_000})},
        {"k": "part", "room": "#lobby", "name": "bob", "total": "zero"},
        {"k": "no-such-kind", "p": "{}"},
    ]
    for fields in forged:
        client.xadd("sealroom:bus", fields)  # type: ignore[arg-type]
    assert bob.request("/say #lobby still here").startswith("OK say")
    assert alice.line(5) == "MSG #lobby bob still here"  # nothing forged came before it
    assert alice.request("/who #lobby") == "OK who #lobby alice bob"
    wait_until(
        lambda: one.log.read_text().count("ignored a malformed bus entry") >= 8,
        timeout=5,
        what="each malformed entry logged",
    )
    assert "Traceback" not in one.log.read_text()


def test_room_history_is_trimmed_to_its_retention(cluster: Cluster) -> None:
    # The archiver trims at most once a second (a room may briefly hold more): the trim
    # after a second's pause leaves exactly history.per_room messages.
    one = cluster.node("one", history={"per_room": 5})
    cluster.add_user("alice")
    alice = one.user("alice")
    for n in range(12):
        assert alice.request(f"/say #lobby m{n}").startswith("OK say")
    time.sleep(1.2)
    assert alice.request("/say #lobby last").startswith("OK say")
    alice.send("/history #lobby 50")
    lines = read_until(alice, "OK history")
    texts = [line.split(" ", 5)[5] for line in lines if line.startswith("HIST")]
    assert texts == ["m8", "m9", "m10", "m11", "last"]


def test_a_flood_of_room_messages_goes_out_in_few_script_calls(
    cluster: Cluster, redis_engine: RedisEngine
) -> None:
    # Never a round trip per message: the room messages one turn of the reactor reads go to
    # Redis in one script call, and those read while it is in flight in the next. (A
    # publisher thread woken per message made one call for every few messages.)
    one = cluster.node("one")
    cluster.add_user("alice")
    alice = one.user("alice")
    client = redis_engine.client()

    def script_calls() -> int:
        stats = client.info("commandstats").get("cmdstat_evalsha", {})
        return int(stats.get("calls", 0))

    before, started = script_calls(), time.monotonic()
    alice.sock.sendall(b"".join(f"/say #lobby m{n}\n".encode() for n in range(256)))
    acknowledged = 0
    while acknowledged < 256:
        assert time.monotonic() < started + 10, acknowledged
        acknowledged += alice.line(5).startswith("OK say #lobby ")
    # 256 messages, at most 64 in flight per session: 4 calls at best, 8 allowed; the
    # node's heartbeat and reaping come on top, two calls a beat (under 4 a second).
    # Woken once per message, the publisher made 30 calls or more in one second.
    allowed = 8 + 4 * math.ceil(time.monotonic() - started)
    assert script_calls() - before <= allowed
