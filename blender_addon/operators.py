"""Operators (thin): validate the context, read arrays with :mod:`.mesh_io`, submit through :mod:`.session` with
the result target of :mod:`.results`, report.

Which pipeline an operator submits is its task's chosen method (``scene.latentforge.<task>_method``, see
:data:`.core.tasks.TASKS`): :func:`pipeline_of`.
"""

import json

import bpy
import numpy as np
from bpy.props import StringProperty

from . import mesh_io, session
from .core import fields, protocol, tasks
from .preferences import get_preferences
from .results import (BlockoutTarget, ClipMeshTarget, DenoiseTarget, GenerateTarget, InterpolateTarget, RefineTarget,
                      ShapeTarget, TextureTarget, VariationsTarget)

SESSION_ERRORS = (OSError, ValueError, RuntimeError, protocol.ProtocolError)


def pipeline_of(settings, task: str, role: str) -> str:
    """The pipeline ``role`` of ``task`` submits with the method chosen in ``settings``
    (:func:`.core.tasks.pipeline_for`). Raises ValueError."""
    return tasks.pipeline_for(task, getattr(settings, tasks.method_property(task)), role)


def _session_or_report(op: bpy.types.Operator) -> session.Session | None:
    try:
        return session.get_session()
    except RuntimeError as e:
        op.report({"ERROR"}, str(e))
        return None


def _fail(op: bpy.types.Operator, context, sess: session.Session, text: str) -> set[str]:
    """Report ``text`` in the panel (``last_error``, stage "failed" unless a job is running) and the status bar;
    returns the operator's ``{"CANCELLED"}``."""
    sess.report("ERROR", text)
    state = context.window_manager.latentforge
    if not state.active_job_id:  # leave a running job's progress line alone
        state.stage = "failed"
    op.report({"ERROR"}, text)
    return {"CANCELLED"}


def _connect_and_submit(op: bpy.types.Operator, context, sess: session.Session, pipeline: str, params: dict,
                        arrays: dict, target) -> set[str] | None:
    """Connect to the backend if needed and queue the job; on failure report it like :func:`_fail` and return the
    operator's ``{"CANCELLED"}``, else None."""
    try:
        sess.connection.ensure_connected(get_preferences(context))
    except (OSError, ValueError, RuntimeError) as e:
        return _fail(op, context, sess, f"Cannot reach the backend: {e}")
    try:
        sess.submit_job(pipeline, params, arrays, target)
    except (protocol.ProtocolError, RuntimeError, ValueError) as e:
        return _fail(op, context, sess, f"Not sent: {e}")
    return None


def _run(op: bpy.types.Operator, action, error_prefix: str = "") -> set[str]:
    """Run ``action(session)``, turning a failure into an ERROR report; the operator's return value."""
    sess = _session_or_report(op)
    if sess is None:
        return {"CANCELLED"}
    return _attempt(op, lambda: action(sess), error_prefix)


def _attempt(op: bpy.types.Operator, action, error_prefix: str = "", done: str = "") -> set[str]:
    """Run ``action()``: a failure becomes an ERROR report, success the INFO report ``done`` (if any); the
    operator's return value."""
    try:
        action()
    except SESSION_ERRORS as e:
        op.report({"ERROR"}, f"{error_prefix}{e}")
        return {"CANCELLED"}
    if done:
        op.report({"INFO"}, done)
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


def shape_grid_resolution(settings) -> int:
    """Samples per side of the final shape meshes' occupancy grid: the ``shape_grid`` preset, or the custom value."""
    return int(settings.shape_grid_resolution) if settings.shape_grid == "CUSTOM" else int(settings.shape_grid)


def described(pipeline: str) -> dict | None:
    """The connected backend's field descriptions of ``pipeline`` (:func:`.core.fields.described_params`), or None
    (not connected yet, or not registered)."""
    try:
        pipelines = session.get_session().connection.pipelines
    except RuntimeError:
        return None
    return fields.described_params(pipeline, pipelines)


def method_params(settings, pipeline: str, description: dict | None, **fixed) -> dict:
    """The params of a Texture, Generate or Refine method other than Latent-Paint and Latent-NeRF (CLIP-Mesh, Dream
    Fields, Refine) from ``scene.latentforge``: its shared settings (:func:`.core.fields.shared_settings`), the
    prompt when the pipeline has one, the negative prompt and the Model when they are not empty and the pipeline
    has them, its model settings that differ from the backend's default (:func:`.core.fields.model_params`), then
    ``fixed`` (what the operator sets itself: :data:`.core.fields.OPERATOR_FIELDS`, e.g. CLIP-Mesh's ``mode``)."""
    params = {row.field: getattr(settings, row.prop) for row in fields.shared_settings(pipeline, description)}
    if fields.has_field(pipeline, "prompt", description):
        params["prompt"] = settings.prompt.strip()
    for field in ("negative_prompt", "model"):
        value = getattr(settings, field).strip()
        if value and fields.has_field(pipeline, field, description):
            params[field] = value
    params.update(fields.model_params(pipeline, description, {k: settings[k] for k in settings.keys()}))
    params.update(fixed)
    return params


def texture_task_params(settings, pipeline: str, description: dict | None) -> dict:
    """The params Texture Selected sends to ``pipeline``: :func:`texture_params` for Latent-Paint, else
    :func:`method_params` with CLIP-Mesh's ``mode`` from *CLIP-Mesh Mode*."""
    if pipeline == "latent_paint":
        return texture_params(settings)
    fixed = {"mode": settings.clip_mesh_mode} if "mode" in fields.OPERATOR_FIELDS.get(pipeline, ()) else {}
    return method_params(settings, pipeline, description, **fixed)


def generate_task_params(settings, pipeline: str, description: dict | None) -> dict:
    """The params Generate sends to ``pipeline``: :func:`generate_params` for Latent-NeRF; CLIP-Mesh in its
    ``shape_texture`` mode (from a sphere or the selected mesh); :func:`method_params` for the others."""
    if pipeline == "latent_nerf":
        return generate_params(settings)
    fixed = {"mode": "shape_texture"} if "mode" in fields.OPERATOR_FIELDS.get(pipeline, ()) else {}
    return method_params(settings, pipeline, description, **fixed)


def shape_params(settings, pipeline: str, description: dict | None, prompt: bool = True, main: str = "",
                 main_description: dict | None = None) -> dict:
    """The params of a Shape panel operator for ``pipeline`` (any model: ``shape_ldm``, ``shap_e``, ``point_e``, the
    variations and in-between pipelines), from ``scene.latentforge``.

    - shared settings: every :data:`.core.fields.SETTING_FIELDS` row of ``pipeline`` whose field the backend's
      ``description`` has (all of them without a description), one widget each (the Grid preset or its custom value
      for ``grid_resolution``);
    - ``prompt`` when ``prompt`` is true and the pipeline has the field; ``model`` when Shape Model is not empty
      (empty = the backend's automatic choice);
    - model settings (:func:`.core.fields.model_params`): the ``"<pipeline>.<field>"`` ID properties that differ
      from the backend's default; for a method's other pipeline (``main`` = its Generate Shape pipeline, e.g.
      ``lion_generate`` for ``lion_variations``) the fields it shares with ``main`` take ``main``'s values
      (:func:`.core.fields.role_params`).
    """
    params = {}
    for row in fields.shared_settings(pipeline, description):
        if row.prop == "shape_grid_resolution":
            continue  # the custom value of the Grid preset
        params[row.field] = shape_grid_resolution(settings) if row.prop == "shape_grid" else getattr(settings, row.prop)
    if prompt and fields.has_field(pipeline, "prompt", description):
        params["prompt"] = settings.prompt.strip()
    if settings.shape_model.strip() and fields.has_field(pipeline, "model", description):
        params["model"] = settings.shape_model.strip()
    values = {k: settings[k] for k in settings.keys()}
    if main and main != pipeline:
        params.update(fields.role_params(pipeline, description, main, main_description, values))
    else:
        params.update(fields.model_params(pipeline, description, values))
    return params


def shape_main(settings) -> tuple[str, dict | None]:
    """The Shape method's Generate Shape pipeline and the connected backend's description of it (or None)."""
    main = pipeline_of(settings, "shape", "generate")
    return main, described(main)


def shape_role_params(settings, pipeline: str, prompt: bool) -> dict:
    """:func:`shape_params` of the Shape method's ``pipeline`` for a role other than Generate Shape (variations,
    in-betweens, denoise, blockout), sharing the model settings it has in common with the method's main pipeline."""
    main, main_description = shape_main(settings)
    return shape_params(settings, pipeline, described(pipeline), prompt=prompt, main=main,
                        main_description=main_description)


def selected_mesh(context, what: str, points: bool = False) -> bpy.types.Object:
    """The active object, if it is a selected mesh (the one ``what`` acts on, e.g. "refine") or, with ``points``, a
    selected point cloud (a ``POINTCLOUD`` object; a mesh without faces is a mesh here, told apart when sent).

    Raises:
        ValueError: no active selected object, or it is not a mesh (nor, with ``points``, a point cloud).
    """
    noun = "mesh or point cloud" if points else "mesh"
    obj = context.active_object
    if obj is None or not obj.select_get():
        raise ValueError(f"Select the {noun} to {what} (it must be the active object)")
    if obj.type == "MESH" or (points and obj.type == "POINTCLOUD"):
        return obj
    article = "a mesh or a point cloud" if points else "a mesh"
    raise ValueError(f"{obj.name!r} is a {obj.type}, not {article}: select {article} to {what}")


def takes_points(pipeline: str) -> bool:
    """Whether ``pipeline`` takes a point cloud in place of its mesh: ``points.v_pos`` in the connected backend's
    ``welcome``, or, while not connected, the methods table (:func:`.core.tasks.point_cloud_pipelines`)."""
    try:
        pipelines = session.get_session().connection.pipelines
    except RuntimeError:
        pipelines = None
    if pipelines and pipeline in pipelines:
        return fields.takes_input(pipeline, "points.v_pos", pipelines)
    return pipeline in tasks.point_cloud_pipelines()


def shape_source(context, what: str,
                 pipeline: str) -> tuple[bpy.types.Object, "mesh_io.MeshArrays | mesh_io.PointArrays"]:
    """The active selected object a shape role (variations, denoise) sends, with its arrays: a mesh with faces (group
    ``mesh``) or, when ``pipeline`` takes one (:func:`takes_points`), a point cloud (group ``points``): a
    ``POINTCLOUD`` object or a mesh of loose vertices (a scan).

    Raises:
        ValueError: nothing usable is selected (the message says what is needed).
    """
    points = takes_points(pipeline)
    source = selected_mesh(context, what, points)
    try:
        arrays = mesh_io.evaluated_shape_arrays(source, context.evaluated_depsgraph_get(), points)
    except ValueError as e:
        raise ValueError(f"{e}; select {'a mesh or a point cloud' if points else 'a mesh with faces'}") from None
    return source, arrays


def shape_summary(arrays) -> str:
    """``"1234 triangles"`` or ``"5000 points"``: what a shape operator sent."""
    if isinstance(arrays, mesh_io.PointArrays):
        return f"{len(arrays.v_pos)} points"
    return f"{arrays.t_pos_idx.shape[0]} triangles"


def shape_arrays_wire(arrays) -> dict:
    """The ``submit`` arrays of a shape source: group ``mesh`` for a mesh, ``points`` for a point cloud."""
    return arrays.wire_arrays("points" if isinstance(arrays, mesh_io.PointArrays) else "mesh")


def clip_mesh_start(context, settings) -> bpy.types.Object | None:
    """The mesh Generate's CLIP-Mesh starts from: None (a sphere) unless *From Selected* is on, then the active
    selected mesh.

    Raises:
        ValueError: *From Selected* is on and no mesh is the active selected object.
    """
    if not settings.from_selected:
        return None
    return selected_mesh(context, "start CLIP-Mesh from (or turn From Selected off to start from a sphere)")


def shape_input_image(settings) -> tuple[np.ndarray | None, str]:
    """The image Generate Shape is conditioned on: ``(rgba (H,W,4) uint8 row 0 = top, label)``, or ``(None, "")``
    for the prompt (``settings.shape_input`` "PROMPT").

    Raises:
        ValueError: "IMAGE" with no image picked, "FILE" with no path, or an image that cannot be read or is smaller
            than :data:`.mesh_io.MIN_IMAGE_SIDE`.
    """
    mode = settings.shape_input
    if mode == "PROMPT":
        return None, ""
    if mode == "IMAGE":
        image = settings.shape_image
        if image is None:
            raise ValueError("Shape From is 'Image' but no image is picked: pick one, or choose 'Prompt'")
        return mesh_io.image_rgba8(image), image.name
    path = settings.shape_image_path.strip()
    if not path:
        raise ValueError("Shape From is 'File' but no image file is chosen: choose one, or choose 'Prompt'")
    return mesh_io.read_image_file(path), bpy.path.basename(bpy.path.abspath(path))


def variation_source(context, points: bool = False) -> bpy.types.Object:
    """The shape Variations of Selected varies: the active object, if it is a selected mesh or, with ``points`` (the
    method takes point clouds: LION), a selected point cloud.

    Raises:
        ValueError: no active selected object, or it is not a mesh (nor a point cloud).
    """
    return selected_mesh(context, "make variations of", points)


def interpolation_pair(context, points: bool = False) -> tuple[bpy.types.Object, bpy.types.Object]:
    """The two shapes Interpolate goes between: ``(start, end)`` = (the other selected object, the active one);
    when neither is active, by name. Meshes, or with ``points`` (the method takes point clouds: LION) also point
    clouds.

    Raises:
        ValueError: not exactly two selected objects, or one of them is not a mesh (nor a point cloud).
    """
    nouns = "meshes or point clouds" if points else "meshes"
    selected = list(context.selected_objects)
    if len(selected) != 2:
        raise ValueError(f"Select exactly two {nouns} to interpolate between ({len(selected)} selected)")
    for obj in selected:
        if obj.type != "MESH" and not (points and obj.type == "POINTCLOUD"):
            raise ValueError(f"{obj.name!r} is a {obj.type}, not a {'mesh or a point cloud' if points else 'mesh'}: "
                             f"select two {nouns} to interpolate between")
    active = context.active_object
    if active in selected:
        start = selected[0] if selected[1] == active else selected[1]
        return start, active
    first, second = sorted(selected, key=lambda o: o.name)
    return first, second


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


class _ActiveMeshOperator:
    """Mix-in of the operators that act on the active object: available when it is a mesh."""

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        return obj is not None and obj.type == "MESH"


class _ActiveShapeOperator:
    """Mix-in of the shape operators that also take a point cloud (Variations of Selected, Denoise Selected):
    available when the active object is a mesh or a point cloud (whether the method takes a cloud is checked when
    it runs)."""

    @classmethod
    def poll(cls, context):
        obj = context.active_object
        if obj is not None and obj.type in ("MESH", "POINTCLOUD"):
            return True
        cls.poll_message_set("Select a mesh or a point cloud")
        return False


class LATENTFORGE_OT_texture_selected(_ActiveMeshOperator, bpy.types.Operator):
    """Texture the active mesh from the prompt with the Texture panel's method (Latent-Paint; CLIP-Mesh: a texture
    and a normal map on the mesh kept exactly, or a reshaped copy placed on it); runs on the backend"""

    bl_idname = "latentforge.texture_selected"
    bl_label = "Texture Selected"
    bl_options = {"REGISTER", "UNDO"}

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
            pipeline = pipeline_of(settings, "texture", "texture")
        except ValueError as e:
            self.report({"ERROR"}, str(e))
            return {"CANCELLED"}
        try:
            sess.connection.ensure_connected(get_preferences(context))
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

        n_vertices = int(arrays.v_pos.shape[0])
        if pipeline == "latent_paint":
            target = TextureTarget(obj.name, n_vertices, uv_map, arrays.tri_loops)
        else:
            target = ClipMeshTarget(settings.clip_mesh_mode, obj.name, n_vertices, uv_map,
                                    settings.original_mode == "HIDE", arrays.tri_loops)
        try:
            sess.submit_job(pipeline, texture_task_params(settings, pipeline, described(pipeline)),
                            arrays.wire_arrays(), target)
        except (protocol.ProtocolError, RuntimeError, ValueError) as e:
            self.report({"ERROR"}, f"Not sent: {e}")
            return {"CANCELLED"}
        self.report({"INFO"}, f"Sent {obj.name!r} ({arrays.v_pos.shape[0]} vertices, "
                              f"{arrays.t_pos_idx.shape[0]} triangles) to the backend ({pipeline})")
        return {"FINISHED"}


class LATENTFORGE_OT_generate(bpy.types.Operator):
    """Generate a new textured mesh from the prompt with the Generate panel's method: Latent-NeRF (shaped like the
    sketch mesh if one is chosen; the result lands where the sketch stands, at its size), CLIP-Mesh (from a sphere,
    or from the selected mesh with From Selected) or Dream Fields; runs on the backend"""

    bl_idname = "latentforge.generate"
    bl_label = "Generate"
    bl_options = {"REGISTER"}

    def execute(self, context):
        settings = context.scene.latentforge
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}

        def fail(text: str) -> set[str]:  # shown in the panel too, not only in the status bar
            return _fail(self, context, sess, text)

        if not settings.prompt.strip():
            return fail("The prompt is empty: describe what to generate first")
        try:
            pipeline = pipeline_of(settings, "generate", "generate")
        except ValueError as e:
            return fail(str(e))
        if pipeline != "latent_nerf":
            return self._generate_other(context, sess, settings, pipeline)
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
        target = GenerateTarget(sketch.name if sketch is not None else "")
        failed = _connect_and_submit(self, context, sess, pipeline, generate_params(settings), arrays, target)
        if failed:
            return failed
        if sketch is None:
            self.report({"INFO"}, "Generating from the text alone (no sketch shape)")
        else:
            self.report({"INFO"}, f"Generating with the sketch shape {sketch.name!r} "
                                  f"({arrays['sketch.t_pos_idx'].shape[0]} triangles)")
        return {"FINISHED"}

    def _generate_other(self, context, sess, settings, pipeline: str) -> set[str]:
        """CLIP-Mesh (from a sphere or the selected mesh, mode ``shape_texture``: a new object placed on it) or
        Dream Fields (text only)."""
        arrays, start = {}, None
        if pipeline == "clip_mesh":
            try:
                start = clip_mesh_start(context, settings)
                if start is not None:
                    arrays = mesh_io.evaluated_mesh_arrays(start, context.evaluated_depsgraph_get(), None) \
                        .wire_arrays("mesh")
            except ValueError as e:
                return _fail(self, context, sess, f"From Selected: {e}")
            target = ClipMeshTarget("shape_texture", start.name if start is not None else "")
        else:
            target = GenerateTarget("")
        params = generate_task_params(settings, pipeline, described(pipeline))
        failed = _connect_and_submit(self, context, sess, pipeline, params, arrays, target)
        if failed:
            return failed
        where = f"from {start.name!r}" if start is not None else "from the text alone"
        self.report({"INFO"}, f"Generating with {pipeline} {where}")
        return {"FINISHED"}


class LATENTFORGE_OT_generate_shape(bpy.types.Operator):
    """Generate shapes from the prompt or an image with the Shape panel's model (Michelangelo, Shap-E, Point-E; LION
    unconditionally, or from the prompt with a text-conditioned model; runs on the backend); each sample becomes an
    object (a mesh or a point cloud), side by side along X at the 3D cursor"""

    bl_idname = "latentforge.generate_shape"
    bl_label = "Generate Shape"
    bl_options = {"REGISTER"}

    def execute(self, context):
        settings = context.scene.latentforge
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}
        try:
            pipeline = pipeline_of(settings, "shape", "generate")
            image, image_label = shape_input_image(settings)
        except ValueError as e:
            return _fail(self, context, sess, str(e))
        backend = sess.connection.pipelines
        if image is not None and not fields.takes_input(pipeline, "image", backend):
            return _fail(self, context, sess, f"The connected backend's {pipeline} takes no image: set Shape From to "
                                              "'Prompt'")
        description = fields.described_params(pipeline, backend)
        conditioned = fields.has_field(pipeline, "prompt", description)  # an older backend's LION has no prompt
        if image is None and conditioned and not settings.prompt.strip() and pipeline not in fields.PROMPT_OPTIONAL:
            return _fail(self, context, sess, "The prompt is empty and no image is chosen: type a prompt, or set "
                                              "Shape From to 'Image' or 'File'")
        label = image_label or (settings.prompt.strip() if conditioned else "") \
            or tasks.method_of("shape", settings.shape_method).label
        target = ShapeTarget(label, tuple(context.scene.cursor.location), float(settings.shape_spacing),
                             image is not None)
        arrays = {"image": image} if image is not None else {}
        params = shape_params(settings, pipeline, description, prompt=image is None)
        failed = _connect_and_submit(self, context, sess, pipeline, params, arrays, target)
        if failed:
            return failed
        what = f"the image {image_label!r} ({image.shape[1]}×{image.shape[0]})" if image is not None \
            else f"{label!r}"
        self.report({"INFO"}, f"Generating {params.get('num_samples', 1)} shape(s) with {pipeline} from {what}")
        return {"FINISHED"}


class LATENTFORGE_OT_shape_variations(_ActiveShapeOperator, bpy.types.Operator):
    """Make variations of the active mesh (LION: or point cloud) with the Shape panel's method (Michelangelo, LION:
    encode it, noise it, denoise); they appear in a row next to it"""

    bl_idname = "latentforge.shape_variations"
    bl_label = "Variations of Selected"
    bl_options = {"REGISTER"}

    def execute(self, context):
        settings = context.scene.latentforge
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}
        try:
            pipeline = pipeline_of(settings, "shape", "variations")
        except ValueError as e:
            return _fail(self, context, sess, str(e))
        try:
            source, arrays = shape_source(context, "make variations of", pipeline)
        except ValueError as e:
            return _fail(self, context, sess, f"Variations: {e}")
        steer = settings.shape_variation_prompt and fields.has_field(pipeline, "prompt", described(pipeline))
        if steer and not settings.prompt.strip():
            return _fail(self, context, sess, "'Steer with Prompt' is on but the prompt is empty: type one, or turn "
                                              "it off")
        gap = float(settings.shape_spacing)
        target = VariationsTarget(source.name, tuple(source.matrix_world.translation),
                                  float(arrays.v_pos[:, 0].max()) + gap, gap)
        params = shape_role_params(settings, pipeline, prompt=steer)
        failed = _connect_and_submit(self, context, sess, pipeline, params, shape_arrays_wire(arrays), target)
        if failed:
            return failed
        self.report({"INFO"}, f"Making {settings.shape_variation_count} variation(s) of {source.name!r} "
                              f"({shape_summary(arrays)})")
        return {"FINISHED"}


class LATENTFORGE_OT_shape_interpolate(bpy.types.Operator):
    """Make in-between shapes of the two selected meshes (LION: or point clouds) with the Shape panel's method
    (Michelangelo, LION; from the other selected object to the active one); they appear between the two"""

    bl_idname = "latentforge.shape_interpolate"
    bl_label = "Interpolate"
    bl_options = {"REGISTER"}

    def execute(self, context):
        settings = context.scene.latentforge
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}
        try:
            pipeline = pipeline_of(settings, "shape", "interpolate")
            points = takes_points(pipeline)
            start, end = interpolation_pair(context, points)
        except ValueError as e:
            return _fail(self, context, sess, str(e))
        arrays = {}
        depsgraph = context.evaluated_depsgraph_get()
        for obj, group, cloud in ((start, "mesh", "points"), (end, "mesh_b", "points_b")):
            try:
                shape = mesh_io.evaluated_shape_arrays(obj, depsgraph, points)
            except ValueError as e:
                needed = "meshes or point clouds" if points else "meshes with faces"
                return _fail(self, context, sess, f"Interpolate: {e}; select two {needed}")
            arrays.update(shape.wire_arrays(cloud if isinstance(shape, mesh_io.PointArrays) else group))
        target = InterpolateTarget(start.name, end.name)
        params = shape_role_params(settings, pipeline, prompt=False)
        failed = _connect_and_submit(self, context, sess, pipeline, params, arrays, target)
        if failed:
            return failed
        self.report({"INFO"}, f"Making {settings.shape_interpolate_count} shape(s) between {start.name!r} and "
                              f"{end.name!r}")
        return {"FINISHED"}


def _submit_selected_mesh(op: bpy.types.Operator, context, task: str, role: str, what: str, make_target,
                          make_params, points: bool = False) -> set[str]:
    """The body of an operator that sends the active selected mesh (evaluated, world space, no UVs) as group
    ``mesh`` to the pipeline ``role`` of ``task``'s chosen method; with ``points``, a point cloud (a ``POINTCLOUD``
    object or a mesh without faces) as group ``points`` where that pipeline takes one (:func:`shape_source`).

    Args:
        what: the action, for messages ("refine").
        make_target: ``(obj, MeshArrays | PointArrays) -> target``. make_params: ``pipeline -> params``.
    """
    settings = context.scene.latentforge
    sess = _session_or_report(op)
    if sess is None:
        return {"CANCELLED"}
    try:
        pipeline = pipeline_of(settings, task, role)
        if points:
            source, arrays = shape_source(context, what, pipeline)
        else:
            source = selected_mesh(context, what)
            arrays = mesh_io.evaluated_mesh_arrays(source, context.evaluated_depsgraph_get(), None)
    except ValueError as e:
        return _fail(op, context, sess, f"{what.capitalize()}: {e}")
    params = make_params(pipeline)
    failed = _connect_and_submit(op, context, sess, pipeline, params, shape_arrays_wire(arrays),
                                 make_target(source, arrays))
    if failed:
        return failed
    op.report({"INFO"}, f"Sent {source.name!r} ({shape_summary(arrays)}) to {pipeline}")
    return {"FINISHED"}


class LATENTFORGE_OT_shapes_from_blockout(_ActiveMeshOperator, bpy.types.Operator):
    """Make shapes that follow the active mesh, a rough blockout, with the Shape panel's method (LION: the blockout's
    voxels, diffused and denoised); the first stands where the blockout stands, at its size, the others beside it"""

    bl_idname = "latentforge.shapes_from_blockout"
    bl_label = "Shapes from Blockout"
    bl_options = {"REGISTER"}

    def execute(self, context):
        settings = context.scene.latentforge
        gap = float(settings.shape_spacing)

        def target(source, arrays):
            return BlockoutTarget(source.name, tuple(source.matrix_world.translation),
                                  float(arrays.v_pos[:, 0].min()), gap)

        return _submit_selected_mesh(self, context, "shape", "blockout", "make shapes from",
                                     target, lambda pipeline: shape_role_params(settings, pipeline, prompt=False))


class LATENTFORGE_OT_denoise_selected(_ActiveShapeOperator, bpy.types.Operator):
    """Clean up the active mesh or point cloud (e.g. a noisy scan: a point cloud object, or a mesh of loose vertices)
    with the Shape panel's method (LION: diffuse a little, denoise); the clean shape appears where it stands"""

    bl_idname = "latentforge.denoise_selected"
    bl_label = "Denoise Selected"
    bl_options = {"REGISTER"}

    def execute(self, context):
        settings = context.scene.latentforge
        return _submit_selected_mesh(self, context, "shape", "denoise", "denoise",
                                     lambda source, _arrays: DenoiseTarget(source.name),
                                     lambda pipeline: shape_role_params(settings, pipeline, prompt=False),
                                     points=True)


class LATENTFORGE_OT_refine_selected(_ActiveMeshOperator, bpy.types.Operator):
    """Refine the active mesh from the prompt with the Refine panel's method (Magic3D's fine stage; runs on the
    backend): a new textured object placed on it; the original is hidden or kept visible (Original)"""

    bl_idname = "latentforge.refine_selected"
    bl_label = "Refine Selected"
    bl_options = {"REGISTER"}

    def execute(self, context):
        settings = context.scene.latentforge
        if not settings.prompt.strip():
            sess = _session_or_report(self)
            if sess is None:
                return {"CANCELLED"}
            return _fail(self, context, sess, "The prompt is empty: describe what the refined mesh should show")
        hide = settings.original_mode == "HIDE"
        return _submit_selected_mesh(self, context, "refine", "refine", "refine",
                                     lambda source, _arrays: RefineTarget(source.name, hide),
                                     lambda pipeline: method_params(settings, pipeline, described(pipeline)))


class LATENTFORGE_OT_set_backend_field(bpy.types.Operator):
    """Choose this value of a model setting (one of the choices the backend describes)"""

    bl_idname = "latentforge.set_backend_field"
    bl_label = "Set Model Setting"
    bl_options = {"REGISTER", "UNDO", "INTERNAL"}

    key: StringProperty(name="Setting", description="The model setting's key, '<pipeline>.<field>'", default="")
    value: StringProperty(name="Value", description="The value, as JSON", default="null")

    def execute(self, context):
        settings = context.scene.latentforge
        if self.key not in settings.keys():
            self.report({"ERROR"}, f"No model setting {self.key!r}: connect to the backend first")
            return {"CANCELLED"}
        try:
            value = json.loads(self.value)
        except ValueError:
            self.report({"ERROR"}, f"{self.key}: {self.value!r} is not a JSON value")
            return {"CANCELLED"}
        settings[self.key] = value
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
        return _attempt(self, lambda: sess.cancel(job_id), done=f"Cancelling job {job_id}")


class LATENTFORGE_OT_connect(bpy.types.Operator):
    """Connect to the backend (in Local mode, start it first if needed)"""

    bl_idname = "latentforge.connect"
    bl_label = "Connect"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        return _run(self, lambda sess: sess.connection.connect(get_preferences(context)))


class LATENTFORGE_OT_disconnect(bpy.types.Operator):
    """Close the connection to the backend (a backend started by Blender keeps running)"""

    bl_idname = "latentforge.disconnect"
    bl_label = "Disconnect"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        return _run(self, lambda sess: sess.connection.close_client())


class LATENTFORGE_OT_start_backend(bpy.types.Operator):
    """Start the local backend with the interpreter from the add-on preferences, then connect"""

    bl_idname = "latentforge.start_backend"
    bl_label = "Start Backend"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        def restart(sess):
            sess.connection.close_client()
            sess.connection.start_local_backend(get_preferences(context))

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
        if sess.connection.local_backend is None:
            self.report({"WARNING"}, "Blender did not start a backend")
            return {"CANCELLED"}
        code = sess.connection.stop_local_backend()
        self.report({"INFO"}, f"Backend stopped (exit code {code})")
        return {"FINISHED"}


ACTIVE_STATUSES = ("queued", "running")
"""Job statuses that cannot be deleted (cancel first)."""


def selected_job_id(op: bpy.types.Operator, state) -> str:
    """``op.job_id``, else the id of the row selected in the Jobs list; "" (and a WARNING report) when neither."""
    job_id = op.job_id
    if not job_id and 0 <= state.jobs_index < len(state.jobs):
        job_id = state.jobs[state.jobs_index].job_id
    if not job_id:
        op.report({"WARNING"}, "Select a job in the list first")
    return job_id


class LATENTFORGE_OT_refresh_jobs(bpy.types.Operator):
    """Fetch the newest page of the backend's job list (it replaces the rows)"""

    bl_idname = "latentforge.refresh_jobs"
    bl_label = "Refresh Jobs"
    bl_options = {"REGISTER", "INTERNAL"}

    def execute(self, context):
        return _run(self, lambda sess: sess.list_jobs())


class LATENTFORGE_OT_load_more_jobs(bpy.types.Operator):
    """Fetch the next (older) page of the backend's job list, below the rows shown"""

    bl_idname = "latentforge.load_more_jobs"
    bl_label = "Load More"
    bl_options = {"REGISTER", "INTERNAL"}

    @classmethod
    def poll(cls, context):
        return bool(context.window_manager.latentforge.jobs_next_cursor)

    def execute(self, context):
        return _run(self, lambda sess: sess.load_more_jobs())


class LATENTFORGE_OT_import_job(bpy.types.Operator):
    """Import a finished job's result: a texture (and a CLIP-Mesh normal map) onto its object if it still exists (same
    name and vertex count), else as a new object; generated, refined and reshaped meshes, and shapes, always as new
    objects"""

    bl_idname = "latentforge.import_job"
    bl_label = "Import Result"
    bl_options = {"REGISTER", "UNDO"}

    job_id: StringProperty(name="Job", description="Job to import; empty = the one selected in the list", default="")

    def execute(self, context):
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}
        state = context.window_manager.latentforge
        job_id = selected_job_id(self, state)
        if not job_id:
            return {"CANCELLED"}
        row = state.jobs.get(job_id)
        if row is not None and row.status and row.status != "done":
            self.report({"ERROR"}, f"Job {job_id} is {row.status}; only finished jobs have a result")
            return {"CANCELLED"}
        return _attempt(self, lambda: sess.import_job(job_id), done=f"Requested the result of job {job_id}")


class LATENTFORGE_OT_delete_job(bpy.types.Operator):
    """Delete a finished job and its files on the backend (a queued or running job: cancel it first)"""

    bl_idname = "latentforge.delete_job"
    bl_label = "Delete Job"
    bl_options = {"REGISTER", "INTERNAL"}

    job_id: StringProperty(name="Job", description="Job to delete; empty = the one selected in the list", default="")

    def invoke(self, context, event):
        """Ask for a confirmation naming the job (a queued or running job is refused at once, unasked)."""
        state = context.window_manager.latentforge
        job_id = selected_job_id(self, state)
        if not job_id:
            return {"CANCELLED"}
        self.job_id = job_id  # the confirmed job, whatever gets selected meanwhile
        row = state.jobs.get(job_id)
        if row is not None and row.status in ACTIVE_STATUSES:
            return self.execute(context)
        return context.window_manager.invoke_confirm(
            self, event, title="Delete Job", confirm_text="Delete", icon="WARNING",
            message=f"Delete job {job_id[:8]} and its files on the backend? This cannot be undone.")

    def execute(self, context):
        sess = _session_or_report(self)
        if sess is None:
            return {"CANCELLED"}
        state = context.window_manager.latentforge
        job_id = selected_job_id(self, state)
        if not job_id:
            return {"CANCELLED"}
        row = state.jobs.get(job_id)
        if (row is not None and row.status in ACTIVE_STATUSES) or job_id in sess.jobs.live_jobs:
            status = row.status if row is not None and row.status in ACTIVE_STATUSES else "queued or running"
            text = f"Job {job_id} is {status}: cancel it first, then delete it"
            sess.report("ERROR", text)
            self.report({"ERROR"}, text)
            return {"CANCELLED"}
        return _attempt(self, lambda: sess.delete_job(job_id), done=f"Deleting job {job_id}")


classes = (LATENTFORGE_OT_texture_selected, LATENTFORGE_OT_generate, LATENTFORGE_OT_generate_shape,
           LATENTFORGE_OT_shape_variations, LATENTFORGE_OT_shape_interpolate, LATENTFORGE_OT_shapes_from_blockout,
           LATENTFORGE_OT_denoise_selected, LATENTFORGE_OT_refine_selected, LATENTFORGE_OT_set_backend_field,
           LATENTFORGE_OT_cancel_job,
           LATENTFORGE_OT_connect, LATENTFORGE_OT_disconnect, LATENTFORGE_OT_start_backend, LATENTFORGE_OT_stop_backend,
           LATENTFORGE_OT_refresh_jobs, LATENTFORGE_OT_load_more_jobs, LATENTFORGE_OT_import_job,
           LATENTFORGE_OT_delete_job)


register, unregister = bpy.utils.register_classes_factory(classes)
