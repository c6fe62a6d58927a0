"""The configuration loader: defaults, every key, every kind of mistake, and addresses."""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path
from typing import Any

import pytest
import yaml

from sealroom.config import (
    _SCHEMA,
    Argon2Settings,
    BucketSettings,
    ConfigError,
    LimitsSettings,
    Settings,
    TlsSettings,
    _Section,
    load_settings,
    parse_address,
    settings_from_mapping,
)

BASE = Path("/srv/sealroom")


@pytest.fixture
def tmp_dir(tmp_path: Path) -> Path:
    """tmp_path without symlinks, since the loader resolves the configuration's directory."""
    return tmp_path.resolve()


def write(tmp_dir: Path, text: str, name: str = "sealroom.yaml") -> Path:
    path = tmp_dir / name
    path.write_text(text, encoding="utf-8")
    return path


def problems_of(data: object) -> list[str]:
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(data, BASE)
    return caught.value.problems


def get(settings: object, dotted: str) -> object:
    for part in dotted.split("."):
        settings = getattr(settings, part)
    return settings


def nest(dotted: str, value: object) -> dict[str, Any]:
    """{"a.b": v} as the mapping YAML would give: {"a": {"b": v}}."""
    *sections, last = dotted.split(".")
    data: dict[str, Any] = {last: value}
    for section in reversed(sections):
        data = {section: data}
    return data


# --- defaults -----------------------------------------------------------------------------


def test_empty_file_gives_the_defaults_with_paths_beside_it(tmp_dir: Path) -> None:
    path = write(tmp_dir, "")
    settings = load_settings(path)
    assert settings.source == path
    assert settings.server_name == "localhost"
    assert settings.listen == ("127.0.0.1:7443",)
    assert settings.tls == TlsSettings(
        cert=tmp_dir / "certs/server.crt",
        key=tmp_dir / "certs/server.key",
        client_ca=None,
        profile="intermediate",
    )
    assert settings.storage.database == tmp_dir / "var/sealroom.db"
    assert settings.auth.argon2 == Argon2Settings(3, 65536, 4)
    assert settings.limits == LimitsSettings()
    assert settings.rate.messages == BucketSettings(5.0, 20.0)
    assert settings.rate.logins_per_ip == BucketSettings(0.5, 10.0)
    assert settings.rate.connections_per_ip == BucketSettings(5.0, 50.0)
    assert settings.rate.errors == BucketSettings(1.0, 20.0)
    assert settings.rooms.default == "#lobby"
    assert settings.rooms.allow_create is True
    assert settings.log.level == "info"
    assert settings.metrics.listen is None


@pytest.mark.parametrize("text", ["", "# only a comment\n", "---\n", "{}\n"])
def test_files_without_keys_equal_the_defaults(tmp_dir: Path, text: str) -> None:
    settings = load_settings(write(tmp_dir, text))
    assert dataclasses.replace(settings, source=None) == settings_from_mapping(None, tmp_dir)


def test_no_file_resolves_against_the_working_directory(
    tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_dir)
    settings = load_settings(None)
    assert settings.source is None
    assert settings.storage.database == tmp_dir / "var/sealroom.db"
    assert settings.tls.cert == tmp_dir / "certs/server.crt"


def test_the_spec_example_loads_unchanged(tmp_dir: Path) -> None:
    example = """
server_name: localhost
listen: ["127.0.0.1:7443"]
tls: {cert: certs/server.crt, key: certs/server.key, client_ca: null, profile: intermediate}
storage: {database: var/sealroom.db}
auth:
  argon2: {time_cost: 3, memory_cost_kib: 65536, parallelism: 4}
  max_concurrent_verifications: 2
  resume_token_days: 7
limits:
  max_line_bytes: 4096
  max_connections: 10000
  max_connections_per_ip: 50
  handshake_timeout_s: 10
  login_timeout_s: 30
  idle_timeout_s: 3600
  outbound_queue_bytes: 1048576
rate:
  messages: {rate: 5, burst: 20}
  logins_per_ip: {rate: 0.5, burst: 10}
  connections_per_ip: {rate: 5, burst: 50}
rooms: {default: "#lobby", allow_create: true}
history: {per_room: 1000, private_per_user: 1000, max_query: 500}
log: {level: info, format: text}
metrics: {listen: null}
web:
  listen: null
  origins: []
"""
    settings = load_settings(write(tmp_dir, example))
    assert dataclasses.replace(settings, source=None) == settings_from_mapping({}, tmp_dir)


def test_the_schema_names_exactly_the_dataclass_fields() -> None:
    def walk(section: _Section, defaults: Any, prefix: str) -> None:
        names = {f.name for f in dataclasses.fields(defaults)} - {"source"}
        assert set(section.keys) == names, prefix
        for key, spec in section.keys.items():
            if isinstance(spec, _Section):
                walk(spec, getattr(defaults, key), f"{prefix}{key}.")

    walk(_SCHEMA, Settings(), "")


# --- every key takes a non-default value ---------------------------------------------------

ROUND_TRIPS: list[tuple[str, object, object]] = [
    ("server_name", "chat.example.org", "chat.example.org"),
    ("listen", ["0.0.0.0:7000", "[::]:7000"], ("0.0.0.0:7000", "[::]:7000")),
    ("tls.cert", "/etc/ssl/s.crt", Path("/etc/ssl/s.crt")),
    ("tls.key", "/etc/ssl/s.key", Path("/etc/ssl/s.key")),
    ("tls.client_ca", "/etc/ssl/ca.pem", Path("/etc/ssl/ca.pem")),
    ("tls.profile", "modern", "modern"),
    ("storage.database", "/var/lib/sealroom/db.sqlite", Path("/var/lib/sealroom/db.sqlite")),
    ("storage.database", "postgresql://chat@db/chat", "postgresql://chat@db/chat"),
    (
        "storage.database",
        "postgres://chat@/chat?host=/run/pg",
        "postgres://chat@/chat?host=/run/pg",
    ),
    ("storage.workers", 8, 8),
    ("limits.max_sessions_per_user", 5, 5),
    ("rooms.max_created_per_user", 3, 3),
    ("rooms.list_max", 10, 10),
    ("history.private_per_sender", 7, 7),
    ("auth.argon2.time_cost", 2, 2),
    ("auth.argon2.memory_cost_kib", 8192, 8192),
    ("auth.argon2.parallelism", 1, 1),
    ("auth.max_concurrent_verifications", 8, 8),
    ("auth.resume_token_days", 30, 30),
    ("auth.verification_wait_s", 0.5, 0.5),
    ("limits.max_line_bytes", 8192, 8192),
    ("limits.max_connections", 5, 5),
    ("limits.max_connections_per_ip", 2, 2),
    ("limits.handshake_timeout_s", 2.5, 2.5),
    ("limits.login_timeout_s", 60, 60.0),
    ("limits.idle_timeout_s", 120, 120.0),
    ("limits.outbound_queue_bytes", 65536, 65536),
    ("limits.max_rooms_per_session", 3, 3),
    ("limits.max_rooms", 7, 7),
    ("limits.max_room_members", 9, 9),
    ("limits.shutdown_grace_s", 0.25, 0.25),
    ("limits.max_tracked_addresses", 1000, 1000),
    ("rate.messages", {"rate": 1, "burst": 2}, BucketSettings(1.0, 2.0)),
    ("rate.logins_per_ip", {"rate": 0.1, "burst": 1}, BucketSettings(0.1, 1.0)),
    ("rate.connections_per_ip", {"rate": 2, "burst": 3.5}, BucketSettings(2.0, 3.5)),
    ("rate.errors", {"rate": 0.2, "burst": 5}, BucketSettings(0.2, 5.0)),
    ("rate.messages.burst", 99, 99.0),
    ("rooms.default", "#General", "#general"),
    ("rooms.allow_create", False, False),
    ("history.per_room", 10, 10),
    ("history.private_per_user", 20, 20),
    ("history.max_query", 5, 5),
    ("history.rooms", False, False),
    ("log.level", "debug", "debug"),
    ("log.format", "json", "json"),
    ("metrics.listen", "127.0.0.1:9464", "127.0.0.1:9464"),
    ("control.socket", "/run/sealroom/control.sock", Path("/run/sealroom/control.sock")),
    (
        "cluster.trusted_proxies",
        ["10.0.0.5", "2001:DB8::5", "::ffff:10.0.0.6", "10.0.0.5"],
        ("10.0.0.5", "2001:db8::5", "10.0.0.6"),
    ),
    ("cluster.node", "node-1.example:2", "node-1.example:2"),
    ("cluster.node_timeout_s", 3, 3.0),
    ("web.listen", "0.0.0.0:443", "0.0.0.0:443"),
    (
        "web.origins",
        ["https://Chat.Example.org:443", "https://other.example:8443", "http://[::1]:80"],
        ("https://chat.example.org", "https://other.example:8443", "http://[::1]"),
    ),
    ("web.max_request_bytes", 4096, 4096),
    ("web.max_headers", 20, 20),
]


@pytest.mark.parametrize(
    ("key", "written", "expected"), ROUND_TRIPS, ids=[r[0] for r in ROUND_TRIPS]
)
def test_each_key_takes_a_non_default_value(key: str, written: object, expected: object) -> None:
    settings = settings_from_mapping(nest(key, written), BASE)
    value = get(settings, key)
    assert value == expected
    assert type(value) is type(expected)
    assert value != get(Settings(), key)


def test_every_key_is_covered_by_the_round_trip_table() -> None:
    def leaves(section: _Section, prefix: str) -> set[str]:
        found: set[str] = set()
        for key, spec in section.keys.items():
            dotted = f"{prefix}{key}"
            found |= leaves(spec, f"{dotted}.") if isinstance(spec, _Section) else {dotted}
        return found

    # cluster.redis needs a PostgreSQL database beside it: it has a test of its own.
    covered = {row[0] for row in ROUND_TRIPS} | {"cluster.redis"}
    # A whole bucket written at once covers its rate and burst.
    missing = {leaf for leaf in leaves(_SCHEMA, "") if leaf.rpartition(".")[0] not in covered}
    assert missing <= covered


def test_cluster_redis_turns_cluster_mode_on_beside_postgresql_only() -> None:
    url = "redis://:secret@127.0.0.1:6379/0"
    database = "postgresql://sealroom@127.0.0.1/sealroom"
    settings = settings_from_mapping(
        {"storage": {"database": database}, "cluster": {"redis": url}}, BASE
    )
    assert settings.cluster.redis == url
    with pytest.raises(ConfigError) as raised:
        settings_from_mapping({"cluster": {"redis": url}}, BASE)
    assert raised.value.problems == [
        "cluster.redis: needs storage.database to be a postgresql:// URL"
    ]
    assert "secret" not in str(raised.value)


def test_a_partial_bucket_keeps_its_own_default_for_the_rest() -> None:
    settings = settings_from_mapping({"rate": {"logins_per_ip": {"rate": 2}}}, BASE)
    assert settings.rate.logins_per_ip == BucketSettings(2.0, 10.0)


# --- unknown keys ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ({"flavour": "blue"}, "flavour: unknown key"),
        ({"limit": {}}, "limit: unknown key (did you mean 'limits'?)"),
        ({"tls": {"certificate": "x"}}, "tls.certificate: unknown key"),
        (
            {"limits": {"max_conections": 3}},
            "limits.max_conections: unknown key (did you mean 'max_connections'?)",
        ),
        ({"auth": {"argon2": {"salt": 1}}}, "auth.argon2.salt: unknown key"),
        ({"rate": {"messages": {"rate": 1, "cap": 2}}}, "rate.messages.cap: unknown key"),
        ({"source": "/etc/x.yaml"}, "source: unknown key (did you mean 'storage'?)"),
        ({1: 2}, "1: unknown key"),
        ({"log": {"lev\x1b[2Jel": 1}}, "log.lev\\x1b[2Jel: unknown key (did you mean 'level'?)"),
    ],
)
def test_unknown_keys_are_named(data: object, problem: str) -> None:
    assert problems_of(data) == [problem]


# --- wrong types and impossible values -------------------------------------------------------

BAD_VALUES: list[tuple[str, object, str]] = [
    # bool is not a number, even though Python thinks so
    ("limits.max_connections", True, "must be an integer >= 1, got true"),
    ("limits.idle_timeout_s", False, "must be a number > 0 and <= 1000000000, got false"),
    ("rate.messages.rate", True, "must be a number > 0, got true"),
    ("limits.max_connections", "x", "must be an integer >= 1, got 'x'"),
    ("limits.max_connections", "10", "must be an integer >= 1, got '10'"),
    ("limits.max_connections", 2.0, "must be an integer >= 1, got 2.0"),
    ("limits.max_connections", None, "must be an integer >= 1, got null"),
    ("limits.max_connections", [1], "must be an integer >= 1, got a list"),
    ("limits.max_connections", 0, "must be an integer >= 1, got 0"),
    ("limits.max_line_bytes", 63, "must be an integer from 64 to 1048576, got 63"),
    ("limits.max_line_bytes", 1048577, "must be an integer from 64 to 1048576, got 1048577"),
    ("limits.handshake_timeout_s", 0, "must be a number > 0 and <= 1000000000, got 0"),
    ("limits.login_timeout_s", -1.5, "must be a number > 0 and <= 1000000000, got -1.5"),
    ("limits.idle_timeout_s", float("inf"), "must be a number > 0 and <= 1000000000, got inf"),
    ("limits.idle_timeout_s", float("nan"), "must be a number > 0 and <= 1000000000, got nan"),
    ("limits.shutdown_grace_s", 2e9, "must be a number > 0 and <= 1000000000, got 2000000000.0"),
    ("limits.max_tracked_addresses", 0, "must be an integer >= 1, got 0"),
    ("auth.argon2.time_cost", 0, "must be an integer from 1 to 4294967295, got 0"),
    ("auth.argon2.parallelism", 256, "must be an integer from 1 to 255, got 256"),
    ("auth.argon2.memory_cost_kib", 7, "must be an integer from 8 to 4294967295, got 7"),
    ("auth.max_concurrent_verifications", 0, "must be an integer >= 1, got 0"),
    ("auth.resume_token_days", 366, "must be an integer from 1 to 365, got 366"),
    ("auth.resume_token_days", 0, "must be an integer from 1 to 365, got 0"),
    ("auth.verification_wait_s", "5s", "must be a number > 0 and <= 1000000000, got '5s'"),
    ("rate.messages.rate", 0, "must be a number > 0, got 0"),
    ("rate.errors.burst", 0.5, "must be a number >= 1, got 0.5"),
    (
        "rate.logins_per_ip.burst",
        10**400,
        "must be a number >= 1, got " + repr(10**400)[:57] + "...",
    ),
    ("history.per_room", 0, "must be an integer >= 1, got 0"),
    ("history.private_per_user", -1, "must be an integer >= 1, got -1"),
    ("history.rooms", 1, "must be true or false, got 1"),
    ("history.max_query", 0, "must be an integer >= 1, got 0"),
    ("rooms.allow_create", "yes", "must be true or false, got 'yes'"),
    ("rooms.allow_create", 1, "must be true or false, got 1"),
    ("rooms.default", "lobby", "must be a room name: '#' then 1 to 32 of a-z 0-9 _ -, got 'lobby'"),
    (
        "rooms.default",
        "#" + "a" * 33,
        "must be a room name: '#' then 1 to 32 of a-z 0-9 _ -, got '#" + "a" * 33 + "'",
    ),
    ("rooms.default", 7, "must be a room name: '#' then 1 to 32 of a-z 0-9 _ -, got 7"),
    ("tls.profile", "old", "must be 'intermediate' or 'modern', got 'old'"),
    ("tls.cert", None, "must be a file path, got null"),
    ("tls.cert", "", "must be a file path, got ''"),
    ("tls.client_ca", 5, "must be a file path or null, got 5"),
    ("storage.database", ["a"], "must be a file path or a postgresql:// URL, got a list"),
    ("storage.database", "", "must be a file path or a postgresql:// URL, got ''"),
    (
        "storage.database",
        "mysql://u:pw@db/chat",
        "must be a file path or a postgresql:// URL, got a URL of another kind",
    ),
    (
        "storage.database",
        "postgresql://u:p w@db/chat",
        "a postgresql:// URL must not hold spaces or control characters",
    ),
    ("storage.workers", 0, "must be an integer from 1 to 64, got 0"),
    ("log.level", "INFO", "must be one of 'debug', 'info', 'warning', 'error', got 'INFO'"),
    ("log.format", "xml", "must be 'text' or 'json', got 'xml'"),
    ("server_name", "", "must be 1 to 64 characters without spaces or control characters, got ''"),
    (
        "server_name",
        "a b",
        "must be 1 to 64 characters without spaces or control characters, got 'a b'",
    ),
    (
        "server_name",
        "a\x1bb",
        "must be 1 to 64 characters without spaces or control characters, got 'a\\x1bb'",
    ),
    (
        "server_name",
        "x" * 65,
        "must be 1 to 64 characters without spaces or control characters, "
        "got " + repr("x" * 65)[:57] + "...",
    ),
    ("server_name", 5, "must be 1 to 64 characters without spaces or control characters, got 5"),
    ("listen", [], "must be a non-empty list of host:port addresses, got a list"),
    (
        "listen",
        "127.0.0.1:7443",
        "must be a non-empty list of host:port addresses, got '127.0.0.1:7443'",
    ),
    ("metrics.listen", 9464, "must be a host:port string, got 9464"),
    ("metrics.listen", "9464", "'9464' is not host:port"),
    ("web.listen", ["127.0.0.1:7444"], "must be a host:port string, got a list"),
    ("web.origins", "https://a.example", "must be a list of origins, got 'https://a.example'"),
    ("cluster.trusted_proxies", "10.0.0.5", "must be a list of IP addresses, got '10.0.0.5'"),
    ("cluster.trusted_proxies", None, "must be a list of IP addresses, got null"),
    ("cluster.redis", "http://redis:6379", "must be a redis:// or rediss:// URL, or null"),
    ("cluster.redis", 6379, "must be a redis:// or rediss:// URL, or null"),
    ("cluster.node", "node one", "must be 1 to 64 of A-Z a-z 0-9 _ . : -, got 'node one'"),
    ("cluster.node_timeout_s", 0.5, "must be a number >= 1 and <= 300, got 0.5"),
    ("web.max_request_bytes", 100, "must be an integer from 1024 to 1048576, got 100"),
    ("web.max_headers", 0, "must be an integer from 8 to 1000, got 0"),
]


@pytest.mark.parametrize(
    ("key", "value", "problem"), BAD_VALUES, ids=[f"{r[0]}={r[1]!r:.20}" for r in BAD_VALUES]
)
def test_bad_values_are_named_with_their_key(key: str, value: object, problem: str) -> None:
    assert problems_of(nest(key, value)) == [f"{key}: {problem}"]


def test_each_bad_trusted_proxy_is_named_by_its_index() -> None:
    written = ["10.0.0.5", "10.0.0.0/8", "lb.example", 7, "fe80::1%eth0"]
    assert problems_of({"cluster": {"trusted_proxies": written}}) == [
        "cluster.trusted_proxies[1]: must be an IP address, got '10.0.0.0/8'",
        "cluster.trusted_proxies[2]: must be an IP address, got 'lb.example'",
        "cluster.trusted_proxies[3]: must be an IP address, got 7",
        "cluster.trusted_proxies[4]: must be an IP address, got 'fe80::1%eth0'",
    ]


@pytest.mark.parametrize(
    ("origins", "problem"),
    [
        (
            ["https://a.example/"],
            "web.origins[0]: must be an origin like 'https://chat.example.org:8443' (an origin "
            "has no path, not even '/'), got 'https://a.example/'",
        ),
        (
            ["https://ok.example", "wss://a.example"],
            "web.origins[1]: must be an origin like 'https://chat.example.org:8443', "
            "got 'wss://a.example'",
        ),
        (
            ["https://a.example:99999"],
            "web.origins[0]: the port in 'https://a.example:99999' must be a number from 1 to "
            "65535",
        ),
        ([7], "web.origins[0]: must be an origin like 'https://chat.example.org', got 7"),
    ],
)
def test_each_bad_origin_is_named_by_its_index(origins: list[object], problem: str) -> None:
    assert problems_of({"web": {"origins": origins}}) == [problem]


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        ([1, 2], "(top level): must be a mapping, got a list"),
        ("listen: x", "(top level): must be a mapping, got 'listen: x'"),
        ({"tls": ["cert"]}, "tls: must be a mapping, got a list"),
        ({"limits": 5}, "limits: must be a mapping, got 5"),
        ({"auth": {"argon2": "cheap"}}, "auth.argon2: must be a mapping, got 'cheap'"),
        ({"rate": {"messages": 5}}, "rate.messages: must be a mapping, got 5"),
    ],
)
def test_sections_must_be_mappings(data: object, problem: str) -> None:
    assert problems_of(data) == [problem]


def test_an_empty_section_means_its_defaults() -> None:
    assert settings_from_mapping({"tls": None, "limits": {}}, BASE) == settings_from_mapping(
        None, BASE
    )


@pytest.mark.parametrize(
    ("data", "problem"),
    [
        (
            {"limits": {"max_line_bytes": 8192, "outbound_queue_bytes": 16383}},
            "limits.outbound_queue_bytes: must be at least 2 * max_line_bytes (16384), got 16383",
        ),
        (
            {"limits": {"outbound_queue_bytes": 8191}},
            "limits.outbound_queue_bytes: must be at least 2 * max_line_bytes (8192), got 8191",
        ),
        (
            {"auth": {"argon2": {"parallelism": 8, "memory_cost_kib": 63}}},
            "auth.argon2.memory_cost_kib: must be at least 8 * parallelism (64), got 63",
        ),
    ],
)
def test_keys_that_bound_each_other(data: object, problem: str) -> None:
    assert problems_of(data) == [problem]


def test_keys_that_bound_each_other_accept_the_edge() -> None:
    settings = settings_from_mapping(
        {
            "limits": {"max_line_bytes": 8192, "outbound_queue_bytes": 16384},
            "auth": {"argon2": {"parallelism": 8, "memory_cost_kib": 64}},
        },
        BASE,
    )
    assert settings.limits.outbound_queue_bytes == 16384
    assert settings.auth.argon2.memory_cost_kib == 64


def test_a_cross_check_is_skipped_when_its_other_key_is_already_wrong() -> None:
    data = {"limits": {"max_line_bytes": "big", "outbound_queue_bytes": 10}}
    assert problems_of(data) == [
        "limits.max_line_bytes: must be an integer from 64 to 1048576, got 'big'"
    ]


def test_every_problem_is_reported_at_once() -> None:
    data = {
        "flavour": "blue",
        "listen": ["127.0.0.1:7443", "::1:80", 3],
        "tls": {"profile": "old", "certificate": "x"},
        "limits": {"max_connections": "x", "idle_timeout_s": True},
        "rate": {"errors": {"rate": 0}},
        "rooms": {"default": "lobby"},
        "log": "loud",
    }
    problems = problems_of(data)
    assert problems == [
        "flavour: unknown key",
        "listen[1]: '::1:80': write an IPv6 address in brackets, like [::1]:7443",
        "listen[2]: must be a host:port string, got 3",
        "tls.certificate: unknown key",
        "tls.profile: must be 'intermediate' or 'modern', got 'old'",
        "limits.max_connections: must be an integer >= 1, got 'x'",
        "limits.idle_timeout_s: must be a number > 0 and <= 1000000000, got true",
        "rate.errors.rate: must be a number > 0, got 0",
        "rooms.default: must be a room name: '#' then 1 to 32 of a-z 0-9 _ -, got 'lobby'",
        "log: must be a mapping, got 'loud'",
    ]
    with pytest.raises(ConfigError) as caught:
        settings_from_mapping(data, BASE)
    assert str(caught.value) == "\n".join(problems)


def test_problems_from_a_file_are_reported_together(tmp_dir: Path) -> None:
    path = write(tmp_dir, "limits:\n  max_connections: x\n  max_rooms: 0\nbogus: 1\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems == [
        "bogus: unknown key",
        "limits.max_connections: must be an integer >= 1, got 'x'",
        "limits.max_rooms: must be an integer >= 1, got 0",
    ]


# --- paths ----------------------------------------------------------------------------------


def test_relative_paths_resolve_against_the_file_not_the_working_directory(
    tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    config_dir = tmp_dir / "etc"
    config_dir.mkdir()
    elsewhere = tmp_dir / "elsewhere"
    elsewhere.mkdir()
    monkeypatch.chdir(elsewhere)
    path = write(
        config_dir,
        "tls: {cert: tls/a.crt, key: ../keys/a.key, client_ca: ca.pem}\n"
        "storage: {database: data/chat.db}\n",
    )
    settings = load_settings(Path(os.path.relpath(path, elsewhere)))
    assert settings.tls.cert == config_dir / "tls/a.crt"
    assert settings.tls.key == config_dir / "../keys/a.key"
    assert settings.tls.client_ca == config_dir / "ca.pem"
    assert settings.storage.database == config_dir / "data/chat.db"
    assert settings.source == path
    assert settings.source.is_absolute()


def test_absolute_paths_are_kept(tmp_dir: Path) -> None:
    path = write(tmp_dir, "tls: {cert: /etc/ssl/a.crt}\nstorage: {database: /var/db/x.db}\n")
    settings = load_settings(path)
    assert settings.tls.cert == Path("/etc/ssl/a.crt")
    assert settings.storage.database == Path("/var/db/x.db")
    assert settings.tls.key == tmp_dir / "certs/server.key"


def test_a_database_url_is_kept_as_written(tmp_dir: Path) -> None:
    """Not resolved against the configuration's directory, and not shown in the repr: it may
    hold a password."""
    url = "postgresql://sealroom:s3cret@db.example:5432/chat?sslmode=verify-full"
    settings = load_settings(write(tmp_dir, f"storage: {{database: '{url}'}}\n"))
    assert settings.storage.database == url
    assert "s3cret" not in repr(settings)


def test_a_bad_database_url_is_not_quoted_back(tmp_dir: Path) -> None:
    path = write(tmp_dir, "storage: {database: 'postgresql://u:s3cret @db/chat'}\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "s3cret" not in str(caught.value)


def test_a_relative_base_dir_is_made_absolute(
    tmp_dir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_dir)
    settings = settings_from_mapping({}, Path("conf"))
    assert settings.storage.database == tmp_dir / "conf/var/sealroom.db"


# --- the file itself ------------------------------------------------------------------------


def test_yaml_syntax_error_is_one_problem_with_its_line(tmp_dir: Path) -> None:
    path = write(tmp_dir, 'server_name: x\nlisten: ["a:1"\nlog: {}\n')
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    [problem] = caught.value.problems
    assert problem.startswith(f"{path}: line ")
    assert "invalid YAML" in problem


def test_yaml_error_reports_the_right_line(tmp_dir: Path) -> None:
    path = write(tmp_dir, "server_name: x\nlog:\n  level: info\n   format: json\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems[0].startswith(f"{path}: line 4, ")


def test_a_key_written_twice_is_an_error_not_last_wins(tmp_dir: Path) -> None:
    path = write(tmp_dir, "limits:\n  max_connections: 5\n  max_connections: 500\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems == [
        f"{path}: line 3, column 3: invalid YAML: found the key 'max_connections' twice"
    ]


def test_yaml_tags_for_python_objects_are_refused(tmp_dir: Path) -> None:
    path = write(tmp_dir, "server_name: !!python/object/apply:os.getcwd []\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert "invalid YAML" in caught.value.problems[0]


def test_a_missing_file_is_one_problem(tmp_dir: Path) -> None:
    path = tmp_dir / "absent.yaml"
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems == [f"{path}: cannot read the file: No such file or directory"]


def test_a_directory_is_not_a_file(tmp_dir: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(tmp_dir)
    assert caught.value.problems[0].startswith(f"{tmp_dir}: cannot read the file")


def test_a_file_that_is_not_utf8_is_one_problem(tmp_dir: Path) -> None:
    path = tmp_dir / "latin1.yaml"
    path.write_bytes(b"server_name: caf\xe9\n")
    with pytest.raises(ConfigError) as caught:
        load_settings(path)
    assert caught.value.problems == [f"{path}: not UTF-8 text (byte 16)"]


def test_a_top_level_list_in_a_file(tmp_dir: Path) -> None:
    with pytest.raises(ConfigError) as caught:
        load_settings(write(tmp_dir, "- server_name\n"))
    assert caught.value.problems == ["(top level): must be a mapping, got a list"]


def test_a_dump_of_a_loaded_file_loads_again(tmp_dir: Path) -> None:
    data = {"server_name": "s", "listen": ["[::1]:1"], "limits": {"max_rooms": 3}}
    path = write(tmp_dir, yaml.safe_dump(data))
    assert load_settings(path).limits.max_rooms == 3


# --- the objects ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("obj", "attribute"),
    [
        (Settings(), "server_name"),
        (LimitsSettings(), "max_connections"),
        (BucketSettings(1.0, 2.0), "rate"),
        (TlsSettings(), "cert"),
    ],
)
def test_settings_are_frozen(obj: object, attribute: str) -> None:
    with pytest.raises(dataclasses.FrozenInstanceError):
        setattr(obj, attribute, 1)


def test_settings_have_no_instance_dict() -> None:
    assert not hasattr(Settings(), "__dict__")


# --- addresses ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("127.0.0.1:7443", ("127.0.0.1", 7443)),
        ("0.0.0.0:0", ("0.0.0.0", 0)),  # noqa: S104 -- parsed, never bound
        ("localhost:0", ("localhost", 0)),
        ("chat.example.org:65535", ("chat.example.org", 65535)),
        ("host-2.example:1", ("host-2.example", 1)),
        ("[::]:7443", ("::", 7443)),
        ("[::1]:80", ("::1", 80)),
        ("[fe80::1%eth0]:80", ("fe80::1%eth0", 80)),
        ("[2001:db8::1]:9464", ("2001:db8::1", 9464)),
    ],
)
def test_parse_address_accepts(text: str, expected: tuple[str, int]) -> None:
    assert parse_address(text) == expected


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("127.0.0.1", "is not host:port"),
        ("", "is not host:port"),
        ("::1:80", "write an IPv6 address in brackets"),
        ("::", "write an IPv6 address in brackets"),
        (":7443", "has no host"),
        ("127.0.0.1:", "must be a number from 0 to 65535"),
        ("127.0.0.1:65536", "must be a number from 0 to 65535"),
        ("127.0.0.1:-1", "must be a number from 0 to 65535"),
        ("127.0.0.1:+80", "must be a number from 0 to 65535"),
        ("127.0.0.1: 80", "must be a number from 0 to 65535"),
        ("127.0.0.1:\u0661\u0662", "must be a number from 0 to 65535"),
        ("127.0.0.1:http", "must be a number from 0 to 65535"),
        ("[::1]", "is not [ipv6]:port"),
        ("[::1]80", "is not [ipv6]:port"),
        ("[127.0.0.1]:80", "is not an IPv6 address"),
        ("[nope]:80", "is not an IPv6 address"),
        ("bad host:80", "is not a host name or IPv4 address"),
        ("-bad:80", "is not a host name or IPv4 address"),
        ("a..b:80", "is not a host name or IPv4 address"),
        ("*:80", "is not a host name or IPv4 address"),
        ("999.1.1.1:80", "is not a host name or IPv4 address"),
        ("127.1:80", "is not a host name or IPv4 address"),
    ],
)
def test_parse_address_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_address(text)
