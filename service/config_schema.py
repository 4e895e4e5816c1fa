"""The structural walk: every key and value of the parsed YAML checked against the
config schema (protobuf descriptors), each error naming its field path.

Runs before `json_format.ParseDict`, so that an unknown key, a second member of a
oneof or a value of the wrong type is reported at its exact path
(`providers[1].mock.token_delay`) rather than as protobuf's own message.
"""

from __future__ import annotations

from typing import Any

from google.protobuf import descriptor, json_format, message, message_factory

from service.config_base import ConfigError


def check_message(data: object, desc: descriptor.Descriptor, path: str) -> None:
    """Checks the mapping `data` against the message `desc`; `path` is where it sits."""
    if not isinstance(data, dict):
        raise ConfigError(path, "must be a mapping")
    fields = {f.name: f for f in desc.fields}
    fields.update({f.json_name: f for f in desc.fields})
    oneofs_seen: dict[str, str] = {}
    for key, value in data.items():
        child = f"{path}.{key}" if path else str(key)
        field = fields.get(str(key))
        if field is None:
            known = ", ".join(f.name for f in desc.fields)
            raise ConfigError(child, f"unknown field (known: {known})")
        oneof = field.containing_oneof
        if oneof is not None:
            if oneof.name in oneofs_seen:
                raise ConfigError(child, f"only one of {oneof.name} may be set")
            oneofs_seen[oneof.name] = field.name
        _check_field(value, field, desc, child)


def _check_field(
    value: object, field: descriptor.FieldDescriptor, parent: descriptor.Descriptor, path: str
) -> None:
    if value is None:
        raise ConfigError(path, "must not be empty")
    if field.message_type is not None and field.message_type.GetOptions().map_entry:
        if not isinstance(value, dict):
            raise ConfigError(path, "must be a mapping")
        value_type = field.message_type.fields_by_name["value"].message_type
        for key, item in value.items():
            if value_type is not None:
                check_message(item, value_type, f"{path}.{key}")
            elif not isinstance(item, str | int | float | bool):
                raise ConfigError(f"{path}.{key}", "must be a single value")
        return
    if _is_repeated(field):
        if not isinstance(value, list):
            raise ConfigError(path, "must be a list")
        for index, item in enumerate(value):
            _check_single(item, field, parent, f"{path}[{index}]")
        return
    _check_single(value, field, parent, path)


def _is_repeated(field: descriptor.FieldDescriptor) -> bool:
    return bool(field.is_repeated)


def _check_single(
    value: object, field: descriptor.FieldDescriptor, parent: descriptor.Descriptor, path: str
) -> None:
    msg_type = field.message_type
    if msg_type is not None and not msg_type.full_name.startswith("google.protobuf."):
        check_message(value, msg_type, path)
        return
    if value is None:
        raise ConfigError(path, "must not be empty")
    # Scalars and well-known types (Duration): let protobuf parse one value alone.
    probe: dict[str, Any] = {field.name: [value] if _is_repeated(field) else value}
    holder: message.Message = message_factory.GetMessageClass(parent)()
    try:
        json_format.ParseDict(probe, holder)
    except json_format.ParseError as exc:
        raise ConfigError(path, _plain_reason(str(exc), field)) from exc


def _plain_reason(text: str, field: descriptor.FieldDescriptor) -> str:
    reason = text.rsplit("field: ", 1)[-1].split(" at ", 1)[0].rstrip(".")
    if field.message_type is not None and field.message_type.full_name.endswith("Duration"):
        return f'must be a duration such as "30s" or "0.5s" ({reason})'
    return reason
