"""The "LatentForge" tab of the 3D viewport's sidebar (thin: draws state, calls operators), organised by the
artist's task.

- ``LATENTFORGE_PT_main``: the connection, the prompt, the active job's progress, Cancel, the last message.
- One sub-panel per task of :data:`.core.tasks.TASKS` (:data:`TASK_PANELS`): Texture, Generate, Shape, Refine. Each
  draws its "Method" choice (``scene.latentforge.<task>_method``), the chosen method's settings and operators, and, when
  a backend is connected, a red line if a setting lies outside what that backend accepts
  (:func:`.core.fields.check_params` on its ``welcome``'s pipeline descriptions).
- Preview and Jobs sub-panels.

A new task = a row in ``TASKS`` + one :class:`_TaskPanel` subclass added to :data:`TASK_PANELS`; a task panel is
drawn only while its task has a method. A method whose pipeline is not Latent-Paint's or Latent-NeRF's draws its
settings from the backend's description (:func:`draw_method_settings`): the shared widgets it has, then its own.
"""

import json

import bpy

from . import operators, session
from .core import fields, tasks
from .results.preview import PREVIEW_IMAGE_NAME
from .core.text import format_duration

STATUS_ICONS = {"queued": "SORTTIME", "running": "PLAY", "done": "CHECKMARK", "failed": "ERROR",
                "cancelled": "CANCEL"}


class LATENTFORGE_UL_jobs(bpy.types.UIList):
    """Rows of ``window_manager.latentforge.jobs``: status icon, short job id, prompt."""

    bl_idname = "LATENTFORGE_UL_jobs"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.label(text=item.job_id[:8], icon=STATUS_ICONS.get(item.status, "QUESTION"))
        row.label(text=item.prompt or item.pipeline)
        if item.owner:
            row.label(text=item.owner, icon="USER")


def draw_sketch_status(layout, context, settings) -> None:
    """One line saying what Generate will use: the sketch object, text only, or why it cannot run."""
    try:
        sketch = operators.sketch_object(context, settings)
    except ValueError as e:
        row = layout.row()
        row.alert = True
        row.label(text=str(e), icon="ERROR")
        return
    if sketch is None:
        why = "nothing selected" if settings.sketch_mode == "SELECTED" else "no sketch"
        layout.label(text=f"Text only ({why})", icon="FONT_DATA")
    else:
        layout.label(text=f"Shaped like {sketch.name!r}", icon="MESH_CUBE")


def _status_line(layout, compute, describe) -> None:
    """One line: ``describe(compute())`` with an info icon, or the ValueError ``compute`` raised, in red."""
    try:
        value = compute()
    except ValueError as e:
        row = layout.row()
        row.alert = True
        row.label(text=str(e), icon="ERROR")
        return
    text, icon = describe(value)
    layout.label(text=text, icon=icon)


def _shape_icon(obj) -> str:
    """The icon of a shape source: a point cloud's or a mesh's."""
    return "POINTCLOUD_DATA" if obj.type == "POINTCLOUD" else "MESH_DATA"


def _backend_pipelines() -> dict | None:
    """The connected backend's pipeline descriptions, or None (not connected / not registered)."""
    try:
        return session.get_session().connection.pipelines
    except RuntimeError:
        return None


def draw_backend_check(layout, pipeline_params) -> None:
    """A red line when the connected backend would refuse a setting (its live ranges, choices and pipelines);
    nothing when it accepts them or no backend is connected.

    Args:
        pipeline_params: ``() -> (pipeline, params)`` (may raise ValueError: then nothing is drawn; the operator
            reports it).
    """
    pipelines = _backend_pipelines()
    if pipelines is None:
        return
    try:
        pipeline, params = pipeline_params()
        fields.check_params(pipeline, params, pipelines)
    except ValueError as e:
        row = layout.row()
        row.alert = True
        row.label(text=str(e), icon="ERROR")


def _big_operator(layout, idname: str, icon: str) -> None:
    row = layout.row()
    row.scale_y = 1.4
    row.operator(idname, icon=icon)


def _draw_diffusion_settings(layout, settings) -> None:
    """The Stable Diffusion settings Texture and Generate share (the same scene properties)."""
    col = layout.column(align=True)
    col.prop(settings, "model")
    col.prop(settings, "seed")
    col.prop(settings, "iterations")
    col.prop(settings, "guidance_scale")
    col.prop(settings, "texture_size")


class _SidebarPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "LatentForge"


class LATENTFORGE_PT_main(_SidebarPanel, bpy.types.Panel):
    """Connection, the prompt (every task uses it), Cancel, the active job's progress and the last message."""

    bl_idname = "LATENTFORGE_PT_main"
    bl_label = "LatentForge"

    def draw(self, context):
        layout = self.layout
        state = context.window_manager.latentforge
        settings = context.scene.latentforge

        box = layout.box()
        row = box.row()
        row.label(text=state.connection_status, icon="LINKED" if state.connected else "UNLINKED")
        row.operator("latentforge.disconnect" if state.connected else "latentforge.connect", text="",
                     icon="X" if state.connected else "PLAY")
        if state.backend_info:
            box.label(text=state.backend_info)

        col = layout.column()
        col.prop(settings, "prompt")
        col.prop(settings, "negative_prompt")

        row = layout.row()
        row.enabled = bool(state.active_job_id)
        row.operator("latentforge.cancel_job", text="Cancel Job", icon="CANCEL")

        if state.active_job_id or state.stage:
            eta = format_duration(state.eta_s)
            text = f"{state.stage}  {'ETA ' + eta if eta else ''}".strip() or "…"
            if hasattr(layout, "progress"):  # Blender 4.0+
                layout.progress(factor=state.progress, type="BAR", text=text)
            else:
                layout.prop(state, "progress", text=text, slider=True)
        if state.last_error:
            layout.label(text=state.last_error, icon="ERROR")
        elif state.last_info:
            layout.label(text=state.last_info, icon="INFO")


def draw_method_choice(layout, context, task: str):
    """The task's "Method" choice (``scene.latentforge.<task>_method``); returns ``scene.latentforge``."""
    settings = context.scene.latentforge
    layout.prop(settings, tasks.method_property(task))
    return settings


class _TaskPanel(_SidebarPanel):
    """A task's sub-panel: shown while ``task`` (a key of :data:`.core.tasks.TASKS`) has a method. Subclasses set
    ``task``, ``bl_idname``, ``bl_label``, and a ``draw`` that starts with :func:`draw_method_choice` and then draws
    the chosen method's settings and operators (``draw`` uses only ``self.layout``)."""

    bl_parent_id = "LATENTFORGE_PT_main"
    task = ""

    @classmethod
    def poll(cls, context):
        return bool(tasks.TASKS.get(cls.task))


class LATENTFORGE_PT_texture(_TaskPanel, bpy.types.Panel):
    """Texture the selected mesh from the prompt (Latent-Paint; CLIP-Mesh: a texture and a normal map on the mesh
    kept exactly, or a reshaped copy placed on it)."""

    bl_idname = "LATENTFORGE_PT_texture"
    bl_label = "Texture"
    task = "texture"

    def draw(self, context):
        layout = self.layout
        settings = draw_method_choice(layout, context, "texture")
        method = tasks.method_of("texture", settings.texture_method)
        pipeline = method.pipelines["texture"]
        if pipeline == "latent_paint":
            _draw_diffusion_settings(layout, settings)
            layout.prop(settings, "uv_method")
        else:
            layout.row().prop(settings, "clip_mesh_mode", expand=True)
            layout.prop(settings, "uv_method")
            if settings.clip_mesh_mode != "texture":
                layout.prop(settings, "original_mode")
            draw_method_settings(layout, settings, pipeline, method.label)
        draw_backend_check(layout, lambda: (pipeline, operators.texture_task_params(
            settings, pipeline, fields.described_params(pipeline, _backend_pipelines()))))
        _big_operator(layout, "latentforge.texture_selected", "TEXTURE")


class LATENTFORGE_PT_generate(_TaskPanel, bpy.types.Panel):
    """Generate a new textured mesh from the prompt: Latent-NeRF (optionally shaped like a sketch mesh), CLIP-Mesh
    (from a sphere, or from the selected mesh with From Selected), Dream Fields."""

    bl_idname = "LATENTFORGE_PT_generate"
    bl_label = "Generate"
    task = "generate"

    def draw(self, context):
        layout = self.layout
        settings = draw_method_choice(layout, context, "generate")
        method = tasks.method_of("generate", settings.generate_method)
        pipeline = method.pipelines["generate"]
        if pipeline == "latent_nerf":
            layout.label(text="Sketch Shape:")
            layout.row().prop(settings, "sketch_mode", expand=True)
            if settings.sketch_mode == "OBJECT":
                layout.prop(settings, "sketch_object", text="")
            draw_sketch_status(layout, context, settings)
            _draw_diffusion_settings(layout, settings)
            sub = layout.column(align=True)
            sub.prop(settings, "mesh_resolution")
            sub.prop(settings, "partial_every")
        else:
            if pipeline == "clip_mesh":
                layout.prop(settings, "from_selected")
                _status_line(layout, lambda: operators.clip_mesh_start(context, settings),
                             lambda obj: (f"Starts from {obj.name!r}", "MESH_DATA") if obj is not None
                             else ("Starts from a sphere", "MESH_UVSPHERE"))
            draw_method_settings(layout, settings, pipeline, method.label)
        draw_backend_check(layout, lambda: (pipeline, operators.generate_task_params(
            settings, pipeline, fields.described_params(pipeline, _backend_pipelines()))))
        _big_operator(layout, "latentforge.generate", "PLAY")


def draw_method_settings(layout, settings, pipeline: str, title: str) -> None:
    """The settings of a method drawn from the backend's description of ``pipeline`` (CLIP-Mesh, Dream Fields,
    Refine): its shared numeric widgets (:func:`.core.fields.shared_settings`), the Model text setting when it has a
    ``model`` field, then its own settings (:func:`draw_model_fields`)."""
    description = fields.described_params(pipeline, _backend_pipelines())
    rows = fields.shared_settings(pipeline, description)
    if rows or fields.has_field(pipeline, "model", description):
        col = layout.column(align=True)
        if fields.has_field(pipeline, "model", description):
            col.prop(settings, "model")
        for row in rows:
            col.prop(settings, row.prop)
    draw_model_fields(layout, settings, pipeline, description, title)


def draw_model_fields(layout, settings, pipeline: str, description: dict | None, title: str,
                      rows: list | None = None) -> None:
    """The chosen model's own settings (:func:`.core.fields.model_fields` of the backend's description of
    ``pipeline``, or the given ``rows``): a bool/number/text field as its ``scene.latentforge["<pipeline>.<field>"]``
    ID property, a field with choices as one button per choice
    (:class:`.operators.LATENTFORGE_OT_set_backend_field`). Without a description, one line saying that connecting
    shows them."""
    if description is None:
        layout.label(text=f"Connect to the backend to see {title}'s own settings", icon="INFO")
        return
    rows = fields.model_fields(pipeline, description) if rows is None else rows
    if not rows:
        return
    col = layout.column(align=True)
    col.label(text=f"{title} settings:")
    keys = set(settings.keys())
    for f in rows:
        if f.key not in keys:  # described after the last sync (a backend restarted with new fields)
            col.label(text=f"{f.label}: reconnect to load it", icon="INFO")
        elif f.choices:
            row = col.row(align=True)
            row.label(text=f.label)
            for choice in f.choices:
                op = row.operator("latentforge.set_backend_field", text=str(choice),
                                  depress=settings[f.key] == choice)
                op.key, op.value = f.key, json.dumps(choice)
        else:
            col.prop(settings, f'["{f.key}"]', text=f.label)


def draw_role_fields(layout, settings, pipeline: str, main: str, main_description: dict | None, title: str) -> None:
    """The own settings of a method's other pipeline (variations, in-betweens, denoise, blockout): those it does not
    share with the main pipeline ``main`` (:func:`.core.fields.role_model_fields`); nothing offline (the main
    pipeline's line already says that connecting shows them)."""
    backend = _backend_pipelines()
    description = fields.described_params(pipeline, backend)
    if description is None:
        return
    own, _shared = fields.role_model_fields(pipeline, description, main, main_description)
    draw_model_fields(layout, settings, pipeline, description, title, own)


class LATENTFORGE_PT_shape(_TaskPanel, bpy.types.Panel):
    """Shapes in seconds, by the chosen model (Michelangelo, Shap-E, Point-E, LION): Generate Shape (prompt or image;
    LION: unconditional) for every model, Variations of Selected, Interpolate, Shapes from Blockout and Denoise
    Selected where the model can; the settings drawn are those the
    connected backend describes for the model's pipeline (shared ones once, the model's own below them). Jobs share
    the main panel's progress, Cancel and the Jobs list."""

    bl_idname = "LATENTFORGE_PT_shape"
    bl_label = "Shape"
    task = "shape"

    def draw(self, context):
        layout = self.layout
        settings = draw_method_choice(layout, context, "shape")
        method = tasks.method_of("shape", settings.shape_method)
        backend = _backend_pipelines()
        pipeline = method.pipelines["generate"]
        description = fields.described_params(pipeline, backend)
        shared = {row.prop for row in fields.shared_settings(pipeline, description)}
        box = layout.box()
        box.label(text="Generate shapes from text or an image", icon="MESH_ICOSPHERE")
        if fields.takes_input(pipeline, "image", backend):
            box.row().prop(settings, "shape_input", expand=True)
        if not fields.has_field(pipeline, "prompt", description):
            box.label(text=f"{method.label} generates without a prompt", icon="INFO")
        elif settings.shape_input == "PROMPT" or not fields.takes_input(pipeline, "image", backend):
            box.prop(settings, "prompt")
            if pipeline in fields.PROMPT_OPTIONAL:
                box.label(text="Text-conditioned models only: leave empty for the others", icon="INFO")
        elif settings.shape_input == "IMAGE":
            box.template_ID(settings, "shape_image", open="image.open")
        else:
            box.prop(settings, "shape_image_path", text="")
        if "shape_num_samples" in shared:
            box.prop(settings, "shape_num_samples")
        _big_operator(box, "latentforge.generate_shape", "PLAY")

        if "variations" in method.pipelines:
            role = method.pipelines["variations"]
            role_description = fields.described_params(role, backend)
            role_shared = {row.prop for row in fields.shared_settings(role, role_description)}
            points = operators.takes_points(role)
            box = layout.box()
            box.label(text="Variations of a mesh or point cloud" if points else "Variations of a mesh",
                      icon="MOD_ARRAY")
            _status_line(box, lambda: operators.variation_source(context, points),
                         lambda obj: (f"Varies {obj.name!r}", _shape_icon(obj)))
            sub = box.column(align=True)
            for prop in ("shape_strength", "shape_variation_count"):
                if prop in role_shared:
                    sub.prop(settings, prop)
            if fields.has_field(role, "prompt", role_description):
                box.prop(settings, "shape_variation_prompt")
            draw_role_fields(box, settings, role, pipeline, description, f"{method.label} variations")
            _big_operator(box, "latentforge.shape_variations", "PLAY")

        if "interpolate" in method.pipelines:
            role = method.pipelines["interpolate"]
            points = operators.takes_points(role)
            box = layout.box()
            box.label(text="In-between shapes of two meshes or point clouds" if points else
                      "In-between shapes of two meshes", icon="ARROW_LEFTRIGHT")
            _status_line(box, lambda: operators.interpolation_pair(context, points),
                         lambda pair: (f"From {pair[0].name!r} to {pair[1].name!r}", "MESH_DATA"))
            if "shape_interpolate_count" in {row.prop for row in fields.shared_settings(
                    role, fields.described_params(role, backend))}:
                box.prop(settings, "shape_interpolate_count")
            draw_role_fields(box, settings, role, pipeline, description, f"{method.label} in-betweens")
            _big_operator(box, "latentforge.shape_interpolate", "PLAY")

        for role, title, icon, idname, verb in (
                ("blockout", "Shapes that follow a blockout", "MOD_REMESH", "latentforge.shapes_from_blockout",
                 "Follows"),
                ("denoise", "Clean up a noisy mesh", "MOD_SMOOTH", "latentforge.denoise_selected", "Cleans")):
            if role not in method.pipelines:
                continue
            points = role == "denoise" and operators.takes_points(method.pipelines[role])
            box = layout.box()
            box.label(text="Clean up a noisy mesh or scan" if points else title, icon=icon)
            _status_line(box, lambda points=points: operators.selected_mesh(context, "use", points),
                         lambda obj, verb=verb: (f"{verb} {obj.name!r}", _shape_icon(obj)))
            draw_role_fields(box, settings, method.pipelines[role], pipeline, description,
                             f"{method.label} {role}")
            _big_operator(box, idname, "PLAY")

        col = layout.column(align=True)
        col.label(text="Shape settings:")
        if "shape_grid" in shared:
            col.row().prop(settings, "shape_grid", expand=True)
            if settings.shape_grid == "CUSTOM":
                col.prop(settings, "shape_grid_resolution")
        for prop in ("shape_steps", "shape_guidance_scale", "seed"):
            if prop in shared:
                col.prop(settings, prop)
        col.prop(settings, "shape_spacing")
        if fields.has_field(pipeline, "model", description):
            layout.prop(settings, "shape_model")
        draw_model_fields(layout, settings, pipeline, description, method.label)
        draw_backend_check(layout, lambda: (pipeline, operators.shape_params(settings, pipeline, description)))


class LATENTFORGE_PT_refine(_TaskPanel, bpy.types.Panel):
    """Refine the selected mesh from the prompt (Magic3D's fine stage): a new textured object placed on it."""

    bl_idname = "LATENTFORGE_PT_refine"
    bl_label = "Refine"
    task = "refine"

    def draw(self, context):
        layout = self.layout
        settings = draw_method_choice(layout, context, "refine")
        method = tasks.method_of("refine", settings.refine_method)
        pipeline = method.pipelines["refine"]
        _status_line(layout, lambda: operators.selected_mesh(context, "refine"),
                     lambda obj: (f"Refines {obj.name!r}", "MESH_DATA"))
        layout.prop(settings, "original_mode")
        draw_method_settings(layout, settings, pipeline, method.label)
        draw_backend_check(layout, lambda: (pipeline, operators.method_params(
            settings, pipeline, fields.described_params(pipeline, _backend_pipelines()))))
        _big_operator(layout, "latentforge.refine_selected", "MODIFIER")


TASK_PANELS = (LATENTFORGE_PT_texture, LATENTFORGE_PT_generate, LATENTFORGE_PT_shape, LATENTFORGE_PT_refine)
"""The task sub-panels, in sidebar order (one per task of :data:`.core.tasks.TASKS`)."""


class LATENTFORGE_PT_preview(_SidebarPanel, bpy.types.Panel):
    """The live preview of the active job (the image "LatentForge Preview")."""

    bl_idname = "LATENTFORGE_PT_preview"
    bl_label = "Preview"
    bl_parent_id = "LATENTFORGE_PT_main"

    def draw(self, context):
        layout = self.layout
        try:
            icon_id = session.get_session().preview_icon.icon_id()
        except RuntimeError:
            icon_id = 0
        if icon_id:
            layout.template_icon(icon_value=icon_id, scale=10.0)
        else:
            layout.label(text="No preview yet")
        image = bpy.data.images.get(PREVIEW_IMAGE_NAME)
        if image is not None:
            layout.label(text=f"{image.name}: {image.size[0]}×{image.size[1]} (open it in an Image Editor)")


class LATENTFORGE_PT_jobs(_SidebarPanel, bpy.types.Panel):
    """The backend's jobs, newest first, one page at a time: Refresh, Load More, Import, Delete."""

    bl_idname = "LATENTFORGE_PT_jobs"
    bl_label = "Jobs"
    bl_parent_id = "LATENTFORGE_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        state = context.window_manager.latentforge
        job = state.jobs[state.jobs_index] if 0 <= state.jobs_index < len(state.jobs) else None
        row = layout.row()
        row.template_list("LATENTFORGE_UL_jobs", "", state, "jobs", state, "jobs_index", rows=4)
        col = row.column(align=True)
        col.operator("latentforge.refresh_jobs", text="", icon="FILE_REFRESH")
        col.operator("latentforge.import_job", text="", icon="IMPORT")
        sub = col.column(align=True)
        sub.enabled = job is not None and job.status not in operators.ACTIVE_STATUSES
        sub.operator("latentforge.delete_job", text="", icon="TRASH")
        if state.jobs_next_cursor:
            layout.operator("latentforge.load_more_jobs", icon="TRIA_DOWN")
        if job is not None:
            layout.label(text=f"{job.job_id} · {job.status} · {job.created}")
            if job.error:
                layout.label(text=job.error, icon="ERROR")


classes = (LATENTFORGE_UL_jobs, LATENTFORGE_PT_main, *TASK_PANELS, LATENTFORGE_PT_preview, LATENTFORGE_PT_jobs)


register, unregister = bpy.utils.register_classes_factory(classes)
