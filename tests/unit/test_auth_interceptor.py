"""The authentication interceptor on its own: which full method names are exempt (exact
matches only), which skip it (health), and that a token sent to an exempt method is
still checked. Driven through `around_unary` / `around_stream` with a stand-in context."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterator, Sequence

import grpc
import pytest
from google.protobuf import json_format
from llmgateway.config.v1 import config_pb2

from service.auth.identity import ANONYMOUS, Identity
from service.auth.verifier import TokenVerifier
from service.callstate import CallState, current_call
from service.interceptors.auth import AuthInterceptor
from tests.fakes.keys import HS_SECRET, claims, sign

LIST_MODELS = "/llmgateway.v1.ProviderService/ListModels"
REFLECTION = "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo"
REFLECTION_V1 = "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo"

NEAR_MISSES = [
    "/llmgateway.v1.ProviderService/List",  # a prefix of the exempt name
    "/llmgateway.v1.ProviderService/ListModel",
    "/llmgateway.v1.ProviderService/",
    "/llmgateway.v1.ProviderService",
    "/llmgateway.v1.ProviderService/listmodels",  # case variants
    "/llmgateway.v1.ProviderService/LISTMODELS",
    "/llmgateway.v1.providerservice/ListModels",
    "/LLMGATEWAY.V1.PROVIDERSERVICE/LISTMODELS",
    "/llmgateway.v1.ProviderService/ListModelsX",  # trailing characters
    "/llmgateway.v1.ProviderService/ListModels/",
    "/llmgateway.v1.ProviderService/ListModels/Chat",
    "/llmgateway.v1.ProviderService/ListModels ",
    "/llmgateway.v1.ProviderService/ListModels\n",
    "/llmgateway.v1.ProviderService/ListModels\x00",
    " /llmgateway.v1.ProviderService/ListModels",  # leading characters
    "llmgateway.v1.ProviderService/ListModels",
    "//llmgateway.v1.ProviderService/ListModels",
    "/evil.llmgateway.v1.ProviderService/ListModels",
    "/llmgateway.v1.ProviderServiceX/ListModels",
    "/llmgateway.v2.ProviderService/ListModels",
    "/llmgateway.v1.ProviderService/Chat",  # another method of the same service
    "/llmgateway.v1.ProviderService/GetProviderStats",
    REFLECTION,  # reflection is closed in these tests
]


class Aborted(Exception):
    """What the stand-in context raises, as grpc.aio's abort does."""


class FakeContext:
    def __init__(self, metadata: Sequence[tuple[str, str]] = ()) -> None:
        self._metadata = tuple(metadata)
        self.aborted: list[grpc.Status] = []

    def invocation_metadata(self) -> tuple[tuple[str, str], ...]:
        return self._metadata

    async def abort_with_status(self, status: grpc.Status) -> None:
        self.aborted.append(status)
        raise Aborted


class CountingVerifier(TokenVerifier):
    def __init__(self) -> None:
        config = json_format.ParseDict(
            {
                "issuers": [
                    {
                        "issuer": "hs-issuer",
                        "audiences": ["llm-gateway"],
                        "algorithms": ["HS256"],
                        "secret_env": "HS",
                    }
                ]
            },
            config_pb2.AuthConfig(),
        )
        super().__init__(config, {"HS": HS_SECRET})
        self.calls = 0

    async def verify(self, metadata: Sequence[tuple[str, str | bytes]]) -> Identity:
        self.calls += 1
        return await super().verify(metadata)


def interceptor(reflection_open: bool = False) -> tuple[AuthInterceptor, CountingVerifier]:
    verifier = CountingVerifier()
    return AuthInterceptor(verifier, (LIST_MODELS,), reflection_open), verifier


@pytest.fixture
def state() -> Iterator[CallState]:
    value = CallState(request_id="req-1", method="")
    token = current_call.set(value)
    try:
        yield value
    finally:
        current_call.reset(token)


def bearer(token: str) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {token}"),)


async def unary(
    auth: AuthInterceptor, method: str, context: FakeContext
) -> tuple[bool, str | None]:
    """(whether the handler ran, what it returned)."""
    ran: list[bool] = []

    async def proceed() -> str:
        ran.append(True)
        return "reply"

    try:
        result = await auth.around_unary(method, object(), context, proceed)  # type: ignore[arg-type]
    except Aborted:
        return bool(ran), None
    return bool(ran), result


async def streamed(
    auth: AuthInterceptor, method: str, context: FakeContext
) -> tuple[bool, list[str]]:
    ran: list[bool] = []

    async def items() -> AsyncIterator[str]:
        ran.append(True)
        yield "a"
        yield "b"

    got: list[str] = []
    try:
        async for item in auth.around_stream(method, object(), context, items):  # type: ignore[arg-type]
            got.append(item)
    except Aborted:
        pass
    return bool(ran), got


async def test_the_exempt_method_needs_no_token(state: CallState) -> None:
    auth, verifier = interceptor()
    context = FakeContext()
    assert await unary(auth, LIST_MODELS, context) == (True, "reply")
    assert await streamed(auth, LIST_MODELS, context) == (True, ["a", "b"])
    assert context.aborted == []
    assert verifier.calls == 0, "no verification without a token on an exempt method"
    assert state.identity is ANONYMOUS
    assert state.denied_reason == ""


@pytest.mark.parametrize("method", NEAR_MISSES)
async def test_near_misses_of_an_exempt_name_need_a_token(state: CallState, method: str) -> None:
    auth, verifier = interceptor()
    context = FakeContext()
    assert await unary(auth, method, context) == (False, None)
    assert await streamed(auth, method, context) == (False, [])
    assert [s.code for s in context.aborted] == [grpc.StatusCode.UNAUTHENTICATED] * 2
    assert verifier.calls == 2
    assert state.identity is None
    assert state.denied_reason == "no authorization metadata"


@pytest.mark.parametrize("method", NEAR_MISSES[:4])
async def test_near_misses_are_served_with_a_valid_token(state: CallState, method: str) -> None:
    auth, verifier = interceptor()
    context = FakeContext(bearer(sign(claims("hs-issuer"), HS_SECRET, "HS256")))
    assert await unary(auth, method, context) == (True, "reply")
    assert context.aborted == [] and verifier.calls == 1
    assert state.identity is not None and state.identity.subject == "alice"


async def test_a_token_sent_to_an_exempt_method_is_still_checked(state: CallState) -> None:
    auth, verifier = interceptor()
    forged = FakeContext(bearer(sign(claims("hs-issuer"), HS_SECRET + "x", "HS256")))
    assert await unary(auth, LIST_MODELS, forged) == (False, None)
    assert [s.code for s in forged.aborted] == [grpc.StatusCode.UNAUTHENTICATED]
    assert state.denied_reason == "bad signature"
    valid = FakeContext(bearer(sign(claims("hs-issuer", sub="bob"), HS_SECRET, "HS256")))
    assert await unary(auth, LIST_MODELS, valid) == (True, "reply")
    assert state.identity is not None and state.identity.subject == "bob"
    assert verifier.calls == 2
    upper = FakeContext((("Authorization", "Bearer garbage"),))  # any case of the key counts
    assert await unary(auth, LIST_MODELS, upper) == (False, None)
    assert verifier.calls == 3


@pytest.mark.parametrize(
    ("method", "exempt"),
    [
        (REFLECTION, True),
        (REFLECTION_V1, True),
        ("/grpc.reflection.v1alpha.ServerReflectionX/ServerReflectionInfo", False),
        ("/grpc.reflection.v1alpha.ServerReflection", False),
        ("/grpc.reflection.v1alpha.serverreflection/ServerReflectionInfo", False),
        ("grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", False),
        ("/x/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo", False),
        (LIST_MODELS, True),
        (NEAR_MISSES[0], False),
    ],
)
async def test_open_reflection_is_exempt_by_its_service_name_only(
    state: CallState, method: str, exempt: bool
) -> None:
    auth, verifier = interceptor(reflection_open=True)
    ran, _ = await streamed(auth, method, FakeContext())
    assert ran is exempt
    assert verifier.calls == (0 if exempt else 1)


@pytest.mark.parametrize(
    ("method", "applies"),
    [
        ("/grpc.health.v1.Health/Check", False),
        ("/grpc.health.v1.Health/Watch", False),
        ("/grpc.health.v1.HealthX/Check", True),
        ("/grpc.health.v1.health/Check", True),
        ("/grpc.health.v1.Health", True),
        ("grpc.health.v1.Health/Check", True),
        ("/x/grpc.health.v1.Health/Check", True),
        (LIST_MODELS, True),
        (REFLECTION, True),
    ],
)
def test_only_health_checks_skip_authentication(method: str, applies: bool) -> None:
    auth, _ = interceptor(reflection_open=True)
    assert auth.applies(method) is applies


async def test_exemptions_come_from_the_configured_names_only(state: CallState) -> None:
    verifier = CountingVerifier()
    none = AuthInterceptor(verifier, (), reflection_open=False)
    assert await unary(none, LIST_MODELS, FakeContext()) == (False, None)
    two = AuthInterceptor(verifier, (LIST_MODELS, "/a.B/C"), reflection_open=False)
    assert await unary(two, "/a.B/C", FakeContext()) == (True, "reply")
    assert await unary(two, LIST_MODELS, FakeContext()) == (True, "reply")
    assert await unary(two, "/a.B/D", FakeContext()) == (False, None)
    assert verifier.calls == 2
