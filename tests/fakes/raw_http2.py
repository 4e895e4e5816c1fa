"""A gRPC call made by hand over HTTP/2 (the `h2` package), for requests no gRPC client
sends: header values that are not UTF-8, for one."""

from __future__ import annotations

import socket
from collections.abc import Sequence
from dataclasses import dataclass, field

import h2.config
import h2.connection
import h2.events

Header = tuple[bytes, bytes]


@dataclass
class RawReply:
    headers: list[Header] = field(default_factory=list)
    trailers: list[Header] = field(default_factory=list)
    data: bytes = b""
    reset: bool = False

    @property
    def grpc_status(self) -> int | None:
        """grpc-status from the trailers (or from the headers of a trailers-only reply)."""
        for key, value in (*self.trailers, *self.headers):
            if key == b"grpc-status":
                return int(value)
        return None


def grpc_frame(message: bytes) -> bytes:
    """One length-prefixed gRPC message, uncompressed."""
    return b"\x00" + len(message).to_bytes(4, "big") + message


def raw_grpc_call(
    port: int, method: str, metadata: Sequence[Header], message: bytes, timeout: float = 10.0
) -> RawReply:
    """One unary call on a new connection to 127.0.0.1:port; blocks (run it in a thread)."""
    config = h2.config.H2Configuration(
        client_side=True,
        header_encoding=None,
        validate_outbound_headers=False,
        normalize_outbound_headers=False,
    )
    connection = h2.connection.H2Connection(config)
    reply = RawReply()
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as sock:
        connection.initiate_connection()
        stream = connection.get_next_available_stream_id()
        connection.send_headers(
            stream,
            [
                (b":method", b"POST"),
                (b":scheme", b"http"),
                (b":path", method.encode()),
                (b":authority", f"127.0.0.1:{port}".encode()),
                (b"content-type", b"application/grpc"),
                (b"te", b"trailers"),
                *metadata,
            ],
        )
        connection.send_data(stream, grpc_frame(message), end_stream=True)
        sock.sendall(connection.data_to_send())
        ended = False
        for _ in range(10_000):  # frames, not time: the socket timeout bounds each read
            received = sock.recv(65536)
            if not received:
                break
            for event in connection.receive_data(received):
                if isinstance(event, h2.events.ResponseReceived):
                    reply.headers = list(event.headers)
                elif isinstance(event, h2.events.TrailersReceived):
                    reply.trailers = list(event.headers)
                elif isinstance(event, h2.events.DataReceived):
                    reply.data += event.data
                    connection.acknowledge_received_data(event.flow_controlled_length, stream)
                elif isinstance(event, h2.events.StreamReset):
                    reply.reset = ended = True
                elif isinstance(event, h2.events.StreamEnded):
                    ended = True
            sock.sendall(connection.data_to_send())
            if ended:
                break
        connection.close_connection()
        sock.sendall(connection.data_to_send())
    return reply
