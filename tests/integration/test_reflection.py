"""Server reflection finds the file of every symbol of the served services' files (and
their dependencies) by every name a Go or C++ server answers to, methods and enum values
included, and grpcurl's name for an enum value (inside its enum) as well."""

from __future__ import annotations

from collections.abc import Iterator

from google.protobuf import descriptor, descriptor_pb2
from grpc_health.v1 import health_pb2
from grpc_reflection.v1alpha import reflection_pb2, reflection_pb2_grpc
from llmgateway.v1 import provider_service_pb2

from tests.support import Gateway

SERVED_FILES = (provider_service_pb2.DESCRIPTOR, health_pb2.DESCRIPTOR, reflection_pb2.DESCRIPTOR)


def _all_files() -> list[descriptor.FileDescriptor]:
    seen: dict[str, descriptor.FileDescriptor] = {}
    pending = list(SERVED_FILES)
    while pending:
        file = pending.pop()
        if file.name not in seen:
            seen[file.name] = file
            pending.extend(file.dependencies)
    return sorted(seen.values(), key=lambda f: f.name)


def _enum_symbols(scope: str, enum: descriptor.EnumDescriptor) -> Iterator[str]:
    yield enum.full_name
    for value in enum.values:
        yield f"{scope}.{value.name}"  # protobuf's name: beside the enum
        yield f"{enum.full_name}.{value.name}"  # grpcurl's: inside it


def _message_symbols(message: descriptor.Descriptor) -> Iterator[str]:
    yield message.full_name
    yield from (field.full_name for field in message.fields)
    yield from (oneof.full_name for oneof in message.oneofs)
    for enum in message.enum_types:
        yield from _enum_symbols(message.full_name, enum)
    for nested in message.nested_types:
        yield from _message_symbols(nested)


def symbols() -> dict[str, str]:
    """Every symbol -> the file that defines it."""
    found: dict[str, str] = {}
    for file in _all_files():
        names: list[str] = []
        for message in file.message_types_by_name.values():
            names.extend(_message_symbols(message))
        for enum in file.enum_types_by_name.values():
            names.extend(_enum_symbols(file.package, enum))
        for service in file.services_by_name.values():
            names.append(service.full_name)
            names.extend(f"{service.full_name}.{method.name}" for method in service.methods)
        found.update(dict.fromkeys(names, file.name))
    return found


async def test_every_symbol_resolves_to_its_file(gateway: Gateway) -> None:
    expected = symbols()
    assert "llmgateway.v1.ProviderService.Chat" in expected
    assert "grpc.health.v1.HealthCheckResponse.SERVING" in expected
    assert len(expected) > 100, "the walk saw the contract"
    stub = reflection_pb2_grpc.ServerReflectionStub(gateway.channel)
    call = stub.ServerReflectionInfo(timeout=30)
    answered: dict[str, str] = {}
    for symbol in [*expected, "llmgateway.v1.ProviderService.NoSuchMethod", "no.such.Thing"]:
        await call.write(reflection_pb2.ServerReflectionRequest(file_containing_symbol=symbol))
        reply = await call.read()
        if reply.HasField("error_response"):
            answered[symbol] = f"error {reply.error_response.error_code}"
            continue
        first = reply.file_descriptor_response.file_descriptor_proto[0]
        answered[symbol] = descriptor_pb2.FileDescriptorProto.FromString(first).name
    await call.done_writing()
    assert answered == {
        **expected,
        "llmgateway.v1.ProviderService.NoSuchMethod": "error 5",
        "no.such.Thing": "error 5",
    }
