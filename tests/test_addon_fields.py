"""The add-on's settings table (``blender_addon/core/fields.py``) and task table (``core/tasks.py``) against the
backend's own pipeline configs, without Blender: every add-on setting's hard and soft range lies inside the backend
field's ``low``/``high``, its default (and every number an enum can send) is accepted by ``parse_config``, and every
method's pipeline exists. Drift between ``properties.py`` and the backend fails here."""

from __future__ import annotations

import dataclasses

import pytest

from backend.params import ParamError, describe_config, parse_config
from backend.pipelines import PIPELINES
from blender_addon.core import fields, tasks

CASES = [(s, p) for s in fields.SETTING_FIELDS for p in s.pipelines]


def required_params(config_class) -> dict:
    """Values for the config's required fields (a prompt), so that one field can be checked alone."""
    return {f.name: "a test prompt" for f in dataclasses.fields(config_class)
            if f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING}


@pytest.mark.parametrize(("setting", "pipeline"), CASES, ids=[f"{s.prop}-{p}" for s, p in CASES])
def test_setting_ranges_lie_within_the_backend_field(setting, pipeline):
    assert pipeline in PIPELINES, f"{setting.prop}: no backend pipeline {pipeline!r}"
    config_class = PIPELINES[pipeline].config_class
    described = describe_config(config_class)
    assert setting.field in described, f"{setting.prop}: {pipeline} has no field {setting.field!r}"
    spec = described[setting.field]
    low, high = spec["low"], spec["high"]
    bounds = {k: v for k, v in (("min", setting.min), ("max", setting.max), ("soft_min", setting.soft_min),
                                ("soft_max", setting.soft_max)) if v is not None}
    if not setting.enum_values:
        # Unbounded add-on settings would let Blender send anything (an IntProperty goes to 2**31 - 1).
        assert "min" in bounds and "max" in bounds, f"{setting.prop} needs a hard min and max"
    for name, value in bounds.items():
        assert low is None or value >= low, f"{setting.prop}.{name} = {value} < {pipeline}.{setting.field} low {low}"
        assert high is None or value <= high, \
            f"{setting.prop}.{name} = {value} > {pipeline}.{setting.field} high {high}"
    if "soft_min" in bounds:
        assert bounds["soft_min"] >= bounds.get("min", bounds["soft_min"])
    if "soft_max" in bounds:
        assert bounds["soft_max"] <= bounds.get("max", bounds["soft_max"])
    for value in (setting.default, *setting.enum_values):
        if value is None:
            continue
        try:
            parse_config(config_class, {**required_params(config_class), setting.field: value})
        except ParamError as e:
            pytest.fail(f"{setting.prop} = {value!r} is refused by {pipeline}: {e}")
    if setting.default is not None and type(setting.default) is not type(spec["default"]):
        pytest.fail(f"{setting.prop} default {setting.default!r} is a {type(setting.default).__name__}, "
                    f"{pipeline}.{setting.field} a {spec['type']}")


def test_every_method_pipeline_exists_and_every_pipeline_has_an_importer_row():
    for task, methods in tasks.TASKS.items():
        assert methods, task
        for method in methods:
            for role, pipeline in method.pipelines.items():
                assert pipeline in PIPELINES, f"{task}/{method.identifier}/{role}: no backend pipeline {pipeline!r}"
    assert tasks.pipeline_for("shape", "shape_ldm", "variations") == "shape_variations"
    with pytest.raises(ValueError, match="cannot texture"):
        tasks.pipeline_for("shape", "shape_ldm", "texture")
    with pytest.raises(ValueError, match="no method 'lion'"):
        tasks.pipeline_for("shape", "lion", "generate")


def test_check_params_against_a_welcome():
    welcome = {name: {"params": describe_config(spec.config_class)} for name, spec in PIPELINES.items()}
    fields.check_params("latent_paint", {"prompt": "x", "texture_size": 8192, "iterations": 3}, welcome)
    fields.check_params("latent_paint", {"texture_size": 10_000}, None)  # no backend said yet: not checked
    with pytest.raises(ValueError, match=r"Texture Size \(texture_size = 9000\) is outside the range 64–8192"):
        fields.check_params("latent_paint", {"texture_size": 9000}, welcome)
    with pytest.raises(ValueError, match=r"Grid \(grid_resolution = 8\) is outside the range 16–512"):
        fields.check_params("shape_ldm", {"grid_resolution": 8}, welcome)
    with pytest.raises(ValueError, match=r"weighting = 'x' is not one of"):
        fields.check_params("latent_nerf", {"weighting": "x"}, welcome)
    with pytest.raises(ValueError, match="no pipeline 'clip_mesh'"):
        fields.check_params("clip_mesh", {}, welcome)


def test_core_imports_without_bpy():
    import subprocess
    import sys

    from conftest import REPO_ROOT

    code = ("import sys, blender_addon.core.fields, blender_addon.core.tasks, blender_addon.core.placement; "
            "assert 'bpy' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)
