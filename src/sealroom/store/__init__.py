"""Storage: the only package that speaks SQL.

:func:`open_store` turns ``storage.database`` into a store: a path opens the SQLite file
(:mod:`sealroom.store.sqlite`), a ``postgresql://`` URL the PostgreSQL database
(:mod:`sealroom.store.postgres`). The PostgreSQL module, and with it psycopg, is imported only
then: a single node never loads a client it does not use, nor needs it installed.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from sealroom.core.model import StoreError
from sealroom.core.storage import Store, is_postgres_url
from sealroom.store.sqlite import SqliteStore

if TYPE_CHECKING:
    from sealroom.store.postgres import PostgresStore


def open_store(database: Path | str, *, create: bool = True, serving: bool = False) -> Store:
    """The store that ``database`` names, its schema brought up to date.

    Without ``create``, a database that does not exist yet (a missing SQLite file, a
    PostgreSQL database without the Sealroom schema) is a :class:`StoreError` instead of
    being created. ``serving``: for a running server, whose requests must fail within a
    second or two when the database is away, rather than wait for it.
    """
    if is_postgres_url(database):
        return open_postgres(str(database), create=create, serving=serving)
    return SqliteStore(Path(database), create=create)  # MissingDatabase without ``create``


def open_postgres(url: str, *, create: bool = True, serving: bool = False) -> PostgresStore:
    """A :class:`PostgresStore`, or a :class:`StoreError` saying how to install its client."""
    try:
        from sealroom.store.postgres import PostgresStore  # noqa: PLC0415 -- cluster mode only
    except ImportError as exc:
        raise StoreError(
            f"a PostgreSQL database needs the cluster extra ({exc.name} is missing):"
            " pip install 'sealroom[cluster]'"
        ) from None
    if serving:
        return PostgresStore(url, create=create, pool_wait_s=SERVING_POOL_WAIT_S)
    return PostgresStore(url, create=create)


# A server's request waits this long for a database connection, then is answered
# server-busy (SPEC: within 2 s while the database cannot be reached).
SERVING_POOL_WAIT_S = 1.5
