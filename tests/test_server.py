"""The server end to end over real TLS on loopback: the requests of SPEC.md section 1."""

from __future__ import annotations

import re

from helpers import Server

ID = r"[1-9][0-9]*"


def test_hello_line(server: Server) -> None:
    client = server.client()
    assert re.fullmatch(r"HELLO sealroom 1 localhost .+", client.hello)


def test_login_failures_look_alike(server: Server) -> None:
    server.add_user("alice")
    server.add_user("dora")
    server.app.store.set_enabled("dora", False)
    client = server.client()
    replies = [
        client.request("/login alice wrong password"),
        client.request("/login nobody correct horse battery"),
        client.request("/login dora correct horse battery"),
    ]
    assert {r.split(" ", 2)[1] for r in replies} == {"auth-failed"}
    assert len(set(replies)) == 1
    assert client.request("/login ALICE correct horse battery").startswith("OK login alice")
    assert client.request("/login alice x").startswith("ERR already-logged-in")


def test_auth_required_before_login(server: Server) -> None:
    client = server.client()
    for line in ("/join #a", "hello", "/who", "/msg bob hi", "/rooms"):
        assert client.request(line).startswith("ERR auth-required"), line
    assert client.request("/ping abc") == "OK ping abc"
    help_reply = client.request("/help")
    assert help_reply == "OK help"


def test_help_lists_commands_before_ok(server: Server) -> None:
    client = server.client()
    client.send("/help")
    lines = []
    while not (line := client.line()).startswith("OK"):
        lines.append(line)
    assert line == "OK help"
    assert all(line.startswith("INFO /") for line in lines)
    assert any("/login NAME PASSWORD" in line for line in lines)


def test_room_conversation(server: Server) -> None:
    alice = server.user("alice")
    bob = server.user("bob")
    alice.expect("JOIN #lobby bob")
    reply = alice.request("hello bob")
    assert re.fullmatch(rf"OK say #lobby {ID}", reply)
    assert bob.line() == "MSG #lobby alice hello bob"
    assert alice.request("/join #Dev").startswith("OK join #dev")
    assert bob.request("/join #dev").startswith("OK join #dev")
    alice.expect("JOIN #dev bob")
    assert alice.request("/who") == "OK who #dev alice bob"
    assert alice.request("/who #lobby") == "OK who #lobby alice bob"
    assert alice.request("/rooms") == "OK rooms #dev #lobby"
    assert re.fullmatch(rf"OK say #lobby {ID}", bob.request("/say #lobby to the lobby"))
    assert alice.line() == "MSG #lobby bob to the lobby"
    assert alice.request("//slash first").startswith("OK say #dev")
    assert bob.line() == "MSG #dev alice /slash first"
    assert bob.request("/part") == "OK part #dev"
    assert alice.line() == "PART #dev bob"
    assert bob.request("plain").startswith("ERR not-in-room")
    assert bob.request("/part #dev").startswith("ERR not-in-room")
    assert bob.request("/who #nowhere").startswith("ERR no-such-room")
    assert bob.request("/join nohash").startswith("ERR bad-argument")


def test_message_ids_increase(server: Server) -> None:
    alice = server.user("alice")
    ids = [int(alice.request(f"m{i}").rsplit(" ", 1)[1]) for i in range(5)]
    assert ids == sorted(ids)
    assert len(set(ids)) == 5


def test_private_messages(server: Server) -> None:
    alice = server.user("alice")
    bob = server.user("bob")
    bob2 = server.user("bob")  # a second session of the same account
    alice.expect("JOIN #lobby bob")
    assert re.fullmatch(rf"OK msg bob {ID}", alice.request("/msg Bob psst, bob"))
    assert bob.line() == "DM alice psst, bob"
    assert bob2.line() == "DM alice psst, bob"
    assert alice.request("/msg nobody hi").startswith("ERR no-such-user")
    assert alice.request("/msg bob").startswith("ERR bad-argument")


def test_join_events_only_for_first_and_last_session(server: Server) -> None:
    alice = server.user("alice")
    bob = server.user("bob")
    assert alice.line() == "JOIN #lobby bob"
    bob2 = server.user("bob")
    bob2.close()
    bob.close()
    # bob's second session joined silently; only the last one leaving is a PART.
    assert alice.line() == "PART #lobby bob"
    assert alice.request("/who") == "OK who #lobby alice"


def test_hostile_text_is_never_relayed(server: Server) -> None:
    alice = server.user("alice")
    bob = server.user("bob")
    alice.expect("JOIN #lobby bob")
    hostile = [b"\x1b]0;owned\x07", "\u202egnp.exe".encode(), b"\xc2\x9b31m", b"\xff\xfe"]
    for line in hostile:
        reply = alice.request(line)
        assert reply.startswith(("ERR bad-input", "ERR bad-encoding")), reply
    alice.request("/msg bob \x1b[2J")
    assert alice.request("marker").startswith("OK say")
    assert bob.line() == "MSG #lobby alice marker"  # nothing hostile arrived before it


def test_tabs_and_unicode_are_relayed(server: Server) -> None:
    alice = server.user("alice")
    bob = server.user("bob")
    alice.expect("JOIN #lobby bob")
    alice.request("a\tb caf\u00e9 \U0001f600")
    assert bob.line() == "MSG #lobby alice a\tb caf\u00e9 \U0001f600"


def test_empty_lines_get_no_reply(server: Server) -> None:
    client = server.client()
    client.send(b"\r\n\n")
    assert client.request("/ping x") == "OK ping x"


def test_line_too_long_keeps_connection(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"max_line_bytes": 128})
    client = server.user("alice")
    assert client.request("x" * 127).startswith("OK say")  # 128 bytes with LF: the limit
    assert client.request("x" * 128).startswith("ERR line-too-long")
    client.send(b"y" * 500 + b"\n")
    assert client.line().startswith("ERR line-too-long")
    assert client.request("x" * 100).startswith("OK say")


def test_unknown_command_and_bad_arguments(server: Server) -> None:
    client = server.user("alice")
    assert client.request("/frobnicate").startswith("ERR bad-command")
    assert client.request("/join").startswith("ERR bad-argument")
    assert client.request("/who #a #b").startswith("ERR bad-argument")
    assert client.request("/msg bad!name hi").startswith("ERR bad-argument")


def test_rate_limit(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(rate={"messages": {"rate": 0.5, "burst": 3}})
    client = server.user("alice")
    replies = [client.request(f"m{i}") for i in range(4)]
    assert [r.split()[0:2] for r in replies[:3]] == [["OK", "say"]] * 3
    assert re.fullmatch(r"ERR rate-limited .*retry in [0-9]+s.*", replies[3])


def test_too_many_errors_closes(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(rate={"errors": {"rate": 0.01, "burst": 3}})
    client = server.user("alice")
    for _ in range(3):
        assert client.request("/nope").startswith("ERR bad-command")
    client.send("/nope")
    assert client.line().startswith("ERR bad-command")
    assert client.line() == "BYE too-many-errors"
    assert client.closed() == []


def test_quit(server: Server) -> None:
    client = server.user("alice")
    assert client.request("/quit bye now") == "OK quit"
    assert client.line() == "BYE quit"
    assert client.closed() == []


def test_kick_and_wall(server: Server) -> None:
    root = server.user("root", admin=True)
    bob = server.user("bob")
    bob2 = server.user("bob")
    assert bob.request("/wall hi").startswith("ERR forbidden")
    assert bob.request("/kick root").startswith("ERR forbidden")
    assert root.request("/wall maintenance at noon") == "OK wall"
    assert bob.line() == "WALL root maintenance at noon"
    assert bob2.line() == "WALL root maintenance at noon"
    assert root.request("/kick nobody").startswith("ERR no-such-user")
    assert root.request("/kick bob spamming") == "OK kick bob"
    assert bob.closed()[-1].startswith("BYE kicked")
    assert bob2.closed()[-1].startswith("BYE kicked")


def test_passwd(server: Server) -> None:
    server.add_user("alice", "old-secret-1")
    alice = server.client()
    alice.login("alice", "old-secret-1")
    assert alice.request("/passwd wrong-one new password 1").startswith("ERR auth-failed")
    assert alice.request("/passwd old-secret-1 short").startswith("ERR bad-argument")
    assert alice.request("/passwd old-secret-1 new password 1") == "OK passwd"
    again = server.client()
    assert again.request("/login alice old-secret-1").startswith("ERR auth-failed")
    assert again.request("/login alice new password 1").startswith("OK login alice")


def test_allow_create_false(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(rooms={"allow_create": False})
    alice = server.user("alice")
    assert alice.request("/join #new").startswith("ERR no-such-room")
    bob = server.user("bob")
    assert bob.request("/join #lobby").startswith("OK join #lobby")


def test_login_timeout(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"login_timeout_s": 0.5})
    client = server.client()
    assert client.closed(timeout=5) == ["BYE login-timeout"]


def test_idle_timeout(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(limits={"idle_timeout_s": 0.5})
    client = server.user("alice")
    assert client.closed(timeout=5)[-1] == "BYE idle-timeout"


def test_ipv6_listener(make_server) -> None:  # type: ignore[no-untyped-def]
    server = make_server(listen=["[::1]:0", "127.0.0.1:0"])
    assert len(server.app.addresses) == 2
    assert server.app.addresses[0].startswith("[::1]:")
    client = server.client(host="::1")
    assert client.hello.startswith("HELLO")


def test_before_login_everything_else_is_auth_required(server: Server) -> None:
    """SPEC §1: before /login or /resume, every request but those two, /ping, /help and
    /quit is answered auth-required, known or not (an unknown verb included)."""
    client = server.client()
    for line in ("/frobnicate", "/join #a", "hello", "/ hi", "/token", "/list"):
        assert client.request(line).startswith("ERR auth-required"), line
    assert client.request("/ping") == "OK ping"
    assert client.request("/help").startswith("OK help")


def test_a_command_with_an_empty_verb_is_not_a_message(server: Server) -> None:
    alice, bob = server.user("alice"), server.user("bob")
    assert alice.request("/ hi").startswith("ERR bad-command")
    assert alice.request("// hi").startswith("OK say #lobby")  # a message that starts with /
    seen = [bob.line() for _ in range(1)]
    assert seen == ["MSG #lobby alice / hi"]
