"""The context-window check made before a chat call is sent. Pure.

An alias with a configured `context_window` gets no prompt that is estimated to be
longer: the call ends INVALID_ARGUMENT `CONTEXT_LENGTH_EXCEEDED` (or moves to the
alias's `context_fallbacks`) without an upstream request. Servers differ in how they
refuse an over-long prompt (a 400, or llama.cpp's empty 200 stream); the check makes
every one of them look the same, and costs the provider nothing.

The estimate is limits/estimate.py's (UTF-8 bytes / 4 plus overheads), for the prompt
alone: the output is not counted, since servers stop generating at the end of the
window rather than refuse the call. Byte counts err low for most text (code, CJK), so
a prompt the model can take is rarely refused; the upstream still answers for the rest.
"""

from __future__ import annotations

import grpc

from service.errors import FieldViolation, GatewayError
from service.providers.base import Deployment


def context_too_long(deployment: Deployment, tokens: int) -> GatewayError:
    """The refusal of a prompt the alias's context window cannot hold."""
    problem = (
        f"the conversation is about {tokens} tokens, more than the "
        f'{deployment.context_limit}-token context window of model "{deployment.alias}"'
    )
    return GatewayError(
        grpc.StatusCode.INVALID_ARGUMENT,
        "CONTEXT_LENGTH_EXCEEDED",
        f"messages: {problem}",
        metadata={
            "provider": deployment.provider,
            "model": deployment.upstream_model,
            "alias": deployment.alias,
            "contextWindow": str(deployment.context_limit),
            "estimatedPromptTokens": str(tokens),
        },
        field_violations=[FieldViolation("messages", problem)],
    )
