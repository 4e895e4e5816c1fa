"""The metrics endpoint: prometheus_client's HTTP server (its own thread) serving one
registry in the text exposition format at any path, /metrics included. It has no
authentication: the server binds it to loopback unless metrics.host names an address."""

from __future__ import annotations

from wsgiref.simple_server import WSGIServer

from prometheus_client import CollectorRegistry, start_http_server


class MetricsEndpoint:
    def __init__(self, registry: CollectorRegistry, host: str, port: int) -> None:
        self._registry = registry
        self._host = host
        self._port = port
        self._server: WSGIServer | None = None
        self.port = 0

    def start(self) -> int:
        """Listens; raises OSError when the address cannot be bound."""
        server, _thread = start_http_server(self._port, addr=self._host, registry=self._registry)
        self._server = server
        self.port = int(server.server_port)
        return self.port

    @property
    def host(self) -> str:
        """The address listened on ("" before start)."""
        return str(self._server.server_address[0]) if self._server is not None else ""

    def stop(self) -> None:
        server = self._server
        if server is not None:
            self._server = None
            server.shutdown()
            server.server_close()
