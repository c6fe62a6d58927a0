"""What makes a Redis unsafe for a cluster, said in one line each (start and check-config).

Redis holds the bus (acknowledged messages on their way), the id counter and presence. One
that forgets on restart (no append-only file) or evicts keys under memory pressure (any
``maxmemory-policy`` but ``noeviction``) would lose acknowledged data or hand out an id
twice: a node refuses to start on such a server.
"""

from __future__ import annotations

import redis
from redis.exceptions import RedisError


def redis_problems(client: redis.Redis) -> list[str]:
    """Every reason this Redis would lose or evict acknowledged data; [] when safe."""
    try:
        persistence = client.info("persistence")
        memory = client.info("memory")
    except RedisError as error:
        return [f"cannot reach Redis: {error}"]
    problems = []
    if str(persistence.get("aof_enabled", "0")) != "1":
        problems.append(
            "Redis has no append-only file (appendonly no): a restart would lose"
            " acknowledged data; set `appendonly yes`"
        )
    policy = str(memory.get("maxmemory_policy", "noeviction"))
    if policy != "noeviction":
        problems.append(
            f"Redis may evict keys (maxmemory-policy {policy}): set `maxmemory-policy noeviction`"
        )
    return problems
