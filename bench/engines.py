"""PostgreSQL and Redis for the cluster scenarios: the tests' engines, with durability on.

tests/engines.py starts them (each from a temporary directory on a free 127.0.0.1 port,
stopped by its PID) and reads their CPU time; see its docstring for what that counts. What
differs from the tests is durability, which a benchmark must pay for as a deployment would:

* **PostgreSQL** runs with its normal durability: ``fsync=on``, ``synchronous_commit=on``,
  ``full_page_writes=on`` (the defaults, spelt out), default ``wal_sync_method``
  (``fdatasync`` on Linux), 128 MB of shared buffers (the default), 200 connections. Its
  data directory is under ``/tmp`` on the machine's disk (not a tmpfs). As root it runs as
  the ``postgres`` user (it refuses root). It holds one database, ``sealroom``.
* **Redis** runs with its append-only file on and ``appendfsync everysec`` (Redis's default
  for the AOF, and what the nodes' start-up check accepts: an acknowledged write is in the
  kernel before the reply, so it survives a crash of Redis; only a crash of the machine
  can lose the last second), ``maxmemory-policy noeviction``, no RDB snapshots: what
  ``RedisEngine.running()`` does unless told otherwise.

tests/engines.py imports psycopg and redis (the ``cluster`` extra), so it is imported only
where an engine is wanted: without the extra, :func:`missing` says so and the cluster
scenarios are skipped. It is imported as ``tests.engines``: the bench runs from the
repository's root (``python -m bench``), where ``tests`` is a namespace package.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from tests.engines import PostgresEngine, RedisEngine

DATABASE = "sealroom"

DURABLE_SETTINGS = {
    "fsync": "on",
    "synchronous_commit": "on",
    "full_page_writes": "on",
    "shared_buffers": "128MB",
    "max_connections": "200",
    "log_min_messages": "warning",
}


def missing() -> str | None:
    """Why the cluster scenarios cannot run here, or None."""
    try:
        import psycopg  # noqa: F401, PLC0415
        import redis  # noqa: F401, PLC0415
    except ImportError as error:
        return f"{error.name} is missing: pip install -e '.[cluster]'"
    from tests.engines import postgres_bindir, redis_server  # noqa: PLC0415 -- the extra

    try:
        postgres_bindir()
        redis_server()
    except RuntimeError as error:
        return str(error)
    return None


@contextlib.contextmanager
def engines() -> Iterator[tuple[PostgresEngine, RedisEngine]]:
    """A fresh durable PostgreSQL, with its database :data:`DATABASE` made, and a fresh
    Redis; stopped (by PID) and removed on the way out."""
    from tests.engines import PostgresEngine, RedisEngine  # noqa: PLC0415 -- the extra

    with PostgresEngine.running(settings=DURABLE_SETTINGS, template=False) as postgres:
        postgres.create_database(DATABASE)
        with RedisEngine.running() as redis:
            yield postgres, redis
