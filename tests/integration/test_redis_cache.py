"""The response cache's Redis store against a real redis-server: entries shared by two
clients (replicas), its bounds held across them (the entries nearest their expiry go
first), oversized answers not kept, and a store that fails read as a miss."""

from __future__ import annotations

import itertools
from collections.abc import AsyncIterator, Iterator

import pytest
import pytest_asyncio
import redis.asyncio as redis
from llmgateway.v1 import chat_pb2

from service.routing.redis_cache import RedisResponseCache, encode
from service.shared_store.connection import SharedRedis
from tests.fakes.redis_server import RedisServer, redis_server

_prefixes = itertools.count()


@pytest.fixture(scope="module")
def server() -> Iterator[RedisServer]:
    with redis_server() as running:
        yield running


def answer(text: str) -> chat_pb2.ChatResponse:
    response = chat_pb2.ChatResponse(id=text)
    response.message.parts.add().text = text
    return response


@pytest_asyncio.fixture
async def pair(server: RedisServer) -> AsyncIterator[tuple[RedisResponseCache, ...]]:
    prefix = f"rc{next(_prefixes)}:"
    shared = [
        SharedRedis(redis.Redis.from_url(server.url, socket_timeout=5), prefix) for _ in range(2)
    ]
    yield tuple(RedisResponseCache(s, max_entries=3, max_bytes=100_000) for s in shared)
    for store in shared:
        await store.aclose()


async def test_an_entry_one_client_stored_is_read_by_the_other(
    pair: tuple[RedisResponseCache, ...],
) -> None:
    a, b = pair
    assert await b.lookup("k", chat_pb2.ChatResponse) is None
    await a.store("k", answer("hello"), ttl=60)
    assert await b.lookup("k", chat_pb2.ChatResponse) == answer("hello")
    assert (b.hits, b.misses) == (1, 1)


async def test_the_bounds_hold_across_clients_and_the_nearest_expiry_goes_first(
    pair: tuple[RedisResponseCache, ...],
) -> None:
    a, b = pair
    await a.store("soon", answer("soon"), ttl=10)
    await b.store("later", answer("later"), ttl=100)
    await a.store("latest", answer("latest"), ttl=1000)
    await b.store("last", answer("last"), ttl=500)  # a fourth: one must go
    assert b.evictions == 1
    assert await a.lookup("soon", chat_pb2.ChatResponse) is None
    for kept in ("later", "latest", "last"):
        assert await a.lookup(kept, chat_pb2.ChatResponse) == answer(kept)
    assert b.stats()["entries"] == 3
    assert b.stats()["bytes"] == sum(len(encode(answer(k))) for k in ("later", "latest", "last"))
    await a.store("later", answer("later"), ttl=100)  # replaced, not counted twice
    assert a.stats()["entries"] == 3 and a.stats()["bytes"] == b.stats()["bytes"]


async def test_bytes_bound_and_oversized_answers(server: RedisServer) -> None:
    shared = SharedRedis(redis.Redis.from_url(server.url, socket_timeout=5), "rcb:")
    big = answer("x" * 3000 + "".join(str(i) for i in range(2000)))
    size = len(encode(big))
    cache = RedisResponseCache(shared, max_bytes=2 * size + 10, max_entry_bytes=10 * size)
    try:
        for key in ("one", "two", "three"):
            await cache.store(key, big, ttl=60)
        assert cache.evictions == 1 and cache.stats()["bytes"] == 2 * size
        small = RedisResponseCache(shared, max_entry_bytes=size - 1)
        await small.store("too-big", big, ttl=60)
        assert small.too_large == 1
        assert await small.lookup("too-big", chat_pb2.ChatResponse) is None
    finally:
        await shared.aclose()


async def test_a_store_that_fails_is_a_miss_and_counted() -> None:
    with redis_server() as server:
        shared = SharedRedis(redis.Redis.from_url(server.url, socket_timeout=5), "rcf:")
        cache = RedisResponseCache(shared)
        try:
            await cache.store("k", answer("hi"), ttl=60)
            server.stop()
            assert await cache.lookup("k", chat_pb2.ChatResponse) is None
            await cache.store("k", answer("hi"), ttl=60)
            assert cache.stats()["unavailable"] == 2
            assert (cache.hits, cache.misses) == (0, 0), "not a lookup that found nothing"
        finally:
            await shared.aclose()
