"""The ``sealroom`` command: one small function per subcommand, one error boundary.

User mistakes (a bad config, a missing file, an existing account) end as one line on stderr
and exit status 1; bad usage is argparse's exit status 2; a traceback means a bug.
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
from pathlib import Path

from sealroom import __version__
from sealroom.cli.tools import add_client_commands
from sealroom.config import ConfigError, Settings, load_settings
from sealroom.core.errors import UserError
from sealroom.core.model import AccountExists, StoreError
from sealroom.core.storage import Store
from sealroom.core.text import escape_for_log, password_problem, user_name
from sealroom.ops.app import serve
from sealroom.ops.certs import init_certs
from sealroom.ops.control import request as control_request
from sealroom.ops.logs import configure_logging
from sealroom.ops.observe import status_text
from sealroom.policy.auth import encoded_hash_problem, password_hasher
from sealroom.store import open_store
from sealroom.store.copy import copy_to_postgres

Handler = Callable[[argparse.Namespace], int]


def main(argv: Sequence[str] | None = None) -> int:
    parser = _build_parser()
    args = parser.parse_args(argv)
    handler: Handler | None = getattr(args, "handler", None)
    if handler is None:
        parser.print_usage(sys.stderr)
        return 2
    try:
        return handler(args)
    except ConfigError as error:
        print(f"sealroom: configuration: {'; '.join(error.problems)}", file=sys.stderr)
    except (UserError, StoreError) as error:
        print(f"sealroom: {error}", file=sys.stderr)
    except KeyboardInterrupt:
        print("sealroom: interrupted", file=sys.stderr)
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
    where = settings.source or "built-in defaults"
    print(f"configuration OK ({where})")
    return 0


# -- serve and certs ---------------------------------------------------------------------------


def cmd_serve(args: argparse.Namespace) -> int:
    settings = _settings(args)
    configure_logging(settings.log.level, settings.log.format)
    return serve(settings)


def cmd_certs_init(args: argparse.Namespace) -> int:
    written = init_certs(Path(args.dir), args.host or (), force=args.force)
    for path in written:
        print(f"wrote {path}")
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
        password = line.removesuffix("\n").removesuffix("\r")
    else:
        password = getpass.getpass("New password: ")
        if getpass.getpass("Repeat password: ") != password:
            raise UserError("passwords do not match")
    problem = password_problem(password)
    if problem:
        raise UserError(problem)
    return password


def _hash_password(settings: Settings, password: str) -> str:
    params = settings.auth.argon2
    hasher = password_hasher(params.time_cost, params.memory_cost_kib, params.parallelism)
    return hasher.hash(password)


def _open_store(settings: Settings) -> Store:
    return open_store(settings.storage.database)


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


def cmd_db_backup(args: argparse.Namespace) -> int:
    destination = Path(args.path)
    with _open_store(_settings(args)) as store:
        store.backup(destination)
    print(f"backed up {store.location} to {destination}")
    return 0


def cmd_db_check(args: argparse.Namespace) -> int:
    with _open_store(_settings(args)) as store:
        problems = store.check()
    for problem in problems:
        print(problem, file=sys.stderr)
    if problems:
        return 1
    print(f"database ok ({store.location})")
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
    print(f"kicked {name} ({reply.get('sessions', 0)} sessions closed)")
    return 0


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


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="sealroom", description="A TLS-secured, authenticated message server."
    )
    parser.add_argument("--version", action="version", version=f"sealroom {__version__}")
    commands = parser.add_subparsers(metavar="COMMAND")

    def command(
        group: argparse._SubParsersAction[argparse.ArgumentParser],
        name: str,
        handler: Handler,
        help_text: str,
    ) -> argparse.ArgumentParser:
        sub = group.add_parser(name, help=help_text, description=help_text)
        sub.add_argument(
            "-c",
            "--config",
            metavar="PATH",
            help="configuration file (default: $SEALROOM_CONFIG, else built-in defaults)",
        )
        sub.set_defaults(handler=handler)
        return sub

    command(commands, "serve", cmd_serve, "run the server in the foreground")
    command(commands, "check-config", cmd_check_config, "validate the configuration")
    command(commands, "status", cmd_status, "what the running server is doing").add_argument(
        "--json", action="store_true", help="machine-readable output"
    )
    kick = command(commands, "kick", cmd_kick, "disconnect every session of an account")
    kick.add_argument("name", metavar="NAME")
    kick.add_argument("--reason", metavar="TEXT", help="shown to the user in BYE")
    timing = command(
        commands,
        "argon2-timing",
        cmd_argon2_timing,
        "time one password hash with the configured argon2 parameters on this host",
    )
    timing.add_argument(
        "--rounds", type=_rounds, default=5, metavar="N", help="hashes to time (default: 5)"
    )

    certs = commands.add_parser("certs", help="development certificates")
    certs_commands = certs.add_subparsers(metavar="COMMAND")
    init = command(
        certs_commands,
        "init",
        cmd_certs_init,
        "create a private CA and a server certificate signed by it",
    )
    init.add_argument("--dir", default="certs", help="where to write them (default: certs)")
    init.add_argument(
        "--host",
        action="append",
        metavar="NAME",
        help="a DNS name or IP address for the certificate (repeatable)",
    )
    init.add_argument("--force", action="store_true", help="replace existing files")

    database = commands.add_parser("db", help="the database")
    db_commands = database.add_subparsers(metavar="COMMAND")
    backup = command(
        db_commands,
        "backup",
        cmd_db_backup,
        "copy the database to PATH (safe while the server runs)",
    )
    backup.add_argument("path", metavar="PATH", help="a new file for the copy")
    command(db_commands, "check", cmd_db_check, "check the database's integrity")
    command(
        db_commands,
        "copy",
        cmd_db_copy,
        "copy the configured SQLite database into an empty PostgreSQL database",
    ).add_argument("--to", required=True, metavar="URL", help="postgresql://USER@HOST/DBNAME")

    user = commands.add_parser("user", help="manage accounts")
    users = user.add_subparsers(metavar="COMMAND")
    for name, handler, text in (
        ("add", cmd_user_add, "create an account"),
        ("passwd", cmd_user_passwd, "set a new password"),
    ):
        sub = command(users, name, handler, text)
        sub.add_argument("name", metavar="NAME")
        sub.add_argument(
            "--password-stdin",
            action="store_true",
            help="read the password as one line from standard input",
        )
        if name == "add":
            sub.add_argument("--admin", action="store_true", help="an administrator")
    for name, handler, text in (
        ("disable", cmd_user_disable, "lock an account and drop its sessions"),
        ("enable", cmd_user_enable, "unlock an account"),
        ("remove", cmd_user_remove, "delete an account"),
    ):
        command(users, name, handler, text).add_argument("name", metavar="NAME")
    command(
        users,
        "import",
        cmd_user_import,
        "create accounts from a file of NAME:PASSWORD or NAME:ARGON2ID-HASH lines",
    ).add_argument("file", metavar="FILE")
    command(users, "list", cmd_user_list, "list accounts").add_argument(
        "--json", action="store_true", help="machine-readable output"
    )
    add_client_commands(commands, command)
    return parser
