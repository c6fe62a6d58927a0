"""The real Redis of the tests (engines.RedisEngine) is what the fault tests take it for:
durable when its AOF is on, silent when paused, and really without an AOF when asked."""

from __future__ import annotations

import pytest
import redis

from engines import RedisEngine


def test_shared_server_has_the_aof_on_and_starts_each_test_empty(redis_url: str) -> None:
    with redis.Redis.from_url(redis_url) as client:
        assert client.config_get("appendonly") == {"appendonly": "yes"}
        assert client.config_get("maxmemory-policy") == {"maxmemory-policy": "noeviction"}
        assert client.dbsize() == 0
        client.set("left-behind", "by this test")  # the next test's FLUSHALL removes it


def test_acknowledged_writes_survive_a_kill_and_restart(fresh_redis: RedisEngine) -> None:
    with fresh_redis.client() as client:
        for n in range(100):
            client.rpush("log", n)
    killed = fresh_redis.pid
    fresh_redis.kill()
    with pytest.raises(redis.exceptions.ConnectionError), fresh_redis.client() as client:
        client.ping()
    fresh_redis.start()
    assert fresh_redis.pid != killed
    with fresh_redis.client() as client:
        assert client.lrange("log", 0, -1) == [str(n).encode() for n in range(100)]


def test_a_paused_server_times_clients_out_until_resumed(fresh_redis: RedisEngine) -> None:
    fresh_redis.pause()
    try:
        with pytest.raises(redis.exceptions.TimeoutError), fresh_redis.client(timeout=0.5) as c:
            c.ping()
    finally:
        fresh_redis.resume()
    with fresh_redis.client(timeout=0.5) as client:
        assert client.ping()


def test_without_the_aof_a_kill_loses_everything() -> None:
    """The other side of the durability test: it would fail if the AOF were not what kept
    the data (``--save ""`` leaves no snapshot to fall back on either)."""
    with RedisEngine.running(appendonly=False) as engine:
        with engine.client() as client:
            assert client.config_get("appendonly") == {"appendonly": "no"}
            client.set("k", "v")
        engine.kill()
        engine.start()
        with engine.client() as client:
            assert client.get("k") is None
        assert not (engine.folder / "appendonlydir").exists()
