"""Typed pipeline configs from untrusted parameter dicts (a ``submit`` message or CLI flags).

Every pipeline config is a dataclass whose fields carry types, defaults, a one-line docstring (the ``doc`` metadata
entry) and optional bounds. :func:`parse_config` turns a JSON object into that dataclass or raises
:class:`ParamError` naming the offending key and value — never silently coercing or clamping.
"""

from __future__ import annotations

import dataclasses
import math
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class ParamError(ValueError):
    """A job parameter is unknown, missing, of the wrong type or out of range (message names it)."""


def param(default: Any = dataclasses.MISSING, doc: str = "", low: float | None = None, high: float | None = None,
          choices: tuple | None = None):
    """A dataclass field with user-facing documentation and bounds (inclusive), checked by :func:`parse_config`."""
    meta = {"doc": doc, "low": low, "high": high, "choices": choices}
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


def _coerce(name: str, value: Any, tp: Any) -> Any:
    origin = typing.get_origin(tp)
    if origin is typing.Union or str(origin) == "<class 'types.UnionType'>":
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if value is None:
            return None
        return _coerce(name, value, args[0])
    if origin is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ParamError(f"{name} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(f"{name}[{i}]", v, a) for i, (v, a) in enumerate(zip(value, args)))
    if tp is bool:
        if not isinstance(value, bool):
            raise ParamError(f"{name} must be true or false, got {value!r}")
        return value
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or int(value) != value:
            raise ParamError(f"{name} must be an integer, got {value!r}")
        return int(value)
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ParamError(f"{name} must be a finite number, got {value!r}")
        return float(value)
    if tp is str:
        if not isinstance(value, str):
            raise ParamError(f"{name} must be a string, got {value!r}")
        return value
    raise TypeError(f"unsupported config field type {tp!r} for {name}")


def parse_config(cls: type[T], params: dict[str, Any] | None) -> T:
    """Build config dataclass ``cls`` from ``params``; unknown keys, bad types and out-of-range values raise.

    Runs ``cls.validate()`` afterwards when defined (cross-field checks).

    Raises:
        ParamError: with the key, the bad value and what was expected.
    """
    params = dict(params or {})
    if not isinstance(params, dict):
        raise ParamError(f"params must be an object, got {type(params).__name__}")
    hints = typing.get_type_hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(params) - set(fields))
    if unknown:
        raise ParamError(f"unknown parameter(s) {unknown} for {cls.__name__}; valid: {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        if name not in params:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamError(f"missing required parameter {name!r}")
            continue
        value = _coerce(name, params[name], hints[name])
        meta = f.metadata
        items = value if isinstance(value, tuple) else (value,)
        for v in items:
            if isinstance(v, (int, float)) and not isinstance(v, bool):
                if meta.get("low") is not None and v < meta["low"]:
                    raise ParamError(f"{name} = {value!r} is below the minimum {meta['low']}")
                if meta.get("high") is not None and v > meta["high"]:
                    raise ParamError(f"{name} = {value!r} is above the maximum {meta['high']}")
        if meta.get("choices") and value not in meta["choices"]:
            raise ParamError(f"{name} = {value!r} is not one of {list(meta['choices'])}")
        values[name] = value
    config = cls(**values)
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except ParamError:
            raise
        except ValueError as err:
            raise ParamError(str(err)) from err
    return config


def describe_config(cls: type) -> dict[str, dict[str, Any]]:
    """JSON-able description of every field: ``{name: {"default", "type", "doc", "low", "high", "choices"}}``.

    Sent to clients in ``welcome`` and used to build CLI flags.
    """
    hints = typing.get_type_hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        out[f.name] = {"default": list(default) if isinstance(default, tuple) else default,
                       "type": getattr(hints[f.name], "__name__", str(hints[f.name])),
                       **{k: (list(v) if isinstance(v, tuple) else v) for k, v in f.metadata.items()}}
    return out
