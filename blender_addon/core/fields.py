"""bpy-free table: which add-on setting feeds which backend config field, with the add-on's ranges.

``properties.py`` builds the numeric scene settings (``scene.latentforge.<prop>``) from :data:`SETTING_FIELDS`
(default, hard and soft min/max), so the ranges are written once, here. Blender fixes a property's range when it is
registered, so these stay static; ``tests/test_addon_fields.py`` checks them against the backend's own config
descriptions (``backend.params.describe_config``) so that drift fails CI. At run time the connected backend's
``welcome`` carries the same descriptions (``{pipeline: {"params": {field: {"default", "type", "doc", "low", "high",
"choices"}}}}``); :func:`check_params` validates a ``submit``'s params against them before anything is sent.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

TEXTURE = ("latent_paint",)
GENERATE = ("latent_nerf",)
SD_METHODS = TEXTURE + GENERATE
SHAPES = ("shape_ldm", "shape_variations", "shape_interpolate")

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
    SettingField("seed", "Seed", "seed", SD_METHODS + SHAPES, default=0, min=0, max=BLENDER_INT_MAX),
    SettingField("iterations", "Iterations", "iterations", SD_METHODS, default=5000, min=1, max=100_000,
                 soft_max=20_000),
    SettingField("guidance_scale", "Guidance Scale", "guidance_scale", SD_METHODS, default=100.0, min=0.0,
                 max=1000.0, soft_max=200.0),
    SettingField("texture_size", "Texture Size", "texture_size", SD_METHODS, default=1024, min=64, max=8192,
                 soft_min=256, soft_max=4096),
    SettingField("mesh_resolution", "Mesh Resolution", "mesh_resolution", GENERATE, default=256, min=32, max=512),
    SettingField("partial_every", "Preview Mesh Every", "partial_every", GENERATE, default=500, min=0,
                 max=100_000, soft_max=5000),
    SettingField("shape_num_samples", "Samples", "num_samples", ("shape_ldm",), default=1, min=1, max=16),
    SettingField("shape_grid", "Grid", "grid_resolution", SHAPES, enum_values=(129, 257)),
    SettingField("shape_grid_resolution", "Grid Samples", "grid_resolution", SHAPES, default=129, min=16, max=512),
    SettingField("shape_guidance_scale", "Guidance", "guidance_scale", SHAPES, default=7.5, min=0.0, max=100.0,
                 soft_max=15.0),
    SettingField("shape_steps", "Steps", "num_inference_steps", SHAPES, default=50, min=1, max=1000, soft_max=200),
    SettingField("shape_strength", "Strength", "strength", ("shape_variations",), default=0.5, min=0.01, max=1.0),
    SettingField("shape_variation_count", "Variations", "num_samples", ("shape_variations",), default=4, min=1,
                 max=16),
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
