"""The pure half of Embed batching: one upstream answer split back into each caller's
own. Each caller gets exactly the vectors of its own inputs, in its order (indices
from 0), and a share of the reported input tokens in proportion to the gateway's
estimate of its inputs; the shares add up to exactly the reported total (largest
remainder). No I/O.
"""

from __future__ import annotations

from collections.abc import Sequence

from llmgateway.v1 import embed_pb2, route_pb2


def shares(total: int, weights: Sequence[int]) -> list[int]:
    """`total` split in proportion to `weights` (all ≥ 0), in whole parts that add up
    to exactly `total`: each gets the floor of its exact share, and what is left goes
    one by one to the largest remainders (earlier callers first on ties)."""
    if not weights:
        return []
    whole = sum(weights)
    if whole <= 0:
        weights, whole = [1] * len(weights), len(weights)
    floors = [total * w // whole for w in weights]
    left = total - sum(floors)
    by_remainder = sorted(range(len(weights)), key=lambda i: (-(total * weights[i] % whole), i))
    for index in by_remainder[:left]:
        floors[index] += 1
    return floors


def split_response(
    response: embed_pb2.EmbedResponse, sizes: Sequence[int], weights: Sequence[int]
) -> list[embed_pb2.EmbedResponse]:
    """One EmbedResponse per caller: `sizes` are the callers' input counts, in the order
    their inputs were put in the batch; `weights` their estimated input tokens."""
    if len(response.embeddings) != sum(sizes):
        raise ValueError(f"{len(response.embeddings)} embeddings for {sum(sizes)} inputs")
    vectors = sorted(response.embeddings, key=lambda e: e.index)
    inputs = shares(response.usage.input_tokens, weights)
    parts = []
    start = 0
    for size, tokens in zip(sizes, inputs, strict=True):
        part = embed_pb2.EmbedResponse(
            embeddings=[
                embed_pb2.Embedding(index=i, values=vectors[start + i].values) for i in range(size)
            ],
            usage=route_pb2.Usage(
                input_tokens=tokens,
                total_tokens=tokens,
                estimated=response.usage.estimated,
            ),
        )
        part.route.CopyFrom(response.route)
        parts.append(part)
        start += size
    return parts
