"""gRPC server reflection that also finds methods and enum values by name.

grpc_reflection asks the descriptor pool for the file containing a symbol. The pool of
protobuf's upb runtime finds messages, fields, oneofs, enums, enum values (under
protobuf's own name for them, beside their enum: `llmgateway.v1.ROLE_USER`) and
services, but not methods (`llmgateway.v1.ProviderService.Chat`), which Go and C++
servers resolve: `grpcurl describe` of a method failed with "Symbol not found". This
servicer falls back to an index of methods and enum values, built once from the files
of the served services and their dependencies; enum values are in it under both names
clients use, protobuf's and the one grpcurl asks for (inside the enum:
`llmgateway.v1.Role.ROLE_USER`).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from typing import Any

import grpc
from google.protobuf import descriptor, descriptor_pool
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc


def _enums_of(
    scope: str, enums: Iterable[descriptor.EnumDescriptor]
) -> Iterator[tuple[str, descriptor.EnumDescriptor]]:
    for enum in enums:
        yield scope, enum


def _nested_enums(
    message: descriptor.Descriptor,
) -> Iterator[tuple[str, descriptor.EnumDescriptor]]:
    yield from _enums_of(message.full_name, message.enum_types)
    for nested in message.nested_types:
        yield from _nested_enums(nested)


def _files(roots: Iterable[descriptor.FileDescriptor]) -> list[descriptor.FileDescriptor]:
    seen: dict[str, descriptor.FileDescriptor] = {}
    pending = list(roots)
    while pending:
        file = pending.pop()
        if file.name not in seen:
            seen[file.name] = file
            pending.extend(file.dependencies)
    return list(seen.values())


def symbol_index(files: Iterable[descriptor.FileDescriptor]) -> dict[str, str]:
    """Full names of methods and enum values -> the name of the file defining them."""
    index: dict[str, str] = {}
    for file in files:
        for service in file.services_by_name.values():
            for method in service.methods:
                index[f"{service.full_name}.{method.name}"] = file.name
        enums = list(_enums_of(file.package, file.enum_types_by_name.values()))
        for message in file.message_types_by_name.values():
            enums.extend(_nested_enums(message))
        for scope, enum in enums:
            for value in enum.values:
                index[f"{scope}.{value.name}" if scope else value.name] = file.name
                index[f"{enum.full_name}.{value.name}"] = file.name
    return index


class ReflectionService(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    def __init__(
        self, service_names: Iterable[str], pool: descriptor_pool.DescriptorPool | None = None
    ) -> None:
        names = tuple(service_names)
        super().__init__(names, pool=pool)
        self._names = names
        self._index: dict[str, str] | None = None

    def _symbols(self) -> dict[str, str]:
        if self._index is None:
            roots = [self._pool.FindServiceByName(name).file for name in self._names]
            self._index = symbol_index(_files(roots))
        return self._index

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if not response.HasField("error_response"):
            return response
        file_name = self._symbols().get(fully_qualified_name)
        if file_name is None:
            return response
        return self._file_by_filename(request, file_name)


def enable_reflection(service_names: Iterable[str], server: grpc.aio.Server) -> None:
    """Serves reflection for the named services on a grpc.aio server."""
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(
        ReflectionService(service_names), server
    )
