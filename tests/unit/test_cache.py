"""The response cache (keys, TTL, LRU and byte bounds) and request coalescing (one
piece of work per key, shared results and errors, cancellation only when every caller
has gone)."""

from __future__ import annotations

import asyncio

import pytest
from llmgateway.v1 import chat_pb2, embed_pb2

from service.auth.identity import Identity
from service.routing.cache import ResponseCache, cache_key
from service.routing.coalesce import Coalescer
from tests.support import chat_request

ALICE = Identity(subject="alice", tenant="acme", issuer="i", scopes=frozenset(), models=None)


class Clock:
    def __init__(self) -> None:
        self.now = 100.0

    def __call__(self) -> float:
        return self.now


def reply(text: str) -> chat_pb2.ChatResponse:
    response = chat_pb2.ChatResponse(id="x")
    response.message.parts.add().text = text
    return response


def test_keys_follow_the_question_not_the_caller_labels() -> None:
    base = chat_request("hello", model="m")
    labelled = chat_request("hello", model="m", labels={"team": "search"})
    other = chat_request("hello!", model="m")
    assert cache_key(base, ALICE, False) == cache_key(labelled, ALICE, False)
    assert cache_key(base, ALICE, False) != cache_key(other, ALICE, False)
    cooler = chat_request("hello", model="m", generation_config={"temperature": 0.1})
    assert cache_key(base, ALICE, False) != cache_key(cooler, ALICE, False)
    bob_same_tenant = Identity("bob", "acme", "i", frozenset(), None)
    other_tenant = Identity("carol", "zeta", "i", frozenset(), None)
    limited = Identity("dave", "acme", "i", frozenset(), ("m",))
    assert cache_key(base, bob_same_tenant, False) == cache_key(base, ALICE, False)
    assert cache_key(base, other_tenant, False) != cache_key(base, ALICE, False)
    assert cache_key(base, other_tenant, True) == cache_key(base, ALICE, True)
    assert cache_key(base, limited, False) != cache_key(base, ALICE, False)
    embed = embed_pb2.EmbedRequest(model="m", inputs=["hello"])
    assert cache_key(embed, ALICE, False) != cache_key(base, ALICE, False)


def test_partitions_name_the_issuer_and_tenantless_callers_keep_their_own() -> None:
    base = chat_request("hello", model="m")
    acme_of_j = Identity("alice", "acme", "j", frozenset(), None)
    assert cache_key(base, acme_of_j, False) != cache_key(base, ALICE, False)
    assert cache_key(base, acme_of_j, True) == cache_key(base, ALICE, True)
    carol, dave = Identity("carol", issuer="i"), Identity("dave", issuer="i")
    carol_of_j = Identity("carol", issuer="j")
    assert cache_key(base, carol, False) != cache_key(base, dave, False)
    assert cache_key(base, carol, False, True) == cache_key(base, dave, False, True)
    assert cache_key(base, carol, False, True) != cache_key(base, carol_of_j, False, True)
    # A subject named like a tenant is not that tenant; the fields cannot run together.
    named_acme = Identity("acme", issuer="i")
    assert cache_key(base, named_acme, False) != cache_key(base, ALICE, False)
    run_together = Identity("b", "c", "a", frozenset(), None)
    assert cache_key(base, run_together, False) != cache_key(
        base, Identity("b", "", "a\0c", frozenset(), None), False
    )
    cache = ResponseCache(share_without_tenant=True)
    assert cache.key(base, carol) == cache.key(base, dave)
    assert cache.key(base, carol) != cache.key(base, carol_of_j)


def test_entries_expire_and_come_back_as_fresh_messages() -> None:
    clock = Clock()
    cache = ResponseCache(clock=clock)
    cache.put("k", reply("one"), ttl=10)
    first = cache.get("k", chat_pb2.ChatResponse)
    assert first is not None and first.message.parts[0].text == "one"
    first.message.parts[0].text = "changed by a caller"
    again = cache.get("k", chat_pb2.ChatResponse)
    assert again is not None and again.message.parts[0].text == "one"
    clock.now += 10
    assert cache.get("k", chat_pb2.ChatResponse) is None
    assert (cache.hits, cache.misses, len(cache), cache.size_bytes) == (2, 1, 0, 0)


def test_least_recently_used_go_first_within_entries_and_bytes() -> None:
    cache = ResponseCache(max_entries=2, max_bytes=10_000)
    cache.put("a", reply("a"), ttl=60)
    cache.put("b", reply("b"), ttl=60)
    assert cache.get("a", chat_pb2.ChatResponse) is not None  # a is now the most recent
    cache.put("c", reply("c"), ttl=60)
    assert cache.get("b", chat_pb2.ChatResponse) is None
    assert cache.get("a", chat_pb2.ChatResponse) is not None
    assert cache.evictions == 1
    small = ResponseCache(max_bytes=1024)
    small.put("big", reply("x" * 2000), ttl=60)
    assert len(small) == 0, "an answer larger than the whole cache is not kept"
    for i in range(20):
        small.put(str(i), reply("y" * 200), ttl=60)
    assert small.size_bytes <= 1024 and len(small) == small.size_bytes // 207


async def test_identical_calls_share_one_piece_of_work() -> None:
    coalescer: Coalescer[str] = Coalescer()
    runs = 0
    release = asyncio.Event()

    async def work() -> str:
        nonlocal runs
        runs += 1
        await release.wait()
        return "answer"

    callers = [asyncio.ensure_future(coalescer.run("k", work)) for _ in range(5)]
    await asyncio.sleep(0)
    release.set()
    results = await asyncio.gather(*callers)
    assert runs == 1
    assert [shared for _, shared in results] == [False, True, True, True, True]
    assert len(coalescer) == 0
    # Once done, the next call does the work again (the cache, not the coalescer, keeps).
    assert await coalescer.run("k", work) == ("answer", False) and runs == 2


async def test_an_error_reaches_every_caller() -> None:
    coalescer: Coalescer[str] = Coalescer()

    async def work() -> str:
        await asyncio.sleep(0.01)
        raise ValueError("upstream said no")

    results = await asyncio.gather(
        *(coalescer.run("k", work) for _ in range(3)), return_exceptions=True
    )
    assert all(isinstance(r, ValueError) for r in results)


async def test_work_is_cancelled_only_when_every_caller_has_gone() -> None:
    coalescer: Coalescer[str] = Coalescer()
    cancelled = asyncio.Event()
    release = asyncio.Event()

    async def work() -> str:
        try:
            await release.wait()
            return "answer"
        except asyncio.CancelledError:
            cancelled.set()
            raise

    first = asyncio.ensure_future(coalescer.run("k", work))
    second = asyncio.ensure_future(coalescer.run("k", work))
    await asyncio.sleep(0)
    first.cancel()
    await asyncio.sleep(0.01)
    assert not cancelled.is_set(), "one caller left; the other still waits"
    second.cancel()
    await asyncio.sleep(0.01)
    assert cancelled.is_set(), "the last caller left: the work stops"
    # A new caller starts new work rather than joining the cancelled one.
    third = asyncio.ensure_future(coalescer.run("k", work))
    await asyncio.sleep(0)
    release.set()
    assert await third == ("answer", False)
    with pytest.raises(asyncio.CancelledError):
        await first
