"""bpy-free table: which add-on setting feeds which backend config field, with the add-on's ranges.

``properties.py`` builds the numeric scene settings (``scene.latentforge.<prop>``) from :data:`SETTING_FIELDS`
(default, hard and soft min/max), so the ranges are written once, here. Blender fixes a property's range when it is
registered, so these stay static; ``tests/test_addon_fields.py`` checks them against the backend's own config
descriptions (``backend.params.describe_config``) so that drift fails CI. At run time the connected backend's
``welcome`` carries the same descriptions (``{pipeline: {"params": {field: {"default", "type", "doc", "low", "high",
"choices"}}}}``); :func:`check_params` validates a ``submit``'s params against them before anything is sent.

Which settings a panel draws and sends for a pipeline comes from that description too:

- *shared settings* (one widget each, e.g. Seed, Samples, Steps, Guidance of the Shape panel) are the
  :data:`SETTING_FIELDS` rows that list the pipeline, plus the text settings of :data:`TEXT_SETTINGS`; each is drawn
  and sent only when the pipeline's description has its field (:func:`shared_settings`);
- *model settings* are every other field of the description (Shap-E's ``bake_texture``, Point-E's ``upsample``…):
  :func:`model_fields` turns them into :class:`BackendField` rows (type, doc, default, range, choices as the backend
  describes them), stored in ``scene.latentforge`` as ID properties keyed ``"<pipeline>.<field>"``
  (:attr:`BackendField.key`) and sent when they differ from the backend's default (:func:`model_params`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TEXTURE = ("latent_paint",)
GENERATE = ("latent_nerf",)
SD_METHODS = TEXTURE + GENERATE
SEEDED_ALIKE = ("dream_fields", "refine_mesh")
"""Methods drawn from the backend's description whose seed means what the shared Seed means, with its default (0):
it is their one shared widget. CLIP-Mesh's seed (99 by default, the official code's) is its own setting."""
SHAPES = ("shape_ldm", "shape_variations", "shape_interpolate")
SHAPE_MODELS = ("shape_ldm", "shap_e", "point_e", "lion_generate")
"""The Shape panel's models (its Generate Shape pipelines); their shared settings are one widget each."""
LION_ROLES = ("lion_variations", "lion_interpolate", "lion_denoise", "lion_from_blockout")
"""LION's pipelines beside ``lion_generate`` (the Shape panel's other boxes)."""
SHAPE_ALL = SHAPES + SHAPE_MODELS[1:] + LION_ROLES
"""Settings with the same meaning and default for every shape model (seed) are shared by all of them; the sampler's
steps, guidance and grid are Michelangelo's widgets only, because each model has its own defaults there (Shap-E:
64 Heun steps, guidance 15 / 3, a 128³ grid; Point-E: 64 Karras steps, guidance 3, 128³): for Shap-E and Point-E
they are model settings, drawn from the backend's description with the model's own defaults."""

BLENDER_INT_MAX = 2**31 - 1
"""Largest value of an ``IntProperty`` (a C int)."""


@dataclass(frozen=True)
class SettingField:
    """One numeric add-on setting and the backend config field it is sent as.

    Attributes:
        prop: the ``scene.latentforge`` property name.
        label: its UI name (also used in error messages).
        field: the backend config field it is sent as.
        pipelines: the pipelines it is sent to.
        default, min, max, soft_min, soft_max: the property's default and ranges (None = Blender's own limit for
            ``min``/``max``, = the hard limit for the soft ones).
        enum_values: for an ``EnumProperty`` whose items stand for numbers (``"129"``), the numbers it can send.
    """

    prop: str
    label: str
    field: str
    pipelines: tuple[str, ...]
    default: float | int | None = None
    min: float | int | None = None
    max: float | int | None = None
    soft_min: float | int | None = None
    soft_max: float | int | None = None
    enum_values: tuple[int, ...] = ()

    def limits(self) -> dict[str, Any]:
        """``default``/``min``/``max``/``soft_min``/``soft_max`` keyword arguments for ``bpy.props`` (Nones left
        out)."""
        values = {"default": self.default, "min": self.min, "max": self.max, "soft_min": self.soft_min,
                  "soft_max": self.soft_max}
        return {k: v for k, v in values.items() if v is not None}


SETTING_FIELDS: tuple[SettingField, ...] = (
    SettingField("seed", "Seed", "seed", SD_METHODS + SEEDED_ALIKE + SHAPE_ALL, default=0, min=0,
                 max=BLENDER_INT_MAX),
    SettingField("iterations", "Iterations", "iterations", SD_METHODS, default=5000, min=1, max=100_000,
                 soft_max=20_000),
    SettingField("guidance_scale", "Guidance Scale", "guidance_scale", SD_METHODS, default=100.0, min=0.0,
                 max=1000.0, soft_max=200.0),
    SettingField("texture_size", "Texture Size", "texture_size", SD_METHODS, default=1024, min=64, max=8192,
                 soft_min=256, soft_max=4096),
    SettingField("mesh_resolution", "Mesh Resolution", "mesh_resolution", GENERATE, default=256, min=32, max=512),
    SettingField("partial_every", "Preview Mesh Every", "partial_every", GENERATE, default=500, min=0,
                 max=100_000, soft_max=5000),
    SettingField("shape_num_samples", "Samples", "num_samples", SHAPE_MODELS, default=1, min=1, max=16),
    SettingField("shape_grid", "Grid", "grid_resolution", SHAPES, enum_values=(129, 257)),
    SettingField("shape_grid_resolution", "Grid Samples", "grid_resolution", SHAPES, default=129, min=16,
                 max=512),
    SettingField("shape_guidance_scale", "Guidance", "guidance_scale", SHAPES, default=7.5, min=0.0, max=100.0,
                 soft_max=15.0),
    SettingField("shape_steps", "Steps", "num_inference_steps", SHAPES, default=50, min=1, max=1000,
                 soft_max=200),
    SettingField("shape_strength", "Strength", "strength", ("shape_variations",), default=0.5, min=0.01, max=1.0),
    SettingField("shape_variation_count", "Variations", "num_samples", ("shape_variations", "lion_variations"),
                 default=4, min=1, max=16),
    SettingField("shape_interpolate_count", "In-Between Shapes", "num_shapes", ("shape_interpolate",), default=3,
                 min=1, max=32),
)
"""Every numeric add-on setting that is sent to the backend (add-on-only settings such as ``shape_spacing`` are not
here)."""

SETTINGS_BY_PROP: dict[str, SettingField] = {s.prop: s for s in SETTING_FIELDS}
""":data:`SETTING_FIELDS` by property name."""


def limits(prop: str) -> dict[str, Any]:
    """``bpy.props`` range keywords of ``prop`` (see :meth:`SettingField.limits`). Raises KeyError."""
    return SETTINGS_BY_PROP[prop].limits()


def label_for(pipeline: str, field: str) -> str:
    """The add-on setting's label that feeds ``field`` of ``pipeline``, or "" when none does."""
    for s in SETTING_FIELDS:
        if s.field == field and pipeline in s.pipelines:
            return s.label
    return ""


TEXT_SETTINGS: dict[str, str] = {"prompt": "Prompt", "negative_prompt": "Negative Prompt", "model": "Model"}
"""Backend text fields served by shared text settings (the panel's Prompt, Negative Prompt and Model widgets), field ->
label; never model settings."""

PROMPT_OPTIONAL = ("lion_generate",)
"""Pipelines whose prompt may stay empty: the model decides (LION's released models are unconditional and refuse a
prompt; a text-conditioned one needs it). The backend's error names the mismatch."""

OPERATOR_FIELDS: dict[str, tuple[str, ...]] = {"clip_mesh": ("mode",)}
"""Pipeline -> fields its operators set themselves (from the panel's own widgets or from what is selected), never
model settings: CLIP-Mesh's ``mode`` is the Texture panel's *CLIP-Mesh Mode* (``texture``, ``shape_texture``,
``shape``) and ``shape_texture`` from the Generate panel."""

SCALAR_TYPES = ("bool", "int", "float", "str")
"""Description types a model setting can have (others, e.g. tuples of numbers, are left to the backend default)."""


def described_params(pipeline: str, pipelines: Mapping[str, Any] | None) -> dict[str, dict] | None:
    """The connected backend's field descriptions of ``pipeline`` (``{field: {"default", "type", "doc", "low",
    "high", "choices"}}``), or None when no backend described it (not connected, or no such pipeline)."""
    if not pipelines or pipeline not in pipelines:
        return None
    params = (pipelines[pipeline] or {}).get("params")
    return params if isinstance(params, dict) else None


def shared_settings(pipeline: str, described: Mapping[str, Any] | None) -> list[SettingField]:
    """The :data:`SETTING_FIELDS` rows sent to ``pipeline``, in table order: those listing it, and, when the backend
    described the pipeline (``described`` from :func:`described_params`), only those whose field it has."""
    return [s for s in SETTING_FIELDS if pipeline in s.pipelines and (described is None or s.field in described)]


def has_field(pipeline: str, field: str, described: Mapping[str, Any] | None) -> bool:
    """Whether a shared text setting (``prompt``, ``model``…) is drawn and sent for ``pipeline``: the description has
    the field; without a description, True (the backend's own error names an unknown key)."""
    return described is None or field in described


def takes_input(pipeline: str, name: str, pipelines: Mapping[str, Any] | None) -> bool:
    """Whether ``pipeline`` takes the input array ``name`` (e.g. ``"image"``), as the connected backend's ``welcome``
    lists it (``inputs`` / ``optional_inputs``); True without a description (the backend's own error names a refused
    input)."""
    if not pipelines or pipeline not in pipelines:
        return True
    entry = pipelines[pipeline] or {}
    return name in list(entry.get("inputs") or ()) + list(entry.get("optional_inputs") or ())


@dataclass(frozen=True)
class BackendField:
    """A model setting: one field of a pipeline's description that no shared setting serves.

    Attributes:
        pipeline, field: the pipeline and its config field.
        type: ``"bool"``, ``"int"``, ``"float"`` or ``"str"`` (:data:`SCALAR_TYPES`).
        default: the backend's default. doc: its one-line documentation (the tooltip).
        low, high: inclusive bounds of a number (None = unbounded). choices: the allowed values, or ().
    """

    pipeline: str
    field: str
    type: str
    default: Any
    doc: str = ""
    low: float | int | None = None
    high: float | int | None = None
    choices: tuple = ()

    @property
    def key(self) -> str:
        """The ID-property name holding its value in ``scene.latentforge``: ``"<pipeline>.<field>"``."""
        return f"{self.pipeline}.{self.field}"

    @property
    def label(self) -> str:
        """Its UI name: ``bake_texture`` -> ``"Bake Texture"``."""
        return self.field.replace("_", " ").title()

    def accepts(self, value: Any) -> bool:
        """Whether ``value`` has this field's type (an int passes for a float), lies in ``low``/``high`` and is one of
        ``choices``."""
        if self.type == "bool":
            ok = isinstance(value, bool)
        elif self.type == "int":
            ok = isinstance(value, int) and not isinstance(value, bool)
        elif self.type == "float":
            ok = _number(value) and math.isfinite(value)
        else:
            ok = isinstance(value, str)
        if ok and _number(value):
            ok = (self.low is None or value >= self.low) and (self.high is None or value <= self.high)
        return ok and (not self.choices or value in self.choices)


def model_fields(pipeline: str, described: Mapping[str, Any] | None) -> list[BackendField]:
    """The model settings of ``pipeline``, in the description's order: every described field of a scalar type that
    neither a shared setting (:func:`shared_settings`) nor a text setting (:data:`TEXT_SETTINGS`) serves. Empty
    without a description."""
    if not described:
        return []
    shared = ({s.field for s in SETTING_FIELDS if pipeline in s.pipelines} | set(TEXT_SETTINGS)
              | set(OPERATOR_FIELDS.get(pipeline, ())))
    out = []
    for name, spec in described.items():
        if name in shared or not isinstance(spec, Mapping) or spec.get("type") not in SCALAR_TYPES:
            continue
        out.append(BackendField(pipeline, name, spec["type"], spec.get("default"), str(spec.get("doc") or ""),
                                spec.get("low"), spec.get("high"), tuple(spec.get("choices") or ())))
    return out


def _same_field(a: BackendField, b: BackendField) -> bool:
    """Whether two model settings describe the same thing: the same field name, type, default, range and choices."""
    return (a.field, a.type, a.default, a.low, a.high, a.choices) == (b.field, b.type, b.default, b.low, b.high,
                                                                       b.choices)


def role_model_fields(pipeline: str, described: Mapping[str, Any] | None, main: str,
                      main_described: Mapping[str, Any] | None) -> tuple[list[BackendField], dict[str, str]]:
    """The model settings of a method's other pipeline (e.g. LION's ``lion_variations`` beside its main pipeline
    ``lion_generate``), split into those it shares with the main pipeline and its own.

    A field the main pipeline describes identically (name, type, default, range, choices: e.g. both pipelines'
    ``num_inference_steps``) is one setting, drawn once with the main pipeline's widgets and sent to both; only the
    others are the role's own widgets.

    Returns:
        ``(own rows in description order, {role key: main key} of the shared ones)``; ``([], {})`` without a
        description.
    """
    main_rows = {f.field: f for f in model_fields(main, main_described)}
    own, shared = [], {}
    for f in model_fields(pipeline, described):
        twin = main_rows.get(f.field)
        if pipeline != main and twin is not None and _same_field(f, twin):
            shared[f.key] = twin.key
        else:
            own.append(f)
    return own, shared


def role_params(pipeline: str, described: Mapping[str, Any] | None, main: str,
                main_described: Mapping[str, Any] | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """:func:`model_params` of a method's other pipeline: the fields it shares with the main pipeline (see
    :func:`role_model_fields`) take the main pipeline's stored values."""
    _own, shared = role_model_fields(pipeline, described, main, main_described)
    merged = dict(values)
    merged.update({key: values[twin] for key, twin in shared.items() if twin in values})
    return model_params(pipeline, described, merged)


def model_params(pipeline: str, described: Mapping[str, Any] | None, values: Mapping[str, Any]) -> dict[str, Any]:
    """The model settings to send to ``pipeline``: field -> value for every :func:`model_fields` row whose stored
    value (``values[key]``, e.g. ``scene.latentforge``'s ID properties) differs from the backend's default, so the
    backend's defaults stay in charge of what the user did not touch. A stored value of the wrong type (a backend
    that changed a field's type) is left out; one out of range is sent, so that :func:`check_params` names it."""
    params = {}
    for f in model_fields(pipeline, described):
        if f.key not in values:
            continue
        value = values[f.key]
        if f.type == "float" and _number(value):
            value = float(value)
        if not BackendField(f.pipeline, f.field, f.type, f.default).accepts(value) or value == f.default:
            continue
        params[f.field] = value
    return params


def _number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def check_params(pipeline: str, params: Mapping[str, Any], pipelines: Mapping[str, Any] | None) -> None:
    """Check a ``submit``'s params against the connected backend's description of ``pipeline``.

    Args:
        pipeline: the pipeline name.
        params: the params about to be sent.
        pipelines: the ``welcome``'s ``pipelines`` (name -> ``{"params": {field: {"low", "high", "choices",
            ...}}}``), or None when no backend said yet (then nothing is checked: the backend checks anyway).

    Raises:
        ValueError: the backend has no such pipeline, or a value lies outside the field's ``low``/``high`` or is not
            one of its ``choices``; the message names the setting, the field, the value and the allowed range.
    """
    if pipelines is None:
        return
    if pipeline not in pipelines:
        raise ValueError(f"the connected backend has no pipeline {pipeline!r} (it offers: "
                         f"{', '.join(sorted(pipelines)) or 'none'}); update the backend")
    described = (pipelines[pipeline] or {}).get("params") or {}
    for field, value in params.items():
        spec = described.get(field)
        if spec is None:
            continue  # an unknown key: the backend's own error names it
        label = label_for(pipeline, field)
        name = f"{label} ({field} = {value!r})" if label else f"{field} = {value!r}"
        values = value if isinstance(value, (list, tuple)) else (value,)
        low, high = spec.get("low"), spec.get("high")
        for v in values:
            if not _number(v) or (isinstance(v, float) and not math.isfinite(v)):
                continue
            if (low is not None and v < low) or (high is not None and v > high):
                raise ValueError(f"{name} is outside the range {low}–{high} that the backend's {pipeline} "
                                 "accepts")
        choices = spec.get("choices")
        if choices and value not in choices:
            raise ValueError(f"{name} is not one of {list(choices)} (backend pipeline {pipeline})")
