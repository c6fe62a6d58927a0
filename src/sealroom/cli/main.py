"""The ``sealroom`` command: one small function per subcommand, one error boundary.

User mistakes (a bad config, a missing file, an existing account) end as one line on stderr
and exit status 1, with or without a terminal; bad usage is argparse's exit status 2; a
traceback means a bug. ``-c/--config`` is accepted before or after a command's name.

Commands that use the database never create one: ``db init`` does (and ``serve`` on its
first start). Every command's ``--help`` ends with examples, written once, in the table
that builds the parser; ``sealroom completion bash`` prints a completion script made from
the same parser.
"""

from __future__ import annotations

import argparse
import getpass
import json
import os
import secrets
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from datetime import UTC, datetime
from pathlib import Path

from sealroom import __version__
from sealroom.cli.commands import CommandTable, build_parser
from sealroom.cli.rooms import add_room_commands
from sealroom.cli.tools import add_client_commands
from sealroom.config import ConfigError, Settings, load_settings, node_name, parse_address
from sealroom.core.errors import UserError
from sealroom.core.model import AccountExists, MissingDatabase, StoreError
from sealroom.core.storage import Store, is_postgres_url
from sealroom.core.text import escape_for_log, password_problem, user_name
from sealroom.net.tls import build_server_context
from sealroom.ops.app import serve
from sealroom.ops.certs import init_certs
from sealroom.ops.control import request as control_request
from sealroom.ops.logs import configure_logging
from sealroom.ops.observe import status_text
from sealroom.ops.reload import certificate_validity, check_certificate_dates
from sealroom.policy.auth import encoded_hash_problem, password_hasher
from sealroom.store import open_store
from sealroom.store.copy import copy_to_postgres
from sealroom.store.sqlite import SqliteStore, check_file

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        # `sealroom` or `sealroom user` alone: what there is to run, not just a usage line.
        getattr(args, "help_parser", parser).print_help(sys.stderr)
        return 2
    try:
        return handler(args)
    except ConfigError as error:
        print(f"sealroom: configuration: {'; '.join(error.problems)}", file=sys.stderr)
    except (UserError, StoreError) as error:
        print(f"sealroom: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("sealroom: interrupted", file=sys.stderr)
    except EOFError:
        print("sealroom: end of input", file=sys.stderr)
    return 1


# -- configuration ---------------------------------------------------------------------------


def _settings(args: argparse.Namespace) -> Settings:
    path = getattr(args, "config", None) or os.environ.get("SEALROOM_CONFIG") or None
    return load_settings(Path(path) if path else None)


def cmd_check_config(args: argparse.Namespace) -> int:
    try:
        settings = _settings(args)
    except ConfigError as error:
        for problem in error.problems:
            print(problem, file=sys.stderr)
        return 1
    problems = tls_problems(settings) + engine_problems(settings)
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    where = settings.source or "built-in defaults"
    print(f"configuration OK ({where})")
    return 0


def engine_problems(settings: Settings) -> list[str]:
    """In cluster mode: that Redis and PostgreSQL answer, and that neither would lose or
    evict what the cluster acknowledged. A single node has nothing to check here."""
    url = settings.cluster.redis
    if url is None:
        return []
    from sealroom.cluster.checks import redis_problems  # noqa: PLC0415 -- cluster mode only
    from sealroom.cluster.plane import connect  # noqa: PLC0415

    client = connect(url)
    try:
        problems = [f"cluster.redis: {problem}" for problem in redis_problems(client)]
    finally:
        client.close()
    try:
        from sealroom.store.postgres import PostgresStore  # noqa: PLC0415

        with PostgresStore(str(settings.storage.database), create=False) as store:
            unsafe = store.unsafe_settings()
    except ImportError as error:
        unsafe = [f"needs the cluster extra ({error.name} is missing)"]
    except StoreError as error:
        unsafe = [str(error)]
    return problems + [f"storage.database: {problem}" for problem in unsafe]


def tls_problems(settings: Settings) -> list[str]:
    """What keeps ``serve`` from starting with these TLS files: each problem once.

    The certificate, key and client CA must be readable, the key must match the
    certificate, and the certificate must be valid now.
    """
    tls = settings.tls
    problems = []
    try:
        build_server_context(tls.cert, tls.key, tls.client_ca, tls.profile)
    except (UserError, ValueError) as error:
        problems.append(f"tls: {error}")
    try:
        certificate_validity(tls.cert)
    except UserError:
        return problems  # unreadable or not a certificate: said above
    try:
        check_certificate_dates(tls.cert)
    except UserError as error:
        problems.append(f"tls.cert: {error}")
    return problems


# -- serve and certs ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    for address in args.listen or ():
        try:
            parse_address(address)
        except ValueError as error:
            raise UserError(f"--listen: {error}") from None
    node = node_name(settings.cluster)
    configure_logging(settings.log.level, settings.log.format, node=node)
    return serve(settings, listen=args.listen or ())


def cmd_certs_init(args: argparse.Namespace) -> int:
    written = init_certs(Path(args.dir), args.host or (), force=args.force, new_ca=args.new_ca)
    for path in written:
        print(f"wrote {path}")
    if args.force and not args.new_ca and len(written) == 2:
        print("kept the CA: clients that trust its ca.crt trust the new certificate")
    return 0


# -- accounts ----------------------------------------------------------------------------------


def _canonical_name(raw: str) -> str:
    name = user_name(raw)
    if name is None:
        raise UserError(f"invalid user name {raw!r}: use [a-z0-9][a-z0-9_.-], at most 32")
    return name


def _read_new_password(args: argparse.Namespace) -> str:
    if args.password_stdin:
        line = sys.stdin.readline()
        if not line:
            raise UserError("--password-stdin: standard input is empty")
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        _require_terminal()
        try:
            password = getpass.getpass("New password: ")
            again = getpass.getpass("Repeat password: ")
        except EOFError:
            raise UserError("no password given") from None
        if again != password:
            raise UserError("passwords do not match")
    problem = password_problem(password)
    if problem:
        raise UserError(problem)
    return password


def _require_terminal() -> None:
    """getpass would fall back to standard input, with a warning, without a terminal."""
    try:
        with open("/dev/tty", "rb"):
            pass
    except OSError:
        raise UserError("no terminal to ask for the password on: use --password-stdin") from None


def _hash_password(settings: Settings, password: str) -> str:
    params = settings.auth.argon2
    hasher = password_hasher(params.time_cost, params.memory_cost_kib, params.parallelism)
    return hasher.hash(password)


def _open_store(settings: Settings) -> Store:
    """The configured database, which must exist: a command never creates one by mistake."""
    database = settings.storage.database
    try:
        return open_store(database, create=False)
    except MissingDatabase:
        if settings.source is None:
            where = "the built-in default; the server's configuration is named with -c"
        else:
            where = f"storage.database in {settings.source}"
        missing = Path(database).absolute()
        raise UserError(
            f"no database at {missing} ({where}); create one with 'sealroom db init'"
        ) from None


def _settings_and_store(args: argparse.Namespace) -> tuple[Settings, Store]:
    """For ``room …``: the configuration, and its database, which must exist."""
    settings = _settings(args)
    return settings, _open_store(settings)


def cmd_user_add(args: argparse.Namespace) -> int:
    settings = _settings(args)
    name = _canonical_name(args.name)
    with _open_store(settings) as store:
        if store.get_account(name) is not None:
            raise UserError(f"account {name} already exists")
        password = _read_new_password(args)
        try:
            store.add_account(name, _hash_password(settings, password), is_admin=args.admin)
        except AccountExists:
            raise UserError(f"account {name} already exists") from None
    print(f"added {'admin ' if args.admin else ''}account {name}")
    return 0


def _existing(store: Store, raw: str) -> str:
    name = _canonical_name(raw)
    if store.get_account(name) is None:
        raise UserError(f"no account {name}")
    return name


def cmd_user_passwd(args: argparse.Namespace) -> int:
    settings = _settings(args)
    with _open_store(settings) as store:
        name = _existing(store, args.name)
        store.set_password_hash(name, _hash_password(settings, _read_new_password(args)))
    print(f"password of {name} changed")
    return 0


def _set_enabled(args: argparse.Namespace, enabled: bool) -> int:
    with _open_store(_settings(args)) as store:
        name = _existing(store, args.name)
        store.set_enabled(name, enabled)
    print(f"{'enabled' if enabled else 'disabled'} account {name}")
    return 0


def cmd_user_disable(args: argparse.Namespace) -> int:
    return _set_enabled(args, enabled=False)


def cmd_user_enable(args: argparse.Namespace) -> int:
    return _set_enabled(args, enabled=True)


def cmd_user_role(args: argparse.Namespace) -> int:
    with _open_store(_settings(args)) as store:
        name = _existing(store, args.name)
        store.set_admin(name, args.role == "admin")
    print(f"{name} is now {'an admin' if args.role == 'admin' else 'a plain user'}")
    return 0


def cmd_user_remove(args: argparse.Namespace) -> int:
    with _open_store(_settings(args)) as store:
        name = _existing(store, args.name)
        store.remove_account(name)
    print(f"removed account {name}")
    return 0


IMPORT_BATCH = 500
ARGON2ID_PREFIX = "$argon2id$"


def cmd_user_import(args: argparse.Namespace) -> int:
    """Create many accounts from ``NAME:PASSWORD`` or ``NAME:$argon2id$...`` lines."""
    settings = _settings(args)
    params = settings.auth.argon2
    hasher = password_hasher(params.time_cost, params.memory_cost_kib, params.parallelism)
    entries = _read_import_file(Path(args.file))
    created = 0
    show_progress = sys.stderr.isatty()
    with _open_store(settings) as store:
        for start in range(0, len(entries), IMPORT_BATCH):
            batch = [
                (name, secret if secret.startswith(ARGON2ID_PREFIX) else hasher.hash(secret))
                for name, secret in entries[start : start + IMPORT_BATCH]
            ]
            created += store.add_accounts(batch)
            if show_progress:
                done = start + len(batch)
                bar = "#" * (30 * done // len(entries))
                print(f"\r[{bar:<30}] {done}/{len(entries)}", end="", file=sys.stderr)
    if show_progress:
        print(file=sys.stderr)
    print(f"imported {created} accounts; {len(entries) - created} already existed")
    return 0


def _read_import_file(path: Path) -> list[tuple[str, str]]:
    """Every line checked before anything is written: a bad file imports nothing."""
    try:
        # Lines end at LF (one CR before it dropped), as on the wire: str.splitlines() would
        # also break at U+2028 and friends, turning one refused password into a second account.
        lines = [line.removesuffix("\r") for line in path.read_bytes().decode("utf-8").split("\n")]
    except (OSError, UnicodeDecodeError) as error:
        raise UserError(f"cannot read {path}: {error}") from None
    entries: list[tuple[str, str]] = []
    seen: set[str] = set()
    for number, line in enumerate(lines, start=1):
        if not line.strip() or line.startswith("#"):
            continue
        raw_name, sep, secret = line.partition(":")
        name = user_name(raw_name.strip())
        if not sep or name is None:
            raise UserError(f"{path}:{number}: expected NAME:PASSWORD with a valid name")
        problem = (
            encoded_hash_problem(secret)
            if secret.startswith(ARGON2ID_PREFIX)
            else (password_problem(secret))
        )
        if problem:
            raise UserError(f"{path}:{number}: {problem}")
        if name in seen:
            raise UserError(f"{path}:{number}: {name} is listed twice")
        seen.add(name)
        entries.append((name, secret))
    return entries


def cmd_user_list(args: argparse.Namespace) -> int:
    with _open_store(_settings(args)) as store:
        accounts = store.list_accounts()
    rows = [
        {
            "name": a.name,
            "role": "admin" if a.is_admin else "user",
            "state": "enabled" if a.enabled else "disabled",
            "created": a.created_at,
            "last_login": a.last_login,
        }
        for a in accounts
    ]
    if args.json:
        print(json.dumps(rows))
        return 0
    print(f"{'NAME':<33} {'ROLE':<6} {'STATE':<9} LAST LOGIN")
    for row in rows:
        print(f"{row['name']:<33} {row['role']:<6} {row['state']:<9} {row['last_login'] or '-'}")
    return 0


# -- the database ------------------------------------------------------------------------------


def cmd_db_init(args: argparse.Namespace) -> int:
    database = _settings(args).storage.database
    if is_postgres_url(database):  # the schema is made (or brought up to date) on opening
        with open_store(database) as store:
            print(f"database {store.location} ready ({store.count_accounts()} accounts)")
        return 0
    path = Path(database)
    existed = path.exists()
    with SqliteStore(path, create=True) as store:
        accounts = store.count_accounts()
    if existed:
        print(f"database {path.absolute()} exists ({accounts} accounts); left as it is")
    else:
        print(f"created an empty database at {path.absolute()}")
    return 0


def cmd_db_backup(args: argparse.Namespace) -> int:
    destination = Path(args.path)
    with _open_store(_settings(args)) as store:
        store.backup(destination)
    print(f"backed up {store.location} to {destination}")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    if args.path is not None:
        target = Path(args.path)
        problems = check_file(target)
        where = str(target)
    else:
        with _open_store(_settings(args)) as store:
            problems = store.check()
        where = store.location
    for problem in problems:
        print(f"sealroom: {problem}", file=sys.stderr)
    if problems:
        return 1
    print(f"database ok ({where})")
    return 0


def cmd_db_copy(args: argparse.Namespace) -> int:
    """The configured SQLite database into an empty PostgreSQL one, with a progress line."""
    settings = _settings(args)
    live = sys.stderr.isatty()

    def progress(what: str, done: int, total: int) -> None:
        if live:
            end = "\n" if done == total else ""
            print(f"\rcopying {what}: {done}/{total}", end=end, file=sys.stderr, flush=True)
        elif done == total:
            print(f"copied {what}: {done}/{total}", file=sys.stderr)

    copied = copy_to_postgres(settings.storage.database, args.to, progress)
    print(
        f"copied {copied.accounts} accounts, {copied.messages} messages"
        f" ({copied.pending} waiting for delivery) and {copied.tokens} resume tokens;"
        f" new message ids start above {max(copied.id_high_water, copied.top_id)}"
    )
    return 0


# -- operating a running server ----------------------------------------------------------------


def _ask_server(args: argparse.Namespace, message: dict[str, object]) -> dict[str, object]:
    path = _settings(args).control.socket
    if path is None:
        raise UserError("the control socket is turned off (control.socket: null)")
    reply = control_request(path, message)
    if not reply.get("ok"):
        raise UserError(escape_for_log(str(reply.get("error", "the server refused"))))
    return reply


def cmd_status(args: argparse.Namespace) -> int:
    report = _ask_server(args, {"command": "status"})
    report.pop("ok", None)
    if args.json:
        print(json.dumps(report))
        return 0
    for line in status_text(report):
        print(escape_for_log(line))
    return 0


def cmd_kick(args: argparse.Namespace) -> int:
    name = _canonical_name(args.name)
    reply = _ask_server(args, {"command": "kick", "name": name, "reason": args.reason or ""})
    count = int(str(reply.get("sessions", 0)))
    print(f"kicked {name} ({count} {'session' if count == 1 else 'sessions'} closed)")
    return 0


def cmd_reload(args: argparse.Namespace) -> int:
    reply = _ask_server(args, {"command": "reload"})
    source = reply.get("source") or "built-in defaults"
    expires = reply.get("certificate_expires")
    until = f"; TLS certificate valid until {expires}" if expires else ""
    print(escape_for_log(f"reloaded {source}{until}"))
    return 0


def cmd_sessions(args: argparse.Namespace) -> int:
    reply = _ask_server(args, {"command": "sessions"})
    rows = reply.get("sessions")
    if not isinstance(rows, list):
        raise UserError("the server sent no session list")
    if args.json:
        print(json.dumps(rows))
        return 0
    cluster = any("node" in row for row in rows)  # a cluster's census names each node
    node_column = f"{'NODE':<20} " if cluster else ""
    print(f"{'USER':<33} {'ADDRESS':<40} {node_column}{'CONNECTED SINCE':<25} ROOMS")
    for row in rows:
        rooms = " ".join(row.get("rooms", ())) or "-"
        since = str(row.get("connected_since", "?"))
        node = f"{row.get('node', '?'):<20} " if cluster else ""
        print(
            escape_for_log(
                f"{row.get('user', '?'):<33} {row.get('address', '?'):<40} {node}"
                f"{since + _ago(since):<25} {rooms}"
            )
        )
    return 0


def _ago(iso: str) -> str:
    """`` (5m)``: how long ago ``iso`` was, for people scanning the list."""
    try:
        then = datetime.fromisoformat(iso.replace("Z", "+00:00"))
    except ValueError:
        return ""
    seconds = max(0, int((datetime.now(UTC) - then).total_seconds()))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if seconds >= size:
            return f" ({seconds // size}{unit})"
    return f" ({seconds}s)"


def cmd_argon2_timing(args: argparse.Namespace) -> int:
    settings = _settings(args)
    params = settings.auth.argon2
    hasher = password_hasher(params.time_cost, params.memory_cost_kib, params.parallelism)
    durations = []
    for _ in range(args.rounds):
        started = time.perf_counter()
        hasher.hash(secrets.token_urlsafe(16))
        durations.append(time.perf_counter() - started)
    median = statistics.median(durations)
    slots = settings.auth.max_concurrent_verifications
    print(
        f"argon2id time_cost={params.time_cost} memory_cost_kib={params.memory_cost_kib} "
        f"parallelism={params.parallelism}"
    )
    print(
        f"one hash: {median * 1000:.0f} ms on this host "
        f"(median of {args.rounds}, fastest {min(durations) * 1000:.0f} ms)"
    )
    print(
        f"auth.max_concurrent_verifications={slots}: at most "
        f"{slots * params.memory_cost_kib / 1024:.0f} MiB for argon2 at once, "
        f"about {slots / median:.1f} password checks per second"
    )
    if median < 0.1:
        print("advice: under 100 ms; raise time_cost (or memory_cost_kib) to slow guessing down")
    elif median > 1.0:
        print("advice: over 1 s; logins will feel slow and queue up: lower time_cost")
    return 0


def _rounds(text: str) -> int:
    if not (text.isascii() and text.isdigit()) or not 1 <= int(text) <= 100:
        raise argparse.ArgumentTypeError("a number from 1 to 100")
    return int(text)


# -- the parser --------------------------------------------------------------------------------


def cmd_completion(args: argparse.Namespace) -> int:
    # Only this command needs shtab: every other one starts without importing it.
    from sealroom.cli.completion import completion_script  # noqa: PLC0415

    print(completion_script(_build_parser(), args.shell), end="")
    return 0


def _build_parser() -> argparse.ArgumentParser:
    table = CommandTable(
        build_parser(
            "sealroom",
            "A TLS-secured, authenticated message server.",
            version=f"sealroom {__version__}",
        )
    )
    _server_commands(table)
    _certs_commands(table)
    _db_commands(table)
    _user_commands(table)
    add_room_commands(table, _settings_and_store)
    add_client_commands(table)
    table.command(
        table.commands,
        "completion",
        cmd_completion,
        "print a shell completion script",
        examples=(
            (
                "sealroom completion bash > ~/.local/share/bash-completion/completions/sealroom",
                "install it for your user",
            ),
            ("source <(sealroom completion bash)", "try it in this shell"),
        ),
    ).add_argument("shell", choices=("bash",), help="the shell (bash)")
    return table.parser


def _server_commands(table: CommandTable) -> None:
    command, commands = table.command, table.commands
    serve_parser = command(
        commands,
        "serve",
        cmd_serve,
        "run the server in the foreground",
        examples=(
            ("sealroom serve -c /etc/sealroom/sealroom.yaml", "with a configuration file"),
            ("sealroom serve --listen 127.0.0.1:7444", "on another port than the configured one"),
        ),
    )
    serve_parser.add_argument(
        "--listen",
        action="append",
        metavar="ADDR",
        help="listen on ADDR (HOST:PORT, [IPV6]:PORT) instead of the configured listen "
        "(repeatable)",
    )
    command(
        commands,
        "check-config",
        cmd_check_config,
        "validate the configuration and the TLS files it names",
        examples=(("sealroom check-config -c /etc/sealroom/sealroom.yaml", ""),),
    )
    command(
        commands,
        "status",
        cmd_status,
        "what the running server is doing",
        examples=(("sealroom status", ""), ("sealroom status --json", "for scripts")),
    ).add_argument("--json", action="store_true", help="machine-readable output")
    command(
        commands,
        "sessions",
        cmd_sessions,
        "the running server's live sessions",
        examples=(("sealroom sessions", ""), ("sealroom sessions --json", "for scripts")),
    ).add_argument("--json", action="store_true", help="machine-readable output")
    command(
        commands,
        "reload",
        cmd_reload,
        "reload the running server's configuration and TLS files, as SIGHUP does",
        examples=(("sealroom reload -c /etc/sealroom/sealroom.yaml", ""),),
    )
    kick = command(
        commands,
        "kick",
        cmd_kick,
        "disconnect every session of an account",
        examples=(("sealroom kick mallory --reason spam", ""),),
    )
    kick.add_argument("name", metavar="NAME")
    kick.add_argument("--reason", metavar="TEXT", help="shown to the user in BYE")
    timing = command(
        commands,
        "argon2-timing",
        cmd_argon2_timing,
        "time one password hash with the configured argon2 parameters on this host",
        examples=(("sealroom argon2-timing --rounds 10", ""),),
    )
    timing.add_argument(
        "--rounds", type=_rounds, default=5, metavar="N", help="hashes to time (default: 5)"
    )


def _certs_commands(table: CommandTable) -> None:
    certs = table.group("certs", "development certificates")
    init = table.command(
        certs,
        "init",
        cmd_certs_init,
        "create a private CA and a server certificate signed by it",
        examples=(
            ("sealroom certs init --dir certs --host chat.example.org", "the first time"),
            (
                "sealroom certs init --dir certs --host chat.example.org --force",
                "renew the server certificate; clients keep their ca.crt",
            ),
            ("sealroom certs init --dir certs --force --new-ca", "start over with a new CA"),
        ),
    )
    init.add_argument("--dir", default="certs", help="where to write them (default: certs)")
    init.add_argument(
        "--host",
        action="append",
        metavar="NAME",
        help="a DNS name or IP address for the certificate (repeatable)",
    )
    init.add_argument(
        "--force",
        action="store_true",
        help="replace the server certificate and key (under the existing CA)",
    )
    init.add_argument("--new-ca", action="store_true", help="with --force: replace the CA as well")


def _db_commands(table: CommandTable) -> None:
    db = table.group("db", "the database")
    table.command(
        db,
        "init",
        cmd_db_init,
        "create an empty database (storage.database) if there is none",
        examples=(("sealroom db init -c /etc/sealroom/sealroom.yaml", ""),),
    )
    table.command(
        db,
        "backup",
        cmd_db_backup,
        "copy the database to PATH (safe while the server runs)",
        examples=(("sealroom db backup /var/backups/sealroom/sealroom.db", ""),),
    ).add_argument("path", metavar="PATH", help="a new file for the copy (mode 0600)")
    table.command(
        db,
        "check",
        cmd_db_check,
        "check the database's integrity, or a backup's",
        examples=(
            ("sealroom db check", "the configured database"),
            ("sealroom db check /var/backups/sealroom/sealroom.db", "a backup, read only"),
        ),
    ).add_argument(
        "path", nargs="?", metavar="PATH", help="a database file to check instead (a backup)"
    )
    table.command(
        db,
        "copy",
        cmd_db_copy,
        "copy the configured SQLite database into an empty PostgreSQL database",
        examples=(("sealroom db copy --to postgresql://sealroom@db.example/sealroom", ""),),
    ).add_argument("--to", required=True, metavar="URL", help="postgresql://USER@HOST/DBNAME")


def _user_commands(table: CommandTable) -> None:
    users = table.group("user", "manage accounts")
    stdin_help = "read the password as one line from standard input"
    add = table.command(
        users,
        "add",
        cmd_user_add,
        "create an account",
        examples=(
            ("sealroom user add alice", "prompts twice for the password"),
            ("sealroom user add bot --password-stdin < bot.password", "from a script"),
            ("sealroom user add carol --admin", "an administrator"),
        ),
    )
    add.add_argument("name", metavar="NAME")
    add.add_argument("--password-stdin", action="store_true", help=stdin_help)
    add.add_argument("--admin", action="store_true", help="an administrator")
    passwd = table.command(
        users,
        "passwd",
        cmd_user_passwd,
        "set a new password",
        examples=(("sealroom user passwd alice", "prompts twice"),),
    )
    passwd.add_argument("name", metavar="NAME")
    passwd.add_argument("--password-stdin", action="store_true", help=stdin_help)
    for name, handler, text in (
        ("disable", cmd_user_disable, "lock an account and drop its sessions"),
        ("enable", cmd_user_enable, "unlock an account"),
        ("remove", cmd_user_remove, "delete an account and its messages"),
    ):
        table.command(
            users, name, handler, text, examples=((f"sealroom user {name} mallory", ""),)
        ).add_argument("name", metavar="NAME")
    role = table.command(
        users,
        "role",
        cmd_user_role,
        "make an account an admin or a plain user (its sessions are closed)",
        examples=(
            ("sealroom user role carol admin", ""),
            ("sealroom user role alice user", "refused if alice is the last enabled admin"),
        ),
    )
    role.add_argument("name", metavar="NAME")
    role.add_argument("role", choices=("admin", "user"), help="the new role")
    table.command(
        users,
        "import",
        cmd_user_import,
        "create accounts from a file of NAME:PASSWORD or NAME:ARGON2ID-HASH lines",
        examples=(("sealroom user import accounts.txt", "existing accounts are left alone"),),
    ).add_argument("file", metavar="FILE")
    table.command(
        users,
        "list",
        cmd_user_list,
        "list accounts",
        examples=(("sealroom user list", ""), ("sealroom user list --json", "for scripts")),
    ).add_argument("--json", action="store_true", help="machine-readable output")
