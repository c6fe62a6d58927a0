"""Several nodes as one server: Redis as the real-time plane (SPEC section 4).

Only this package imports the Redis client, and only a node whose configuration names
``cluster.redis`` imports this package: a single server never loads either.
"""
