"""``sealroom db copy``: a single node's SQLite data into an empty PostgreSQL database.

Everything the server keeps moves: accounts with their password hashes and stamps, room
history, private messages (the undelivered ones stay undelivered, to be delivered at the next
login; a lease on one does not move: it belonged to a session of the server that read the
SQLite file), resume tokens, and the high-water marks of message ids and stamps, so that new ids and
stamps continue above every one the SQLite database ever gave out.

The source is read in one transaction (a consistent view, even with a server writing to it)
and the target written in one (all or nothing: after a failure it is still empty, and the
copy can simply be run again). A target that holds any Sealroom data is refused.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sealroom.core.model import StoreError
from sealroom.core.storage import is_postgres_url
from sealroom.store import open_postgres
from sealroom.store.sqlite import SnapshotTotals, SqliteStore

if TYPE_CHECKING:  # the module itself is imported only when a copy runs (it needs psycopg)
    from sealroom.store.postgres import Progress


def _quiet(what: str, done: int, total: int) -> None:
    """No progress reports."""


def copy_to_postgres(
    source: Path | str, target: str, progress: Progress = _quiet
) -> SnapshotTotals:
    """Copy the SQLite database ``source`` into the empty PostgreSQL database ``target``.

    Returns what was copied. ``progress(what, done, total)`` hears about each part (``"accounts"``,
    ``"messages"``, ``"tokens"``) as it goes.
    """
    if is_postgres_url(source):
        raise StoreError("the configured database is PostgreSQL already; db copy reads SQLite")
    if not is_postgres_url(target):
        raise StoreError("copy to a postgresql:// URL (postgresql://USER@HOST:PORT/DBNAME)")
    path = Path(source)
    if not path.exists():
        raise StoreError(f"no database at {path.absolute()}; nothing to copy")
    with (
        SqliteStore(path) as sqlite,
        open_postgres(target) as postgres,
        sqlite.snapshot() as snapshot,
    ):
        return postgres.load(snapshot, progress)
