"""Fixtures: a trustme CA (independent of our own `certs init`), its server certificate,
real servers on 127.0.0.1 port 0 with real SQLite files, a real PostgreSQL and a real Redis
(each started once per session, only if a test asks for it; see engines.py). What tests
import is in helpers.py."""

from __future__ import annotations

import logging
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import trustme

from cluster import Cluster, running_cluster
from engines import PostgresEngine, RedisEngine
from helpers import Server, ServerFactory, start_server

# A database or argon2 call on the reactor thread raises instead of being logged: in this
# process and in every `sealroom serve` the tests start (they inherit the environment).
os.environ["SEALROOM_STRICT_BLOCKING"] = "1"


@pytest.fixture(autouse=True)
def _sealroom_log_handlers() -> Iterator[None]:
    """In-process `sealroom serve` installs a stderr handler bound to pytest's capture of
    that test; drop it afterwards so later server threads never log into a closed stream."""
    yield
    logger = logging.getLogger("sealroom")
    for handler in list(logger.handlers):
        logger.removeHandler(handler)
    logger.propagate = True
    logger.setLevel(logging.NOTSET)


@pytest.fixture(scope="session")
def postgres() -> Iterator[PostgresEngine]:
    """A PostgreSQL server for the whole session: about a second to start, once."""
    with PostgresEngine.running() as engine:
        yield engine


@pytest.fixture
def postgres_url(postgres: PostgresEngine) -> str:
    """A new, empty database of this test's own: its URL, password included."""
    return postgres.new_database()


@pytest.fixture(scope="session")
def redis_engine() -> Iterator[RedisEngine]:
    """A Redis server for the whole session (AOF on, noeviction). Tests that kill or pause
    a server take ``fresh_redis`` instead, so that the others never see the fault."""
    with RedisEngine.running() as engine:
        yield engine


@pytest.fixture
def redis_url(redis_engine: RedisEngine) -> str:
    """The session's Redis, emptied (FLUSHALL) for this test: its URL."""
    redis_engine.flush()
    return redis_engine.url


@pytest.fixture
def fresh_redis() -> Iterator[RedisEngine]:
    """A Redis server of this test's own, free to kill, pause and start again; stopped after."""
    with RedisEngine.running() as engine:
        yield engine


@pytest.fixture(scope="session")
def ca() -> trustme.CA:
    return trustme.CA()


@pytest.fixture(scope="session")
def tls_files(ca: trustme.CA, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("tls")
    leaf = ca.issue_cert("localhost", "127.0.0.1", "::1")
    files = {"ca": folder / "ca.pem", "cert": folder / "server.pem", "key": folder / "server.key"}
    ca.cert_pem.write_to_path(str(files["ca"]))
    leaf.cert_chain_pems[0].write_to_path(str(files["cert"]))
    leaf.private_key_pem.write_to_path(str(files["key"]))
    return files


@pytest.fixture
def make_server(tmp_path: Path, tls_files: dict[str, Path]) -> Iterator[ServerFactory]:
    """Start servers on `helpers.server_config` with ``extra`` laid over it; all are stopped
    when the test ends."""
    started: list[Server] = []

    def factory(**extra: Any) -> Server:
        folder = tmp_path / f"server{len(started)}"
        folder.mkdir()
        server = start_server(folder, tls_files, extra)
        started.append(server)
        return server

    yield factory
    for server in started:
        server.stop()


@pytest.fixture
def server(make_server: ServerFactory) -> Server:
    return make_server()


@pytest.fixture
def cluster(
    tmp_path: Path, tls_files: dict[str, Path], postgres_url: str, redis_url: str
) -> Iterator[Cluster]:
    """A cluster with no node yet (``cluster.node(NAME, HOST)`` starts one) over a fresh
    database and an emptied Redis; every node is stopped when the test ends."""
    with running_cluster(tmp_path / "cluster", tls_files, postgres_url, redis_url) as made:
        yield made


@pytest.fixture
def fresh_cluster(
    tmp_path: Path, tls_files: dict[str, Path], postgres_url: str, fresh_redis: RedisEngine
) -> Iterator[Cluster]:
    """As ``cluster``, over a Redis of this test's own (``fresh_redis``, which the test may
    take too, to kill or pause it); the nodes are stopped before that Redis is."""
    with running_cluster(tmp_path / "cluster", tls_files, postgres_url, fresh_redis.url) as made:
        yield made


@pytest.fixture
def fresh_postgres() -> Iterator[PostgresEngine]:
    """A PostgreSQL server of this test's own (about a second to make), free to stop and
    start again (``stop()``, ``start()``: same port); stopped and removed after."""
    with PostgresEngine.running() as engine:
        yield engine


@pytest.fixture
def cluster_on_fresh_postgres(
    tmp_path: Path, tls_files: dict[str, Path], fresh_postgres: PostgresEngine, redis_url: str
) -> Iterator[Cluster]:
    """As ``cluster``, over a database in ``fresh_postgres`` (the session's Redis, emptied)."""
    url = fresh_postgres.new_database()
    with running_cluster(tmp_path / "cluster", tls_files, url, redis_url) as made:
        yield made
