"""Per-token log probabilities from the providers' own shapes into LogprobToken. Pure.

OpenAI, Azure and OpenAI-compatible servers (vLLM): `choices[].logprobs.content[]` with
`token`, `logprob` and `top_logprobs[]` (streams: the same, per chunk). Gemini:
`candidates[].logprobsResult` with `chosenCandidates[]` (`token`, `logProbability`) and,
at the same positions, `topCandidates[].candidates[]`.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from llmgateway.v1 import chat_pb2


def from_openai(logprobs: Mapping[str, Any] | None) -> list[chat_pb2.LogprobToken]:
    if not isinstance(logprobs, Mapping):
        return []
    out = []
    for entry in logprobs.get("content") or []:
        token = chat_pb2.LogprobToken(
            token=str(entry.get("token") or ""), logprob=float(entry.get("logprob") or 0.0)
        )
        for alternative in entry.get("top_logprobs") or []:
            token.top_logprobs.add(
                token=str(alternative.get("token") or ""),
                logprob=float(alternative.get("logprob") or 0.0),
            )
        out.append(token)
    return out


def from_gemini(result: Mapping[str, Any] | None) -> list[chat_pb2.LogprobToken]:
    if not isinstance(result, Mapping):
        return []
    chosen = result.get("chosenCandidates") or []
    top = result.get("topCandidates") or []
    out = []
    for position, entry in enumerate(chosen):
        token = chat_pb2.LogprobToken(
            token=str(entry.get("token") or ""),
            logprob=float(entry.get("logProbability") or 0.0),
        )
        if position < len(top):
            for alternative in top[position].get("candidates") or []:
                token.top_logprobs.add(
                    token=str(alternative.get("token") or ""),
                    logprob=float(alternative.get("logProbability") or 0.0),
                )
        out.append(token)
    return out
