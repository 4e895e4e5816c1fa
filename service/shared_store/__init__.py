"""The state replicas share: one Redis connection (redis.py) behind a breaker of its
own (guard.py), used by the limits, the response cache and the shared breakers."""
