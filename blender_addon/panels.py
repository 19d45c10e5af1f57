"""The "LatentForge" tab of the 3D viewport's sidebar (thin: draws state, calls operators)."""

import bpy

from . import operators, session

STATUS_ICONS = {"queued": "SORTTIME", "running": "PLAY", "done": "CHECKMARK", "failed": "ERROR",
                "cancelled": "CANCEL"}


class LATENTFORGE_UL_jobs(bpy.types.UIList):
    """Rows of ``window_manager.latentforge.jobs``: status icon, short job id, prompt."""

    bl_idname = "LATENTFORGE_UL_jobs"

    def draw_item(self, context, layout, data, item, icon, active_data, active_propname, index=0, flt_flag=0):
        row = layout.row(align=True)
        row.label(text=item.job_id[:8], icon=STATUS_ICONS.get(item.status, "QUESTION"))
        row.label(text=item.prompt or item.pipeline)


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


class _SidebarPanel:
    bl_space_type = "VIEW_3D"
    bl_region_type = "UI"
    bl_category = "LatentForge"


class LATENTFORGE_PT_main(_SidebarPanel, bpy.types.Panel):
    """Connection, prompt settings, Texture Selected, Generate with its sketch-shape picker, Cancel, progress."""

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
        col.prop(settings, "model")
        sub = col.column(align=True)
        sub.prop(settings, "seed")
        sub.prop(settings, "iterations")
        sub.prop(settings, "guidance_scale")
        sub.prop(settings, "texture_size")

        box = layout.box()
        box.label(text="Texture a mesh (Latent-Paint)", icon="TEXTURE")
        box.prop(settings, "uv_method")
        row = box.row()
        row.scale_y = 1.4
        row.operator("latentforge.texture_selected", icon="TEXTURE")

        box = layout.box()
        box.label(text="Generate a new mesh (Latent-NeRF)", icon="MESH_MONKEY")
        box.label(text="Sketch Shape:")
        box.row().prop(settings, "sketch_mode", expand=True)
        if settings.sketch_mode == "OBJECT":
            box.prop(settings, "sketch_object", text="")
        draw_sketch_status(box, context, settings)
        sub = box.column(align=True)
        sub.prop(settings, "mesh_resolution")
        sub.prop(settings, "partial_every")
        row = box.row()
        row.scale_y = 1.4
        row.operator("latentforge.generate", icon="PLAY")

        row = layout.row()
        row.enabled = bool(state.active_job_id)
        row.operator("latentforge.cancel_job", text="Cancel Job", icon="CANCEL")

        if state.active_job_id or state.stage:
            eta = session.format_eta(state.eta_s)
            text = f"{state.stage}  {eta}".strip() or "…"
            if hasattr(layout, "progress"):  # Blender 4.0+
                layout.progress(factor=state.progress, type="BAR", text=text)
            else:
                layout.prop(state, "progress", text=text, slider=True)
        if state.last_error:
            layout.label(text=state.last_error, icon="ERROR")
        elif state.last_info:
            layout.label(text=state.last_info, icon="INFO")


class LATENTFORGE_PT_shape(_SidebarPanel, bpy.types.Panel):
    """Michelangelo shapes in seconds: Generate Shape (prompt or image), Variations of Selected, Interpolate; their
    jobs share the main panel's progress, Cancel and the Jobs list."""

    bl_idname = "LATENTFORGE_PT_shape"
    bl_label = "Shape (Michelangelo)"
    bl_parent_id = "LATENTFORGE_PT_main"

    def draw(self, context):
        layout = self.layout
        settings = context.scene.latentforge

        box = layout.box()
        box.label(text="Generate shapes from text or an image", icon="MESH_ICOSPHERE")
        box.row().prop(settings, "shape_input", expand=True)
        if settings.shape_input == "PROMPT":
            box.prop(settings, "prompt")
        elif settings.shape_input == "IMAGE":
            box.template_ID(settings, "shape_image", open="image.open")
        else:
            box.prop(settings, "shape_image_path", text="")
        box.prop(settings, "shape_num_samples")
        row = box.row()
        row.scale_y = 1.4
        row.operator("latentforge.generate_shape", icon="PLAY")

        box = layout.box()
        box.label(text="Variations of a mesh", icon="MOD_ARRAY")
        _status_line(box, lambda: operators.variation_source(context),
                     lambda obj: (f"Varies {obj.name!r}", "MESH_DATA"))
        sub = box.column(align=True)
        sub.prop(settings, "shape_strength")
        sub.prop(settings, "shape_variation_count")
        box.prop(settings, "shape_variation_prompt")
        row = box.row()
        row.scale_y = 1.4
        row.operator("latentforge.shape_variations", icon="PLAY")

        box = layout.box()
        box.label(text="In-between shapes of two meshes", icon="ARROW_LEFTRIGHT")
        _status_line(box, lambda: operators.interpolation_pair(context),
                     lambda pair: (f"From {pair[0].name!r} to {pair[1].name!r}", "MESH_DATA"))
        box.prop(settings, "shape_interpolate_count")
        row = box.row()
        row.scale_y = 1.4
        row.operator("latentforge.shape_interpolate", icon="PLAY")

        col = layout.column(align=True)
        col.label(text="Shape settings:")
        col.row().prop(settings, "shape_grid", expand=True)
        if settings.shape_grid == "CUSTOM":
            col.prop(settings, "shape_grid_resolution")
        col.prop(settings, "shape_steps")
        col.prop(settings, "shape_guidance_scale")
        col.prop(settings, "seed")
        col.prop(settings, "shape_spacing")
        layout.prop(settings, "shape_model")


class LATENTFORGE_PT_preview(_SidebarPanel, bpy.types.Panel):
    """The live preview of the active job (the image "LatentForge Preview")."""

    bl_idname = "LATENTFORGE_PT_preview"
    bl_label = "Preview"
    bl_parent_id = "LATENTFORGE_PT_main"

    def draw(self, context):
        layout = self.layout
        try:
            icon_id = session.get_session().preview_icon_id()
        except RuntimeError:
            icon_id = 0
        if icon_id:
            layout.template_icon(icon_value=icon_id, scale=10.0)
        else:
            layout.label(text="No preview yet")
        image = bpy.data.images.get("LatentForge Preview")
        if image is not None:
            layout.label(text=f"{image.name}: {image.size[0]}×{image.size[1]} (open it in an Image Editor)")


class LATENTFORGE_PT_jobs(_SidebarPanel, bpy.types.Panel):
    """The backend's jobs, with Refresh and Import."""

    bl_idname = "LATENTFORGE_PT_jobs"
    bl_label = "Jobs"
    bl_parent_id = "LATENTFORGE_PT_main"
    bl_options = {"DEFAULT_CLOSED"}

    def draw(self, context):
        layout = self.layout
        state = context.window_manager.latentforge
        row = layout.row()
        row.template_list("LATENTFORGE_UL_jobs", "", state, "jobs", state, "jobs_index", rows=4)
        col = row.column(align=True)
        col.operator("latentforge.refresh_jobs", text="", icon="FILE_REFRESH")
        col.operator("latentforge.import_job", text="", icon="IMPORT")
        if 0 <= state.jobs_index < len(state.jobs):
            job = state.jobs[state.jobs_index]
            layout.label(text=f"{job.job_id} · {job.status} · {job.created}")
            if job.error:
                layout.label(text=job.error, icon="ERROR")


classes = (LATENTFORGE_UL_jobs, LATENTFORGE_PT_main, LATENTFORGE_PT_shape, LATENTFORGE_PT_preview, LATENTFORGE_PT_jobs)


register, unregister = bpy.utils.register_classes_factory(classes)
