"""One config style everywhere: every config dataclass in backend/ is a ``params.Config`` of ``param()`` fields, and
its bounds/choices are enforced by ``params`` alike for configs built from dicts and configs built in code."""

from __future__ import annotations

import dataclasses
import importlib
import json
import math
import pkgutil
import re
import typing

import pytest

import backend
from backend.params import (Config, ParamError, check_config, config_from_dict, config_to_dict, describe_config, param,
                            parse_config)


def _backend_modules() -> list:
    return [importlib.import_module(m.name) for m in pkgutil.walk_packages(backend.__path__, "backend.")
            if not m.name.endswith("__main__")]


def _config_classes() -> list[type]:
    _backend_modules()
    found, todo = set(), list(Config.__subclasses__())
    while todo:
        cls = todo.pop()
        if cls not in found:
            found.add(cls)
            todo += cls.__subclasses__()
    return sorted((c for c in found if c.__module__.startswith("backend.") and not c.__name__.startswith("_")),
                  key=lambda c: (c.__module__, c.__name__))


CONFIGS = _config_classes()

# Values that make the required / cross-checked fields valid, by field name (everything else keeps its default).
VALID = {"data": "meshes", "out": "out", "vae": "vae-folder", "prompt": "a chair"}


def _valid_kwargs(cls: type) -> dict:
    names = {f.name for f in dataclasses.fields(cls)}
    hints = typing.get_type_hints(cls)
    return {k: v for k, v in VALID.items() if k in names and hints[k] is str}


def _bad_values(cls: type):
    """``(field, bad value)`` for each bound / choice of ``cls``: one below ``low``, one above ``high``, one not a
    choice; tuples get the bad value in every item."""
    hints = typing.get_type_hints(cls)
    for f in dataclasses.fields(cls):
        meta, tp = f.metadata, hints[f.name]
        pair = typing.get_origin(tp) is tuple
        item = typing.get_args(tp)[0] if pair else tp
        step = 1 if item is int else 0.5
        bad = []
        if meta["low"] is not None:
            bad.append(meta["low"] if meta.get("low_exclusive") else meta["low"] - step)
        if meta["high"] is not None:
            bad.append(meta["high"] + step)
        if meta["choices"]:
            bad.append("not-a-choice")
        for value in bad:
            yield f.name, (value, value) if pair else value


def test_every_config_dataclass_in_backend_is_a_config():
    names = {c.__name__ for c in CONFIGS}
    assert {"ShapeVAEConfig", "ASLDMConfig", "CLIPConditionerConfig", "MichelangeloConfig", "NeRFConfig", "SDSConfig",
            "ShapeVAETrainConfig", "ShapeLDMTrainConfig", "ShapeLDMConfig", "ShapeVariationsConfig",
            "ShapeInterpolateConfig", "LatentPaintConfig", "LatentNeRFConfig"} <= names
    # No config dataclass in another style: any dataclass named *Config must derive from Config.
    for module in _backend_modules():
        for obj in vars(module).values():
            if isinstance(obj, type) and obj.__module__ == module.__name__ and dataclasses.is_dataclass(obj) \
                    and obj.__name__.endswith("Config"):
                assert issubclass(obj, Config), f"{module.__name__}.{obj.__name__} is not a params.Config"
                assert "__post_init__" not in vars(obj), f"{obj.__name__}: checks belong in param()/validate()"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_only_param_fields_with_a_doc(cls):
    for f in dataclasses.fields(cls):
        assert {"doc", "low", "high", "choices"} <= set(f.metadata), f"{cls.__name__}.{f.name} is not a param()"
        assert f.metadata["doc"].strip(), f"{cls.__name__}.{f.name} has no doc"


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_describe_config_is_json(cls):
    described = describe_config(cls)
    assert set(described) == {f.name for f in dataclasses.fields(cls)}
    json.dumps(described)
    for entry in described.values():
        assert entry["doc"] and isinstance(entry["type"], str)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_defaults_are_valid(cls):
    kwargs = _valid_kwargs(cls)
    assert check_config(cls(**kwargs)) == parse_config(cls, kwargs)


@pytest.mark.parametrize("cls", CONFIGS, ids=lambda c: c.__name__)
def test_out_of_range_values_raise_naming_the_field_in_code_and_from_dicts(cls):
    cases = list(_bad_values(cls))
    if not cases:
        pytest.skip(f"{cls.__name__} has no bounded field")
    for name, value in cases:
        kwargs = {**_valid_kwargs(cls), name: value}
        pattern = re.escape(f"{name} = {value!r}")
        with pytest.raises(ParamError, match=pattern):
            cls(**kwargs)
        with pytest.raises(ParamError, match=pattern):
            parse_config(cls, {k: list(v) if isinstance(v, tuple) else v for k, v in kwargs.items()})
        with pytest.raises(ParamError, match=pattern):
            config_from_dict(cls, kwargs)
        config = cls(**_valid_kwargs(cls))
        setattr(config, name, value)  # changed after construction: check_config catches it
        with pytest.raises(ParamError, match=pattern):
            check_config(config)


def test_wrong_types_raise_when_built_in_code():
    from backend.latent_nerf.field import NeRFConfig
    from backend.michelangelo.config import MichelangeloConfig, ShapeVAEConfig

    with pytest.raises(ParamError, match=r"ShapeVAEConfig\.num_latents must be a positive int, got 1\.5"):
        ShapeVAEConfig(num_latents=1.5)
    with pytest.raises(ParamError, match="include_pi must be true or false"):
        ShapeVAEConfig(include_pi=1)
    with pytest.raises(ParamError, match=r"MichelangeloConfig\.vae must be a ShapeVAEConfig"):
        MichelangeloConfig(vae={"width": 64})
    with pytest.raises(ParamError, match="bound"):
        NeRFConfig(bound=math.inf)


def test_nested_configs_round_trip_and_keep_the_json_format():
    from backend.michelangelo.config import PRESETS, MichelangeloConfig

    for cfg in PRESETS.values():
        data = config_to_dict(cfg)
        assert data == dataclasses.asdict(cfg)  # the config.json layout of existing checkpoints
        assert config_from_dict(MichelangeloConfig, json.loads(json.dumps(data))) == cfg
    with pytest.raises(ParamError, match=r"unknown field\(s\) \['widht'\] for ShapeVAEConfig"):
        config_from_dict(MichelangeloConfig, {"vae": {"widht": 3}})
    assert config_from_dict(MichelangeloConfig, {}) == MichelangeloConfig()


def test_tuples_are_lists_in_json():
    @dataclasses.dataclass
    class Ranged(Config):
        span: tuple[float, float] = param((1.0, 2.0), doc="a range", low=0.0)

        def validate(self) -> None:
            if self.span[0] > self.span[1]:
                raise ValueError("span has min > max")

    assert config_to_dict(Ranged()) == {"span": [1.0, 2.0]}
    assert config_from_dict(Ranged, {"span": [0.5, 3]}) == Ranged((0.5, 3.0))
    with pytest.raises(ParamError, match="min > max"):
        Ranged((2.0, 1.0))
    assert describe_config(Ranged)["span"]["default"] == [1.0, 2.0]


def test_exclusive_low_bound():
    @dataclasses.dataclass
    class Positive(Config):
        x: float = param(1.0, doc="strictly positive", low=0.0, low_exclusive=True)

    assert Positive(1e-12).x == 1e-12
    with pytest.raises(ParamError, match=r"x = 0\.0 is not above the minimum 0\.0"):
        Positive(0.0)
    assert describe_config(Positive)["x"]["low_exclusive"] is True
