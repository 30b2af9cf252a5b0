"""Configuration dataclasses ⇄ plain JSON-compatible dicts, with type checking and errors that name the field.

Every configuration in the project is a frozen dataclass whose fields are annotated with the small set of types this
module understands: ``bool``, ``int``, ``float`` (an int is accepted and stored as a float), ``str``, ``X | None``,
``tuple[X, ...]``, ``tuple[X, Y, ...]`` (fixed length), ``dict[str, X]`` and nested config dataclasses (also unions of
dataclasses, resolved by the caller passing an already-built instance). JSON has no tuples, so
:func:`config_to_dict` writes lists and :func:`config_from_dict` turns them back into tuples; the round trip
``config_from_dict(cls, json.loads(json.dumps(config_to_dict(c)))) == c`` holds for every such config.

Problems are :class:`dnnlib.UserError` with the dotted path of the field, e.g.
``TrainingConfig.loss.r1_gamma: expected float, got 'one'``.
"""

from __future__ import annotations

import dataclasses
import types
import typing
from collections.abc import Mapping

from dnnlib import UserError


def config_to_dict(config: object) -> dict:
    """A config dataclass (nested ones included) as a dict of JSON types (tuples become lists)."""
    if not dataclasses.is_dataclass(config) or isinstance(config, type):
        raise TypeError(f"config_to_dict expects a dataclass instance, got {type(config).__name__}")
    return {f.name: _to_plain(getattr(config, f.name)) for f in dataclasses.fields(config)}


def _to_plain(value: object) -> object:
    if dataclasses.is_dataclass(value) and not isinstance(value, type):
        return config_to_dict(value)
    if isinstance(value, (tuple, list)):
        return [_to_plain(v) for v in value]
    if isinstance(value, Mapping):
        return {k: _to_plain(v) for k, v in value.items()}
    return value


def config_from_dict(cls: type, data: object, where: str | None = None):
    """Build config dataclass ``cls`` from a dict as written by :func:`config_to_dict` (or read from JSON).

    Missing keys take the field defaults; unknown keys and values of the wrong type raise UserError naming the field
    (``where`` prefixes the names; default: the class name). Nested dataclass fields accept a dict or an instance.
    """
    where = cls.__name__ if where is None else where
    if not isinstance(data, Mapping):
        raise UserError(f"{where}: expected a JSON object (dict), got {type(data).__name__}")
    hints = typing.get_type_hints(cls)
    names = [f.name for f in dataclasses.fields(cls) if f.init]
    unknown = sorted(set(data) - set(names))
    if unknown:
        raise UserError(f"{where}: unknown keys {unknown} (unknown field names; the known fields are {sorted(names)})")
    values = {name: convert_value(data[name], hints[name], f"{where}.{name}") for name in names if name in data}
    try:
        return cls(**values)
    except TypeError as error:  # a field without a default is missing
        raise UserError(f"{where}: {error}") from None


def convert_value(value: object, hint: object, where: str) -> object:
    """``value`` (JSON types or Python objects) converted to annotation ``hint``; UserError naming ``where``."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return _convert_union(value, args, where)
    if origin is tuple:
        return _convert_tuple(value, args, where)
    if origin is dict:
        if not isinstance(value, Mapping) or not all(isinstance(k, str) for k in value):
            raise UserError(f"{where}: expected an object with string keys, got {value!r}")
        return {k: convert_value(v, args[1], f"{where}.{k}") for k, v in value.items()}
    if dataclasses.is_dataclass(hint):
        if isinstance(value, hint):
            return value
        return config_from_dict(hint, value, where)
    if hint is type(None):
        if value is not None:
            raise UserError(f"{where}: expected null, got {value!r}")
        return None
    if hint is float and isinstance(value, int) and not isinstance(value, bool):
        return float(value)
    if not matches_type(value, hint):
        raise UserError(f"{where}: expected {type_name(hint)}, got {value!r}")
    return value


def _convert_union(value: object, args: tuple, where: str) -> object:
    if value is None:
        if type(None) in args:
            return None
        raise UserError(f"{where}: expected {type_name(args)}, got None")
    classes = [a for a in args if dataclasses.is_dataclass(a)]
    for cls in classes:
        if isinstance(value, cls):
            return value
    if classes and isinstance(value, Mapping):
        if len(classes) > 1:
            raise UserError(f"{where}: a dict cannot say which of {type_name(tuple(classes))} it is")
        return config_from_dict(classes[0], value, where)
    for arg in args:
        if arg is not type(None) and arg not in classes:
            try:
                return convert_value(value, arg, where)
            except UserError:
                continue
    raise UserError(f"{where}: expected {type_name(args)}, got {value!r}")


def _convert_tuple(value: object, args: tuple, where: str) -> tuple:
    if not isinstance(value, (list, tuple)):
        raise UserError(f"{where}: expected a list, got {value!r}")
    if len(args) == 2 and args[1] is Ellipsis:
        return tuple(convert_value(v, args[0], f"{where}[{i}]") for i, v in enumerate(value))
    if len(value) != len(args):
        raise UserError(f"{where}: expected a list of {len(args)} values, got {value!r}")
    return tuple(convert_value(v, a, f"{where}[{i}]") for i, (v, a) in enumerate(zip(value, args, strict=True)))


def matches_type(value: object, hint: object) -> bool:
    """isinstance for config annotations: bool is not an int, an int is a float, unions, tuples, dict[str, X]."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return any(matches_type(value, a) for a in args)
    if origin is tuple:
        if not isinstance(value, tuple):
            return False
        if len(args) == 2 and args[1] is Ellipsis:
            return all(matches_type(v, args[0]) for v in value)
        return len(value) == len(args) and all(map(matches_type, value, args))
    if origin is dict:
        return isinstance(value, dict) and all(isinstance(k, str) and matches_type(v, args[1])
                                               for k, v in value.items())
    if hint is type(None):
        return value is None
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    return isinstance(value, hint)


def check_field_types(config: object) -> None:
    """Raise UserError if a field of dataclass instance ``config`` does not match its annotation (for __post_init__)."""
    hints = typing.get_type_hints(type(config))
    for f in dataclasses.fields(config):
        value = getattr(config, f.name)
        if not matches_type(value, hints[f.name]):
            raise UserError(f"{type(config).__name__}.{f.name}: expected {type_name(hints[f.name])}, got {value!r}")


def replace_field(config: object, path: str, value: object):
    """A copy of ``config`` with the field at dotted ``path`` (e.g. 'loss.r1_gamma') set to ``value``.

    The value is converted like a JSON value (lists → tuples, dicts → dataclasses); unknown names raise UserError.
    """
    head, _, rest = path.partition(".")
    names = {f.name for f in dataclasses.fields(config)}
    if head not in names:
        raise UserError(f"{type(config).__name__}: no field '{head}' (in '{path}'); known fields are {sorted(names)}")
    current = getattr(config, head)
    if rest:
        if not dataclasses.is_dataclass(current):
            raise UserError(f"{type(config).__name__}.{head} is not a config section; cannot set '{path}'")
        new = replace_field(current, rest, value)
    else:
        hint = typing.get_type_hints(type(config))[head]
        new = convert_value(value, hint, f"{type(config).__name__}.{head}")
    return dataclasses.replace(config, **{head: new})


def type_name(hint: object) -> str:
    """Readable name of an annotation (or a tuple of union members): 'float', 'int | None', 'tuple[str, ...]'."""
    if isinstance(hint, tuple):
        return " | ".join(type_name(h) for h in hint)
    if hint is type(None):
        return "None"
    if hint is Ellipsis:
        return "..."
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if origin in (typing.Union, types.UnionType):
        return type_name(args)
    if origin is not None:
        return f"{origin.__name__}[{', '.join(type_name(a) for a in args)}]"
    return getattr(hint, "__name__", str(hint))
