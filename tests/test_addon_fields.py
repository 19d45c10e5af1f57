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
    # the importer table (bpy-side: read from its source) has a row for every pipeline a method submits
    import ast

    from conftest import REPO_ROOT

    tree = ast.parse((REPO_ROOT / "blender_addon" / "results" / "__init__.py").read_text(encoding="utf-8"))
    table = next(node.value for node in tree.body if isinstance(node, ast.AnnAssign)
                 and getattr(node.target, "id", "") == "RESULT_IMPORTERS")
    importers = {key.value for key in table.keys}
    assert set(tasks.all_pipelines()) <= importers, sorted(set(tasks.all_pipelines()) - importers)
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
    with pytest.raises(ValueError, match="no pipeline 'no_such_method'"):
        fields.check_params("no_such_method", {}, welcome)


def test_core_imports_without_bpy():
    import subprocess
    import sys

    from conftest import REPO_ROOT

    code = ("import sys, blender_addon.core.fields, blender_addon.core.tasks, blender_addon.core.placement; "
            "assert 'bpy' not in sys.modules and 'torch' not in sys.modules")
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


# ----------------------------------------------------------------------------------------------------------------
# settings driven by the backend's description of each pipeline (the Shape panel's model choice)
# ----------------------------------------------------------------------------------------------------------------

FAKE_MODEL = {  # a model whose description has a shared field, a text field and settings of its own
    "seed": {"default": 0, "type": "int", "low": 0, "high": 2**63 - 1, "choices": None, "doc": "seed"},
    "prompt": {"default": "", "type": "str", "low": None, "high": None, "choices": None, "doc": "text"},
    "bake_texture": {"default": False, "type": "bool", "low": None, "high": None, "choices": None, "doc": "bake"},
    "frame_size": {"default": 64, "type": "int", "low": 16, "high": 256, "choices": None, "doc": "frames"},
    "sampler": {"default": "karras", "type": "str", "low": None, "high": None, "choices": ["karras", "ddim"],
                "doc": "which sampler"},
    "scale": {"default": 1.0, "type": "float", "low": 0.0, "high": 2.0, "choices": None, "doc": "scale"},
    "radius_range": {"default": [1.0, 2.0], "type": "tuple", "low": 0.5, "high": 3.0, "choices": None, "doc": "r"},
    "steps_or_none": {"default": None, "type": "int | None", "low": 1, "high": 9, "choices": None, "doc": "n"},
}


def test_model_fields_are_the_described_fields_no_shared_widget_serves():
    rows = fields.model_fields("shape_ldm", FAKE_MODEL)
    assert [f.field for f in rows] == ["bake_texture", "frame_size", "sampler", "scale"]  # seed, prompt: shared
    frame = rows[1]
    assert (frame.key, frame.label, frame.type, frame.low, frame.high, frame.doc) == \
        ("shape_ldm.frame_size", "Frame Size", "int", 16, 256, "frames")
    assert rows[2].choices == ("karras", "ddim")
    assert fields.model_fields("shape_ldm", None) == [] and fields.model_fields("shape_ldm", {}) == []
    # a pipeline no SETTING_FIELDS row lists has every scalar field as its own (seed too), text fields excepted
    assert [f.field for f in fields.model_fields("lion", FAKE_MODEL)][:1] == ["seed"]


def test_model_fields_accept_only_values_of_their_type_range_and_choices():
    bake, frame, sampler, scale = fields.model_fields("shape_ldm", FAKE_MODEL)
    assert bake.accepts(True) and not bake.accepts(1)
    assert frame.accepts(16) and not frame.accepts(15) and not frame.accepts(True) and not frame.accepts(64.0)
    assert scale.accepts(2) and scale.accepts(0.5) and not scale.accepts(2.5) and not scale.accepts(float("nan"))
    assert sampler.accepts("ddim") and not sampler.accepts("euler") and not sampler.accepts(1)


def test_model_params_send_only_what_differs_from_the_backend_default():
    values = {"shape_ldm.bake_texture": True, "shape_ldm.frame_size": 64, "shape_ldm.sampler": "ddim",
              "shape_ldm.scale": 1, "shap_e.frame_size": 32, "shape_ldm.seed": 3}
    assert fields.model_params("shape_ldm", FAKE_MODEL, values) == {"bake_texture": True, "sampler": "ddim"}
    values["shape_ldm.scale"] = 2  # an int in a float field is sent as a float
    assert fields.model_params("shape_ldm", FAKE_MODEL, values)["scale"] == 2.0
    values["shape_ldm.frame_size"] = "big"  # the wrong type (a backend that changed the field): left out
    values["shape_ldm.scale"] = 7.0  # out of range: sent, so that check_params names it
    params = fields.model_params("shape_ldm", FAKE_MODEL, values)
    assert "frame_size" not in params and params["scale"] == 7.0
    with pytest.raises(ValueError, match=r"scale = 7.0 is outside the range 0.0–2.0"):
        fields.check_params("shape_ldm", params, {"shape_ldm": {"params": FAKE_MODEL}})
    assert fields.model_params("shape_ldm", None, values) == {}  # no description: the backend's defaults


def test_shared_settings_follow_the_description_and_the_table():
    real = describe_config(PIPELINES["shape_ldm"].config_class)
    offline = [s.prop for s in fields.shared_settings("shape_ldm", None)]
    assert offline == [s.prop for s in fields.SETTING_FIELDS if "shape_ldm" in s.pipelines]
    assert [s.prop for s in fields.shared_settings("shape_ldm", real)] == offline
    assert [s.prop for s in fields.shared_settings("shape_ldm", FAKE_MODEL)] == ["seed"]  # only fields it has
    assert fields.shared_settings("lion", FAKE_MODEL) == []
    assert fields.has_field("shape_ldm", "prompt", FAKE_MODEL) and not fields.has_field("x", "model", FAKE_MODEL)
    assert fields.has_field("x", "model", None)
    assert fields.described_params("shape_ldm", {"shape_ldm": {"params": real}}) is real
    assert fields.described_params("shape_ldm", None) is None and fields.described_params("x", {"y": {}}) is None


def test_inputs_follow_the_welcome():
    welcome = {"shape_ldm": {"inputs": [], "optional_inputs": ["image"]}, "latent_paint": {"inputs": ["mesh.v_pos"]}}
    assert fields.takes_input("shape_ldm", "image", welcome)
    assert not fields.takes_input("latent_paint", "image", welcome)
    assert fields.takes_input("shap_e", "image", welcome) and fields.takes_input("x", "image", None)


def test_the_shape_task_offers_each_model_and_hides_what_a_model_cannot_do():
    shape = {m.identifier: m for m in tasks.TASKS["shape"]}
    assert list(shape) == ["shape_ldm", "shap_e", "point_e", "lion_generate"]
    assert [i[1] for i in tasks.enum_items("shape")] == ["Michelangelo", "Shap-E", "Point-E", "LION"]
    for name in ("shap_e", "point_e"):
        assert tasks.pipeline_for("shape", name, "generate") == name
        with pytest.raises(ValueError, match=r"cannot variations \(it can: generate\)"):
            tasks.pipeline_for("shape", name, "variations")
    assert tasks.method_of("shape", "point_e").label == "Point-E"
    assert tasks.method_of("shape", "gone").identifier == "shape_ldm"  # an old .blend's method: the default


def test_the_new_methods_are_rows_of_their_tasks():
    assert [m.identifier for m in tasks.TASKS["texture"]] == ["latent_paint", "clip_mesh"]
    assert [m.label for m in tasks.TASKS["generate"]] == ["Latent-NeRF", "CLIP-Mesh", "Dream Fields"]
    assert tasks.pipeline_for("texture", "clip_mesh", "texture") == "clip_mesh"
    assert tasks.pipeline_for("generate", "dream_fields", "generate") == "dream_fields"
    lion = tasks.method_of("shape", "lion_generate")
    assert lion.pipelines == {"generate": "lion_generate", "variations": "lion_variations",
                              "interpolate": "lion_interpolate", "denoise": "lion_denoise",
                              "blockout": "lion_from_blockout"}
    with pytest.raises(ValueError, match=r"cannot blockout \(it can: generate, variations, interpolate\)"):
        tasks.pipeline_for("shape", "shape_ldm", "blockout")
    assert tasks.pipeline_for("refine", "refine_mesh", "refine") == "refine_mesh"
    assert tasks.method_property("refine") == "refine_method"
    for pipeline in ("clip_mesh", "dream_fields", "refine_mesh", "lion_from_blockout", "lion_denoise"):
        assert pipeline in tasks.all_pipelines()


def test_operator_fields_are_never_model_settings():
    described = {"mode": {"default": "shape_texture", "type": "str", "low": None, "high": None,
                          "choices": ["shape_texture", "texture", "shape"], "doc": "what"},
                 "use_prior": {"default": True, "type": "bool", "low": None, "high": None, "choices": None,
                               "doc": "prior"}}
    assert [f.field for f in fields.model_fields("clip_mesh", described)] == ["use_prior"]
    assert [f.field for f in fields.model_fields("dream_fields", described)] == ["mode", "use_prior"]
    assert fields.model_params("clip_mesh", described, {"clip_mesh.mode": "shape", "clip_mesh.use_prior": False}) \
        == {"use_prior": False}


def test_a_role_pipeline_shares_the_identical_fields_of_the_main_one():
    main = {k: FAKE_MODEL[k] for k in ("seed", "frame_size", "sampler", "scale")}
    role = {**main, "scale": {**FAKE_MODEL["scale"], "default": 0.5},  # another default: its own setting
            "tau": {"default": 0.3, "type": "float", "low": 0.0, "high": 1.0, "choices": None, "doc": "noise"}}
    own, shared = fields.role_model_fields("lion_variations", role, "lion_generate", main)
    assert [f.field for f in own] == ["scale", "tau"]
    assert shared == {"lion_variations.frame_size": "lion_generate.frame_size",  # seed: a shared widget
                      "lion_variations.sampler": "lion_generate.sampler"}
    values = {"lion_generate.frame_size": 32, "lion_generate.sampler": "ddim", "lion_variations.frame_size": 128,
              "lion_variations.tau": 0.7, "lion_variations.scale": 0.5}
    # the shared fields take the main pipeline's values; the own ones their own; defaults are not sent
    assert fields.role_params("lion_variations", role, "lion_generate", main, values) == \
        {"frame_size": 32, "sampler": "ddim", "tau": 0.7}
    # the main pipeline itself, or no description of the main one: every field its own
    assert fields.role_model_fields("lion_generate", main, "lion_generate", main)[1] == {}
    own, shared = fields.role_model_fields("lion_variations", role, "lion_generate", None)
    assert shared == {} and [f.field for f in own] == ["frame_size", "sampler", "scale", "tau"]
    assert fields.role_model_fields("lion_variations", None, "lion_generate", main) == ([], {})
