"""Load sections of params.yaml into frozen dataclasses.

Every stage reads exactly one or a few sections. A section is described by a
frozen dataclass (owned by the module that uses it); :func:`load_section`
converts the YAML mapping into that dataclass and rejects unknown keys,
missing keys and values of the wrong type, always naming the key by its full
dotted path (``extract.tokens.blocks``), so a typo in params.yaml fails loudly
instead of silently falling back to a default.
"""
from __future__ import annotations

import dataclasses
import types
from pathlib import Path
from typing import Any, Literal, TypeVar, Union, get_args, get_origin, get_type_hints

import yaml

from pipeline.errors import UserError

T = TypeVar("T")

DEFAULT_PARAMS = Path("params.yaml")


class ParamsError(UserError, ValueError):
    """A params.yaml value is missing, unknown or of the wrong type."""


def read_params(path: Path | str = DEFAULT_PARAMS) -> dict[str, Any]:
    path = Path(path)
    if not path.exists():
        raise ParamsError(f"{path}: params file not found")
    with path.open() as fh:
        data = yaml.safe_load(fh) or {}
    if not isinstance(data, dict):
        raise ParamsError(f"{path}: top level must be a mapping")
    return data


def load_section(cls: type[T], key: str, path: Path | str = DEFAULT_PARAMS) -> T:
    """Return section ``key`` of the params file as an instance of ``cls``.

    ``key`` may be dotted (``heads.linear_probe``) to reach a nested section.
    """
    data: Any = read_params(path)
    for part in key.split("."):
        if not isinstance(data, dict) or part not in data:
            raise ParamsError(f"{path}: missing section '{key}'")
        data = data[part]
    return from_dict(cls, data, key)


def from_dict(cls: type[T], data: Any, prefix: str) -> T:
    """Build dataclass ``cls`` from ``data``; errors name keys as ``prefix.key``."""
    if not isinstance(data, dict):
        raise ParamsError(f"'{prefix}' must be a mapping, got {type(data).__name__}")
    hints = get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls) if f.init}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        names = ", ".join(f"'{prefix}.{k}'" for k in unknown)
        raise ParamsError(f"unknown params key {names} (allowed: {', '.join(sorted(fields))})")
    values = {}
    for name, field in fields.items():
        full = f"{prefix}.{name}"
        if name not in data:
            if field.default is not dataclasses.MISSING or field.default_factory is not dataclasses.MISSING:
                continue
            raise ParamsError(f"missing params key '{full}'")
        values[name] = _convert(hints[name], data[name], full)
    try:
        return cls(**values)
    except (ValueError, TypeError) as exc:  # __post_init__ validation
        raise ParamsError(f"'{prefix}': {exc}") from exc


def _convert(tp: Any, value: Any, key: str) -> Any:
    origin = get_origin(tp)
    if tp is Any:
        return value
    if origin in (Union, types.UnionType):
        args = get_args(tp)
        if value is None and type(None) in args:
            return None
        errors = []
        for arg in args:
            if arg is type(None):
                continue
            try:
                return _convert(arg, value, key)
            except ParamsError as exc:
                errors.append(str(exc))
        raise ParamsError(f"'{key}': {value!r} matches none of {tp}: {'; '.join(errors)}")
    if origin is Literal:
        if value not in get_args(tp):
            raise ParamsError(f"'{key}' must be one of {list(get_args(tp))}, got {value!r}")
        return value
    if origin in (list, tuple) or tp in (list, tuple):
        if not isinstance(value, (list, tuple)):
            raise ParamsError(f"'{key}' must be a list, got {value!r}")
        args = get_args(tp)
        item_tp = args[0] if args else Any
        return tuple(_convert(item_tp, v, f"{key}[{i}]") for i, v in enumerate(value))
    if origin is dict or tp is dict:
        if not isinstance(value, dict):
            raise ParamsError(f"'{key}' must be a mapping, got {value!r}")
        args = get_args(tp)
        val_tp = args[1] if args else Any
        return types.MappingProxyType(
            {str(k): _convert(val_tp, v, f"{key}.{k}") for k, v in value.items()}
        )
    if dataclasses.is_dataclass(tp):
        return from_dict(tp, value, key)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise ParamsError(f"'{key}' must be a number, got {value!r}")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise ParamsError(f"'{key}' must be an integer, got {value!r}")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamsError(f"'{key}' must be true or false, got {value!r}")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise ParamsError(f"'{key}' must be a string, got {value!r}")
        return value
    if isinstance(tp, type) and not isinstance(value, tp):
        raise ParamsError(f"'{key}' must be {tp.__name__}, got {value!r}")
    return value


def as_dict(obj: Any) -> Any:
    """Plain-Python view of a params dataclass (for logging and cache attributes)."""
    if dataclasses.is_dataclass(obj):
        return {f.name: as_dict(getattr(obj, f.name)) for f in dataclasses.fields(obj)}
    if isinstance(obj, (types.MappingProxyType, dict)):
        return {k: as_dict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [as_dict(v) for v in obj]
    return obj


__all__ = ["ParamsError", "load_section", "from_dict", "read_params", "as_dict"]
