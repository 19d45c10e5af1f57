"""Typed configs: one declaration style, one checking mechanism, one JSON form.

Every config in the backend is a dataclass that derives from :class:`Config` and declares each field with
:func:`param`: a type, a default, a one-line ``doc`` and, where one exists, bounds (``low`` / ``high``, inclusive
unless ``low_exclusive``) or ``choices``. Cross-field rules (width divisible by heads, min <= max) go in at most one
``validate()`` method per class, which raises ``ValueError``.

- :func:`check_config` applies the field types, bounds and choices, then ``validate()``; :class:`Config` runs it from
  ``__post_init__``, so a config built in code is checked exactly like one built from a dict.
- :func:`parse_config` turns untrusted parameters (a ``submit`` message, CLI flags) into a config;
  :func:`config_from_dict` / :func:`config_to_dict` read and write our own JSON form (nested configs as objects,
  tuples as lists), e.g. a checkpoint's ``config.json``.
- :func:`describe_config` is the JSON-able field description sent in ``welcome`` and used for CLI help.

Errors are :class:`ParamError` naming the field and the value — never silently coercing or clamping.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import numbers
import types
import typing
from typing import Any, TypeVar

__all__ = ["ParamError", "Config", "param", "check_config", "parse_config", "config_from_dict", "config_to_dict",
           "describe_config"]

T = TypeVar("T")
C = TypeVar("C", bound="Config")


class ParamError(ValueError):
    """A config value is unknown, missing, of the wrong type or out of range (the message names field and value)."""


def param(default: Any = dataclasses.MISSING, doc: str = "", low: float | None = None, high: float | None = None,
          choices: tuple | None = None, low_exclusive: bool = False, default_factory: Any = dataclasses.MISSING):
    """A dataclass field with user-facing documentation and bounds, checked by :func:`check_config`.

    Args:
        default: the default value (a list/dict/set default is copied per instance); omit for a required field.
        doc: one line for users (CLI help, the add-on's ``welcome`` description).
        low, high: inclusive bounds of a number, or of every item of a tuple of numbers; ``None`` = unbounded. A
            tuple of two numbers is a (min, max) range (the CLI's ``MIN MAX``): min > max is refused.
        choices: the allowed values (``None`` in an ``X | None`` field is always allowed).
        low_exclusive: ``low`` itself is not allowed (``low=0.0, low_exclusive=True`` = strictly positive).
        default_factory: builds the default instead of ``default`` (nested configs).
    """
    meta = {"doc": doc, "low": low, "high": high, "choices": choices}
    if low_exclusive:
        meta["low_exclusive"] = True
    if default_factory is not dataclasses.MISSING:
        return dataclasses.field(default_factory=default_factory, metadata=meta)
    if default is dataclasses.MISSING:
        return dataclasses.field(metadata=meta)
    if isinstance(default, (list, dict, set)):
        return dataclasses.field(default_factory=lambda: type(default)(default), metadata=meta)
    return dataclasses.field(default=default, metadata=meta)


# ---------------------------------------------------------------------------------------------------------------------
# Types.
# ---------------------------------------------------------------------------------------------------------------------

@functools.lru_cache(maxsize=None)
def _hints(cls: type) -> dict[str, Any]:
    return typing.get_type_hints(cls)


def _optional(tp: Any) -> tuple[Any, bool]:
    """``(inner type, allows None)`` of ``X | None`` / ``Optional[X]``; ``(tp, False)`` otherwise."""
    if typing.get_origin(tp) in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        if len(args) != 1:
            raise TypeError(f"unsupported config field type {tp!r}")
        return args[0], len(args) < len(typing.get_args(tp))
    return tp, False


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool) and math.isfinite(v)


def _words(tp: Any, meta: typing.Mapping[str, Any]) -> str:
    """What a value of type ``tp`` with bounds ``meta`` must be, in words: "a positive int", "an int in [16, 512]"."""
    tp, _ = _optional(tp)
    if typing.get_origin(tp) is tuple:
        n = len(typing.get_args(tp))
        return f"{n} numbers, each {_words(typing.get_args(tp)[0], meta)}"
    if dataclasses.is_dataclass(tp):
        return f"a {tp.__name__}"
    if meta.get("choices"):
        return f"one of {list(meta['choices'])}"
    if tp is bool:
        return "true or false"
    if tp not in (int, float):
        return f"a {getattr(tp, '__name__', tp)}"
    kind = "int" if tp is int else "finite number"
    low, high, exclusive = meta.get("low"), meta.get("high"), meta.get("low_exclusive", False)
    if high is None and low is not None and (low == 0 and exclusive or tp is int and low == 1 and not exclusive):
        return f"a positive {kind}"
    if low is not None and high is not None and not exclusive:
        return f"{'an' if tp is int else 'a'} {kind} in [{low}, {high}]"
    parts = ([f"> {low}" if exclusive else f">= {low}"] if low is not None else []) + \
            ([f"<= {high}"] if high is not None else [])
    return f"{'an' if tp is int else 'a'} {kind}" + (" " + " and ".join(parts) if parts else "")


def _type_ok(value: Any, tp: Any) -> bool:
    tp, nullable = _optional(tp)
    if value is None:
        return nullable
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        return isinstance(value, tuple) and len(value) == len(args) and all(_type_ok(v, a) for v, a in zip(value, args))
    if tp is bool:
        return isinstance(value, bool)
    if tp is int:
        return _is_int(value)
    if tp is float:
        return _is_number(value)
    if tp is str:
        return isinstance(value, str)
    if dataclasses.is_dataclass(tp):
        return isinstance(value, tp)
    raise TypeError(f"unsupported config field type {tp!r}")


# ---------------------------------------------------------------------------------------------------------------------
# Checking.
# ---------------------------------------------------------------------------------------------------------------------

def _check_field(owner: str, f: dataclasses.Field, tp: Any, value: Any) -> None:
    """Raise ParamError unless ``value`` has field ``f``'s type and lies within its bounds / choices."""
    meta, name = f.metadata, f.name

    def fail(problem: str) -> typing.NoReturn:
        raise ParamError(f"{name} = {value!r} {problem} ({owner}.{name} must be {_words(tp, meta)}, got {value!r})")

    if not _type_ok(value, tp):
        raise ParamError(f"{owner}.{name} must be {_words(tp, meta)}, got {value!r}")
    if value is None:
        return
    low, high = meta.get("low"), meta.get("high")
    for v in value if isinstance(value, tuple) else (value,):
        if not (_is_int(v) or _is_number(v)):
            continue
        if low is not None and (v <= low if meta.get("low_exclusive") else v < low):
            fail(f"is not above the minimum {low}" if meta.get("low_exclusive") else f"is below the minimum {low}")
        if high is not None and v > high:
            fail(f"is above the maximum {high}")
    if isinstance(value, tuple) and len(value) == 2 and all(map(_is_number, value)) and value[0] > value[1]:
        raise ParamError(f"{name} = ({value[0]}, {value[1]}) has min > max")
    if meta.get("choices") and value not in meta["choices"]:
        fail(f"is not one of {list(meta['choices'])}")


def check_config(config: T) -> T:
    """Check a config dataclass instance: each field's type, bounds and choices, then its ``validate()``.

    :class:`Config` calls this from ``__post_init__``; call it yourself only to re-check a config changed after
    construction. Returns ``config`` (unchanged).

    Raises:
        ParamError: naming the first bad field and its value, or carrying the message of the ``ValueError`` that
            ``validate()`` raised.
    """
    cls = type(config)
    hints = _hints(cls)
    for f in dataclasses.fields(config):
        _check_field(cls.__name__, f, hints[f.name], getattr(config, f.name))
    validate = getattr(config, "validate", None)
    if validate is not None:
        try:
            validate()
        except ParamError:
            raise
        except ValueError as err:
            raise ParamError(str(err)) from err
    return config


class Config:
    """Base of every config dataclass: construction runs :func:`check_config` (types, bounds, choices, ``validate()``).

    Subclasses are ``@dataclass`` classes whose fields are all :func:`param` fields; they define at most one
    ``validate()`` (cross-field rules, raising ``ValueError``) and no ``__post_init__`` of their own.
    ``dataclasses.replace`` re-checks too.

    Raises:
        ParamError: from the generated ``__init__`` when a value is invalid.
    """

    def __post_init__(self) -> None:
        check_config(self)


# ---------------------------------------------------------------------------------------------------------------------
# Dicts.
# ---------------------------------------------------------------------------------------------------------------------

def _coerce(name: str, value: Any, tp: Any, what: str) -> Any:
    """``value`` from JSON as type ``tp``: int-valued numbers become ints, lists tuples, objects nested configs."""
    tp, nullable = _optional(tp)
    if value is None and nullable:
        return None
    if typing.get_origin(tp) is tuple:
        args = typing.get_args(tp)
        if not isinstance(value, (list, tuple)) or len(value) != len(args):
            raise ParamError(f"{name} must be a list of {len(args)} numbers, got {value!r}")
        return tuple(_coerce(f"{name}[{i}]", v, a, what) for i, (v, a) in enumerate(zip(value, args)))
    if dataclasses.is_dataclass(tp):
        if isinstance(value, tp):
            return value
        if not isinstance(value, dict):
            raise ParamError(f"{name} must be an object of {tp.__name__} {what}s, got {value!r}")
        return _from_dict(tp, value, what)
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


def _from_dict(cls: type[T], data: Any, what: str) -> T:
    if not isinstance(data, dict):
        raise ParamError(f"{cls.__name__} {what}s must be an object, got {type(data).__name__}")
    hints = _hints(cls)
    fields = {f.name: f for f in dataclasses.fields(cls)}
    unknown = sorted(set(data) - set(fields))
    if unknown:
        raise ParamError(f"unknown {what}(s) {unknown} for {cls.__name__}; valid: {sorted(fields)}")
    values = {}
    for name, f in fields.items():
        if name not in data:
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:
                raise ParamError(f"missing required {what} {name!r}")
            continue
        values[name] = _coerce(name, data[name], hints[name], what)
    config = cls(**values)
    return config if isinstance(config, Config) else check_config(config)


def parse_config(cls: type[T], params: dict[str, Any] | None) -> T:
    """Build config dataclass ``cls`` from untrusted ``params`` (a job's parameters, CLI flags); ``None`` = ``{}``.

    JSON numbers are accepted for float fields, integral ones for int fields, lists for tuples; missing keys take the
    defaults; then the whole config is checked (:func:`check_config`).

    Raises:
        ParamError: unknown key, missing required key, wrong type, out of range or a failed ``validate()`` — with the
            key, the bad value and what was expected.
    """
    return _from_dict(cls, {} if params is None else params, "parameter")


def config_from_dict(cls: type[T], data: dict[str, Any]) -> T:
    """Inverse of :func:`config_to_dict`: nested configs from objects (``null`` for an ``X | None`` one), tuples from
    lists, missing keys from the defaults.

    Raises:
        ParamError: unknown field ("unknown field(s) [...] for Cls"), wrong type or an invalid value.
    """
    return _from_dict(cls, data, "field")


def config_to_dict(config: Any) -> dict[str, Any]:
    """A JSON-able dict of config ``config``: nested configs as dicts, tuples as lists (:func:`config_from_dict`
    reads it back to an equal config)."""

    def plain(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: plain(v) for k, v in value.items()}
        if isinstance(value, (list, tuple)):
            return [plain(v) for v in value]
        return value

    return plain(dataclasses.asdict(config))


def _type_name(tp: Any) -> str:
    inner, nullable = _optional(tp)
    name = getattr(inner, "__name__", str(inner))
    return f"{name} | None" if nullable else name


def describe_config(cls: type) -> dict[str, dict[str, Any]]:
    """JSON-able description of every field: ``{name: {"default", "type", "doc", "low", "high", "choices"}}``
    (plus ``"low_exclusive": true`` where set). A nested config's default is its :func:`config_to_dict`.

    Sent to clients in ``welcome`` and used to build CLI flags.
    """
    hints = _hints(cls)
    out = {}
    for f in dataclasses.fields(cls):
        default = f.default if f.default is not dataclasses.MISSING else (
            f.default_factory() if f.default_factory is not dataclasses.MISSING else None)
        if dataclasses.is_dataclass(default):
            default = config_to_dict(default)
        out[f.name] = {"default": list(default) if isinstance(default, tuple) else default,
                       "type": _type_name(hints[f.name]),
                       **{k: (list(v) if isinstance(v, tuple) else v) for k, v in f.metadata.items()}}
    return out
