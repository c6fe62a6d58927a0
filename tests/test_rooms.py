"""Rooms with owners over real TLS: creation and ownership, private rooms and invitations,
bans on every session at once, topic and mode events, /list, /destroy, restarts and a
database from before rooms existed (SPEC.md §1 "Rooms: owners, operators, private rooms")."""

from __future__ import annotations

import itertools
import sqlite3
from pathlib import Path

import pytest

from helpers import Client, Server, ServerFactory
from sealroom.store.sqlite import MIGRATIONS, SqliteStore

_tags = itertools.count()


def ask(client: Client, line: str) -> tuple[list[str], str]:
    """Send ``line``: the lines that came before its final reply, and the reply."""
    client.send(line)
    before = []
    while True:
        reply = client.line()
        if reply.startswith(("OK ", "ERR ", "BYE ")):
            return before, reply
        before.append(reply)


def pending(client: Client) -> list[str]:
    """Every line the server queued for ``client`` so far, replies to requests still
    unanswered included (a /ping marks the end)."""
    tag = f"sync{next(_tags)}"
    client.send(f"/ping {tag}")
    lines = []
    while (line := client.line()) != f"OK ping {tag}":
        lines.append(line)
    return lines


def forbidden(reply: str) -> bool:
    return reply.startswith("ERR forbidden")


# -- owners -----------------------------------------------------------------------------------


def test_the_creator_of_a_room_owns_it(server: Server) -> None:
    alice, bob = server.user("alice"), server.user("bob")
    assert alice.request("/join #den") == "OK join #den"
    assert bob.request("/join #den") == "OK join #den"
    # Another user, even a member, may not do what operators or the owner do.
    for line in (
        "/topic #den mine now",
        "/mode #den private",
        "/invite bob #den",
        "/ban alice #den",
        "/unban alice #den",
        "/op bob #den",
        "/deop alice #den",
        "/destroy #den",
    ):
        assert forbidden(bob.request(line)), line
    assert alice.request("/topic #den our den") == "OK topic #den our den"
    assert alice.request("/mode #den private") == "OK mode #den private"
    assert alice.request("/mode #den open") == "OK mode #den open"
    record = server.app.store.get_room("#den")
    assert record is not None
    assert (record.owner, record.operators, record.topic) == ("alice", {"alice"}, "our den")


def test_operators_moderate_but_only_the_owner_manages(server: Server) -> None:
    alice, olga = server.user("alice"), server.user("olga")
    server.add_user("sam")
    alice.request("/join #den")
    assert alice.request("/op olga #den") == "OK op olga #den"
    assert olga.request("/topic #den olga was here") == "OK topic #den olga was here"
    assert olga.request("/mode #den private") == "OK mode #den private"
    assert olga.request("/invite sam #den") == "OK invite sam #den"
    assert olga.request("/ban sam #den") == "OK ban sam #den"
    assert olga.request("/unban sam #den") == "OK unban sam #den"
    assert forbidden(olga.request("/op sam #den"))
    assert forbidden(olga.request("/deop olga #den"))
    assert forbidden(olga.request("/destroy #den"))
    assert forbidden(olga.request("/ban alice #den"))  # the owner cannot be banned
    assert alice.request("/deop olga #den") == "OK deop olga #den"
    assert forbidden(olga.request("/topic #den not any more"))


def test_nobody_bans_the_owner_or_an_admin(server: Server) -> None:
    alice, root = server.user("alice"), server.user("root", admin=True)
    alice.request("/join #den")
    assert forbidden(alice.request("/ban root #den"))
    assert forbidden(root.request("/ban alice #den"))
    assert alice.request("/ban nobody #den").startswith("ERR no-such-user")
    # The admin is an operator everywhere, and may manage a room it does not own.
    assert root.request("/topic #den by the admin") == "OK topic #den by the admin"
    assert root.request("/op root #den") == "OK op root #den"


# -- private rooms ----------------------------------------------------------------------------


def test_a_private_room_admits_only_after_an_invitation(server: Server) -> None:
    alice, carol = server.user("alice"), server.user("carol")
    bob1, bob2 = server.user("bob"), server.user("bob")
    alice.request("/join #den")
    alice.request("/topic #den invite only")
    assert alice.request("/mode #den private") == "OK mode #den private"
    assert forbidden(bob1.request("/join #den"))
    for stranger in (bob1, carol):  # a stranger may not look into a private room
        assert forbidden(stranger.request("/who #den"))
        assert forbidden(stranger.request("/topic #den"))
        assert forbidden(stranger.request("/history #den"))
    pending(bob1)
    pending(bob2)

    assert alice.request("/invite bob #den") == "OK invite bob #den"
    # Every session of the invited user is told; nobody else.
    assert pending(bob1) == ["INVITE #den alice"]
    assert pending(bob2) == ["INVITE #den alice"]
    assert "INVITE #den alice" not in pending(carol)
    # Invited, not yet in: bob may look, not read the history (that is for members).
    assert bob2.request("/who #den") == "OK who #den alice"
    assert bob2.request("/topic #den") == "OK topic #den invite only"
    assert forbidden(bob2.request("/history #den"))
    assert bob1.request("/join #den") == "OK join #den invite only"
    assert bob1.request("/history #den") == "OK history #den 0"
    assert forbidden(carol.request("/join #den"))


def test_going_private_keeps_the_members_as_invited(server: Server) -> None:
    alice, carol = server.user("alice"), server.user("carol")
    alice.request("/join #den")
    carol.request("/join #den")
    assert alice.request("/mode #den private") == "OK mode #den private"
    assert carol.request("/who #den") == "OK who #den alice carol"
    assert carol.request("/part #den") == "OK part #den"
    assert carol.request("/join #den") == "OK join #den"


def test_an_operator_deopped_in_a_private_room_stays_as_invited(server: Server) -> None:
    alice, bob = server.user("alice"), server.user("bob")
    server.add_user("carol")
    alice.request("/join #den")
    alice.request("/mode #den private")
    for name in ("bob", "carol"):
        assert alice.request(f"/op {name} #den") == f"OK op {name} #den"
    assert bob.request("/join #den") == "OK join #den"
    assert alice.request("/deop bob #den") == "OK deop bob #den"
    assert alice.request("/deop carol #den") == "OK deop carol #den"
    # bob was in the room: he keeps his place, as if invited; carol was not: she is out.
    assert bob.request("/part #den") == "OK part #den"
    assert bob.request("/join #den") == "OK join #den"
    assert forbidden(server.user("carol").request("/join #den"))
    assert forbidden(bob.request("/topic #den no longer mine to set"))


# -- bans -------------------------------------------------------------------------------------


def test_a_ban_removes_every_session_at_once(server: Server) -> None:
    alice, carol = server.user("alice"), server.user("carol")
    bob1, bob2 = server.user("bob"), server.user("bob")
    alice.request("/join #den")
    alice.request("/invite bob #den")
    for client in (carol, bob1, bob2):
        assert client.request("/join #den").startswith("OK join #den")
    for client in (alice, carol, bob1, bob2):
        pending(client)

    before, reply = ask(alice, "/ban bob #den too loud")
    assert (before, reply) == (["PART #den bob"], "OK ban bob #den")
    for session in (bob1, bob2):
        lines = pending(session)
        assert lines == ["BANNED #den alice too loud"], lines
        assert session.request("/rooms") == "OK rooms #lobby"
    assert pending(carol) == ["PART #den bob"]  # one PART for the user, not one per session
    assert alice.request("/who #den") == "OK who #den alice carol"
    record = server.app.store.get_room("#den")
    assert record is not None
    assert (record.banned, record.invited) == ({"bob"}, set())  # the invitation is withdrawn

    # From then on, from these sessions, a new one and after a restart: forbidden.
    def refused(session: Client) -> None:
        for line in ("/join #den", "/history #den", "/who #den", "/topic #den", "/say #den hi"):
            assert forbidden(session.request(line)), line

    refused(bob1)
    refused(bob2)
    refused(server.user("bob"))
    server.restart()
    refused(server.user("bob"))
    assert server.user("carol").request("/join #den") == "OK join #den"


def test_a_ban_from_the_default_room_keeps_new_sessions_out(server: Server) -> None:
    root, bob = server.user("root", admin=True), server.user("bob")
    assert root.request("/ban bob #lobby go away") == "OK ban bob #lobby"
    assert pending(bob) == ["BANNED #lobby root go away"]
    # A new session logs in, but not into the room it is banned from.
    again = server.client()
    assert again.request("/login bob correct horse battery") == "OK login bob"
    assert again.request("/rooms") == "OK rooms"
    assert forbidden(again.request("/who #lobby"))
    assert root.request("/who #lobby") == "OK who #lobby root"
    server.restart()
    again = server.client()
    assert again.request("/login bob correct horse battery") == "OK login bob"
    assert again.request("/rooms") == "OK rooms"


def test_a_private_default_room_admits_at_login_only_those_it_admits(server: Server) -> None:
    root, bob = server.user("root", admin=True), server.user("bob")
    server.add_user("carol")
    assert root.request("/mode #lobby private") == "OK mode #lobby private"
    # bob was in it: he counts as invited and comes back; carol was not and stays out.
    assert server.user("bob").request("/rooms") == "OK rooms #lobby"
    carol = server.client()
    assert carol.request("/login carol correct horse battery") == "OK login carol"
    assert forbidden(carol.request("/join #lobby"))
    assert root.request("/invite carol #lobby") == "OK invite carol #lobby"
    assert server.user("carol").request("/rooms") == "OK rooms #lobby"
    assert bob.request("/who #lobby") == "OK who #lobby bob carol root"


def test_a_banned_users_messages_in_flight_stop_at_the_ban(make_server: ServerFactory) -> None:
    burst = 5000  # long enough that the ban lands in the middle of it
    server = make_server(rate={"messages": {"rate": burst, "burst": burst}})
    alice, bob, carol = server.user("alice"), server.user("bob"), server.user("carol")
    for client in (alice, bob, carol):
        client.request("/join #den")
    for client in (alice, bob, carol):
        pending(client)
    # Plain lines to bob's current room, pipelined: most are still unread when the ban lands.
    bob.sock.sendall(b"".join(f"flood {n}\n".encode() for n in range(burst)))
    before, reply = ask(alice, "/ban bob #den flooding")
    assert reply == "OK ban bob #den"
    after = pending(alice)
    assert not [line for line in after if line.startswith("MSG #den bob")], after
    relayed = len([line for line in before if line.startswith("MSG #den bob")])

    # bob: every message before the ban was accepted, none after it.
    replies = [bob.line() for _ in range(burst + 1)]  # one of them is the BANNED event
    banned_at = replies.index("BANNED #den alice flooding")
    accepted = replies[:banned_at]
    assert all(r.startswith("OK say #den ") for r in accepted), accepted
    refused = replies[banned_at + 1 :]
    assert all(r.startswith("ERR not-in-room") for r in refused), refused
    assert len(accepted) == relayed
    assert refused, "the ban landed after the whole burst: nothing was in flight"

    # carol saw exactly the accepted messages, all of them before bob's PART.
    seen = pending(carol)
    flood = [line for line in seen if line.startswith("MSG #den bob")]
    assert flood == [f"MSG #den bob flood {n}" for n in range(len(accepted))]
    assert seen[seen.index("PART #den bob") + 1 :] == []
    # The history holds the accepted ones (the newest history.per_room of them), no others.
    assert server.app.writer.flush()
    stored = [m.body for m in server.app.store.room_history("#den", burst)]
    keep = server.settings.history.per_room
    assert stored == [f"flood {n}" for n in range(len(accepted))][-keep:]


def test_a_ban_without_reason_ends_the_line_at_the_name(server: Server) -> None:
    alice, bob = server.user("alice"), server.user("bob")
    alice.request("/join #den")
    bob.request("/join #den")
    assert alice.request("/ban bob #den") == "OK ban bob #den"
    assert pending(bob) == ["BANNED #den alice"]


# -- topic and mode ---------------------------------------------------------------------------


def test_topic_and_mode_events_reach_every_member_and_the_changer(server: Server) -> None:
    alice, bob, carol = server.user("alice"), server.user("bob"), server.user("carol")
    alice.request("/join #den")
    bob.request("/join #den")
    for client in (alice, bob, carol):
        pending(client)
    before, reply = ask(alice, "/topic #den tea at five")
    assert (before, reply) == (["TOPIC #den alice tea at five"], "OK topic #den tea at five")
    assert pending(bob) == ["TOPIC #den alice tea at five"]
    before, reply = ask(alice, "/mode #den private")
    assert (before, reply) == (["MODE #den alice private"], "OK mode #den private")
    assert pending(bob) == ["MODE #den alice private"]
    assert pending(carol) == []  # not a member: told nothing
    assert alice.request("/mode #den open") == "OK mode #den open"
    # The join reply carries the topic as the rest of the line; /topic shows it.
    assert carol.request("/join #den") == "OK join #den tea at five"
    assert carol.request("/topic #den") == "OK topic #den tea at five"


def test_a_topic_is_at_most_300_characters_of_line_text(server: Server) -> None:
    alice = server.user("alice")
    alice.request("/join #den")
    assert alice.request("/topic #den " + "x" * 301).startswith("ERR bad-argument")
    assert alice.request("/topic #den " + "y" * 300) == "OK topic #den " + "y" * 300
    assert alice.request("/topic #den left\u202eright").startswith("ERR bad-input")
    assert alice.request("/topic #den") == "OK topic #den " + "y" * 300


def test_history_is_for_members(server: Server) -> None:
    alice, bob = server.user("alice"), server.user("bob")
    alice.request("/join #den")
    alice.request("/say #den hello den")
    assert forbidden(bob.request("/history #den"))  # an open room, but bob is not in it
    assert bob.request("/who #den") == "OK who #den alice"  # looking is allowed
    bob.request("/join #den")
    before, reply = ask(bob, "/history #den")
    assert reply == "OK history #den 1"
    assert before[-1].endswith(" alice hello den")
    assert bob.request("/history #nowhere").startswith("ERR no-such-room")


# -- /list ------------------------------------------------------------------------------------


def test_list_shows_the_rooms_one_may_join(server: Server) -> None:
    alice, bob = server.user("alice"), server.user("bob")
    alice.request("/join #apple")
    alice.request("/topic #apple red and green")
    alice.request("/join #cellar")
    alice.request("/mode #cellar private")
    alice.request("/join #bunker")
    alice.request("/mode #bunker private")
    alice.request("/invite bob #bunker")
    alice.request("/join #dump")
    alice.request("/ban bob #dump")
    bob.request("/join #apple")
    bob2 = server.user("bob")
    bob2.request("/join #apple")  # a second session is not a second member
    pending(bob)
    pending(alice)
    before, reply = ask(bob, "/list")
    assert before == [
        "ROOM #apple 2 open red and green",
        "ROOM #bunker 1 private",
        "ROOM #lobby 2 open",
    ]
    assert reply == "OK list 3"
    before, reply = ask(alice, "/list")
    assert [line.split()[1] for line in before] == [
        "#apple",
        "#bunker",
        "#cellar",
        "#dump",
        "#lobby",
    ]
    assert reply == "OK list 5"


def test_list_is_cut_at_list_max(make_server: ServerFactory) -> None:
    server = make_server(rooms={"list_max": 2})
    alice = server.user("alice")
    for name in ("#a", "#b", "#c"):
        alice.request(f"/join {name}")
    before, reply = ask(alice, "/list")
    assert before[:2] == ["ROOM #a 1 open", "ROOM #b 1 open"]
    assert len(before) == 3
    assert before[2].startswith("INFO ")
    assert reply == "OK list 2"


# -- /destroy ---------------------------------------------------------------------------------


def test_destroy_frees_the_name_and_deletes_the_history(server: Server) -> None:
    alice, bob, carol = server.user("alice"), server.user("bob"), server.user("carol")
    for client in (alice, bob, carol):
        client.request("/join #den")
    server.add_user("dave")
    alice.request("/topic #den old times")
    alice.request("/ban dave #den")
    for n in range(3):
        bob.request(f"/say #den remember {n}")
    for client in (alice, bob, carol):
        pending(client)

    before, reply = ask(alice, "/destroy #den")
    assert (before, reply) == (["DESTROYED #den alice"], "OK destroy #den")
    for client in (bob, carol):
        assert pending(client) == ["DESTROYED #den alice"]  # and no PART follows
        assert client.request("/rooms") == "OK rooms #lobby"
    assert server.app.store.get_room("#den") is None
    assert alice.request("/who #den").startswith("ERR no-such-room")

    # The name is free: whoever joins first creates a new room and owns it.
    assert carol.request("/join #den") == "OK join #den"
    assert carol.request("/history #den") == "OK history #den 0"
    assert carol.request("/topic #den") == "OK topic #den"
    assert forbidden(alice.request("/topic #den old times again"))
    assert carol.request("/topic #den new times") == "OK topic #den new times"
    assert server.user("dave").request("/join #den") == "OK join #den new times"  # no old ban


def test_destroy_takes_messages_still_on_their_way_to_the_disk(server: Server) -> None:
    alice, bob = server.user("alice"), server.user("bob")
    alice.request("/join #den")
    bob.request("/join #den")
    pending(alice)
    burst = 50
    bob.sock.sendall(b"".join(f"/say #den late {n}\n".encode() for n in range(burst)))
    for _ in range(burst):  # accepted and relayed: now on their way to the disk
        assert alice.line().startswith("MSG #den bob late")
    assert alice.request("/destroy #den") == "OK destroy #den"
    lines = pending(bob)
    assert lines.count("DESTROYED #den alice") == 1
    assert len([line for line in lines if line.startswith("OK say #den ")]) == burst
    assert bob.request("/join #den") == "OK join #den"
    assert bob.request("/history #den") == "OK history #den 0"


def test_the_default_room_cannot_be_destroyed(server: Server) -> None:
    root, alice = server.user("root", admin=True), server.user("alice")
    assert forbidden(root.request("/destroy #lobby"))
    assert forbidden(alice.request("/destroy #lobby"))
    assert root.request("/who #lobby") == "OK who #lobby alice root"


def test_an_admin_may_destroy_a_room_it_does_not_own(server: Server) -> None:
    alice, root = server.user("alice"), server.user("root", admin=True)
    alice.request("/join #den")
    pending(alice)
    assert root.request("/destroy #den") == "OK destroy #den"
    assert pending(alice) == ["DESTROYED #den root"]


# -- what outlives a restart ------------------------------------------------------------------


def test_room_settings_survive_a_restart(server: Server) -> None:
    for name in ("olga", "ivy", "ben", "sam"):
        server.add_user(name)
    alice = server.user("alice")
    alice.request("/join #den")
    for line in (
        "/topic #den kept across restarts",
        "/op olga #den",
        "/mode #den private",
        "/invite ivy #den",
        "/ban ben #den spam",
    ):
        assert alice.request(line).startswith("OK "), line
    before = server.app.store.get_room("#den")
    server.restart()

    after = server.app.store.get_room("#den")
    assert after is not None
    assert after == before
    assert (after.owner, after.mode, after.topic) == ("alice", "private", "kept across restarts")
    assert after.operators == {"alice", "olga"}
    assert after.invited == {"alice", "ivy"}  # alice was in the room when it went private
    assert after.banned == {"ben"}
    # And the server acts on them.
    assert server.user("ivy").request("/join #den") == "OK join #den kept across restarts"
    assert forbidden(server.user("ben").request("/join #den"))
    assert forbidden(server.user("sam").request("/join #den"))
    olga = server.user("olga")
    assert olga.request("/topic #den set by olga") == "OK topic #den set by olga"
    assert forbidden(olga.request("/op sam #den"))
    alice = server.user("alice")
    assert alice.request("/op sam #den") == "OK op sam #den"


def _database_before_rooms(path: Path) -> None:
    """A schema-4 database (the last without rooms) holding history for two rooms."""
    conn = sqlite3.connect(path)
    for step in MIGRATIONS[:4]:
        for statement in step:
            conn.execute(statement)
    conn.executemany(
        "INSERT INTO messages (id, room, sender, body, created_at) VALUES (?, ?, ?, ?, ?)",
        [
            (1, "#old", "gone", "from before rooms", "2025-01-01T00:00:00.000Z"),
            (2, "#old", "gone", "still here", "2025-01-01T00:00:01.000Z"),
            (3, "#lobby", "gone", "lobby talk", "2025-01-01T00:00:02.000Z"),
        ],
    )
    conn.execute("UPDATE meta SET value = 10 WHERE key = 'id_high_water'")
    conn.execute("PRAGMA user_version = 4")
    conn.commit()
    conn.close()


def test_a_database_from_before_rooms_gets_open_rooms_without_owner(
    make_server: ServerFactory, tmp_path: Path
) -> None:
    path = tmp_path / "old.db"
    _database_before_rooms(path)
    server = make_server(storage={"database": str(path)})
    with SqliteStore(path) as store:
        old = store.get_room("#old")
        lobby = store.get_room("#lobby")
    assert old is not None
    assert lobby is not None
    for record in (old, lobby):
        assert (record.owner, record.mode, record.topic) == (None, "open", "")
        assert (record.operators, record.invited, record.banned) == (set(), set(), set())

    alice, root = server.user("alice"), server.user("root", admin=True)
    assert alice.request("/join #old") == "OK join #old"
    before, reply = ask(alice, "/history #old")
    assert reply == "OK history #old 2"
    assert [line.split(" ", 5)[5] for line in before] == ["from before rooms", "still here"]
    # Nobody owns it: only admins moderate it.
    assert forbidden(alice.request("/topic #old mine"))
    assert forbidden(alice.request("/destroy #old"))
    assert root.request("/topic #old an old room") == "OK topic #old an old room"
    before, reply = ask(alice, "/list")
    assert "ROOM #old 1 open an old room" in before
    assert reply == "OK list 2"


@pytest.mark.parametrize("verb", ["/join", "/who", "/topic", "/history"])
def test_a_room_name_must_be_valid(server: Server, verb: str) -> None:
    alice = server.user("alice")
    assert alice.request(f"{verb} #Bad!").startswith("ERR bad-argument")
