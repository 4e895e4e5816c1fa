"""A provider's own rate limit, as the fakes enforce and report it.

A fixed window (a minute by default) that starts with the first request: requests and
tokens used in it are counted, a request over either limit gets the provider's 429, and
every response carries the provider's rate-limit headers (reference §2.1, §4.6):
OpenAI's `x-ratelimit-*` with Go-duration resets, Anthropic's `anthropic-ratelimit-*`
with RFC 3339 resets.
"""

from __future__ import annotations

import datetime
import math
import time
from collections.abc import Callable
from dataclasses import dataclass, field


def go_duration(seconds: float) -> str:
    """Seconds as Go writes a duration: "20ms", "1.5s", "6m0s"."""
    if seconds < 1:
        return f"{round(seconds * 1000)}ms"
    if seconds < 60:
        return f"{round(seconds, 3):g}s"
    minutes, rest = divmod(seconds, 60)
    return f"{int(minutes)}m{round(rest, 3):g}s"


@dataclass
class FakeQuota:
    requests: int = 0  # per window; 0: no request limit
    tokens: int = 0  # per window; 0: no token limit
    window: float = 60.0
    send_headers: bool = True
    clock: Callable[[], float] = time.time
    used_requests: int = 0
    used_tokens: int = 0
    refused: int = 0  # 429s sent
    _started: float | None = field(default=None, repr=False)

    def _roll(self) -> float:
        now = self.clock()
        if self._started is None or now >= self._started + self.window:
            self._started = now
            self.used_requests = self.used_tokens = 0
        return now

    def over(self) -> bool:
        """Would one more request go over a limit? (Then it is refused, and counted.)"""
        self._roll()
        full = (self.requests and self.used_requests >= self.requests) or (
            self.tokens and self.used_tokens >= self.tokens
        )
        if full:
            self.refused += 1
        return bool(full)

    def charge(self, tokens: int = 0, requests: int = 1) -> None:
        self._roll()
        self.used_requests += requests
        self.used_tokens += tokens

    def reset_in(self) -> float:
        now = self._roll()
        assert self._started is not None
        return max(0.0, self._started + self.window - now)

    def _remaining(self) -> tuple[int, int]:
        return (
            max(0, self.requests - self.used_requests),
            max(0, self.tokens - self.used_tokens),
        )

    def openai_headers(self) -> dict[str, str]:
        if not self.send_headers:
            return {}
        requests, tokens = self._remaining()
        reset = go_duration(self.reset_in())
        headers: dict[str, str] = {}
        if self.requests:
            headers.update(
                {
                    "x-ratelimit-limit-requests": str(self.requests),
                    "x-ratelimit-remaining-requests": str(requests),
                    "x-ratelimit-reset-requests": reset,
                }
            )
        if self.tokens:
            headers.update(
                {
                    "x-ratelimit-limit-tokens": str(self.tokens),
                    "x-ratelimit-remaining-tokens": str(tokens),
                    "x-ratelimit-reset-tokens": reset,
                }
            )
        return headers

    def anthropic_headers(self) -> dict[str, str]:
        if not self.send_headers:
            return {}
        requests, tokens = self._remaining()
        # Whole seconds, rounded up: never before the window really ends.
        at = datetime.datetime.fromtimestamp(
            math.ceil(self.clock() + self.reset_in()), tz=datetime.UTC
        )
        reset = at.isoformat().replace("+00:00", "Z")
        headers: dict[str, str] = {}
        if self.requests:
            headers.update(
                {
                    "anthropic-ratelimit-requests-limit": str(self.requests),
                    "anthropic-ratelimit-requests-remaining": str(requests),
                    "anthropic-ratelimit-requests-reset": reset,
                }
            )
        if self.tokens:
            for kind in ("tokens", "input-tokens", "output-tokens"):
                headers.update(
                    {
                        f"anthropic-ratelimit-{kind}-limit": str(self.tokens),
                        f"anthropic-ratelimit-{kind}-remaining": str(tokens),
                        f"anthropic-ratelimit-{kind}-reset": reset,
                    }
                )
        return headers
