"""The record of one call as it goes: attempts, deployments tried, who served it.

The executor fills it in, the cache path and the stream path add to it, and the
servicer reads it for the response's route, the error details and the audit.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from llmgateway.v1 import route_pb2

from service.errors import GatewayError
from service.providers.base import Deployment
from service.routing.quotas import QuotaHold


@dataclass
class CallRecord:
    """What happened during one call: for the response, the error details and the audit."""

    attempts: int = 0
    tried: list[str] = field(default_factory=list)  # "provider/model:REASON", in order
    served_by: Deployment | None = None
    fallback_used: bool = False
    chunks_delivered: int = 0
    cache_hit: bool = False  # answered from the cache
    coalesced: bool = False  # answered by an identical call in flight
    # The rate-limit reservation of the request that served, until it is settled with
    # the usage (service/routing/quotas.py).
    quota_hold: QuotaHold | None = None
    dropped_settings: list[str] = field(default_factory=list)  # left out for served_by

    def route(self, upstream_request_id: str = "") -> route_pb2.RouteInfo:
        assert self.served_by is not None
        return route_pb2.RouteInfo(
            provider=self.served_by.provider,
            upstream_model=self.served_by.upstream_model,
            attempts=self.attempts,
            fallback_used=self.fallback_used,
            upstream_request_id=upstream_request_id,
            dropped_settings=self.dropped_settings,
        )

    def annotate(self, error: GatewayError) -> GatewayError:
        error.with_metadata(attempts=str(self.attempts))
        if self.tried:
            error.with_metadata(tried=",".join(self.tried[-8:]))
        return error
