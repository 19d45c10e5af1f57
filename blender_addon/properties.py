"""Blender properties of the add-on.

- ``Scene.latentforge`` (:class:`LATENTFORGE_PG_settings`): what the user asks for; saved with the .blend. The
  numeric settings sent to the backend take their default and ranges from :data:`.core.fields.SETTING_FIELDS` (checked
  against the backend's configs by the tests); each task's "Method" choice (``<task>_method``) is made from
  :data:`.core.tasks.TASKS`.
- Model settings (fields of a pipeline's description that no shared widget serves, e.g. Shap-E's ``bake_texture``):
  ID properties of ``scene.latentforge`` keyed ``"<pipeline>.<field>"``, made and kept in step with the connected
  backend's ``welcome`` by :func:`sync_backend_fields` (type, default, range and tooltip from the description).
- ``WindowManager.latentforge`` (:class:`LATENTFORGE_PG_runtime`): connection/job state shown by the panel; never
  saved (window-manager properties live only for the session), written by the session on the main thread.
"""

import bpy
from bpy.props import (BoolProperty, CollectionProperty, EnumProperty, FloatProperty, IntProperty, PointerProperty,
                       StringProperty)

from .core import fields, tasks

UV_METHODS = (
    ("SMART_PROJECT", "Smart UV Project",
     "Keep the object's active UV map; if it has none, Blender's Smart UV Project makes one before sending "
     "(works with n-gons and modifiers)"),
    ("XATLAS", "xatlas (backend)",
     "Send the mesh without UVs and let the backend unwrap it with xatlas; needs modifiers that keep the topology. "
     "xatlas sees triangles, so seams may cut quads: such corners are reported"),
)

SKETCH_MODES = (
    ("SELECTED", "Selected", ("Use the active selected mesh as the sketch shape; with no mesh selected, generate "
                              "from the text alone")),
    ("OBJECT", "Object", "Use the mesh picked below as the sketch shape, whatever is selected"),
    ("NONE", "None", "No sketch: generate from the text alone"),
)
"""``scene.latentforge.sketch_mode`` items: where Generate's sketch shape comes from."""


CLIP_MESH_MODES = (
    ("texture", "Texture", "Paint a texture and a normal map on the selected mesh; its mesh (vertices, faces, UVs, "
                           "modifiers, transform) is kept exactly"),
    ("shape_texture", "Shape + Texture", "Deform a copy of the selected mesh and paint it: a new object placed on it"),
    ("shape", "Shape", "Deform a copy of the selected mesh only: a new object placed on it"),
)
"""``scene.latentforge.clip_mesh_mode`` items: the ``mode`` the Texture panel's CLIP-Mesh sends (identifiers = the
backend's values)."""

ORIGINAL_MODES = (
    ("HIDE", "Hide", "Hide the original once the new object is in (it stays in the scene: unhide it to compare)"),
    ("KEEP", "Keep Visible", "Leave the original visible, under the new object"),
)
"""``scene.latentforge.original_mode`` items: what happens to the selected mesh when Refine Selected (or CLIP-Mesh's
Shape modes) put a new object on it."""

SHAPE_INPUTS = (
    ("PROMPT", "Prompt", "Generate from the prompt (text-conditioned model)"),
    ("IMAGE", "Image", "Generate from an image already in the .blend (image-conditioned model)"),
    ("FILE", "File", "Generate from an image file on disk (PNG, JPEG, … anything Blender reads)"),
)
"""``scene.latentforge.shape_input`` items: what Generate Shape is conditioned on."""

SHAPE_GRIDS = (
    ("129", "129³", "The public model's grid: 129 samples (128 cells) per side"),
    ("257", "257³", "Twice the detail: 257 samples (256 cells) per side; 8× the occupancy queries"),
    ("CUSTOM", "Custom", "Any grid the backend accepts (16–512 samples per side)"),
)
"""``scene.latentforge.shape_grid`` items: the occupancy grid of the final shape meshes."""

SHAPE_GRID_MIN, SHAPE_GRID_MAX = fields.SETTINGS_BY_PROP["shape_grid_resolution"].min, \
    fields.SETTINGS_BY_PROP["shape_grid_resolution"].max
"""The range of ``grid_resolution`` (samples per side) a custom grid can ask for."""


def _is_mesh_object(_settings, obj) -> bool:
    """Poll of ``sketch_object``: only mesh objects can be picked."""
    return obj.type == "MESH"


class LATENTFORGE_PG_settings(bpy.types.PropertyGroup):
    """Generation and texturing settings of a scene (``scene.latentforge``): the prompt settings are shared by
    Texture Selected (``latent_paint``) and Generate (``latent_nerf``); the prompt and the seed also by the shape
    operators (``shape_*`` settings: Generate Shape, Variations of Selected, Interpolate)."""

    prompt: StringProperty(name="Prompt", description="What the texture or the generated object should show", default="")
    negative_prompt: StringProperty(name="Negative Prompt", description="What the result should not show",
                                    default="")
    seed: IntProperty(name="Seed", description="Random seed (same seed + settings = same result)",
                      **fields.limits("seed"))
    iterations: IntProperty(name="Iterations", description="Optimization steps (Latent-Paint and Latent-NeRF use 5000)",
                            **fields.limits("iterations"))
    guidance_scale: FloatProperty(name="Guidance Scale", description="Classifier-free guidance weight for SDS",
                                  **fields.limits("guidance_scale"))
    texture_size: IntProperty(name="Texture Size", description="Width = height of the texture image, pixels",
                              **fields.limits("texture_size"))
    model: StringProperty(name="Model",
                          description="Model id or local path (Stable Diffusion for Latent-Paint, Latent-NeRF and "
                                      "Refine; CLIP for CLIP-Mesh and Dream Fields); empty = the backend's default "
                                      "('tiny-random' = tiny random weights, for testing)",
                          default="")
    uv_method: EnumProperty(name="UVs", description="Where the UV map of the texture comes from", items=UV_METHODS,
                            default="SMART_PROJECT")
    sketch_mode: EnumProperty(name="Sketch Shape", description="Which mesh constrains the shape Generate makes",
                              items=SKETCH_MODES, default="SELECTED")
    sketch_object: PointerProperty(name="Sketch Object", type=bpy.types.Object, poll=_is_mesh_object,
                                   description="Mesh used as the sketch shape when the sketch mode is 'Object'")
    mesh_resolution: IntProperty(name="Mesh Resolution",
                                 description="Marching-cubes grid of the generated mesh (cells per side)",
                                 **fields.limits("mesh_resolution"))
    clip_mesh_mode: EnumProperty(name="CLIP-Mesh Mode", description="What CLIP-Mesh does to the selected mesh",
                                 items=CLIP_MESH_MODES, default="texture")
    from_selected: BoolProperty(name="From Selected",
                                description="CLIP-Mesh (Generate): start from the active selected mesh instead of a "
                                            "sphere; the new object is placed on it",
                                default=False)
    original_mode: EnumProperty(name="Original", description="What happens to the selected mesh when a new object "
                                                             "is put on it (Refine Selected, CLIP-Mesh's Shape modes)",
                                items=ORIGINAL_MODES, default="HIDE")
    partial_every: IntProperty(name="Preview Mesh Every",
                               description="Steps between intermediate meshes shown as the temporary object "
                                           "'LatentForge preview' (0 = none)",
                               **fields.limits("partial_every"))

    # Shapes (Michelangelo, Shap-E, Point-E): Generate Shape; Variations of Selected, Interpolate (Michelangelo).
    shape_input: EnumProperty(name="Shape From", description="What Generate Shape is conditioned on",
                              items=SHAPE_INPUTS, default="PROMPT")
    shape_image: PointerProperty(name="Image", type=bpy.types.Image,
                                 description="Concept image (RGB or RGBA; transparent parts count as white)")
    shape_image_path: StringProperty(name="Image File", subtype="FILE_PATH",
                                     description="Concept image file (RGB or RGBA; transparent parts count as "
                                                 "white)", default="")
    shape_num_samples: IntProperty(name="Samples", description="Shapes Generate Shape makes; each becomes its own "
                                                               "object, side by side along X at the 3D cursor",
                                   **fields.limits("shape_num_samples"))
    shape_grid: EnumProperty(name="Grid", description="Occupancy grid the final meshes are extracted on",
                             items=SHAPE_GRIDS, default="129")
    shape_grid_resolution: IntProperty(name="Grid Samples", description="Samples per side of a custom grid",
                                       **fields.limits("shape_grid_resolution"))
    shape_guidance_scale: FloatProperty(name="Guidance", description="Classifier-free guidance scale of the shape "
                                                                     "model (7.5; 1 = conditional only)",
                                        **fields.limits("shape_guidance_scale"))
    shape_steps: IntProperty(name="Steps", description="DDIM denoising steps (50; fewer = faster, coarser)",
                             **fields.limits("shape_steps"))
    shape_model: StringProperty(name="Shape Model",
                                description="The chosen model's weights: empty = automatic (Michelangelo: "
                                            "text-ASLDM-256 for prompts and meshes, image-ASLDM-256 for images; "
                                            "Shap-E, Point-E: their text or image model), a public name, a file or "
                                            "folder the backend reads, or 'tiny-random' (tiny random weights, for "
                                            "testing)",
                                default="")
    shape_spacing: FloatProperty(name="Spacing", description="Free space between neighbouring new shape objects "
                                                             "(and between a mesh and its variations)",
                                 default=0.25, min=0.0, soft_max=5.0, subtype="DISTANCE", unit="LENGTH")
    shape_strength: FloatProperty(name="Strength", description="How far the selected mesh is noised before "
                                                               "denoising: small = close to it, 1 = a new shape",
                                  subtype="FACTOR", **fields.limits("shape_strength"))
    shape_variation_count: IntProperty(name="Variations", description="Variants Variations of Selected makes",
                                       **fields.limits("shape_variation_count"))
    shape_variation_prompt: BoolProperty(name="Steer with Prompt",
                                         description="Denoise the variants towards the prompt (off: no text)",
                                         default=False)
    shape_interpolate_count: IntProperty(name="In-Between Shapes",
                                         description="Shapes Interpolate makes between the two selected meshes",
                                         **fields.limits("shape_interpolate_count"))


class LATENTFORGE_PG_job(bpy.types.PropertyGroup):
    """One row of the backend's job list (``wm.latentforge.jobs``); ``name`` holds the job id."""

    job_id: StringProperty(name="Job")
    pipeline: StringProperty(name="Pipeline")
    status: StringProperty(name="Status")
    prompt: StringProperty(name="Prompt")
    created: StringProperty(name="Created")
    error: StringProperty(name="Error")
    owner: StringProperty(name="Owner", description="Who submitted the job, when it is not this connection's "
                                                    "identity (an admin's list of a studio backend)")


class LATENTFORGE_PG_runtime(bpy.types.PropertyGroup):
    """Live state of the connection and of the active job (``window_manager.latentforge``)."""

    connection_status: StringProperty(name="Connection", default="Not connected")
    connected: BoolProperty(name="Connected", default=False)
    backend_info: StringProperty(name="Backend", description="Device and version of the connected backend")
    active_job_id: StringProperty(name="Active Job")
    progress: FloatProperty(name="Progress", default=0.0, min=0.0, max=1.0, subtype="FACTOR")
    stage: StringProperty(name="Stage", default="")
    eta_s: FloatProperty(name="ETA", description="Estimated seconds left; negative = unknown", default=-1.0)
    last_error: StringProperty(name="Last Error", default="")
    last_info: StringProperty(name="Last Message", default="")
    jobs: CollectionProperty(type=LATENTFORGE_PG_job)
    jobs_index: IntProperty(name="Selected Job", default=0)
    jobs_next_cursor: StringProperty(name="Next Page",
                                     description="The backend's cursor for the next (older) page of the job list; "
                                                 "empty = the list is complete")


def _add_method_properties(cls) -> None:
    """One "Method" choice per task of :data:`.core.tasks.TASKS`: ``<task>_method`` (first method = default)."""
    for task in tasks.TASKS:
        cls.__annotations__[tasks.method_property(task)] = EnumProperty(
            name="Method", description=f"How {task.capitalize()} does it (the backend pipeline it runs)",
            items=tasks.enum_items(task))


_add_method_properties(LATENTFORGE_PG_settings)


def reset_settings(settings: LATENTFORGE_PG_settings) -> None:
    """Put every property of ``scene.latentforge`` back to its default (pointers to None; model settings to the
    backend default they were made with)."""
    for prop in settings.bl_rna.properties:
        if prop.identifier != "rna_type" and not prop.is_readonly:
            settings.property_unset(prop.identifier)
    for key in list(settings.keys()):
        default = settings.id_properties_ui(key).as_dict().get("default")
        if default is not None:
            settings[key] = default


def _ui_bound(value, integer: bool):
    """A description bound as a Blender UI bound (ints clamped to a C int)."""
    if integer:
        return max(-fields.BLENDER_INT_MAX, min(fields.BLENDER_INT_MAX, int(value)))
    return float(value)


def sync_backend_fields(settings: LATENTFORGE_PG_settings, pipelines: dict | None) -> int:
    """Make the model settings of every pipeline a task method submits (:func:`.core.fields.model_fields` of the
    backend's ``welcome`` ``pipelines``) as ID properties of ``settings``, keyed ``"<pipeline>.<field>"``: a missing
    one (or one whose stored value no longer fits the field: another type, out of range, not a choice) gets the
    backend's default; each gets the field's doc as tooltip, its default, and its ``low``/``high`` as the UI range.
    Values the user set and that still fit are kept; a value still equal to the default of the backend that made it
    (never touched) follows a new backend's other default. Returns how many properties were (re)set to the default.
    Main thread only (writes ID data)."""
    reset = 0
    for pipeline in tasks.all_pipelines():
        for f in fields.model_fields(pipeline, fields.described_params(pipeline, pipelines)):
            default = float(f.default) if f.type == "float" and f.default is not None else f.default
            if default is None:
                continue
            if f.key not in settings.keys() or not f.accepts(settings[f.key]) or (
                    settings[f.key] != default and settings[f.key] == _made_default(settings, f.key)):
                settings[f.key] = default
                reset += 1
            ui = {"description": f.doc or f.label, "default": default}
            if f.type in ("int", "float"):
                integer = f.type == "int"
                for name, bound in (("min", f.low), ("max", f.high)):
                    if bound is not None:
                        ui[name] = ui["soft_" + name] = _ui_bound(bound, integer)
            settings.id_properties_ui(f.key).update(**ui)
    return reset


def _made_default(settings: LATENTFORGE_PG_settings, key: str):
    """The backend default a model setting was made with (its UI default), or None."""
    try:
        return settings.id_properties_ui(key).as_dict().get("default")
    except TypeError:  # a stored value Blender gives no UI data (not a number / string / bool)
        return None


def reset_runtime(state: LATENTFORGE_PG_runtime) -> None:
    """Put the runtime state's job line and messages back to their defaults (the connection line and the job list
    are left alone: they mirror the live connection)."""
    for name in ("active_job_id", "progress", "stage", "eta_s", "last_error", "last_info", "jobs_index"):
        state.property_unset(name)


classes = (LATENTFORGE_PG_settings, LATENTFORGE_PG_job, LATENTFORGE_PG_runtime)


def register() -> None:
    for cls in classes:
        bpy.utils.register_class(cls)
    bpy.types.Scene.latentforge = PointerProperty(type=LATENTFORGE_PG_settings)
    bpy.types.WindowManager.latentforge = PointerProperty(type=LATENTFORGE_PG_runtime)


def unregister() -> None:
    del bpy.types.WindowManager.latentforge
    del bpy.types.Scene.latentforge
    for cls in reversed(classes):
        bpy.utils.unregister_class(cls)
