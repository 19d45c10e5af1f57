"""Shape results (Michelangelo: ``shape_ldm``, ``shape_variations``, ``shape_interpolate``; Shap-E: ``shap_e``;
Point-E: ``point_e``; LION: ``lion_generate``, ``lion_variations``, ``lion_interpolate``, ``lion_from_blockout``,
``lion_denoise``): one new object per mesh and per point cloud, named and placed by the job's target (bpy side;
main thread only).

Meshes come in the protocol groups ``mesh``, ``mesh_1``, …, point clouds in ``points``, ``points_1``, … (Blender world
frame, metres). Each target class picks a layout of :mod:`..core.placement` (a row at the cursor, a row next to the
source, in place); the meshes come first in the row, then the point clouds. A mesh with vertex colours gets them as
the colour attribute :data:`..mesh_io.COLOR_ATTRIBUTE_NAME` and a material reading it; a point cloud becomes a
point-cloud object with the colour attribute :data:`..mesh_io.POINT_COLOR_ATTRIBUTE_NAME` and a material reading
it. A partial (coarse meshes or points of every sample) becomes ONE preview mesh laid out like the final objects,
each sample tinted (points as loose vertices).
"""

from __future__ import annotations

from dataclasses import dataclass

import bpy
import numpy as np

from .. import materials, mesh_io
from ..core import placement, protocol
from .common import (ApplyReport, ResultImporter, common_properties, object_name_from_prompt,
                     set_custom_properties, short_name)

DEFAULT_SHAPE_GAP = 0.25
"""Free space between neighbouring shape objects along X, metres, when a job's own setting is unknown."""

SHAPE_MATERIAL_NAME = "LatentForge Shape"
"""The plain material (one, shared) of the shape objects."""

VERTEX_COLOR_MATERIAL_NAME = "LatentForge Vertex Color"
"""The material (one, shared) of shape objects whose meshes carry vertex colours (Shap-E, Point-E)."""

POINT_MATERIAL_NAME = "LatentForge Point Color"
"""The material (one, shared) of point-cloud objects: Base Color from their ``Col`` attribute."""

POINT_RADIUS_FRACTION = 0.004
"""A point's radius as a fraction of its cloud's bounding-box diagonal (at least 1 mm)."""

SHAPE_PREVIEW_TINTS = np.array([(0.80, 0.45, 0.25), (0.25, 0.55, 0.80), (0.35, 0.70, 0.30), (0.75, 0.35, 0.65),
                                (0.80, 0.70, 0.25), (0.30, 0.70, 0.70)], dtype=np.float32)
"""Linear RGB colours of the samples in the shape preview object (sample i gets tint i mod 6)."""


@dataclass
class ShapeTarget:
    """What the add-on remembers about a ``shape_ldm`` job: what its objects are named after and where they go.

    The backend makes every sample around the world origin (the model's [-1.1, 1.1]³ box, metres); the samples are
    laid out side by side along +X, ``gap`` apart, the row centred on ``location``. Each object's origin is its
    sample's model origin.

    Attributes:
        label: the prompt, or the image's name (the objects are named after it).
        location: (x, y, z) world point the row is centred on (the 3D cursor at submit time), metres.
        gap: free space between neighbouring samples along X, metres.
        image: True when the shapes come from an image.
    """

    label: str = ""
    location: tuple[float, float, float] = (0.0, 0.0, 0.0)
    gap: float = DEFAULT_SHAPE_GAP
    image: bool = False

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene."""
        return {"label": self.label, "location": [float(x) for x in self.location], "gap": float(self.gap),
                "image": bool(self.image)}

    @classmethod
    def from_record(cls, record) -> ShapeTarget:
        """Inverse of :meth:`to_record`. Raises KeyError / ValueError on a broken record."""
        location = tuple(float(x) for x in record["location"])
        if len(location) != 3:
            raise ValueError(f"location must have 3 values, got {location}")
        return cls(str(record.get("label", "")), location, float(record.get("gap", DEFAULT_SHAPE_GAP)),
                   bool(record.get("image", False)))

    @classmethod
    def fallback(cls, context: bpy.types.Context, metadata: dict) -> ShapeTarget:
        """For a job whose target was not recorded: named after its prompt, at the 3D cursor now."""
        image = bool(metadata.get("image"))
        label = str(metadata.get("prompt") or ("Shape from image" if image else "Shape"))
        return cls(label, tuple(context.scene.cursor.location), DEFAULT_SHAPE_GAP, image)

    def placements(self, boxes: list[placement.Box]) -> list[placement.Placement]:
        """``(anchor, location)`` per mesh: a row centred on :attr:`location` (:func:`.placement.row_centred_on`)."""
        return placement.row_centred_on(boxes, self.location, self.gap)

    def names(self, n: int, metadata: dict) -> list[str]:
        """``"<label>"`` for one sample, ``"<label> 1"``, ``"<label> 2"``, … for several."""
        base = object_name_from_prompt(self.label)
        return [base] if n == 1 else [f"{base} {i + 1}" for i in range(n)]

    def properties(self, index: int, metadata: dict) -> dict:
        """Custom properties of sample ``index`` beyond the common ones."""
        return {"latentforge_image": self.label if self.image else ""}


@dataclass
class VariationsTarget:
    """What the add-on remembers about a ``shape_variations`` job: the source object and where the row goes.

    The backend returns every variant where the source stood, at its size; the variants are moved along +X into a
    row that starts ``gap`` right of the source. Each object's origin sits where the source's origin sits relative
    to its variant.

    Attributes:
        source: the source object's name at submit time.
        origin: (x, y, z) the source object's world location at submit time, metres.
        start_x: world X where the first variant's left edge goes (the source's right edge + gap), metres.
        gap: free space between neighbouring variants along X, metres.
    """

    source: str = ""
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    start_x: float | None = None
    gap: float = DEFAULT_SHAPE_GAP

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene (``start_x`` None is left out)."""
        record = {"source": self.source, "origin": [float(x) for x in self.origin], "gap": float(self.gap)}
        if self.start_x is not None:
            record["start_x"] = float(self.start_x)
        return record

    @classmethod
    def from_record(cls, record) -> VariationsTarget:
        """Inverse of :meth:`to_record`. Raises KeyError / ValueError on a broken record."""
        origin = tuple(float(x) for x in record["origin"])
        if len(origin) != 3:
            raise ValueError(f"origin must have 3 values, got {origin}")
        start_x = record.get("start_x")
        return cls(str(record.get("source", "")), origin, None if start_x is None else float(start_x),
                   float(record.get("gap", DEFAULT_SHAPE_GAP)))

    @classmethod
    def fallback(cls, context: bpy.types.Context, metadata: dict) -> VariationsTarget:
        """For a job whose target was not recorded: the row starts right of where the variants stand."""
        return cls("", (0.0, 0.0, 0.0), None, DEFAULT_SHAPE_GAP)

    def placements(self, boxes: list[placement.Box]) -> list[placement.Placement]:
        """``(anchor, location)`` per mesh: a row from :attr:`start_x` (:func:`.placement.row_starting_at`)."""
        return placement.row_starting_at(boxes, self.origin, self.gap, self.start_x)

    def names(self, n: int, metadata: dict) -> list[str]:
        """``"<source> variation 1"``, … (``"Shape variation 1"``, … when the source is unknown)."""
        base = short_name(self.source, 30) if self.source else "Shape"
        return [f"{base} variation {i + 1}" for i in range(n)]

    def properties(self, index: int, metadata: dict) -> dict:
        """Custom properties of variant ``index`` beyond the common ones."""
        return {"latentforge_source": self.source, "latentforge_strength": float(metadata.get("strength", 0.0) or 0.0)}


@dataclass
class InterpolateTarget:
    """What the add-on remembers about a ``shape_interpolate`` job: the names of its two meshes (start, end).

    The backend places every in-between shape between the two inputs (centre and size interpolated like the
    latents); each object keeps that place, its origin at its bounding-box centre.
    """

    source_a: str = ""
    source_b: str = ""

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene."""
        return {"source_a": self.source_a, "source_b": self.source_b}

    @classmethod
    def from_record(cls, record) -> InterpolateTarget:
        """Inverse of :meth:`to_record`."""
        return cls(str(record.get("source_a", "")), str(record.get("source_b", "")))

    @classmethod
    def fallback(cls, context: bpy.types.Context, metadata: dict) -> InterpolateTarget:
        """For a job whose target was not recorded (the names are unknown)."""
        return cls("", "")

    def placements(self, boxes: list[placement.Box]) -> list[placement.Placement]:
        """``(anchor, location)`` per mesh: in place (:func:`.placement.in_place_at_box_centres`)."""
        return placement.in_place_at_box_centres(boxes)

    def names(self, n: int, metadata: dict) -> list[str]:
        """``"<a>→<b> 1/K"``, … ``"<a>→<b> K/K"``."""
        a = short_name(self.source_a, 20) if self.source_a else "A"
        b = short_name(self.source_b, 20) if self.source_b else "B"
        return [f"{a}→{b} {i + 1}/{n}" for i in range(n)]

    def properties(self, index: int, metadata: dict) -> dict:
        """Custom properties of in-between shape ``index`` beyond the common ones (its weight: 0 = a, 1 = b)."""
        weights = metadata.get("weights") or []
        weight = float(weights[index]) if index < len(weights) else -1.0
        return {"latentforge_source_a": self.source_a, "latentforge_source_b": self.source_b,
                "latentforge_weight": weight}



@dataclass
class BlockoutTarget:
    """What the add-on remembers about a ``lion_from_blockout`` job: the blockout and where the shapes go.

    The backend returns every shape where the blockout stands, at its size. The first shape stays there (its left
    edge at the blockout's left edge, :attr:`start_x`); the others follow it along +X, ``gap`` apart, so that they
    can be compared side by side. Each object's origin sits where the blockout's origin sits relative to its shape.

    Attributes:
        source: the blockout object's name at submit time.
        origin: (x, y, z) its world location at submit time, metres.
        start_x: world X of its bounding box's left edge (where the first shape's left edge goes), metres; None =
            in a row right of where the shapes stand.
        gap: free space between neighbouring shapes along X, metres.
    """

    source: str = ""
    origin: tuple[float, float, float] = (0.0, 0.0, 0.0)
    start_x: float | None = None
    gap: float = DEFAULT_SHAPE_GAP

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene (``start_x`` None is left out)."""
        return VariationsTarget(self.source, self.origin, self.start_x, self.gap).to_record()

    @classmethod
    def from_record(cls, record) -> BlockoutTarget:
        """Inverse of :meth:`to_record`. Raises KeyError / ValueError on a broken record."""
        v = VariationsTarget.from_record(record)
        return cls(v.source, v.origin, v.start_x, v.gap)

    @classmethod
    def fallback(cls, context: bpy.types.Context, metadata: dict) -> BlockoutTarget:
        """For a job whose target was not recorded: a row right of where the shapes stand."""
        return cls("", (0.0, 0.0, 0.0), None, DEFAULT_SHAPE_GAP)

    def placements(self, boxes: list[placement.Box]) -> list[placement.Placement]:
        """``(anchor, location)`` per mesh: a row from :attr:`start_x` (:func:`.placement.row_starting_at`)."""
        return placement.row_starting_at(boxes, self.origin, self.gap, self.start_x)

    def names(self, n: int, metadata: dict) -> list[str]:
        """``"<source> from blockout"`` for one shape, ``"<source> from blockout 1"``, … for several."""
        base = f"{short_name(self.source, 30) if self.source else 'Blockout'} from blockout"
        return [base] if n == 1 else [f"{base} {i + 1}" for i in range(n)]

    def properties(self, index: int, metadata: dict) -> dict:
        """Custom properties of shape ``index`` beyond the common ones."""
        return {"latentforge_source": self.source}


@dataclass
class DenoiseTarget:
    """What the add-on remembers about a ``lion_denoise`` job: the noisy source's name. The backend returns the clean
    shape where the source stands; it stays there (origin at its box centre)."""

    source: str = ""

    def to_record(self) -> dict:
        """The JSON-able record saved in the scene."""
        return {"source": self.source}

    @classmethod
    def from_record(cls, record) -> DenoiseTarget:
        """Inverse of :meth:`to_record`."""
        return cls(str(record.get("source", "")))

    @classmethod
    def fallback(cls, context: bpy.types.Context, metadata: dict) -> DenoiseTarget:
        """For a job whose target was not recorded (the source is unknown)."""
        return cls("")

    def placements(self, boxes: list[placement.Box]) -> list[placement.Placement]:
        """``(anchor, location)`` per mesh: in place (:func:`.placement.in_place_at_box_centres`)."""
        return placement.in_place_at_box_centres(boxes)

    def names(self, n: int, metadata: dict) -> list[str]:
        """``"<source> denoised"`` (numbered when there are several)."""
        base = f"{short_name(self.source, 30) if self.source else 'Shape'} denoised"
        return [base] if n == 1 else [f"{base} {i + 1}" for i in range(n)]

    def properties(self, index: int, metadata: dict) -> dict:
        """Custom properties of shape ``index`` beyond the common ones."""
        return {"latentforge_source": self.source}


def shape_material() -> bpy.types.Material:
    """The plain material :data:`SHAPE_MATERIAL_NAME` (a light grey Principled BSDF), made once, then reused."""
    return materials.plain_material(SHAPE_MATERIAL_NAME, (0.8, 0.8, 0.8, 1.0), roughness=0.5)


ShapeTargets = ShapeTarget | VariationsTarget | InterpolateTarget | BlockoutTarget | DenoiseTarget
"""Any target of the shape pipelines."""


def _placed_shapes(arrays: dict[str, np.ndarray], target: ShapeTargets, pipeline: str
                   ) -> tuple[list[tuple[np.ndarray, np.ndarray]], list[str], list[placement.Placement]]:
    """``([(v_pos, t_pos_idx)], [group], [(anchor, location)])`` of a shape result or partial: every mesh group in
    order, then every point-cloud group (``t_pos_idx`` (0, 3) for those), placed by ``target``.

    Raises:
        ValueError: the message carries neither a mesh nor a point cloud.
    """
    groups = protocol.mesh_groups(arrays) + protocol.point_groups(arrays)
    if not groups:
        raise ValueError(f"a {pipeline} message carries no mesh or point cloud (arrays: {', '.join(arrays) or 'none'})")
    no_faces = np.zeros((0, 3), dtype=np.int32)
    items = [(np.asarray(arrays[f"{g}.v_pos"]), np.asarray(arrays.get(f"{g}.t_pos_idx", no_faces))) for g in groups]
    return items, groups, target.placements(placement.mesh_boxes([v for v, _ in items]))


def apply_shape_result(context: bpy.types.Context, job_id: str, result_arrays: dict[str, np.ndarray],
                       metadata: dict, target: ShapeTargets, pipeline: str = "shape_ldm") -> ApplyReport:
    """Make one new object per mesh and per point cloud of a shape result (``shape_ldm``, ``shape_variations``,
    ``shape_interpolate``, ``shap_e``, ``point_e``).

    ``target`` (:class:`ShapeTarget`, :class:`VariationsTarget`, :class:`InterpolateTarget`, :class:`BlockoutTarget`,
    :class:`DenoiseTarget`; the dispatcher passes
    the class's ``fallback`` when none was recorded) names and places them: meshes first, then point clouds (named
    ``"<name> points"``). Geometry goes in with the attribute API (no per-vertex Python). Every mesh object gets
    smooth shading (marching-cubes surfaces are smooth; ``metadata["shading"] == "flat"`` asks for flat) and either
    its texture (the first mesh of a result with ``texture``, e.g. Shap-E's baked one: UV map
    :data:`..mesh_io.UV_MAP_NAME` + a texture material), its vertex colours (``mesh.v_color``: colour attribute +
    :data:`VERTEX_COLOR_MATERIAL_NAME`) or the plain :data:`SHAPE_MATERIAL_NAME`; every point cloud becomes a point-cloud object
    (:func:`..mesh_io.new_point_cloud_object`, material :data:`POINT_MATERIAL_NAME`). Custom properties:
    ``latentforge_job_id/_pipeline/_prompt/_seed/_sample_index/_model/_grid_resolution/_result_kind`` ("mesh" or
    "points") plus the target's own (``_image``; ``_source``, ``_strength``; ``_source_a``, ``_source_b``,
    ``_weight``) and, on point clouds, ``latentforge_point_count``.

    Raises:
        ValueError: no mesh or point cloud, wrong shapes or degenerate triangles (objects made so far are removed
            again).
    """
    items, groups, placements = _placed_shapes(result_arrays, target, pipeline)
    n_meshes = len(protocol.mesh_groups(result_arrays))
    names = target.names(n_meshes, metadata) if n_meshes else []
    if len(groups) > n_meshes:
        names += [f"{n} points" for n in target.names(len(groups) - n_meshes, metadata)]
    smooth = str(metadata.get("shading", "smooth")).lower() != "flat"
    objects = []
    try:
        for i, ((v_pos, t_pos_idx), group, (anchor, location), name) in enumerate(
                zip(items, groups, placements, names)):
            local = (v_pos.astype(np.float64) - anchor).astype(np.float32)
            color = result_arrays.get(f"{group}.v_color")
            kind, index = ("mesh", i) if i < n_meshes else ("points", i - n_meshes)
            extra = {}
            if kind == "mesh":
                obj = mesh_io.new_mesh_object(context, name, local, t_pos_idx, location, smooth)
                if i == 0 and "texture" in result_arrays and "mesh.uv" in result_arrays:  # Shap-E's baked texture
                    uv = np.asarray(result_arrays["mesh.uv"])[np.asarray(result_arrays["mesh.uv_idx"]).reshape(-1)]
                    mesh_io.write_loop_uvs(obj.data, mesh_io.UV_MAP_NAME, uv)
                    image = mesh_io.create_texture_image(f"LatentForge {obj.name} {job_id[:8]}",
                                                         result_arrays["texture"])
                    materials.assign_material(obj, materials.make_texture_material(
                        f"LatentForge {obj.name}", image, mesh_io.UV_MAP_NAME))
                    if color is not None:
                        mesh_io.write_vertex_colors(obj.data, color)
                elif color is not None:
                    mesh_io.write_vertex_colors(obj.data, color)
                    obj.data.update()
                    materials.assign_material(obj, materials.make_color_attribute_material(
                        VERTEX_COLOR_MATERIAL_NAME))
                else:
                    materials.assign_material(obj, shape_material())
            else:
                diagonal = float(np.linalg.norm(local.max(axis=0) - local.min(axis=0)))
                obj = mesh_io.new_point_cloud_object(
                    context, name, local, color, location, max(diagonal * POINT_RADIUS_FRACTION, 1e-3),
                    materials.make_point_color_material(POINT_MATERIAL_NAME, mesh_io.POINT_COLOR_ATTRIBUTE_NAME))
                extra = {"latentforge_point_count": int(len(local))}
            objects.append(obj)
            set_custom_properties(obj, {**common_properties(job_id, pipeline, metadata),
                                        "latentforge_sample_index": index, "latentforge_result_kind": kind,
                                        "latentforge_grid_resolution": int(metadata.get("grid_resolution", 0) or 0),
                                        **target.properties(index, metadata), **extra})
    except ValueError:
        for obj in objects:
            mesh_io.remove_object(obj)
        raise
    n_tris = sum(len(t) for _, t in items)
    n_points = sum(len(v) for v, _ in items[n_meshes:])
    shown = ", ".join(repr(o.name) for o in objects[:4]) + (", …" if len(objects) > 4 else "")
    what = f"{n_tris} triangles" + (f", {n_points} points" if n_points else "")
    message = f"job {job_id}: {len(objects)} shape object{'s' if len(objects) != 1 else ''} ({shown}; {what} in " \
              "all)"
    return ApplyReport(objects[0], "", None, True, 0, message, objects)


def shape_preview_mesh(context: bpy.types.Context, arrays: dict[str, np.ndarray], target: ShapeTargets,
                       pipeline: str = "shape_ldm") -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The one mesh the temporary preview object shows for a shape ``partial``: every sample placed where its final
    object will go (same layout as :func:`apply_shape_result`, from the coarse meshes' and points' boxes), joined,
    each sample tinted with its own :data:`SHAPE_PREVIEW_TINTS` colour (point clouds as loose vertices).

    Returns:
        ``(v_pos (N,3) float32 world, t_pos_idx (F,3) int32, v_color (N,3) float32 linear)``.

    Raises:
        ValueError: the partial carries neither a mesh nor a point cloud.
    """
    items, _, placements = _placed_shapes(arrays, target, pipeline)
    return placement.join_placed(items, placements, SHAPE_PREVIEW_TINTS)


_SHAPE_ARRAYS = ("mesh.v_pos", "mesh.t_pos_idx")

SHAPE_IMPORTER = ResultImporter(apply_shape_result, ShapeTarget, _SHAPE_ARRAYS, shape_preview_mesh)
"""The ``shape_ldm`` row of :data:`.RESULT_IMPORTERS`."""
VARIATIONS_IMPORTER = ResultImporter(apply_shape_result, VariationsTarget, _SHAPE_ARRAYS, shape_preview_mesh)
"""The ``shape_variations`` row of :data:`.RESULT_IMPORTERS`."""
INTERPOLATE_IMPORTER = ResultImporter(apply_shape_result, InterpolateTarget, _SHAPE_ARRAYS, shape_preview_mesh)
"""The ``shape_interpolate`` row of :data:`.RESULT_IMPORTERS`."""
MODEL_SHAPE_IMPORTER = ResultImporter(apply_shape_result, ShapeTarget, (), shape_preview_mesh)
"""The rows of the Shape panel's other models (``shap_e``: meshes; ``point_e``, ``lion_generate``: point clouds, and
meshes when asked) in :data:`.RESULT_IMPORTERS`: a row at the 3D cursor like ``shape_ldm``'s; no array is required on
its own (the protocol already holds a result to at least one mesh or point cloud)."""
MODEL_VARIATIONS_IMPORTER = ResultImporter(apply_shape_result, VariationsTarget, (), shape_preview_mesh)
"""``lion_variations``: variants (point clouds and/or meshes) in a row next to the source, like Michelangelo's."""
MODEL_INTERPOLATE_IMPORTER = ResultImporter(apply_shape_result, InterpolateTarget, (), shape_preview_mesh)
"""``lion_interpolate``: in-between shapes (point clouds and/or meshes) where the backend put them."""
BLOCKOUT_IMPORTER = ResultImporter(apply_shape_result, BlockoutTarget, (), shape_preview_mesh)
"""``lion_from_blockout``: shapes that follow a blockout, the first where it stands, the others beside it."""
DENOISE_IMPORTER = ResultImporter(apply_shape_result, DenoiseTarget, (), shape_preview_mesh)
"""``lion_denoise``: the clean shape where the noisy one stands."""
