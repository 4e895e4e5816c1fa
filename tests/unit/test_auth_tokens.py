"""A catalog of hostile tokens against the verifier, with real keys and a real JWKS
server on loopback. Each one is refused with a precise reason (for the audit log)."""

from __future__ import annotations

import asyncio
import base64
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jwt
import pytest
import pytest_asyncio
from google.protobuf import json_format
from llmgateway.config.v1 import config_pb2

from service.auth.verifier import AuthFailure, TokenVerifier, media_type
from tests.fakes.http_server import FakeHttpServer, FakeRequest, FakeResponse
from tests.fakes.keys import (
    HS_SECRET,
    KeyPair,
    claims,
    ec_pair,
    ed_pair,
    forge,
    rsa_pair,
    sign,
)

RSA = rsa_pair("rsa-1")
OTHER_RSA = rsa_pair("rsa-2")
EC = ec_pair("ec-1")
EC_OTHER = ec_pair("ec-2")
ED = ed_pair("ed-1")
ROTATED = ec_pair("ec-rotated")


@dataclass
class Env:
    verifier: TokenVerifier
    jwks: FakeHttpServer
    keys: list[KeyPair]


@pytest_asyncio.fixture(loop_scope="session")
async def env(tmp_path: Path) -> AsyncIterator[Env]:
    published = [EC, EC_OTHER, ED]

    def jwks(request: FakeRequest) -> FakeResponse:
        return FakeResponse.json({"keys": [k.jwk() for k in published]})

    pem = tmp_path / "rsa.pem"
    pem.write_bytes(RSA.public_pem)
    async with FakeHttpServer(jwks) as server:
        config = json_format.ParseDict(
            {
                "leeway": "30s",
                "required_claims": [],
                "issuers": [
                    {
                        "issuer": "hs-issuer",
                        "audiences": ["llm-gateway"],
                        "algorithms": ["HS256"],
                        "secret_env": "HS",
                    },
                    {
                        "issuer": "rs-issuer",
                        "audiences": ["llm-gateway", "other-aud"],
                        "algorithms": ["RS256"],
                        "public_keys": [{"kid": "rsa-1", "pem_file": str(pem)}],
                    },
                    {
                        "issuer": "https://idp.example/",
                        "audiences": ["llm-gateway"],
                        "algorithms": ["ES256", "EdDSA"],
                        "jwks_url": f"{server.url}/.well-known/jwks.json",
                        "jwks_min_refetch": "0.3s",
                        "jwks_refresh": "3600s",
                    },
                ],
            },
            config_pb2.AuthConfig(),
        )
        verifier = TokenVerifier(config, {"HS": HS_SECRET})
        await verifier.start()
        try:
            yield Env(verifier, server, published)
        finally:
            await verifier.close()


def bearer(token: str) -> list[tuple[str, str]]:
    return [("authorization", f"Bearer {token}")]


async def refused(env: Env, metadata: list[tuple[str, Any]]) -> str:
    with pytest.raises(AuthFailure) as caught:
        await env.verifier.verify(metadata)
    return caught.value.reason


def hs(**overrides: Any) -> str:
    return sign(claims("hs-issuer", **overrides), HS_SECRET, "HS256")


def rs(**overrides: Any) -> str:
    return sign(claims("rs-issuer", **overrides), RSA.private, "RS256", kid="rsa-1")


def es(**overrides: Any) -> str:
    return sign(claims("https://idp.example/", **overrides), EC.private, "ES256", kid="ec-1")


async def test_valid_tokens_of_every_kind(env: Env) -> None:
    identity = await env.verifier.verify(bearer(hs(tenant="acme", models=["gpt-*"])))
    assert (identity.subject, identity.tenant, identity.issuer) == ("alice", "acme", "hs-issuer")
    assert identity.scopes == {"chat", "embed", "models:read", "stats:read"}
    assert identity.may_use("gpt-4o") and not identity.may_use("claude")
    assert (await env.verifier.verify(bearer(rs()))).issuer == "rs-issuer"
    assert (await env.verifier.verify(bearer(rs(aud="other-aud")))).subject == "alice"
    assert (await env.verifier.verify(bearer(es()))).issuer == "https://idp.example/"
    ed_token = sign(claims("https://idp.example/"), ED.private, "EdDSA", kid="ed-1")
    assert (await env.verifier.verify(bearer(ed_token))).subject == "alice"
    listed = sign(claims("hs-issuer", scope=["chat", "embed"]), HS_SECRET, "HS256")
    assert (await env.verifier.verify(bearer(listed))).scopes == {"chat", "embed"}
    lower = [("authorization", f"bearer {hs()}")]
    assert (await env.verifier.verify(lower)).subject == "alice"


@pytest.mark.parametrize("spelling", ["none", "None", "NONE", "nOnE"])
async def test_alg_none_in_any_spelling(env: Env, spelling: str) -> None:
    for issuer in ("hs-issuer", "rs-issuer", "https://idp.example/"):
        token = forge({"alg": spelling, "typ": "JWT"}, claims(issuer))
        assert "not allowed" in await refused(env, bearer(token))
        token_with_sig = forge({"alg": spelling}, claims(issuer), b"x")
        assert "not allowed" in await refused(env, bearer(token_with_sig))


async def test_key_confusion_hs256_signed_with_the_rsa_public_key(env: Env) -> None:
    pem = RSA.public_pem
    header = {"alg": "HS256", "typ": "JWT", "kid": "rsa-1"}
    import hashlib
    import hmac
    import json

    signing_input = ".".join(
        base64.urlsafe_b64encode(json.dumps(part).encode()).rstrip(b"=").decode()
        for part in (header, claims("rs-issuer"))
    )
    signature = hmac.new(pem, signing_input.encode(), hashlib.sha256).digest()
    token = signing_input + "." + base64.urlsafe_b64encode(signature).rstrip(b"=").decode()
    assert "not allowed" in await refused(env, bearer(token))


@pytest.mark.parametrize(
    ("make", "reason"),
    [
        (lambda: sign(claims("hs-issuer"), HS_SECRET * 2, "HS512"), "not allowed"),
        (lambda: sign(claims("rs-issuer"), RSA.private, "RS512", kid="rsa-1"), "not allowed"),
        (lambda: sign(claims("rs-issuer"), RSA.private, "PS256", kid="rsa-1"), "not allowed"),
        (
            lambda: sign(claims("https://idp.example/"), RSA.private, "RS256", kid="ec-1"),
            "not allowed",
        ),
    ],
)
async def test_algorithms_outside_the_allow_list(
    env: Env, make: Callable[[], str], reason: str
) -> None:
    assert reason in await refused(env, bearer(make()))


async def test_bit_flipped_and_truncated_signatures(env: Env) -> None:
    for token in (hs(), rs(), es()):
        head, payload, signature = token.split(".")
        raw = bytearray(base64.urlsafe_b64decode(signature + "=" * (-len(signature) % 4)))
        raw[len(raw) // 2] ^= 0x01
        flipped = ".".join(
            [head, payload, base64.urlsafe_b64encode(bytes(raw)).rstrip(b"=").decode()]
        )
        assert await refused(env, bearer(flipped)) in (
            "bad signature",
            "invalid token (DecodeError)",
        )
        truncated = ".".join([head, payload, signature[: len(signature) // 2]])
        assert await refused(env, bearer(truncated)) in (
            "bad signature",
            "invalid token (DecodeError)",
        )
        assert await refused(env, bearer(f"{head}.{payload}")) == "malformed token"
        assert await refused(env, bearer(f"{head}.{payload}.")) in (
            "bad signature",
            "invalid token (DecodeError)",
        )


async def test_tampered_payload_keeps_no_signature(env: Env) -> None:
    head, _, signature = hs().split(".")
    forged_payload = forge({"alg": "HS256"}, claims("hs-issuer", sub="admin")).split(".")[1]
    assert await refused(env, bearer(f"{head}.{forged_payload}.{signature}")) == "bad signature"


async def test_another_key_from_the_same_jwks(env: Env) -> None:
    wrong = sign(claims("https://idp.example/"), EC_OTHER.private, "ES256", kid="ec-1")
    assert await refused(env, bearer(wrong)) == "bad signature"
    other_rsa = sign(claims("rs-issuer"), OTHER_RSA.private, "RS256", kid="rsa-1")
    assert await refused(env, bearer(other_rsa)) == "bad signature"


async def test_expiry_and_not_before_at_the_leeway_edges(env: Env) -> None:
    now = int(time.time())
    assert (await env.verifier.verify(bearer(hs(exp=now - 20)))).subject == "alice"
    assert await refused(env, bearer(hs(exp=now - 45))) == "token expired"
    assert (await env.verifier.verify(bearer(hs(nbf=now + 20)))).subject == "alice"
    assert await refused(env, bearer(hs(nbf=now + 45))) == "token not yet valid"
    assert await refused(env, bearer(hs(iat=now + 3600))) in (
        "token not yet valid",
        "invalid token (ImmatureSignatureError)",
    )


@pytest.mark.parametrize("claim", ["exp", "sub", "iss", "aud"])
async def test_missing_required_claims(env: Env, claim: str) -> None:
    token = sign({k: v for k, v in claims("hs-issuer").items() if k != claim}, HS_SECRET, "HS256")
    reason = await refused(env, bearer(token))
    assert reason == ("unknown issuer" if claim == "iss" else f"missing claim {claim}")


async def test_configured_required_claim(env: Env) -> None:
    config = config_pb2.AuthConfig()
    config.CopyFrom(env.verifier.config)
    config.required_claims.append("tenant")
    strict = TokenVerifier(config, {"HS": HS_SECRET})
    with pytest.raises(AuthFailure) as caught:
        await strict.verify(bearer(hs()))
    assert caught.value.reason == "missing claim tenant"
    assert (await strict.verify(bearer(hs(tenant="acme")))).tenant == "acme"


async def test_wrong_and_prefix_matching_issuers_and_audience(env: Env) -> None:
    for issuer in (
        "hs-issuer-evil",
        "hs-issue",
        "HS-ISSUER",
        "https://idp.example",
        "https://idp.example/x",
    ):
        token = sign(claims(issuer), HS_SECRET, "HS256")
        assert await refused(env, bearer(token)) == "unknown issuer"
    assert await refused(env, bearer(hs(aud="someone-else"))) == "wrong audience"
    assert await refused(env, bearer(hs(aud=["someone-else", "another"]))) == "wrong audience"
    assert await refused(env, bearer(hs(sub=""))) in ("empty subject", "missing claim sub")


async def test_unknown_and_injected_kids(env: Env) -> None:
    fetches_before = env.verifier._issuers["https://idp.example/"].jwks.fetches  # type: ignore[union-attr]
    for kid in ("nope", "../../etc/passwd", "ec-1' OR '1'='1", "x" * 300):
        token = sign(claims("https://idp.example/"), EC.private, "ES256", kid=kid)
        assert await refused(env, bearer(token)) in ("unknown kid", "malformed kid")
    rs_unknown = sign(claims("rs-issuer"), RSA.private, "RS256", kid="rsa-9")
    assert await refused(env, bearer(rs_unknown)) == "unknown kid"
    fetches = env.verifier._issuers["https://idp.example/"].jwks.fetches  # type: ignore[union-attr]
    assert fetches - fetches_before <= 1, "unknown kids refetch at most once per interval"


async def test_random_kids_cannot_cause_a_fetch_storm(env: Env) -> None:
    jwks = env.verifier._issuers["https://idp.example/"].jwks  # type: ignore[union-attr]
    before = len(env.jwks.requests)
    tokens = [
        sign(claims("https://idp.example/"), EC.private, "ES256", kid=f"random-{i}")
        for i in range(200)
    ]
    results = await asyncio.gather(
        *(env.verifier.verify(bearer(t)) for t in tokens), return_exceptions=True
    )
    assert all(isinstance(r, AuthFailure) for r in results)
    assert len(env.jwks.requests) - before <= 1
    assert jwks.fetches >= 1


async def test_key_rotation_and_a_jwks_outage(env: Env) -> None:
    rotated = sign(claims("https://idp.example/"), ROTATED.private, "ES256", kid="ec-rotated")
    await asyncio.sleep(0.35)  # past the refetch interval of earlier tests
    assert await refused(env, bearer(rotated)) == "unknown kid"
    env.keys.append(ROTATED)
    await asyncio.sleep(0.35)
    assert (await env.verifier.verify(bearer(rotated))).subject == "alice", (
        "picked up without a restart"
    )
    env.jwks.handler = lambda request: FakeResponse.raw(b"down", 503)  # type: ignore[assignment]
    await asyncio.sleep(0.35)
    unknown = sign(claims("https://idp.example/"), EC.private, "ES256", kid="still-unknown")
    assert await refused(env, bearer(unknown)) == "unknown kid"  # this triggered a failed fetch
    assert (await env.verifier.verify(bearer(es()))).subject == "alice", "the warm cache survives"
    assert (await env.verifier.verify(bearer(rotated))).subject == "alice"


@pytest.mark.parametrize("header", ["jku", "x5u", "jwk", "x5c"])
async def test_key_urls_in_the_token_header_are_refused(env: Env, header: str) -> None:
    value: Any = (
        {"kty": "oct", "k": "AAAA"}
        if header == "jwk"
        else ("MIIB" if header == "x5c" else "https://evil.example/keys")
    )
    token = sign(
        claims("https://idp.example/"),
        EC.private,
        "ES256",
        kid="ec-1",
        **{header: [value] if header == "x5c" else value},
    )
    assert await refused(env, bearer(token)) == f"forbidden token header {header}"


async def test_unknown_crit_is_refused(env: Env) -> None:
    token = sign(
        claims("hs-issuer"), HS_SECRET, "HS256", crit=["exp-extension"], **{"exp-extension": 1}
    )
    assert await refused(env, bearer(token)) == "forbidden token header crit"


async def test_oversized_and_garbage_tokens(env: Env) -> None:
    huge = hs(padding="x" * 10_000)
    assert await refused(env, bearer(huge)) == "token larger than the configured maximum"
    # At the edge (8192 bytes of metadata value by default), counted before trimming.
    value = f"Bearer {hs()}"
    at_limit = value + " " * (8192 - len(value))
    identity = await env.verifier.verify([("authorization", at_limit)])
    assert identity.subject
    over = at_limit + " "
    assert await refused(env, [("authorization", over)]) == (
        "token larger than the configured maximum"
    )
    for garbage in ("a.b.c", "....", "eyJhbGciOiJIUzI1NiJ9", "not a token", "é.é.é"):
        assert await refused(env, [("authorization", f"Bearer {garbage}")]) in (
            "malformed token",
            "empty or malformed bearer token",
        )


async def test_metadata_shapes(env: Env) -> None:
    token = hs()
    assert await refused(env, []) == "no authorization metadata"
    assert await refused(env, [("x-other", "1")]) == "no authorization metadata"
    assert await refused(env, bearer(token) + bearer(token)) == "more than one authorization entry"
    assert await refused(env, [("authorization", "")]) == "authorization scheme is not Bearer"
    assert await refused(env, [("authorization", "Bearer")]) == "empty or malformed bearer token"
    assert (
        await refused(env, [("authorization", "Bearer    ")]) == "empty or malformed bearer token"
    )
    assert (
        await refused(env, [("authorization", f"Basic {token}")])
        == "authorization scheme is not Bearer"
    )
    assert (
        await refused(env, [("authorization", f"Token {token}")])
        == "authorization scheme is not Bearer"
    )
    assert (
        await refused(env, [("authorization", f"Bearer {token} extra")])
        == "empty or malformed bearer token"
    )
    assert (
        await refused(env, [("authorization", token.encode())]) == "binary authorization metadata"
    )


def test_jwt_library_is_recent_enough() -> None:
    major, minor = (int(x) for x in jwt.__version__.split(".")[:2])
    assert (major, minor) >= (2, 13)


@pytest.mark.parametrize(
    ("pattern", "model", "allowed"),
    [
        ("mock-*", "mock-small", True),
        ("mock-*", "mock-premium/expensive", False),
        ("mock-premium/*", "mock-premium/expensive", True),
        ("mock-premium/*", "mock-premium", False),
        ("*/gpt-4o", "azure/gpt-4o", True),
        ("*/gpt-4o", "azure/gpt-4o-mini", False),
        ("*", "anything/at-all", True),
        ("gpt-4?", "gpt-4o", True),
        ("GPT-4O", "gpt-4o", False),
    ],
)
def test_model_patterns_never_cross_a_slash(pattern: str, model: str, allowed: bool) -> None:
    from service.auth.identity import matches

    assert matches(pattern, model) is allowed


# --- the leeway, two seconds either side of its edge ---------------------------------


def _hs_verifier(leeway: str | None) -> TokenVerifier:
    config: dict[str, Any] = {
        "issuers": [
            {
                "issuer": "hs-issuer",
                "audiences": ["llm-gateway"],
                "algorithms": ["HS256"],
                "secret_env": "HS",
            }
        ]
    }
    if leeway is not None:
        config["leeway"] = leeway
    return TokenVerifier(json_format.ParseDict(config, config_pb2.AuthConfig()), {"HS": HS_SECRET})


@pytest.mark.parametrize(
    ("leeway", "seconds"), [(None, 30), ("0s", 0), ("5s", 5), ("30s", 30), ("300s", 300)]
)
async def test_exp_and_nbf_two_seconds_inside_and_outside_the_leeway(
    leeway: str | None, seconds: int
) -> None:
    verifier = _hs_verifier(leeway)
    assert verifier.leeway == seconds, "the configured leeway (default 30s) is the one used"
    inside, outside = seconds - 2, seconds + 2  # 2 s margins: clock movement cannot flip them
    now = int(time.time())
    assert (await verifier.verify(bearer(hs(exp=now - inside)))).subject == "alice"
    with pytest.raises(AuthFailure) as expired:
        await verifier.verify(bearer(hs(exp=now - outside)))
    assert expired.value.reason == "token expired"
    assert (await verifier.verify(bearer(hs(nbf=now + inside)))).subject == "alice"
    with pytest.raises(AuthFailure) as early:
        await verifier.verify(bearer(hs(nbf=now + outside)))
    assert early.value.reason == "token not yet valid"


# --- a slow or hanging JWKS endpoint never holds up tokens whose kid is cached ---------

SLOW_ISSUER = "https://slow-idp.example/"


def _jwks_verifier(url: str) -> TokenVerifier:
    config = json_format.ParseDict(
        {
            "issuers": [
                {
                    "issuer": SLOW_ISSUER,
                    "audiences": ["llm-gateway"],
                    "algorithms": ["ES256"],
                    "jwks_url": url,
                    "jwks_min_refetch": "0s",  # every unknown kid may fetch
                    "jwks_refresh": "3600s",
                }
            ]
        },
        config_pb2.AuthConfig(),
    )
    return TokenVerifier(config, {})


def _slow(key: KeyPair) -> str:
    return sign(claims(SLOW_ISSUER), key.private, "ES256", kid=key.kid)


async def _loop_ticks(count: int, pending: asyncio.Task[Any]) -> bool:
    """True when `count` timer callbacks ran while `pending` stayed pending (bounded)."""
    loop = asyncio.get_running_loop()
    ticked = asyncio.Event()
    ticks = 0

    def tick() -> None:
        nonlocal ticks
        ticks += 1
        if ticks == count:
            ticked.set()
        else:
            loop.call_later(0.005, tick)

    loop.call_later(0.005, tick)
    await asyncio.wait_for(ticked.wait(), 5)
    return ticks == count and not pending.done()


async def test_a_slow_jwks_fetch_never_blocks_tokens_whose_kid_is_cached() -> None:
    published = [EC]
    hold = False
    arrived = asyncio.Event()
    release = asyncio.Event()
    rotated = ec_pair("ec-slow-rotated")

    async def jwks(request: FakeRequest) -> FakeResponse:
        if hold:
            arrived.set()
            await asyncio.wait_for(release.wait(), 10)
        return FakeResponse.json({"keys": [k.jwk() for k in published]})

    async with FakeHttpServer(jwks) as server:
        verifier = _jwks_verifier(f"{server.url}/jwks")
        await verifier.start()
        try:
            assert len(server.requests) == 1, "the initial fetch"
            hold = True
            pending = asyncio.create_task(verifier.verify(bearer(_slow(rotated))))
            await asyncio.wait_for(arrived.wait(), 5)  # the refetch is in flight
            for _ in range(3):
                identity = await verifier.verify(bearer(_slow(EC)))
                assert identity.subject == "alice"
                assert not pending.done(), "a cached kid was served while the fetch waits"
            many = await asyncio.gather(*(verifier.verify(bearer(_slow(EC))) for _ in range(20)))
            assert [i.subject for i in many] == ["alice"] * 20
            assert not pending.done()
            assert await _loop_ticks(5, pending), "the loop runs timers during the fetch"
            assert len(server.requests) == 2, "one fetch for the unknown kid"
            published.append(rotated)
            release.set()
            identity = await asyncio.wait_for(pending, 5)
            assert identity.subject == "alice", "the fetch, once answered, found the new kid"
            assert len(server.requests) == 2
        finally:
            release.set()
            await verifier.close()


async def test_a_hanging_jwks_fetch_never_blocks_tokens_whose_kid_is_cached() -> None:
    async def jwks(request: FakeRequest) -> FakeResponse:
        return FakeResponse.json({"keys": [EC.jwk()]})

    async with FakeHttpServer(jwks) as server:
        verifier = _jwks_verifier(f"{server.url}/jwks")
        await verifier.start()
        try:
            server.script(FakeResponse(hang=True))  # the next fetch is never answered
            pending = asyncio.create_task(verifier.verify(bearer(_slow(ROTATED))))
            assert await server.wait_for(lambda: len(server.requests) == 2)
            assert (await verifier.verify(bearer(_slow(EC)))).subject == "alice"
            assert not pending.done(), "the known kid did not wait for the hanging fetch"
            assert await _loop_ticks(5, pending)
            pending.cancel()
            with pytest.raises(asyncio.CancelledError):
                await pending
            # The cancelled fetch let go of the cache: the next unknown kid fetches again.
            with pytest.raises(AuthFailure) as caught:
                await asyncio.wait_for(verifier.verify(bearer(_slow(EC_OTHER))), 5)
            assert caught.value.reason == "unknown kid"
            assert len(server.requests) == 3
            assert (await verifier.verify(bearer(_slow(EC)))).subject == "alice"
        finally:
            await verifier.close()


def _clocked_verifier(leeway: str, wall_clock: Any = time.time) -> TokenVerifier:
    config = config_pb2.AuthConfig()
    config.leeway.FromJsonString(leeway)
    issuer = config.issuers.add(issuer="hs", algorithms=["HS256"], secret_env="S")
    issuer.audiences.append("llm-gateway")
    return TokenVerifier(config, {"S": HS_SECRET}, wall_clock=wall_clock)


async def test_a_verified_token_is_trusted_for_a_minute_and_never_past_its_expiry() -> None:
    now = [time.time()]
    verifier = _clocked_verifier("0s", wall_clock=lambda: now[0])
    token = sign(claims("hs", exp=int(now[0]) + 3600), HS_SECRET, "HS256")
    first = await verifier.verify(bearer(token))
    again = await verifier.verify(bearer(token))
    assert again == first and verifier.cache_hits == 1, "no second signature check"
    now[0] += 61  # past the minute: checked again (and still valid)
    assert await verifier.verify(bearer(token)) == first
    assert verifier.cache_hits == 1
    # A token about to expire is trusted only until its expiry (plus the leeway). `exp`
    # is whole seconds: int(now) + 2 leaves more than a second to verify it while valid.
    expiry = int(time.time()) + 2
    short = sign(claims("hs", exp=expiry), HS_SECRET, "HS256")
    real = _clocked_verifier("0s")
    await real.verify(bearer(short))
    for _ in range(10):  # until the wall clock has reached the expiry (bounded)
        if time.time() >= expiry:
            break
        await asyncio.sleep(expiry - time.time() + 0.01)
    with pytest.raises(AuthFailure) as caught:
        await real.verify(bearer(short))
    assert caught.value.reason == "token expired"
    assert real.cache_hits == 0


async def test_refused_tokens_are_never_remembered() -> None:
    verifier = _clocked_verifier("30s")
    forged = sign(claims("hs"), "not-the-secret-0123456789abcdef0123", "HS256")
    for _ in range(2):
        with pytest.raises(AuthFailure) as caught:
            await verifier.verify(bearer(forged))
        assert caught.value.reason == "bad signature"
    assert verifier.cache_hits == 0


@pytest.mark.parametrize(
    ("value", "compared"),
    [
        ("at+jwt", "at+jwt"),
        ("application/at+jwt", "at+jwt"),
        ("Application/AT+JWT", "at+jwt"),
        ("JWT", "jwt"),
        (None, ""),
        (7, ""),
    ],
)
def test_typ_values_compare_as_media_types(value: object, compared: str) -> None:
    assert media_type(value) == compared
