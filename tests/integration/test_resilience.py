"""Fault injection that counts: upstream attempts per call, connections, statuses and
details, chunks delivered, breaker transitions, time spent against the deadline."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass

import grpc
import pytest
from llmgateway.v1 import models_pb2

from tests.fakes.fault_proxy import Fault, FaultProxy, NeverAccepts
from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse, Write
from tests.fakes.openai_fake import (
    OpenAIFake,
    OpenAIFakeConfig,
    chunk,
    error_body,
    sse_body,
    stream_response,
)
from tests.support import Gateway, chat_request, details_of, refusing_port, running_gateway

CONFIG = """
server: {{host: 127.0.0.1, port: 0{server_extra}}}
routing:
  retry:
    max_attempts: 3
    initial_backoff: 0.02s
    max_backoff: 0.05s
    max_retry_after: 10s
    min_attempt_time: 0.02s
    budget: {{ratio: 1.0, min_retries_per_second: 1000}}
  # Cool-downs outlast the calls a test makes while a breaker is open, even under load;
  # exact (no jitter): these tests measure them. Jitter has its own unit tests.
  breaker: {{consecutive_failures: 3, minimum_calls: 1000, cool_down: 2s, max_cool_down: 8s,
            cool_down_jitter: 0}}
  max_total_attempts: 6
providers:
  - {{name: primary, api_key_env: K, base_url: "{primary}/v1", timeouts: {{read: 1s}}, openai: {{}}}}
  - {{name: secondary, api_key_env: K, base_url: "{secondary}/v1", openai: {{}}}}
  - {{name: proxied, api_key_env: K, base_url: "{proxy}/v1", timeouts: {{read: 1s}}, openai: {{}}}}
  - {{name: refused, api_key_env: K, base_url: "http://127.0.0.1:{closed}/v1", openai: {{}}}}
  - {{name: flaky, mock: {{faults_from_metadata: true}}}}
  - {{name: steady, mock: {{}}}}
models:
  - {{alias: main, provider: primary, upstream_model: m-main, fallbacks: [backup]}}
  - {{alias: backup, provider: secondary, upstream_model: m-backup}}
  - {{alias: solo, provider: primary, upstream_model: m-solo}}
  - {{alias: small, provider: primary, upstream_model: m-small, context_fallbacks: [large]}}
  - {{alias: large, provider: secondary, upstream_model: m-large}}
  - {{alias: proxy, provider: proxied, upstream_model: m-proxy}}
  - {{alias: refused, provider: refused, upstream_model: m-refused}}
  - {{alias: flaky, provider: flaky, fallbacks: [steady]}}
  - {{alias: steady, provider: steady}}
  - {{alias: first-token, provider: primary, upstream_model: m-ft, timeouts: {{first_token: 0.6s}}}}
  - {{alias: idle, provider: primary, upstream_model: m-idle, timeouts: {{idle: 0.3s}}}}
  - {{alias: total, provider: primary, upstream_model: m-total, timeouts: {{total: 0.3s}}}}
  - {{alias: short-read, provider: primary, upstream_model: m-read, timeouts: {{read: 0.2s}}}}
"""


@dataclass
class World:
    gateway: Gateway
    primary: FakeHttpServer
    secondary: FakeHttpServer
    proxy: FaultProxy
    closed: int  # a loopback port that refuses connections while the world lasts

    def primary_calls(self, model: str) -> int:
        return sum(1 for r in self.primary.requests if r.json().get("model") == model)


@contextlib.asynccontextmanager
async def world(server_extra: str = "") -> AsyncIterator[World]:
    async with (
        FakeHttpServer(OpenAIFake(OpenAIFakeConfig(key="k")).handle) as primary,
        FakeHttpServer(
            OpenAIFake(OpenAIFakeConfig(key="k", request_id="req_secondary")).handle
        ) as secondary,
        FaultProxy(primary.port) as proxy,
    ):
        with refusing_port() as closed:
            config = CONFIG.format(
                primary=primary.url,
                secondary=secondary.url,
                proxy=proxy.url,
                closed=closed,
                server_extra=server_extra,
            )
            async with running_gateway(config, environ={"K": "k"}) as gateway:
                yield World(gateway, primary, secondary, proxy, closed)


def always(status: int, headers: dict[str, str] | None = None) -> object:
    def handler(request: FakeRequest) -> FakeResponse:
        return FakeResponse.json(error_body("failing", "server_error"), status, headers)

    return handler


def rate_limited(retry_after: str) -> FakeResponse:
    return FakeResponse.json(
        error_body("Rate limit reached", "requests", "rate_limit_exceeded"),
        429,
        {"retry-after": retry_after},
    )


async def stats(gateway: Gateway, provider: str) -> models_pb2.ProviderStats:
    reply = await gateway.stub.GetProviderStats(
        models_pb2.GetProviderStatsRequest(provider=provider), timeout=5
    )
    return reply.providers[0]


async def test_429_with_a_short_retry_after_is_waited_for_then_retried() -> None:
    async with world() as w:
        w.primary.script(rate_limited("0.3"))
        loop = asyncio.get_running_loop()
        started = loop.time()
        reply = await w.gateway.stub.Chat(chat_request("hi", model="solo"), timeout=10)
        elapsed = loop.time() - started
        assert reply.message.parts[0].text == "hi"
        assert reply.route.attempts == 2 and not reply.route.fallback_used
        assert w.primary_calls("m-solo") == 2
        assert elapsed >= 0.3, "Retry-After is a floor for the backoff"
        assert (await stats(w.gateway, "primary")).retries == 1


async def test_429_with_a_too_long_retry_after_goes_to_the_fallback_at_once() -> None:
    async with world() as w:
        w.primary.script(rate_limited("120"))
        reply = await w.gateway.stub.Chat(chat_request("hi", model="main"), timeout=10)
        assert (await stats(w.gateway, "primary")).retries == 0, "no wait on the primary"
        assert (reply.route.provider, reply.route.attempts, reply.route.fallback_used) == (
            "secondary",
            2,
            True,
        )
        assert reply.route.upstream_request_id == "req_secondary"
        assert w.primary_calls("m-main") == 1


async def test_429_too_long_without_fallback_fails_fast_with_retry_info() -> None:
    async with world() as w:
        w.primary.script(rate_limited("120"))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="solo"), timeout=10)
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "RATE_LIMITED",
        )
        assert details.retry_info is not None and details.retry_info.retry_delay.seconds == 120
        assert details.error_info.metadata["attempts"] == "1"
        assert w.primary_calls("m-solo") == 1


@pytest.mark.parametrize("status", [500, 502, 503, 504])
async def test_each_5xx_is_retried_up_to_the_attempt_cap(status: int) -> None:
    async with world() as w:
        w.primary.handler = always(status)  # type: ignore[assignment]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="solo"), timeout=10)
        details = details_of(caught.value)
        assert details.code == grpc.StatusCode.UNAVAILABLE
        assert details.error_info.metadata["attempts"] == "3"
        assert details.error_info.metadata["tried"].count("primary/m-solo:") == 3
        assert w.primary_calls("m-solo") == 3


@pytest.mark.parametrize("status", [400, 401, 403, 404, 413, 422])
async def test_non_retryable_4xx_gets_exactly_one_attempt(status: int) -> None:
    async with world() as w:
        w.primary.handler = always(status)  # type: ignore[assignment]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="solo"), timeout=10)
        assert w.primary_calls("m-solo") == 1
        assert details_of(caught.value).error_info.metadata["attempts"] == "1"


async def test_quota_exhausted_429_is_not_retried() -> None:
    async with world() as w:
        w.primary.script(
            FakeResponse.json(
                error_body(
                    "You exceeded your current quota", "insufficient_quota", "insufficient_quota"
                ),
                429,
            )
        )
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="solo"), timeout=10)
        assert details_of(caught.value).error_info.reason == "UPSTREAM_QUOTA_EXHAUSTED"
        assert w.primary_calls("m-solo") == 1


async def test_529_until_the_fallback_serves() -> None:
    async with world() as w:
        metadata = (("x-mock-fail-status", "529"), ("x-mock-target", "flaky"))
        reply = await w.gateway.stub.Chat(
            chat_request("hi", model="flaky"), metadata=metadata, timeout=10
        )
        assert (reply.route.provider, reply.route.attempts, reply.route.fallback_used) == (
            "steady",
            4,
            True,
        )
        flaky = await stats(w.gateway, "flaky")
        assert (flaky.requests, flaky.failures, flaky.retries) == (3, 3, 2)


async def test_context_length_goes_to_the_larger_model() -> None:
    async with world() as w:
        w.primary.script(
            FakeResponse.json(
                error_body(
                    "This model's maximum context length is 8192 tokens.",
                    "invalid_request_error",
                    "context_length_exceeded",
                ),
                400,
            )
        )
        reply = await w.gateway.stub.Chat(chat_request("long", model="small"), timeout=10)
        assert (reply.route.provider, reply.route.upstream_model, reply.route.fallback_used) == (
            "secondary",
            "m-large",
            True,
        )
        assert w.primary_calls("m-small") == 1


async def test_stream_that_dies_before_its_first_chunk_is_retried() -> None:
    async with world() as w:
        w.primary.script(FakeResponse.stream([b"data: ", b""], reset_after=1))
        chunks = [
            c
            async for c in w.gateway.stub.StreamChat(chat_request("a b", model="solo"), timeout=10)
        ]
        assert "".join(c.text_delta for c in chunks) == "a b"
        assert chunks[0].route.attempts == 2
        assert w.primary_calls("m-solo") == 2


async def test_stream_failing_after_its_first_chunk_is_not_retried() -> None:
    async with world() as w:
        events: list[dict[str, object] | str] = [
            chunk("m", {"content": "Hel"}),
            {"error": {"message": "boom", "type": "server_error"}},
        ]
        w.primary.script(stream_response(sse_body(events)))
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for c in w.gateway.stub.StreamChat(chat_request(model="main"), timeout=10):
                received.append(c.text_delta)
        assert received == ["Hel"]
        details = details_of(caught.value)
        assert details.code == grpc.StatusCode.UNAVAILABLE
        assert details.error_info.metadata["partialOutput"] == "true"
        assert details.error_info.metadata["chunksDelivered"] == "1"
        assert w.primary_calls("m-main") == 1 and len(w.secondary.requests) == 0, (
            "no retry, no fallback"
        )


async def test_first_token_timeout_retries_the_stream() -> None:
    async with world() as w:
        slow = stream_response(
            sse_body([chunk("m", {"content": "late"}), chunk("m", {}, "stop"), "[DONE]"])
        )
        # Later than the first-token timeout (0.6 s), sooner than the read timeout (1 s).
        slow.writes[0] = Write(slow.writes[0].data, delay=0.9)
        w.primary.script(slow)
        chunks = [
            c
            async for c in w.gateway.stub.StreamChat(
                chat_request("fast", model="first-token"), timeout=10
            )
        ]
        assert "".join(c.text_delta for c in chunks) == "fast"
        assert chunks[0].route.attempts == 2
        assert await w.primary.wait_for(lambda: w.primary.client_disconnects == 1), (
            "the slow attempt was closed"
        )


async def test_cancelled_stream_closes_the_upstream_request() -> None:
    async with world() as w:
        body = sse_body([chunk("m", {"content": "one"})])
        never_ending = FakeResponse.stream([body, b"data: [DONE]\n\n"])
        never_ending.writes[1] = Write(never_ending.writes[1].data, delay=30)
        w.primary.script(never_ending)
        idle_before = w.primary.open_connections
        call = w.gateway.stub.StreamChat(chat_request(model="solo"), timeout=20)
        first = await call.read()
        assert first.text_delta == "one"
        assert w.primary.open_connections == idle_before + 1
        call.cancel()
        assert await w.primary.wait_for(lambda: w.primary.client_disconnects == 1, 3)
        assert await w.primary.wait_for(lambda: w.primary.open_connections == idle_before, 3)
        assert (await stats(w.gateway, "primary")).cancelled == 1


async def test_cancelled_unary_call_closes_the_upstream_request() -> None:
    async with world() as w:
        w.primary.script(FakeResponse(hang=True))
        call = w.gateway.stub.Chat(chat_request(model="solo"), timeout=20)
        assert await w.primary.wait_for(lambda: len(w.primary.requests) == 1, 3)
        call.cancel()
        assert await w.primary.wait_for(lambda: w.primary.client_disconnects == 1, 3)
        with pytest.raises(asyncio.CancelledError):
            await call


async def test_deadline_shorter_than_the_upstream() -> None:
    async with world() as w:
        # The secondary (read timeout 60 s) hangs. 2.5 s: the gateway ends the call 0.25 s
        # before the caller's own timer would, room enough on a loaded machine for its
        # status to arrive first.
        w.secondary.script(FakeResponse(hang=True))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="backup"), timeout=2.5)
        # The gateway's own status (with its ErrorInfo), not the caller's local timer.
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DEADLINE_EXCEEDED",
        )
        assert details.error_info.metadata["attempts"] == "1"
        assert await w.secondary.wait_for(lambda: w.secondary.client_disconnects == 1, 3)
        assert (await stats(w.gateway, "secondary")).failures == 0, (
            "a deadline is not a provider failure"
        )


async def test_backoff_that_does_not_fit_the_deadline_is_not_started() -> None:
    async with world() as w:
        w.primary.script(rate_limited("5"))  # fits max_retry_after, not the deadline
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="solo"), timeout=3)
        # Sleeping into the deadline would have ended DEADLINE_EXCEEDED.
        assert details_of(caught.value).error_info.reason == "RATE_LIMITED"
        assert (await stats(w.gateway, "primary")).retries == 0
        assert w.primary_calls("m-solo") == 1


async def test_outage_opens_the_breaker_serves_from_fallback_and_recovers_with_one_probe() -> None:
    async with world() as w:
        w.primary.handler = always(503)  # type: ignore[assignment]
        reply = await w.gateway.stub.Chat(chat_request(model="main"), timeout=10)
        assert (reply.route.provider, reply.route.attempts) == ("secondary", 4)
        assert w.primary_calls("m-main") == 3
        deployment = (await stats(w.gateway, "primary")).deployments[0]
        assert deployment.upstream_model == "m-main"
        assert deployment.circuit_state == models_pb2.CIRCUIT_STATE_OPEN
        # While open: straight to the fallback, no upstream call to the primary.
        for _ in range(3):
            reply = await w.gateway.stub.Chat(chat_request(model="main"), timeout=10)
            assert (reply.route.provider, reply.route.attempts) == ("secondary", 1)
        assert w.primary_calls("m-main") == 3
        # The primary recovers; after the cool-down exactly one probe goes through. The
        # probe is answered only once the other four calls went to the fallback.
        release = asyncio.Event()
        healthy = OpenAIFake(OpenAIFakeConfig(key="k")).handle

        async def recovered(request: FakeRequest) -> FakeResponse:
            await asyncio.wait_for(release.wait(), 10)
            return healthy(request)

        w.primary.handler = recovered  # type: ignore[assignment]
        assert await wait_until(lambda: cooled_down(w), 5)
        served_before = len(w.secondary.requests)
        calls = [w.gateway.stub.Chat(chat_request(model="main"), timeout=10) for _ in range(5)]
        assert await w.secondary.wait_for(lambda: len(w.secondary.requests) == served_before + 4, 5)
        release.set()
        replies = await asyncio.gather(*calls)
        assert sorted(r.route.provider for r in replies) == [
            "primary",
            "secondary",
            "secondary",
            "secondary",
            "secondary",
        ]
        assert w.primary_calls("m-main") == 4, "exactly one probe"
        deployment = (await stats(w.gateway, "primary")).deployments[0]
        assert deployment.circuit_state == models_pb2.CIRCUIT_STATE_CLOSED
        assert list(deployment.transitions) == [
            "CLOSED->OPEN",
            "OPEN->HALF_OPEN",
            "HALF_OPEN->CLOSED",
        ]
        reply = await w.gateway.stub.Chat(chat_request(model="main"), timeout=10)
        assert reply.route.provider == "primary"


async def test_outage_of_every_deployment_fails_fast_with_bounded_attempts() -> None:
    async with world() as w:
        w.primary.handler = always(503)  # type: ignore[assignment]
        w.secondary.handler = always(503)  # type: ignore[assignment]
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="main"), timeout=10)
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "ALL_DEPLOYMENTS_FAILED",
        )
        assert details.error_info.metadata["attempts"] == "6", (
            "the attempt cap holds across fallbacks"
        )
        assert len(w.primary.requests) + len(w.secondary.requests) == 6
        # Both circuits are open now: the next call fails fast with no upstream call.
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="main"), timeout=10)
        details = details_of(caught.value)
        assert details.code == grpc.StatusCode.UNAVAILABLE
        assert (
            details.retry_info is not None
            and 0 < details.retry_info.retry_delay.ToMilliseconds() <= 2000
        )
        assert len(w.primary.requests) + len(w.secondary.requests) == 6


async def test_retry_budget_caps_retries_during_an_outage() -> None:
    async with world() as w:
        config = CONFIG.replace(
            "budget: {{ratio: 1.0, min_retries_per_second: 1000}}",
            "budget: {{ratio: 0.1, min_retries_per_second: 0.1, window: 60s}}",
        )
        config = config.replace(
            "breaker: {{consecutive_failures: 3,",
            "breaker: {{disabled: true, consecutive_failures: 3,",
        )
        text = config.format(
            primary=w.primary.url,
            secondary=w.secondary.url,
            proxy=w.proxy.url,
            closed=w.closed,
            server_extra="",
        )
        w.primary.handler = always(503)  # type: ignore[assignment]
        async with running_gateway(text, environ={"K": "k"}) as gateway:
            for _ in range(30):
                with pytest.raises(grpc.aio.AioRpcError):
                    await gateway.stub.Chat(chat_request(model="solo"), timeout=10)
            primary = await stats(gateway, "primary")
        # 30 calls; retries allowed: max(0.1/s x 60 s, 0.1 x calls) = at most 6, not 60.
        assert primary.retries <= 6
        assert primary.retries_denied >= 24
        assert w.primary_calls("m-solo") == 30 + primary.retries


async def test_connection_refused_is_retried_then_unavailable() -> None:
    async with world() as w:
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="refused"), timeout=10)
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_CONNECT_FAILED",
        )
        assert details.error_info.metadata["attempts"] == "3"


async def test_accept_and_never_answer_times_out_and_closes() -> None:
    async with world() as w:
        w.proxy.fault = Fault("blackhole")
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="proxy"), timeout=10)
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_TIMEOUT",
        )
        assert w.proxy.connections_accepted == 3
        assert await w.primary.wait_for(lambda: w.proxy.open_connections == 0, 3)


async def test_reset_mid_stream_after_the_first_chunk() -> None:
    async with world() as w:
        events: list[dict[str, object] | str] = [
            chunk("m", {"content": "x" * 50}),
            chunk("m", {"content": "y" * 2000}),
            chunk("m", {}, "stop"),
            "[DONE]",
        ]
        w.primary.script(stream_response(sse_body(events), piece=256, delay=0.05))
        w.proxy.fault = Fault("reset_after", after_bytes=700)
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for c in w.gateway.stub.StreamChat(chat_request(model="proxy"), timeout=10):
                received.append(c.text_delta)
        assert received == ["x" * 50]
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_CONNECTION_LOST",
        )
        assert details.error_info.metadata["partialOutput"] == "true"


async def test_slow_first_byte_through_the_proxy_within_the_read_timeout() -> None:
    async with world() as w:
        w.proxy.fault = Fault("delay_first_byte", delay=0.2)
        reply = await w.gateway.stub.Chat(chat_request("patience", model="proxy"), timeout=10)
        assert reply.message.parts[0].text == "patience" and reply.route.attempts == 1


async def test_load_shedding_refuses_over_the_cap_and_keeps_admitted_calls() -> None:
    async with world(server_extra=", max_in_flight: 2, shed_retry_after: 0.5s") as w:
        # The two admitted calls are answered only when the test says so.
        release = asyncio.Event()
        answer = OpenAIFake(OpenAIFakeConfig(key="k")).handle

        async def held(request: FakeRequest) -> FakeResponse:
            await asyncio.wait_for(release.wait(), 10)
            return answer(request)

        w.secondary.handler = held  # type: ignore[assignment]
        admitted = [
            w.gateway.stub.Chat(chat_request("kept", model="backup"), timeout=10) for _ in range(2)
        ]
        assert await w.secondary.wait_for(lambda: len(w.secondary.requests) == 2, 5)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="steady"), timeout=10)
        # Refused at once: not queued behind the admitted calls, which are still running.
        assert not any(call.done() for call in admitted)
        flood = await asyncio.gather(
            *(w.gateway.stub.Chat(chat_request(model="steady"), timeout=10) for _ in range(8)),
            *(_drain_stream(w, "steady") for _ in range(4)),
            return_exceptions=True,
        )
        assert not any(call.done() for call in admitted)
        assert all(
            isinstance(r, grpc.aio.AioRpcError) and r.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
            for r in flood
        ), flood
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.RESOURCE_EXHAUSTED,
            "OVERLOADED",
        )
        assert (
            details.retry_info is not None
            and details.retry_info.retry_delay.ToMilliseconds() == 500
        )
        assert details.quota_failure is not None
        release.set()
        replies = await asyncio.gather(*admitted)
        assert [r.message.parts[0].text for r in replies] == ["kept", "kept"]
        after = await w.gateway.stub.Chat(chat_request("again", model="steady"), timeout=10)
        assert after.message.parts[0].text == "again"


async def _drain_stream(w: World, model: str) -> int:
    return len([c async for c in w.gateway.stub.StreamChat(chat_request(model=model), timeout=10)])


async def test_idle_gap_between_chunks_ends_the_stream_after_its_first_chunk() -> None:
    async with world() as w:
        events = sse_body(
            [
                chunk("m", {"content": "one"}),
                chunk("m", {"content": "two"}),
                chunk("m", {}, "stop"),
                "[DONE]",
            ]
        )
        response = stream_response(events)
        first_event = events.index(b"\n\n") + 2
        response.writes = [Write(events[:first_event]), Write(events[first_event:], delay=0.8)]
        w.primary.script(response)
        received = []
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            async for c in w.gateway.stub.StreamChat(chat_request(model="idle"), timeout=10):
                received.append(c.text_delta)
        assert received == ["one"]
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_TIMEOUT",
        )
        assert details.error_info.metadata["detail"] == "idle"
        assert w.primary_calls("m-idle") == 1, "nothing is retried after the first chunk"


async def test_total_attempt_timeout_is_retried_within_the_deadline() -> None:
    async with world() as w:
        w.primary.script(*(FakeResponse(hang=True) for _ in range(3)))
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="total"), timeout=10)
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_TIMEOUT",
        )
        assert details.error_info.metadata["attempts"] == "3"
        assert await w.primary.wait_for(lambda: w.primary.client_disconnects == 3, 3)


async def test_per_model_read_timeout_reaches_the_transport() -> None:
    async with world() as w:
        for _ in range(3):
            slow = FakeResponse.json({"choices": []})
            slow.header_delay = 0.5
            w.primary.script(slow)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="short-read"), timeout=10)
        assert details_of(caught.value).error_info.reason == "UPSTREAM_TIMEOUT"
        # The same provider's other models keep the provider's 1 s read timeout.
        patient = FakeResponse.json(
            {
                "id": "x",
                "object": "chat.completion",
                "created": 1,
                "model": "m",
                "choices": [
                    {
                        "index": 0,
                        "message": {"role": "assistant", "content": "ok"},
                        "finish_reason": "stop",
                    }
                ],
            }
        )
        patient.header_delay = 0.3  # over m-read's 0.2 s, well within the provider's 1 s
        w.primary.scripted.clear()
        w.primary.script(patient)
        reply = await w.gateway.stub.Chat(chat_request(model="solo"), timeout=10)
        assert reply.message.parts[0].text == "ok" and reply.route.attempts == 1


async def test_cancelled_stream_before_its_first_chunk_closes_the_upstream_request() -> None:
    async with world() as w:
        w.primary.script(FakeResponse(hang=True))
        call = w.gateway.stub.StreamChat(chat_request(model="solo"), timeout=20)
        assert await w.primary.wait_for(lambda: len(w.primary.requests) == 1, 3)
        call.cancel()
        assert await w.primary.wait_for(lambda: w.primary.client_disconnects == 1, 3)
        assert await w.primary.wait_for(lambda: w.primary.open_connections == 0, 3)


async def test_caller_mistakes_do_not_open_the_breaker() -> None:
    async with world() as w:
        w.primary.handler = always(400)  # type: ignore[assignment]
        for _ in range(6):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await w.gateway.stub.Chat(chat_request(model="main"), timeout=10)
            assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        deployment = (await stats(w.gateway, "primary")).deployments[0]
        assert deployment.circuit_state == models_pb2.CIRCUIT_STATE_CLOSED
        assert deployment.times_opened == 0
        assert len(w.secondary.requests) == 0, "a rejected request is not sent to the fallback"


async def cooled_down(w: World) -> bool:
    """The primary's m-main breaker has no cool-down left."""
    deployment = (await stats(w.gateway, "primary")).deployments[0]
    return deployment.open_remaining.ToNanoseconds() == 0


async def wait_until(condition: Callable[[], Awaitable[bool]], seconds: float = 3.0) -> bool:
    """Polls an async condition (e.g. on GetProviderStats), bounded in time."""
    loop = asyncio.get_running_loop()
    end = loop.time() + seconds
    while loop.time() < end:
        if await condition():
            return True
        await asyncio.sleep(0.02)
    return await condition()


async def drain(call: grpc.aio.UnaryStreamCall) -> list[object]:  # type: ignore[type-arg]
    return [c async for c in call]


async def test_stream_falls_back_when_the_primary_fails_before_its_first_chunk() -> None:
    async with world() as w:
        w.primary.handler = always(503)  # type: ignore[assignment]
        chunks = [
            c
            async for c in w.gateway.stub.StreamChat(chat_request("a b", model="main"), timeout=10)
        ]
        assert "".join(c.text_delta for c in chunks) == "a b"
        route = chunks[0].route
        assert (route.provider, route.upstream_model, route.fallback_used, route.attempts) == (
            "secondary",
            "m-backup",
            True,
            4,
        )
        primary = [r for r in w.primary.requests if r.json().get("model") == "m-main"]
        assert len(primary) == 3, "max_attempts on the primary, then the fallback"
        assert all(r.json().get("stream") is True for r in primary)
        assert len(w.secondary.requests) == 1


async def test_a_call_without_deadline_gets_max_call_duration_as_its_budget() -> None:
    async with world(server_extra=", max_call_duration: 0.5s") as w:
        w.primary.script(FakeResponse(hang=True), FakeResponse(hang=True))
        unary = w.gateway.stub.Chat(chat_request(model="solo"))  # no gRPC deadline
        stream = w.gateway.stub.StreamChat(chat_request(model="solo"))  # no gRPC deadline
        # The test's own bound: well past 0.5 s, well before 3 attempts of the 1 s read timeout.
        outcomes = await asyncio.wait_for(
            asyncio.gather(unary, drain(stream), return_exceptions=True), 5
        )
        for outcome in outcomes:
            assert isinstance(outcome, grpc.aio.AioRpcError), outcome
            details = details_of(outcome)
            assert (details.code, details.error_info.reason) == (
                grpc.StatusCode.DEADLINE_EXCEEDED,
                "DEADLINE_EXCEEDED",
            )
            assert details.error_info.metadata["attempts"] == "1"
        assert w.primary_calls("m-solo") == 2
        assert await w.primary.wait_for(lambda: w.primary.client_disconnects == 2, 3)
        assert await w.primary.wait_for(lambda: w.primary.open_connections == 0, 3)


async def test_cancellations_and_deadlines_do_not_open_the_breaker() -> None:
    async with world() as w:
        # consecutive_failures is 3: eight calls that end by the caller are well over it.
        w.primary.script(*(FakeResponse(hang=True) for _ in range(8)))
        chat = [w.gateway.stub.Chat(chat_request(model="main"), timeout=20) for _ in range(2)]
        streams = [
            w.gateway.stub.StreamChat(chat_request(model="main"), timeout=20) for _ in range(2)
        ]
        assert await w.primary.wait_for(lambda: len(w.primary.requests) == 4, 3)
        for call in (*chat, *streams):
            call.cancel()
        for unary in chat:
            with pytest.raises(asyncio.CancelledError):
                await unary
        assert await w.primary.wait_for(lambda: w.primary.client_disconnects == 4, 3)
        # Deadlines long enough for each call to reach the upstream first, even under load,
        # and shorter than the primary's 1 s read timeout.
        outcomes = await asyncio.gather(
            *(w.gateway.stub.Chat(chat_request(model="main"), timeout=0.9) for _ in range(2)),
            *(
                drain(w.gateway.stub.StreamChat(chat_request(model="main"), timeout=0.9))
                for _ in range(2)
            ),
            return_exceptions=True,
        )
        codes = [o.code() if isinstance(o, grpc.aio.AioRpcError) else o for o in outcomes]
        assert codes == [grpc.StatusCode.DEADLINE_EXCEEDED] * 4
        assert w.primary_calls("m-main") == 8
        assert len(w.secondary.requests) == 0, "the caller's end is no reason to fail over"
        primary = await stats(w.gateway, "primary")
        assert (primary.failures, primary.cancelled) == (0, 8)
        deployment = primary.deployments[0]
        assert deployment.upstream_model == "m-main"
        assert deployment.circuit_state == models_pb2.CIRCUIT_STATE_CLOSED
        assert (deployment.consecutive_failures, deployment.times_opened) == (0, 0)
        assert list(deployment.transitions) == []
        reply = await w.gateway.stub.Chat(chat_request("after", model="main"), timeout=10)
        assert (reply.route.provider, reply.route.fallback_used) == ("primary", False)
        assert reply.message.parts[0].text == "after"
        assert w.primary_calls("m-main") == 9


async def test_cancelled_and_expired_unary_calls_leave_no_upstream_connection_open() -> None:
    async with world() as w:
        # "backup" is on the secondary, whose read timeout is the default 60 s: only the
        # gateway's own closing can bring the connections back within the bounded waits.
        w.secondary.script(FakeResponse(hang=True), FakeResponse(hang=True))
        idle = w.secondary.open_connections
        call = w.gateway.stub.Chat(chat_request(model="backup"), timeout=20)
        assert await w.secondary.wait_for(lambda: w.secondary.open_connections == idle + 1, 3)
        call.cancel()
        with pytest.raises(asyncio.CancelledError):
            await call
        assert await w.secondary.wait_for(lambda: w.secondary.open_connections == idle, 3)
        assert w.secondary.client_disconnects == 1

        idle = w.secondary.open_connections
        expiring = asyncio.ensure_future(  # long enough to reach the upstream under load
            w.gateway.stub.Chat(chat_request(model="backup"), timeout=2)
        )
        assert await w.secondary.wait_for(lambda: w.secondary.open_connections == idle + 1, 3)
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await expiring
        assert caught.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
        assert await w.secondary.wait_for(lambda: w.secondary.open_connections == idle, 3)
        assert w.secondary.client_disconnects == 2
        assert len(w.secondary.requests) == 2


async def test_deadline_exceeded_lists_every_attempt_in_its_details() -> None:
    async with world() as w:
        w.primary.handler = always(503)  # type: ignore[assignment]
        w.secondary.script(FakeResponse(hang=True))
        # 2.5 s: room for three failed attempts and the fallback's, and for the gateway's
        # status to beat the caller's own timer (it ends the call 0.25 s before).
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await w.gateway.stub.Chat(chat_request(model="main"), timeout=2.5)
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.DEADLINE_EXCEEDED,
            "DEADLINE_EXCEEDED",
        )
        assert details.error_info.metadata["attempts"] == "4"
        assert details.error_info.metadata["tried"].split(",") == [
            "primary/m-main:UPSTREAM_UNAVAILABLE",
            "primary/m-main:UPSTREAM_UNAVAILABLE",
            "primary/m-main:UPSTREAM_UNAVAILABLE",
            "secondary/m-backup:DEADLINE_EXCEEDED",
        ]
        assert w.primary_calls("m-main") == 3 and len(w.secondary.requests) == 1
        assert await w.secondary.wait_for(lambda: w.secondary.client_disconnects == 1, 3)


async def test_retry_after_beyond_the_deadline_moves_to_the_fallback_at_once() -> None:
    async with world() as w:
        # 5 s is within max_retry_after (10 s) but not within the 3 s deadline, which leaves
        # the fallback time to answer on a loaded machine.
        w.primary.script(rate_limited("5"))
        reply = await w.gateway.stub.Chat(chat_request("hi", model="main"), timeout=3)
        assert reply.message.parts[0].text == "hi"
        assert (reply.route.provider, reply.route.attempts, reply.route.fallback_used) == (
            "secondary",
            2,
            True,
        )
        assert w.primary_calls("m-main") == 1
        assert len(w.secondary.requests) == 1
        assert (await stats(w.gateway, "primary")).retries == 0


async def test_failed_half_open_probe_reopens_with_a_longer_cool_down() -> None:
    async with world() as w:
        w.primary.handler = always(503)  # type: ignore[assignment]
        reply = await w.gateway.stub.Chat(chat_request(model="main"), timeout=10)
        assert (reply.route.provider, reply.route.attempts) == ("secondary", 4)
        first = (await stats(w.gateway, "primary")).deployments[0]
        assert first.circuit_state == models_pb2.CIRCUIT_STATE_OPEN
        assert first.times_opened == 1
        first_remaining = first.open_remaining.ToNanoseconds()
        assert 0 < first_remaining <= 2_000_000_000  # cool_down: 2s
        assert await wait_until(lambda: cooled_down(w), 5)
        # The probe fails: one attempt on the primary, then the fallback serves.
        reply = await w.gateway.stub.Chat(chat_request(model="main"), timeout=10)
        assert (reply.route.provider, reply.route.attempts) == ("secondary", 2)
        assert w.primary_calls("m-main") == 4, "exactly one probe"
        second = (await stats(w.gateway, "primary")).deployments[0]
        assert second.circuit_state == models_pb2.CIRCUIT_STATE_OPEN
        assert second.times_opened == 2
        assert list(second.transitions) == ["CLOSED->OPEN", "OPEN->HALF_OPEN", "HALF_OPEN->OPEN"]
        # Doubled: 4 s, so more is left than the whole first cool-down.
        assert 2_000_000_000 < second.open_remaining.ToNanoseconds() <= 4_000_000_000
        # Still open: the next call does not reach the primary.
        reply = await w.gateway.stub.Chat(chat_request(model="main"), timeout=10)
        assert (reply.route.provider, reply.route.attempts) == ("secondary", 1)
        assert w.primary_calls("m-main") == 4


async def test_connect_timeout_of_the_provider_ends_each_attempt() -> None:
    async with world() as w, NeverAccepts() as stuck:
        if not stuck.full:
            pytest.skip("could not fill the accept queue of a loopback listener here")
        text = CONFIG.format(
            primary=w.primary.url,
            secondary=w.secondary.url,
            proxy=w.proxy.url,
            closed=w.closed,
            server_extra="",
        )
        text = text.replace(
            "providers:\n",
            "providers:\n"
            f'  - {{name: stuck, api_key_env: K, base_url: "{stuck.url}/v1",'
            " timeouts: {connect: 0.2s}, openai: {}}\n",
            1,
        )
        text = text.replace(
            "models:\n",
            "models:\n  - {alias: stuck, provider: stuck, upstream_model: m-stuck}\n",
            1,
        )
        async with running_gateway(text, environ={"K": "k"}) as gateway:
            # 3 s: room for 3 connect timeouts of 0.2 s, not for one of the default 5 s.
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gateway.stub.Chat(chat_request(model="stuck"), timeout=3)
        details = details_of(caught.value)
        assert (details.code, details.error_info.reason) == (
            grpc.StatusCode.UNAVAILABLE,
            "UPSTREAM_TIMEOUT",
        )
        assert details.error_info.metadata["detail"] == "ConnectTimeout"
        assert details.error_info.metadata["attempts"] == "3"
        assert (
            details.error_info.metadata["tried"].split(",")
            == ["stuck/m-stuck:UPSTREAM_TIMEOUT"] * 3
        )
