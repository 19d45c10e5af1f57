"""Operators (thin): validate the context, call :mod:`.mesh_io` / :mod:`.session`, report."""

import bpy
from bpy.props import StringProperty

from . import mesh_io, session
from .core import protocol
from .preferences import get_preferences

PIPELINE = "latent_paint"
GENERATE_PIPELINE = "latent_nerf"


SESSION_ERRORS = (OSError, ValueError, RuntimeError, protocol.ProtocolError)


def _session_or_report(op: bpy.types.Operator) -> session.Session | None:
    try:
        return session.get_session()
    except RuntimeError as e:
        op.report({"ERROR"}, str(e))
        return None


def _run(op: bpy.types.Operator, action, error_prefix: str = "") -> set[str]:
    """Run ``action(session)``, turning a failure into an ERROR report; the operator's return value."""
    sess = _session_or_report(op)
    if sess is None:
        return {"CANCELLED"}
    try:
        action(sess)
    except SESSION_ERRORS as e:
        op.report({"ERROR"}, f"{error_prefix}{e}")
        return {"CANCELLED"}
    return {"FINISHED"}


def texture_params(settings) -> dict:
    """The ``latent_paint`` params from ``scene.latentforge`` (``model`` left out when empty = backend default)."""
    params = {"prompt": settings.prompt.strip(), "negative_prompt": settings.negative_prompt.strip(),
              "seed": int(settings.seed), "iterations": int(settings.iterations),
              "guidance_scale": float(settings.guidance_scale), "texture_size": int(settings.texture_size)}
    if settings.model.strip():
        params["model"] = settings.model.strip()
    return params


def generate_params(settings) -> dict:
    """The ``latent_nerf`` params from ``scene.latentforge`` (``model`` left out when empty = backend default)."""
    params = {"prompt": settings.prompt.strip(), "negative_prompt": settings.negative_prompt.strip(),
              "seed": int(settings.seed), "iterations": int(settings.iterations),
              "guidance_scale": float(settings.guidance_scale), "mesh_resolution": int(settings.mesh_resolution),
              "texture_size": int(settings.texture_size), "partial_every": int(settings.partial_every)}
    if settings.model.strip():
        params["model"] = settings.model.strip()
    return params


def sketch_object(context, settings) -> bpy.types.Object | None:
    """The mesh object Generate uses as its sketch shape, or None for text only.

    ``settings.sketch_mode``: "NONE" -> None; "OBJECT" -> ``settings.sketch_object``; "SELECTED" -> the active
    object if it is selected, else None (nothing selected = text only).

    Raises:
        ValueError: "OBJECT" with no object picked, or the chosen object is not a mesh.
    """
    mode = settings.sketch_mode
    if mode == "NONE":
        return None
    if mode == "OBJECT":
        obj = settings.sketch_object
        if obj is None:
            raise ValueError("Sketch Shape is 'Object' but no object is picked: pick a mesh, or choose 'None' "
                             "for text only")
    else:
        obj = context.active_object
        if obj is None or not obj.select_get():
            return None
    if obj.type != "MESH":
        raise ValueError(f"The sketch shape {obj.name!r} is a {obj.type}, not a mesh: select a mesh, or choose "
                         "Sketch Shape 'None' for text only")
    return obj


class LATENTFORGE_OT_texture_selected(bpy.types.Operator):
    """Texture the active mesh from the prompt with Latent-Paint (runs on the backend)"""

    bl_idname = "latentforge.texture_selected"
    bl_label = "Texture Selected"
    bl_options = {"REGISTER", "UNDO"}

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and obj.type == "MESH"

    def execute(self, context):
        settings = context.scene.latentforge
        obj = context.active_object
        if obj is None or obj.type != "MESH":
            self.report({"ERROR"}, "Select a mesh object (it must be the active object)")
            return {"CANCELLED"}
        if len(obj.data.polygons) == 0:
            self.report({"ERROR"}, f"{obj.name!r} has no faces to texture")
            return {"CANCELLED"}
        if not settings.prompt.strip():
            self.report({"ERROR"}, "The prompt is empty: describe the texture first")
            return {"CANCELLED"}
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}
        try:
            sess.ensure_connected(get_preferences(context))
        except (OSError, ValueError, RuntimeError) as e:
            self.report({"ERROR"}, f"Cannot reach the backend: {e}")
            return {"CANCELLED"}

        try:
            if settings.uv_method == "SMART_PROJECT":
                uv_map, created = mesh_io.ensure_uv_map(context, obj)
                if created:
                    self.report({"INFO"}, f"Smart UV Project made the UV map {uv_map!r} on {obj.name!r}")
                arrays = mesh_io.evaluated_mesh_arrays(obj, context.evaluated_depsgraph_get(), uv_map)
            else:
                uv_map = ""
                arrays = mesh_io.evaluated_mesh_arrays(obj, context.evaluated_depsgraph_get(), None)
                if not arrays.same_loops_as_base:
                    self.report({"ERROR"}, f"xatlas UVs need a mesh whose modifiers keep its topology; {obj.name!r}'s "
                                           "modifiers change it. Use Smart UV Project, or apply the modifiers")
                    return {"CANCELLED"}
        except (ValueError, KeyError, RuntimeError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}

        target = mesh_io.JobTarget(obj.name, int(arrays.v_pos.shape[0]), uv_map, arrays.tri_loops)
        try:
            sess.submit_job(PIPELINE, texture_params(settings), arrays.wire_arrays(), target)
        except (protocol.ProtocolError, RuntimeError) as e:
            self.report({"ERROR"}, f"Not sent: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Sent {obj.name!r} ({arrays.v_pos.shape[0]} vertices, "
                              f"{arrays.t_pos_idx.shape[0]} triangles) to the backend")
        return {"FINISHED"}


class LATENTFORGE_OT_generate(bpy.types.Operator):
    """Generate a new textured mesh from the prompt with Latent-NeRF, shaped like the sketch mesh if one is chosen
    (runs on the backend; the result lands where the sketch stands, at its size)"""

    bl_idname = "latentforge.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    def execute(self, context):
        settings = context.scene.latentforge
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}

        def fail(text: str) -> set[str]:  # shown in the panel too, not only in the status bar
            sess.report("ERROR", text)
            state = context.window_manager.latentforge
            if not state.active_job_id:  # leave a running job's progress line alone
                state.stage = "failed"
            self.report({"ERROR"}, text)
            return {"CANCELLED"}

        if not settings.prompt.strip():
            return fail("The prompt is empty: describe what to generate first")
        try:
            sketch = sketch_object(context, settings)
        except ValueError as e:
            return fail(str(e))
        arrays = {}
        if sketch is not None:
            try:
                arrays = mesh_io.evaluated_mesh_arrays(sketch, context.evaluated_depsgraph_get(), None) \
                    .wire_arrays("sketch")
            except (ValueError, RuntimeError) as e:
                return fail(f"Sketch shape: {e}. Block the shape out with primitives that have faces, or choose "
                            "Sketch Shape 'None' for text only")
        try:
            sess.ensure_connected(get_preferences(context))
        except (OSError, ValueError, RuntimeError) as e:
            return fail(f"Cannot reach the backend: {e}")
        target = mesh_io.GenerateTarget(sketch.name if sketch is not None else "")
        try:
            sess.submit_job(GENERATE_PIPELINE, generate_params(settings), arrays, target)
        except (protocol.ProtocolError, RuntimeError) as e:
            return fail(f"Not sent: {e}")
        if sketch is None:
            self.report({"INFO"}, "Generating from the text alone (no sketch shape)")
        else:
            self.report({"INFO"}, f"Generating with the sketch shape {sketch.name!r} "
                                  f"({arrays['sketch.t_pos_idx'].shape[0]} triangles)")
        return {"FINISHED"}


class LATENTFORGE_OT_cancel_job(bpy.types.Operator):
    """Cancel a backend job (default: the active one)"""

    bl_idname = "latentforge.cancel_job"
    bl_label = "Cancel Job"
    bl_options = {"REGISTER", "INTERNAL"}

    job_id: StringProperty(name="Job", description="Job to cancel; empty = the active job", default="")

    def execute(self, context):
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}
        job_id = self.job_id or context.window_manager.latentforge.active_job_id
        if not job_id:
            self.report({"WARNING"}, "No active job to cancel (a job can be cancelled once the backend accepted it)")
            return {"CANCELLED"}
        try:
            sess.cancel(job_id)
        except (protocol.ProtocolError, RuntimeError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Cancelling job {job_id}")
        return {"FINISHED"}


class LATENTFORGE_OT_connect(bpy.types.Operator):
    """Connect to the backend (in Local mode, start it first if needed)"""

    bl_idname = "latentforge.connect"
    bl_label = "Connect"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        return _run(self, lambda sess: sess.connect(get_preferences(context)))


class LATENTFORGE_OT_disconnect(bpy.types.Operator):
    """Close the connection to the backend (a backend started by Blender keeps running)"""

    bl_idname = "latentforge.disconnect"
    bl_label = "Disconnect"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        return _run(self, lambda sess: sess.close_client())


class LATENTFORGE_OT_start_backend(bpy.types.Operator):
    """Start the local backend with the interpreter from the add-on preferences, then connect"""

    bl_idname = "latentforge.start_backend"
    bl_label = "Start Backend"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        def restart(sess):
            sess.close_client()
            sess.start_local_backend(get_preferences(context))

        return _run(self, restart)


class LATENTFORGE_OT_stop_backend(bpy.types.Operator):
    """Stop the backend that Blender started"""

    bl_idname = "latentforge.stop_backend"
    bl_label = "Stop Backend"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}
        if sess.local_backend is None:
            self.report({"WARNING"}, "Blender did not start a backend")
            return {"CANCELLED"}
        code = sess.stop_local_backend()
        self.report({"INFO"}, f"Backend stopped (exit code {code})")
        return {"FINISHED"}


class LATENTFORGE_OT_refresh_jobs(bpy.types.Operator):
    """Fetch the backend's job list"""

    bl_idname = "latentforge.refresh_jobs"
    bl_label = "Refresh Jobs"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        return _run(self, lambda sess: sess.list_jobs())


class LATENTFORGE_OT_import_job(bpy.types.Operator):
    """Import a finished job's result: a texture onto its object if it still exists (same name and vertex count),
    else as a new object; a generated mesh always as a new object"""

    bl_idname = "latentforge.import_job"
    bl_label = "Import Result"
    bl_options = {"REGISTER", "UNDO"}

    job_id: StringProperty(name="Job", description="Job to import; empty = the one selected in the list", default="")

    def execute(self, context):
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}
        state = context.window_manager.latentforge
        job_id = self.job_id
        if not job_id and 0 <= state.jobs_index < len(state.jobs):
            job_id = state.jobs[state.jobs_index].job_id
        if not job_id:
            self.report({"WARNING"}, "Select a job in the list first")
            return {"CANCELLED"}
        row = state.jobs.get(job_id)
        if row is not None and row.status and row.status != "done":
            self.report({"ERROR"}, f"Job {job_id} is {row.status}; only finished jobs have a result")
            return {"CANCELLED"}
        try:
            sess.import_job(job_id)
        except (protocol.ProtocolError, RuntimeError) as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        self.report({"INFO"}, f"Requested the result of job {job_id}")
        return {"FINISHED"}


classes = (LATENTFORGE_OT_texture_selected, LATENTFORGE_OT_generate, LATENTFORGE_OT_cancel_job,
           LATENTFORGE_OT_connect, LATENTFORGE_OT_disconnect, LATENTFORGE_OT_start_backend, LATENTFORGE_OT_stop_backend,
           LATENTFORGE_OT_refresh_jobs, LATENTFORGE_OT_import_job)


register, unregister = bpy.utils.register_classes_factory(classes)
