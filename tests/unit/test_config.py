"""Configuration parsing: exact field paths for errors, defaults, skipped providers."""

from __future__ import annotations

import pytest

from service.config import ConfigError, parse_config, seconds_or

GOOD = """
auth: {disabled: true}
providers:
  - name: mock
    mock: {token_delay: 0.5s}
  - name: paid
    api_key_env: PAID_KEY
    skip_if_key_missing: true
    mock: {}
models:
  - {alias: a, provider: mock}
  - {alias: b, provider: paid}
"""


def test_good_config_parses_with_durations() -> None:
    loaded = parse_config(GOOD, {"PAID_KEY": "x"})
    assert [p.name for p in loaded.config.providers] == ["mock", "paid"]
    assert seconds_or(loaded.config.providers[0].mock, "token_delay", 9.0) == 0.5
    assert seconds_or(loaded.config.server, "shutdown_grace", 9.0) == 9.0
    assert loaded.skipped_providers == ()


def test_provider_without_key_is_skipped_with_its_models() -> None:
    loaded = parse_config(GOOD, {})
    assert loaded.skipped_providers == ("paid",)
    assert [p.name for p in loaded.config.providers] == ["mock"]
    assert [m.alias for m in loaded.config.models] == ["a"]


def test_skipping_everything_is_an_error() -> None:
    text = GOOD.replace("  - name: mock\n    mock: {token_delay: 0.5s}\n", "").replace(
        "  - {alias: a, provider: mock}\n", ""
    )
    with pytest.raises(ConfigError, match="no provider is left"):
        parse_config(text, {})


@pytest.mark.parametrize(
    ("text", "path", "problem"),
    [
        ("[1, 2]", "", "must hold a mapping"),
        ("providers: {}", "providers", "must be a list"),
        ("providers: [3]", "providers[0]", "must be a mapping"),
        ("server: {port: x}", "server.port", "invalid literal"),
        ("server: {port: -1}", "server.port", "out of range"),
        ("server: {shutdown_grace: 0s}\n" + GOOD, "server.shutdown_grace", "must be positive"),
        (
            "server: {max_receive_message_bytes: 10}\n" + GOOD,
            "server.max_receive_message_bytes",
            "at least 1024",
        ),
        ("server: {keepalive: {time: soon}}", "server.keepalive.time", "must be a duration"),
        ("logging: {level: loud}\n" + GOOD, "logging.level", "must be one of"),
        ("providers:\n  - {name: m}\nmodels: []", "providers[0]", "exactly one provider kind"),
        ("providers:\n  - {name: 'bad name', mock: {}}", "providers[0].name", "letters"),
        (
            "providers:\n  - {name: m, mock: {}}\n  - {name: m, mock: {}}",
            "providers[1].name",
            "used twice",
        ),
        (
            "providers:\n  - {name: m, mock: {embedding_dimensions: 0}}",
            "providers[0].mock.embedding_dimensions",
            "1 to 4096",
        ),
        (
            "providers:\n  - {name: m, mock: {fault: {http_status: 200}}}",
            "providers[0].mock.fault.http_status",
            "400 to 599",
        ),
        (
            "providers:\n  - {name: m, mock: {script: [ok, {a: b}]}}",
            "providers[0].mock.script[1]",
            "",
        ),
        (
            "providers:\n  - {name: m, mock: {}, headers: {x: [1]}}",
            "providers[0].headers.x",
            "single value",
        ),
        (
            "providers:\n  - {name: m, mock: {}, skip_if_key_missing: true}",
            "providers[0].skip_if_key_missing",
            "needs api_key_env",
        ),
        ("providers:\n  - {name: m, mock: {}}\nmodels: []", "models", "at least one model"),
        (
            "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {provider: m}",
            "models[0].alias",
            "is required",
        ),
        (
            "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n  - {alias: a, provider: m}",
            "models[1].alias",
            "used twice",
        ),
        (
            "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m, capabilities: {vision: maybe}}",
            "models[0].capabilities.vision",
            "",
        ),
        (
            "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m, colour: red}",
            "models[0].colour",
            "unknown field",
        ),
        (
            "providers:\n  - name: m\n    mock:\nmodels: []",
            "providers[0].mock",
            "must not be empty",
        ),
        (
            "routing: {breaker: {cool_down_jitter: 0.8}}\n" + GOOD,
            "routing.breaker.cool_down_jitter",
            "0 to 0.5",
        ),
        (
            "routing: {quota_cool_down: -5s}\n" + GOOD,
            "routing.quota_cool_down",
            "must not be negative",
        ),
        (
            "providers:\n  - {name: m, mock: {}, quota_cool_down: -1s}",
            "providers[0].quota_cool_down",
            "must not be negative",
        ),
        (
            # base_url replaces the versioned default URL: api_version would be ignored.
            "providers:\n  - {name: g, api_key_env: K, base_url: 'http://127.0.0.1:9/v1beta',"
            " gemini: {api_version: v1}}",
            "providers[0].gemini.api_version",
            "is not used with base_url",
        ),
    ],
)
def test_errors_name_the_field_path(text: str, path: str, problem: str) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert caught.value.path == path
    assert problem in caught.value.problem
    assert str(caught.value).startswith(f"{path}: ") if path else problem in str(caught.value)


def test_camel_case_keys_are_accepted_like_json() -> None:
    loaded = parse_config(
        "auth: {disabled: true}\nproviders:\n  - {name: m, mock: {tokenDelay: 1s}}\nmodels:\n  - {alias: a, provider: m}\n",
        {},
    )
    assert loaded.config.providers[0].mock.token_delay.seconds == 1


REDIS_BASE = "auth: {disabled: true}\nproviders:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\nlimits:\n  redis: "


@pytest.mark.parametrize(
    ("redis", "environ", "path", "problem"),
    [
        ("{key_prefix: x}", {}, "limits.redis.url_env", "is required"),
        ("{url_env: LIMITS_URL}", {}, "limits.redis.url_env", "LIMITS_URL is not set"),
        (
            "{url_env: LIMITS_URL}",
            {"LIMITS_URL": "http://:hunter2@127.0.0.1:6379"},
            "limits.redis.url_env",
            "redis://",
        ),
        (
            "{url_env: LIMITS_URL, timeout: 0s}",
            {"LIMITS_URL": "redis://127.0.0.1:6379"},
            "limits.redis.timeout",
            "positive",
        ),
        (
            "{url_env: LIMITS_URL, max_connections: 0}",
            {"LIMITS_URL": "redis://127.0.0.1:6379"},
            "limits.redis.max_connections",
            "at least 1",
        ),
        (
            "{url_env: LIMITS_URL, on_failure: SOMETIMES}",
            {"LIMITS_URL": "redis://127.0.0.1:6379"},
            "limits.redis.on_failure",
            "",
        ),
    ],
)
def test_redis_store_errors_name_the_field_and_never_the_url(
    redis: str, environ: dict[str, str], path: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(REDIS_BASE + redis + "\n", environ)
    assert caught.value.path == path
    assert problem in caught.value.problem
    assert "hunter2" not in str(caught.value)


def test_redis_store_config_parses() -> None:
    loaded = parse_config(
        REDIS_BASE + "{url_env: LIMITS_URL, on_failure: STORE_FAILURE_MODE_DENY, timeout: 0.1s}\n",
        {"LIMITS_URL": "rediss://user:pw@127.0.0.1:6380/2"},
    )
    redis = loaded.config.limits.redis
    assert redis.url_env == "LIMITS_URL"
    assert seconds_or(redis, "timeout", 9.0) == pytest.approx(0.1)


AUTH_BASE = (
    "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\nauth:\n"
    "  leeway: LEEWAY\n  issuers:\n"
)
AUTH_ENV = {"GW_SECRET": "s" * 32}
HS_OK = "    - {issuer: hs, audiences: [gw], algorithms: [HS256], secret_env: GW_SECRET}\n"
RS_OK = "    - {issuer: rs, audiences: [gw], algorithms: [RS256], jwks_url: 'https://idp/jwks'}\n"


def _issuer(algorithms: str, extra: str = "secret_env: GW_SECRET") -> str:
    return f"    - {{issuer: x, audiences: [gw], algorithms: {algorithms}, {extra}}}\n"


@pytest.mark.parametrize(
    ("issuers", "leeway", "path", "problem"),
    [
        (
            _issuer("[HS256, RS256]"),
            "30s",
            "auth.issuers[0].algorithms",
            "symmetric (HS*) and asymmetric algorithms cannot be mixed",
        ),
        (
            HS_OK + _issuer("[ES256, HS512]", "jwks_url: 'https://idp/jwks'"),
            "30s",
            "auth.issuers[1].algorithms",
            "symmetric (HS*) and asymmetric algorithms cannot be mixed",
        ),
        (_issuer("[none]"), "30s", "auth.issuers[0].algorithms", "not supported: none"),
        (_issuer("[None]"), "30s", "auth.issuers[0].algorithms", "not supported: None"),
        (_issuer("[NONE]"), "30s", "auth.issuers[0].algorithms", "not supported: NONE"),
        (_issuer("[nOnE]"), "30s", "auth.issuers[0].algorithms", "not supported: nOnE"),
        (_issuer("[HS256, none]"), "30s", "auth.issuers[0].algorithms", "not supported: none"),
        (
            RS_OK + _issuer("[RS256, None]", "jwks_url: 'https://idp/jwks'"),
            "30s",
            "auth.issuers[1].algorithms",
            "not supported: None",
        ),
        (_issuer("[HS257]"), "30s", "auth.issuers[0].algorithms", "not supported: HS257"),
        (_issuer("[hs256]"), "30s", "auth.issuers[0].algorithms", "not supported: hs256"),
        (
            _issuer("[RS256, XYZ, ABC]", "jwks_url: 'https://idp/jwks'"),
            "30s",
            "auth.issuers[0].algorithms",
            "not supported: ABC, XYZ",
        ),
        (
            _issuer("[HS256]", "tenant_claim: t"),
            "30s",
            "auth.issuers[0].secret_env",
            "is required with HS* algorithms",
        ),
        (
            RS_OK + _issuer("[HS384, HS512]", "tenant_claim: t"),
            "30s",
            "auth.issuers[1].secret_env",
            "is required with HS* algorithms",
        ),
        (
            _issuer("[RS256]", "tenant_claim: t"),
            "30s",
            "auth.issuers[0]",
            "set public_keys or jwks_url",
        ),
        (
            HS_OK + _issuer("[ES256, EdDSA]", "public_keys: []"),
            "30s",
            "auth.issuers[1]",
            "set public_keys or jwks_url",
        ),
        (
            _issuer("[HS256]", "secret_env: GW_SECRET, required_typ: 'at jwt'"),
            "30s",
            "auth.issuers[0].required_typ",
            'must be a media type such as "at+jwt"',
        ),
        (HS_OK, "301s", "auth.leeway", "must be 0 to 300s"),
        (HS_OK, "300.5s", "auth.leeway", "must be 0 to 300s"),
        (HS_OK, "-1s", "auth.leeway", "must be 0 to 300s"),
        (HS_OK, "-0.5s", "auth.leeway", "must be 0 to 300s"),
    ],
)
def test_issuer_errors_name_the_field_path(
    issuers: str, leeway: str, path: str, problem: str
) -> None:
    text = AUTH_BASE.replace("LEEWAY", leeway) + issuers
    with pytest.raises(ConfigError) as caught:
        parse_config(text, AUTH_ENV)
    assert (caught.value.path, caught.value.problem) == (path, problem)
    assert str(caught.value) == f"{path}: {problem}"


@pytest.mark.parametrize("leeway", ["0s", "300s"])
@pytest.mark.parametrize(
    "issuers",
    [
        HS_OK,
        RS_OK,
        HS_OK + RS_OK,
        _issuer("[HS256]", "secret_env: GW_SECRET, required_typ: at+jwt"),
    ],
)
def test_valid_issuers_and_leeway_bounds_parse(issuers: str, leeway: str) -> None:
    loaded = parse_config(AUTH_BASE.replace("LEEWAY", leeway) + issuers, AUTH_ENV)
    assert seconds_or(loaded.config.auth, "leeway", -1.0) == float(leeway[:-1])
    assert len(loaded.config.auth.issuers) == issuers.count("issuer:")


ISSUER_LIMITS = (
    "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n"
    "auth:\n  issuers:\n    - {issuer: internal, audiences: [gw], algorithms: [HS256], "
    "secret_env: S}\nlimits:\n  issuers: "
)


@pytest.mark.parametrize(
    ("issuers", "path", "problem"),
    [
        ("{intern: {}}", "limits.issuers.intern", "is not one of auth.issuers"),
        ("{internal: {subjects: {'': {}}}}", "limits.issuers.internal.subjects", "not be empty"),
        (
            "{internal: {tenants: {acme: {budget_usd: -1}}}}",
            "limits.issuers.internal.tenants.acme.budget_usd",
            "positive",
        ),
    ],
)
def test_issuer_scoped_limits_name_a_configured_issuer(
    issuers: str, path: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(ISSUER_LIMITS + issuers + "\n", {"S": "s" * 32})
    assert caught.value.path == path
    assert problem in caught.value.problem


def test_issuer_scoped_limits_need_authentication() -> None:
    text = (
        "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n"
        "auth: {disabled: true}\nlimits:\n  issuers: {internal: {}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert caught.value.path == "limits.issuers.internal"
    assert "disabled" in caught.value.problem


def test_issuer_scoped_limits_parse() -> None:
    loaded = parse_config(
        ISSUER_LIMITS + "{internal: {subjects: {alice: {requests_per_minute: 3}}}}\n",
        {"S": "s" * 32},
    )
    assert loaded.config.limits.issuers["internal"].subjects["alice"].requests_per_minute == 3


ISSUER_AUTHORIZATION = (
    "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n"
    "auth:\n  issuers:\n    - {issuer: internal, audiences: [gw], algorithms: [HS256], "
    "secret_env: S}\n  authorization:\n    issuers: "
)


@pytest.mark.parametrize(
    ("issuers", "path", "problem"),
    [
        ("{intern: {}}", "auth.authorization.issuers.intern", "is not one of auth.issuers"),
        (
            "{internal: {tenant_models: {'': {patterns: [a]}}}}",
            "auth.authorization.issuers.internal.tenant_models",
            "not be empty",
        ),
    ],
)
def test_issuer_scoped_tenant_models_name_a_configured_issuer(
    issuers: str, path: str, problem: str
) -> None:
    with pytest.raises(ConfigError) as caught:
        parse_config(ISSUER_AUTHORIZATION + issuers + "\n", {"S": "s" * 32})
    assert caught.value.path == path
    assert problem in caught.value.problem


def test_issuer_scoped_tenant_models_need_authentication() -> None:
    text = (
        "providers:\n  - {name: m, mock: {}}\nmodels:\n  - {alias: a, provider: m}\n"
        "auth:\n  disabled: true\n  authorization:\n"
        "    issuers: {internal: {tenant_models: {acme: {patterns: [a]}}}}\n"
    )
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert caught.value.path == "auth.authorization.issuers.internal"
    assert "disabled" in caught.value.problem


def test_issuer_scoped_tenant_models_parse() -> None:
    loaded = parse_config(
        ISSUER_AUTHORIZATION + "{internal: {tenant_models: {acme: {patterns: [a]}}}}\n",
        {"S": "s" * 32},
    )
    scoped = loaded.config.auth.authorization.issuers["internal"]
    assert list(scoped.tenant_models["acme"].patterns) == ["a"]
