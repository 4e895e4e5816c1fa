"""TLS and mutual TLS on the gateway's own port, with certificates made for the test."""

from __future__ import annotations

import asyncio
import datetime
import ipaddress
import ssl
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import NameOID
from llmgateway.v1 import provider_service_pb2_grpc

from tests.support import BASE_CONFIG, chat_request, details_of, running_gateway


@dataclass
class Issued:
    cert: bytes
    key: bytes


def _name(common: str) -> x509.Name:
    return x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)])


def _pem_key(key: ec.EllipticCurvePrivateKey) -> bytes:
    return key.private_bytes(
        serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
    )


def make_ca(common: str) -> tuple[Issued, ec.EllipticCurvePrivateKey, x509.Certificate]:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    cert = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(_name(common))
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key)), key, cert


def issue(
    common: str, ca_key: ec.EllipticCurvePrivateKey, ca_cert: x509.Certificate, server: bool
) -> Issued:
    key = ec.generate_private_key(ec.SECP256R1())
    now = datetime.datetime.now(datetime.UTC)
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common))
        .issuer_name(ca_cert.subject)
        .public_key(key.public_key())
        .serial_number(x509.random_serial_number())
        .not_valid_before(now - datetime.timedelta(minutes=5))
        .not_valid_after(now + datetime.timedelta(days=1))
    )
    if server:
        builder = builder.add_extension(
            x509.SubjectAlternativeName(
                [x509.DNSName("localhost"), x509.IPAddress(ipaddress.ip_address("127.0.0.1"))]
            ),
            critical=False,
        )
    cert = builder.sign(ca_key, hashes.SHA256())
    return Issued(cert.public_bytes(serialization.Encoding.PEM), _pem_key(key))


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    folder = tmp_path_factory.mktemp("pki")
    ca, ca_key, ca_cert = make_ca("test-ca")
    _rogue_ca, rogue_key, rogue_cert = make_ca("rogue-ca")
    server = issue("localhost", ca_key, ca_cert, server=True)
    client = issue("client-a", ca_key, ca_cert, server=False)
    rogue_client = issue("client-rogue", rogue_key, rogue_cert, server=False)
    files = {
        "ca": ca.cert,
        "server_cert": server.cert,
        "server_key": server.key,
        "client_cert": client.cert,
        "client_key": client.key,
        "rogue_cert": rogue_client.cert,
        "rogue_key": rogue_client.key,
    }
    paths = {}
    for name, data in files.items():
        path = folder / f"{name}.pem"
        path.write_bytes(data)
        paths[name] = path
    return paths


def _config(pki: dict[str, Path], mutual: bool) -> str:
    tls = f"  tls:\n    cert_file: {pki['server_cert']}\n    key_file: {pki['server_key']}\n"
    if mutual:
        tls += f"    client_ca_file: {pki['ca']}\n"
    return BASE_CONFIG.replace("  shutdown_grace: 2s\n", "  shutdown_grace: 2s\n" + tls)


async def _chat(port: int, credentials: grpc.ChannelCredentials) -> str:
    async with grpc.aio.secure_channel(f"localhost:{port}", credentials) as channel:
        stub = provider_service_pb2_grpc.ProviderServiceStub(channel)
        reply = await stub.Chat(chat_request("over tls"), timeout=5)
        return reply.message.parts[0].text


async def test_tls_serves_trusting_clients_and_refuses_plaintext(pki: dict[str, Path]) -> None:
    async with running_gateway(_config(pki, mutual=False)) as gateway:
        trusted = grpc.ssl_channel_credentials(root_certificates=pki["ca"].read_bytes())
        assert await _chat(gateway.port, trusted) == "over tls"
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await gateway.stub.Chat(chat_request(), timeout=2)  # the fixture's plaintext channel
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE
        untrusting = grpc.ssl_channel_credentials(root_certificates=pki["rogue_cert"].read_bytes())
        with pytest.raises(grpc.aio.AioRpcError) as caught:
            await _chat(gateway.port, untrusting)
        assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_mutual_tls_requires_a_client_certificate_from_the_ca(pki: dict[str, Path]) -> None:
    async with running_gateway(_config(pki, mutual=True)) as gateway:
        root = pki["ca"].read_bytes()
        with_cert = grpc.ssl_channel_credentials(
            root_certificates=root,
            private_key=pki["client_key"].read_bytes(),
            certificate_chain=pki["client_cert"].read_bytes(),
        )
        assert await _chat(gateway.port, with_cert) == "over tls"
        for credentials in (
            grpc.ssl_channel_credentials(root_certificates=root),
            grpc.ssl_channel_credentials(
                root_certificates=root,
                private_key=pki["rogue_key"].read_bytes(),
                certificate_chain=pki["rogue_cert"].read_bytes(),
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await _chat(gateway.port, credentials)
            assert caught.value.code() == grpc.StatusCode.UNAVAILABLE


async def test_missing_certificate_file_is_a_config_error(
    pki: dict[str, Path], tmp_path: Path
) -> None:
    from service.config import ConfigError, parse_config

    text = _config(pki, mutual=False).replace(str(pki["server_key"]), str(tmp_path / "missing.pem"))
    with pytest.raises(ConfigError) as caught:
        parse_config(text, {})
    assert caught.value.path == "server.tls.key_file"


async def test_upstream_tls_verifies_the_providers_certificate(pki: dict[str, Path]) -> None:
    """The gateway speaks TLS to an https:// upstream and checks its certificate against
    the public CAs: a certificate from a private CA is refused before any request."""
    context = ssl.create_default_context(ssl.Purpose.CLIENT_AUTH)
    context.load_cert_chain(pki["server_cert"], pki["server_key"])
    handshakes: list[str] = []

    async def accept(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        handshakes.append("completed")  # never reached: the gateway refuses the certificate
        writer.close()

    server = await asyncio.start_server(accept, "127.0.0.1", 0, ssl=context)
    port = server.sockets[0].getsockname()[1]
    config = (
        "server: {host: 127.0.0.1, port: 0}\n"
        "routing: {retry: {max_attempts: 1}}\n"
        "providers:\n"
        f'  - {{name: up, api_key_env: UP_KEY, base_url: "https://127.0.0.1:{port}/v1",'
        " openai: {}}\n"
        "models:\n  - {alias: chat, provider: up, upstream_model: m}\n"
    )
    try:
        async with running_gateway(config, {"UP_KEY": "sk-up"}) as gateway:
            with pytest.raises(grpc.aio.AioRpcError) as caught:
                await gateway.stub.Chat(chat_request("hi", model="chat"), timeout=10)
    finally:
        server.close()
        await server.wait_closed()
    details = details_of(caught.value)
    assert (details.code, details.error_info.reason) == (
        grpc.StatusCode.UNAVAILABLE,
        "UPSTREAM_CONNECT_FAILED",
    )
    assert handshakes == []
