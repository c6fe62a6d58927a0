"""The configuration file (SPEC.md section 3), turned into frozen, typed settings once.

Everything downstream receives a ``Settings`` and never sees raw YAML, so type and range
checks live only here. A problem does not stop the reading: every unknown key, wrong type and
impossible value is collected, then all of them are raised together in one ``ConfigError``,
each naming its dotted key, so one edit-and-retry fixes the whole file.

The dataclass defaults are the built-in configuration. Path defaults there are relative;
``load_settings`` and ``settings_from_mapping`` resolve every path, default or not, against
the configuration file's directory (or the working directory when there is no file).
"""

from __future__ import annotations

import difflib
import ipaddress
import math
import os
import platform
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

from sealroom.core.proxy import canonical_address
from sealroom.core.storage import is_postgres_url
from sealroom.core.text import escape_for_log, has_forbidden_chars, room_name


class ConfigError(Exception):
    """The configuration cannot be used; ``problems`` holds one ``key: what is wrong`` each."""

    def __init__(self, problems: list[str]) -> None:
        super().__init__("\n".join(problems))
        self.problems = problems


@dataclass(frozen=True, slots=True)
class Argon2Settings:
    time_cost: int = 3
    memory_cost_kib: int = 65536
    parallelism: int = 4


@dataclass(frozen=True, slots=True)
class TlsSettings:
    cert: Path = Path("certs/server.crt")
    key: Path = Path("certs/server.key")
    client_ca: Path | None = None
    profile: str = "intermediate"


@dataclass(frozen=True, slots=True)
class StorageSettings:
    # A path: an SQLite file. A str: a postgresql:// URL, as written (it may hold a password,
    # hence not in the repr).
    database: Path | str = field(default=Path("var/sealroom.db"), repr=False)
    workers: int = 4  # threads for database calls, which the reactor never makes itself


@dataclass(frozen=True, slots=True)
class AuthSettings:
    argon2: Argon2Settings = field(default_factory=Argon2Settings)
    max_concurrent_verifications: int = 2
    resume_token_days: int = 7
    verification_wait_s: float = 5.0


@dataclass(frozen=True, slots=True)
class LimitsSettings:
    max_line_bytes: int = 4096
    max_connections: int = 10000
    max_connections_per_ip: int = 50
    handshake_timeout_s: float = 10.0
    login_timeout_s: float = 30.0
    idle_timeout_s: float = 3600.0
    outbound_queue_bytes: int = 1048576
    max_rooms_per_session: int = 100
    max_rooms: int = 10000
    max_room_members: int = 10000
    shutdown_grace_s: float = 5.0
    max_tracked_addresses: int = 100000
    max_sessions_per_user: int = 20


@dataclass(frozen=True, slots=True)
class BucketSettings:
    rate: float
    burst: float


@dataclass(frozen=True, slots=True)
class RateSettings:
    messages: BucketSettings = field(default_factory=lambda: BucketSettings(5.0, 20.0))
    logins_per_ip: BucketSettings = field(default_factory=lambda: BucketSettings(0.5, 10.0))
    connections_per_ip: BucketSettings = field(default_factory=lambda: BucketSettings(5.0, 50.0))
    errors: BucketSettings = field(default_factory=lambda: BucketSettings(1.0, 20.0))


@dataclass(frozen=True, slots=True)
class RoomsSettings:
    default: str = "#lobby"
    allow_create: bool = True
    max_created_per_user: int = 50
    list_max: int = 500  # ROOM lines in one /list reply


@dataclass(frozen=True, slots=True)
class HistorySettings:
    per_room: int = 1000
    private_per_user: int = 1000
    private_per_sender: int = 100
    max_query: int = 500
    rooms: bool = True  # store room messages at all (private messages are always stored)


@dataclass(frozen=True, slots=True)
class LogSettings:
    level: str = "info"
    format: str = "text"


@dataclass(frozen=True, slots=True)
class MetricsSettings:
    listen: str | None = None


@dataclass(frozen=True, slots=True)
class ControlSettings:
    socket: Path | None = Path("var/sealroom.sock")


@dataclass(frozen=True, slots=True)
class ClusterSettings:
    """Several nodes as one server (SPEC section 4): the Redis they share, this node's name,
    how long a silent node lives, and what stands in front of them."""

    redis: str | None = None  # a redis:// URL turns cluster mode on (needs PostgreSQL storage)
    node: str | None = None  # this node's name in status, metrics and logs (default HOST:PID)
    node_timeout_s: float = 5.0  # a node unheard this long is dead
    # Load balancers whose PROXY protocol header (v1 or v2) names the client: IP addresses,
    # each in its canonical spelling.
    trusted_proxies: tuple[str, ...] = ()


def node_name(cluster: ClusterSettings) -> str | None:
    """This node's name in a cluster (``cluster.node``, else HOST:PID); None on a single
    server."""
    if cluster.redis is None:
        return None
    return cluster.node or f"{platform.node() or 'localhost'}:{os.getpid()}"


@dataclass(frozen=True, slots=True)
class WebSettings:
    """The web door (SPEC section 5): HTTPS with the web client, and protocol over WebSocket."""

    listen: str | None = None
    origins: tuple[str, ...] = ()  # allowed Origin values besides https://SERVER_NAME[:PORT]
    max_request_bytes: int = 8192  # an HTTP request's line and headers, at most
    max_headers: int = 50  # header fields in one HTTP request, at most


@dataclass(frozen=True, slots=True)
class Settings:
    server_name: str = "localhost"
    listen: tuple[str, ...] = ("127.0.0.1:7443",)
    tls: TlsSettings = field(default_factory=TlsSettings)
    storage: StorageSettings = field(default_factory=StorageSettings)
    auth: AuthSettings = field(default_factory=AuthSettings)
    limits: LimitsSettings = field(default_factory=LimitsSettings)
    rate: RateSettings = field(default_factory=RateSettings)
    rooms: RoomsSettings = field(default_factory=RoomsSettings)
    history: HistorySettings = field(default_factory=HistorySettings)
    log: LogSettings = field(default_factory=LogSettings)
    metrics: MetricsSettings = field(default_factory=MetricsSettings)
    control: ControlSettings = field(default_factory=ControlSettings)
    cluster: ClusterSettings = field(default_factory=ClusterSettings)
    web: WebSettings = field(default_factory=WebSettings)
    source: Path | None = None


# --- addresses ---------------------------------------------------------------------------

_HOSTNAME = re.compile(
    r"[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?(?:\.[A-Za-z0-9](?:[A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*"
)


def _is_ipv4(text: str) -> bool:
    try:
        ipaddress.IPv4Address(text)
    except ValueError:
        return False
    return True


def parse_address(text: str) -> tuple[str, int]:
    """Split ``host:port``; IPv6 hosts must be bracketed so the port is never ambiguous."""
    if text.startswith("["):
        inside, sep, port_text = text[1:].partition("]:")
        if not sep:
            raise ValueError(f"{text!r} is not [ipv6]:port")
        try:
            ipaddress.IPv6Address(inside)
        except ValueError:
            raise ValueError(f"{inside!r} in {text!r} is not an IPv6 address") from None
        host = inside
    else:
        host, sep, port_text = text.rpartition(":")
        if not sep:
            raise ValueError(f"{text!r} is not host:port")
        if ":" in host:
            raise ValueError(f"{text!r}: write an IPv6 address in brackets, like [::1]:7443")
        if not host:
            raise ValueError(f"{text!r} has no host (use 0.0.0.0 or [::] for every address)")
        # A numeric last label means an IPv4 address was meant, so it must be one.
        numeric = host.rpartition(".")[2].isdigit()
        if len(host) > 253 or not _HOSTNAME.fullmatch(host) or (numeric and not _is_ipv4(host)):
            raise ValueError(f"{host!r} in {text!r} is not a host name or IPv4 address")
    # isascii: str.isdigit() also accepts digits from other scripts, which int() would take.
    if not (port_text.isascii() and port_text.isdigit()) or int(port_text) > 65535:
        raise ValueError(f"the port in {text!r} must be a number from 0 to 65535")
    return host, int(port_text)


# --- checks: each turns a raw YAML value into a typed one or raises _BadValueError --------

Check = Callable[[object], object]
# A cross-key rule sees the section's valid values and returns (key, problem) or None.
Rule = Callable[[Mapping[str, object]], tuple[str, str] | None]

# Larger waits overflow socket and thread timeouts (about 9.2e9 s); a billion is 31 years.
_MAX_SECONDS = 1_000_000_000
# Argon2 stores its cost parameters as 32-bit unsigned integers.
_MAX_U32 = 2**32 - 1


class _BadValueError(Exception):
    """One or more problems with a value, as (key suffix, message) pairs."""

    def __init__(self, *problems: tuple[str, str]) -> None:
        super().__init__(problems)
        self.problems = problems


def _bad(message: str) -> _BadValueError:
    return _BadValueError(("", message))


def _shown(value: object) -> str:
    """How a rejected value is quoted back: in YAML's words, and never a page long."""
    if isinstance(value, bool):
        return "true" if value else "false"
    if value is None:
        return "null"
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    if isinstance(value, str | int | float):
        text = repr(value)
        return text if len(text) <= 60 else text[:57] + "..."
    return f"a {type(value).__name__}"


def _integer(low: int, high: int | None = None) -> Check:
    wanted = f"an integer >= {low}" if high is None else f"an integer from {low} to {high}"

    def check(value: object) -> object:
        # bool is an int subclass; `true` where a count belongs is a mistake, not 1.
        if isinstance(value, bool) or not isinstance(value, int):
            raise _bad(f"must be {wanted}, got {_shown(value)}")
        if value < low or (high is not None and value > high):
            raise _bad(f"must be {wanted}, got {value}")
        return value

    return check


def _plain(bound: float) -> str:
    return str(int(bound)) if float(bound).is_integer() else str(bound)


def _number(
    *, above: float | None = None, at_least: float | None = None, at_most: float | None = None
) -> Check:
    bounds = zip((">", ">=", "<="), (above, at_least, at_most), strict=True)
    wanted = "a number " + " and ".join(
        f"{op} {_plain(bound)}" for op, bound in bounds if bound is not None
    )

    def fits(number: float) -> bool:
        return (
            math.isfinite(number)
            and (above is None or number > above)
            and (at_least is None or number >= at_least)
            and (at_most is None or number <= at_most)
        )

    def check(value: object) -> object:
        # An int is a fine number of seconds; a bool is not.
        if isinstance(value, bool) or not isinstance(value, int | float):
            raise _bad(f"must be {wanted}, got {_shown(value)}")
        try:
            number = float(value)
        except OverflowError:  # an int too large for a float
            number = math.inf
        if not fits(number):
            raise _bad(f"must be {wanted}, got {_shown(value)}")
        return number

    return check


def _seconds() -> Check:
    return _number(above=0, at_most=_MAX_SECONDS)


def _boolean(value: object) -> object:
    if not isinstance(value, bool):
        raise _bad(f"must be true or false, got {_shown(value)}")
    return value


def _choice(*options: str) -> Check:
    quoted = [repr(option) for option in options]
    wanted = " or ".join(quoted) if len(quoted) <= 2 else "one of " + ", ".join(quoted)

    def check(value: object) -> object:
        if value not in options:
            raise _bad(f"must be {wanted}, got {_shown(value)}")
        return value

    return check


def _path(*, optional: bool = False) -> Check:
    """A path as written; the loader resolves it against the configuration's directory."""

    def check(value: object) -> object:
        if value is None and optional:
            return None
        if not isinstance(value, str) or not value or "\x00" in value:
            wanted = "a file path or null" if optional else "a file path"
            raise _bad(f"must be {wanted}, got {_shown(value)}")
        return Path(value)

    return check


def _database(value: object) -> object:
    """An SQLite file's path (resolved later, like every path) or a postgresql:// URL, kept
    as written. A URL is never quoted back: it may hold a password."""
    if isinstance(value, str) and is_postgres_url(value):
        if has_forbidden_chars(value) or any(char.isspace() for char in value):
            raise _bad("a postgresql:// URL must not hold spaces or control characters")
        return value
    if isinstance(value, str) and re.match(r"[A-Za-z][A-Za-z0-9+.-]*://", value):
        raise _bad("must be a file path or a postgresql:// URL, got a URL of another kind")
    if not isinstance(value, str) or not value or "\x00" in value:
        raise _bad(f"must be a file path or a postgresql:// URL, got {_shown(value)}")
    return Path(value)


def _redis_url(value: object) -> object:
    """A redis:// or rediss:// URL, kept as written (it may hold a password: never quoted)."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.match(r"rediss?://", value):
        raise _bad("must be a redis:// or rediss:// URL, or null")
    if has_forbidden_chars(value) or any(char.isspace() for char in value):
        raise _bad("a redis:// URL must not hold spaces or control characters")
    return value


def _node_name(value: object) -> object:
    """A node's name: shown in status and logs, so one printable word."""
    if value is None:
        return None
    if not isinstance(value, str) or not re.fullmatch(r"[A-Za-z0-9_.:-]{1,64}", value):
        raise _bad(f"must be 1 to 64 of A-Z a-z 0-9 _ . : -, got {_shown(value)}")
    return value


def _server_name(value: object) -> object:
    if (
        not isinstance(value, str)
        or not 1 <= len(value) <= 64
        or has_forbidden_chars(value)
        or any(char.isspace() for char in value)
    ):
        raise _bad(
            f"must be 1 to 64 characters without spaces or control characters, got {_shown(value)}"
        )
    return value


def _address(value: object) -> str:
    if not isinstance(value, str):
        raise _bad(f"must be a host:port string, got {_shown(value)}")
    try:
        parse_address(value)
    except ValueError as exc:
        raise _bad(str(exc)) from None
    return value


def _optional_address(value: object) -> object:
    return None if value is None else _address(value)


def _addresses(value: object) -> object:
    if not isinstance(value, list) or not value:
        raise _bad(f"must be a non-empty list of host:port addresses, got {_shown(value)}")
    problems: list[tuple[str, str]] = []
    for index, item in enumerate(value):
        try:
            _address(item)
        except _BadValueError as exc:
            problems.extend((f"[{index}]", message) for _, message in exc.problems)
    if problems:
        raise _BadValueError(*problems)
    return tuple(value)


def _ip_address(value: object) -> str | None:
    """``value`` as one IP address's canonical spelling, or None if it is not one."""
    if not isinstance(value, str):
        return None
    try:
        return canonical_address(value)
    except ValueError:
        return None


def _ip_addresses(value: object) -> object:
    """A list of IP addresses (not networks: each trusted load balancer is named), each in
    its canonical spelling, once."""
    if not isinstance(value, list):
        raise _bad(f"must be a list of IP addresses, got {_shown(value)}")
    problems: list[tuple[str, str]] = []
    found: list[str] = []
    for index, item in enumerate(value):
        address = _ip_address(item)
        if address is None:
            problems.append((f"[{index}]", f"must be an IP address, got {_shown(item)}"))
        else:
            found.append(address)
    if problems:
        raise _BadValueError(*problems)
    return tuple(dict.fromkeys(found))


_ORIGIN = re.compile(r"(https?)://([a-z0-9.-]+|\[[0-9a-f:.]+\])(?::([0-9]{1,5}))?")
_DEFAULT_PORTS = {"https": "443", "http": "80"}


def _origin(value: object) -> str:
    """An origin as a browser sends it: ``scheme://host[:port]``, in lower case, and without
    the scheme's default port (a browser never writes ``:443`` for https)."""
    if not isinstance(value, str):
        raise _bad(f"must be an origin like 'https://chat.example.org', got {_shown(value)}")
    match = _ORIGIN.fullmatch(value.lower())
    if match is None:
        hint = " (an origin has no path, not even '/')" if value.endswith("/") else ""
        raise _bad(
            f"must be an origin like 'https://chat.example.org:8443'{hint}, got {_shown(value)}"
        )
    scheme, host, port = match.groups()
    if port is not None and not 0 < int(port) <= 65535:
        raise _bad(f"the port in {value!r} must be a number from 1 to 65535")
    if port is None or port == _DEFAULT_PORTS[scheme]:
        return f"{scheme}://{host}"
    return f"{scheme}://{host}:{int(port)}"


def _origins(value: object) -> object:
    if not isinstance(value, list):
        raise _bad(f"must be a list of origins, got {_shown(value)}")
    problems: list[tuple[str, str]] = []
    found: list[str] = []
    for index, item in enumerate(value):
        try:
            found.append(_origin(item))
        except _BadValueError as exc:
            problems.extend((f"[{index}]", message) for _, message in exc.problems)
    if problems:
        raise _BadValueError(*problems)
    return tuple(dict.fromkeys(found))


def _room(value: object) -> object:
    canonical = room_name(value) if isinstance(value, str) else None
    if canonical is None:
        raise _bad(f"must be a room name: '#' then 1 to 32 of a-z 0-9 _ -, got {_shown(value)}")
    return canonical


def _at_least_times(key: str, factor: int, other: str) -> Rule:
    """``key`` must be at least ``factor`` times ``other`` (checked once both are valid)."""

    def rule(values: Mapping[str, object]) -> tuple[str, str] | None:
        mine, theirs = values.get(key), values.get(other)
        if isinstance(mine, int) and isinstance(theirs, int) and mine < factor * theirs:
            return key, f"must be at least {factor} * {other} ({factor * theirs}), got {mine}"
        return None

    return rule


def _cluster_needs_postgres(values: Mapping[str, object]) -> tuple[str, str] | None:
    """Nodes share their accounts, rooms and stored messages: one SQLite file cannot."""
    cluster, storage = values.get("cluster"), values.get("storage")
    if not isinstance(cluster, ClusterSettings) or not isinstance(storage, StorageSettings):
        return None
    if cluster.redis is not None and not isinstance(storage.database, str):
        return "cluster.redis", "needs storage.database to be a postgresql:// URL"
    return None


# --- the schema: which keys each section has, and how each is checked --------------------


@dataclass(frozen=True, slots=True)
class _Section:
    keys: Mapping[str, Check | _Section]
    rules: tuple[Rule, ...] = ()


_BUCKET = _Section({"rate": _number(above=0), "burst": _number(at_least=1)})

_SCHEMA = _Section(
    {
        "server_name": _server_name,
        "listen": _addresses,
        "tls": _Section(
            {
                "cert": _path(),
                "key": _path(),
                "client_ca": _path(optional=True),
                "profile": _choice("intermediate", "modern"),
            }
        ),
        "storage": _Section({"database": _database, "workers": _integer(1, 64)}),
        "auth": _Section(
            {
                "argon2": _Section(
                    {
                        "time_cost": _integer(1, _MAX_U32),
                        "memory_cost_kib": _integer(8, _MAX_U32),
                        "parallelism": _integer(1, 255),
                    },
                    # Argon2 itself refuses less than 8 KiB of memory per lane.
                    rules=(_at_least_times("memory_cost_kib", 8, "parallelism"),),
                ),
                "max_concurrent_verifications": _integer(1),
                "resume_token_days": _integer(1, 365),
                "verification_wait_s": _seconds(),
            }
        ),
        "limits": _Section(
            {
                "max_line_bytes": _integer(64, 1048576),
                "max_connections": _integer(1),
                "max_connections_per_ip": _integer(1),
                "handshake_timeout_s": _seconds(),
                "login_timeout_s": _seconds(),
                "idle_timeout_s": _seconds(),
                "outbound_queue_bytes": _integer(1),
                "max_rooms_per_session": _integer(1),
                "max_rooms": _integer(1),
                "max_room_members": _integer(1),
                "shutdown_grace_s": _seconds(),
                "max_tracked_addresses": _integer(1),
                "max_sessions_per_user": _integer(1),
            },
            # The queue must hold a full line plus the reply that says it was cut off.
            rules=(_at_least_times("outbound_queue_bytes", 2, "max_line_bytes"),),
        ),
        "rate": _Section(
            {
                "messages": _BUCKET,
                "logins_per_ip": _BUCKET,
                "connections_per_ip": _BUCKET,
                "errors": _BUCKET,
            }
        ),
        "rooms": _Section(
            {
                "default": _room,
                "allow_create": _boolean,
                "max_created_per_user": _integer(1),
                "list_max": _integer(1),
            }
        ),
        "history": _Section(
            {
                "per_room": _integer(1),
                "private_per_user": _integer(1),
                "private_per_sender": _integer(1),
                "max_query": _integer(1),
                "rooms": _boolean,
            }
        ),
        "log": _Section(
            {
                "level": _choice("debug", "info", "warning", "error"),
                "format": _choice("text", "json"),
            }
        ),
        "metrics": _Section({"listen": _optional_address}),
        "control": _Section({"socket": _path(optional=True)}),
        "cluster": _Section(
            {
                "redis": _redis_url,
                "node": _node_name,
                "node_timeout_s": _number(at_least=1, at_most=300),
                "trusted_proxies": _ip_addresses,
            },
        ),
        "web": _Section(
            {
                "listen": _optional_address,
                "origins": _origins,
                "max_request_bytes": _integer(1024, 1048576),
                "max_headers": _integer(8, 1000),
            }
        ),
    },
    rules=(_cluster_needs_postgres,),
)


# --- reading -----------------------------------------------------------------------------


def _dotted(prefix: str, key: object) -> str:
    return f"{prefix}.{key}" if prefix else str(key)


class _Reader:
    """Walks the schema over parsed YAML, collecting problems instead of stopping at one."""

    def __init__(self, base_dir: Path) -> None:
        self.base_dir = base_dir
        self.problems: list[str] = []

    def section(self, data: object, section: _Section, prefix: str, defaults: Any) -> object:
        """One section built from ``data``, missing keys taken from ``defaults``.

        Returns None when this section had any problem; they are in ``self.problems``.
        """
        if data is None:  # an empty section, like an empty file, means "all defaults"
            data = {}
        if not isinstance(data, dict):
            where = prefix or "(top level)"
            self.problems.append(f"{where}: must be a mapping, got {_shown(data)}")
            return None
        found_before = len(self.problems)
        self._unknown_keys(data, section, prefix)
        values: dict[str, object] = {}
        for key, spec in section.keys.items():
            value = self._value(data, key, spec, _dotted(prefix, key), defaults)
            if value is not _MISSING:
                values[key] = value
        for rule in section.rules:
            broken = rule(values)
            if broken is not None:
                self.problems.append(f"{_dotted(prefix, broken[0])}: {broken[1]}")
        if len(self.problems) > found_before:
            return None
        return type(defaults)(**values)

    def _unknown_keys(self, data: dict[Any, Any], section: _Section, prefix: str) -> None:
        for key in data:
            if key not in section.keys:
                hint = difflib.get_close_matches(str(key), section.keys, n=1)
                suggestion = f" (did you mean {hint[0]!r}?)" if hint else ""
                # The key came from the file as written; keep it from driving the terminal.
                name = _dotted(prefix, escape_for_log(str(key)))
                self.problems.append(f"{name}: unknown key{suggestion}")

    def _value(
        self, data: dict[Any, Any], key: str, spec: Check | _Section, dotted: str, defaults: Any
    ) -> object:
        if isinstance(spec, _Section):
            value = self.section(data.get(key), spec, dotted, getattr(defaults, key))
            return _MISSING if value is None else value
        if key not in data:
            value = getattr(defaults, key)
        else:
            try:
                value = spec(data[key])
            except _BadValueError as exc:
                self.problems.extend(f"{dotted}{sub}: {message}" for sub, message in exc.problems)
                return _MISSING
        if isinstance(value, Path) and not value.is_absolute():
            value = self.base_dir / value
        return value


_MISSING = object()


def settings_from_mapping(data: object, base_dir: Path, source: Path | None = None) -> Settings:
    """Check parsed YAML (None meaning an empty file) and build ``Settings`` from it."""
    reader = _Reader(base_dir.absolute())
    settings = reader.section(data, _SCHEMA, "", Settings())
    if reader.problems or not isinstance(settings, Settings):
        raise ConfigError(reader.problems)
    return replace(settings, source=source)


class _StrictLoader(yaml.SafeLoader):
    """The safe loader, except that a key written twice is an error rather than last-wins."""

    def construct_mapping(self, node: yaml.MappingNode, deep: bool = False) -> dict[Any, Any]:
        seen: set[object] = set()
        for key_node, _ in node.value:
            key = self.construct_object(key_node, deep=deep)
            try:
                duplicate = key in seen
                seen.add(key)
            except TypeError:  # an unhashable key; the base class reports it properly
                continue
            if duplicate:
                raise yaml.constructor.ConstructorError(
                    "while reading a mapping",
                    node.start_mark,
                    f"found the key {key!r} twice",
                    key_node.start_mark,
                )
        return super().construct_mapping(node, deep=deep)


def _parse_yaml(path: Path) -> object:
    try:
        text = path.read_text(encoding="utf-8")
    except OSError as exc:
        raise ConfigError([f"{path}: cannot read the file: {exc.strerror or exc}"]) from None
    except UnicodeDecodeError as exc:
        raise ConfigError([f"{path}: not UTF-8 text (byte {exc.start})"]) from None
    try:
        # A SafeLoader subclass: it constructs plain data only, never Python objects.
        return yaml.load(text, Loader=_StrictLoader)  # noqa: S506
    except yaml.MarkedYAMLError as exc:
        mark = exc.problem_mark
        where = f"line {mark.line + 1}, column {mark.column + 1}: " if mark is not None else ""
        raise ConfigError([f"{path}: {where}invalid YAML: {exc.problem}"]) from None
    except yaml.YAMLError as exc:
        raise ConfigError([f"{path}: invalid YAML: {exc}"]) from None


def load_settings(path: Path | None = None) -> Settings:
    """Read the configuration file at ``path``, or the built-in defaults when it is None."""
    if path is None:
        return settings_from_mapping(None, Path.cwd())
    # Resolve the directory (so "../etc" means what the kernel means) but not the file name:
    # a symlinked configuration file keeps its paths relative to where the link is.
    source = path.absolute().parent.resolve() / path.name
    return settings_from_mapping(_parse_yaml(source), source.parent, source)
