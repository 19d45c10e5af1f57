"""bpy-free table of the artist's tasks and the methods (backend pipelines) that serve each.

The sidebar has one panel per task (Texture, Generate, Shape, Refine) and each panel a "Method" choice listing
:data:`TASKS` ``[task]``. A method names the pipeline it submits for each of the task's
operator roles, e.g. Shape's ``shape_ldm`` method: ``{"generate": "shape_ldm", "variations": "shape_variations",
"interpolate": "shape_interpolate"}``.

A new method for an existing task = one :class:`Method` row here (+ its result importer in ``results/``). A new task =
one row here + one panel class in ``panels.py`` added to its ``TASK_PANELS``; the scene property
``<task>_method`` is made from this table by ``properties.py``.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Method:
    """One way to do a task.

    Attributes:
        identifier: the enum identifier stored in ``scene.latentforge.<task>_method`` (the main pipeline's name).
        label: what the Method menu shows.
        description: its tooltip.
        pipelines: operator role -> backend pipeline name.
        point_roles: the roles whose pipeline also takes a point cloud in place of the mesh (a ``POINTCLOUD`` object
            or a mesh of loose vertices, sent as ``points.v_pos``); the connected backend's ``welcome`` has the last
            word.
    """

    identifier: str
    label: str
    description: str
    pipelines: dict[str, str]
    point_roles: tuple[str, ...] = ()


TASKS: dict[str, tuple[Method, ...]] = {
    "texture": (
        Method("latent_paint", "Latent-Paint", "Score distillation on a latent UV texture of the mesh (minutes)",
               {"texture": "latent_paint"}),
        Method("clip_mesh", "CLIP-Mesh", "CLIP-guided texture and normal map of the mesh (Texture mode: the mesh is "
                                         "kept exactly), or a reshaped copy of it (Shape modes)",
               {"texture": "clip_mesh"}),
    ),
    "generate": (
        Method("latent_nerf", "Latent-NeRF", "A NeRF in Stable Diffusion's latent space, optionally following a "
                                             "sketch shape; baked to a textured mesh (minutes)",
               {"generate": "latent_nerf"}),
        Method("clip_mesh", "CLIP-Mesh", "A CLIP-guided deformation of a sphere (or of the selected mesh, with From "
                                         "Selected): a low-poly mesh with UVs, a texture and a normal map",
               {"generate": "clip_mesh"}),
        Method("dream_fields", "Dream Fields", "A CLIP-guided RGB NeRF kept sparse by a transmittance loss; baked to "
                                               "a textured mesh", {"generate": "dream_fields"}),
    ),
    "shape": (
        Method("shape_ldm", "Michelangelo", "Aligned shape latent diffusion: untextured shapes from text or an image, "
                                            "variations and in-betweens of meshes (seconds)",
               {"generate": "shape_ldm", "variations": "shape_variations", "interpolate": "shape_interpolate"}),
        Method("shap_e", "Shap-E", "Implicit-function diffusion (OpenAI Shap-E): meshes with vertex colours from text "
                                   "or an image (seconds)",
               {"generate": "shap_e"}),
        Method("point_e", "Point-E", "Point-cloud diffusion (OpenAI Point-E): coloured point clouds from text or an "
                                     "image, and meshes from them on request (seconds)",
               {"generate": "point_e"}),
        Method("lion_generate", "LION", "Latent point diffusion (LION): point clouds and meshes made from them; "
                                        "variations, in-betweens, denoising, and shapes that follow a blockout "
                                        "(seconds)",
               {"generate": "lion_generate", "variations": "lion_variations", "interpolate": "lion_interpolate",
                "denoise": "lion_denoise", "blockout": "lion_from_blockout"},
               point_roles=("variations", "interpolate", "denoise")),
    ),
    "refine": (
        Method("refine_mesh", "Magic3D", "Magic3D's fine stage: the selected mesh as a DMTet surface refined by score "
                                         "distillation at high resolution, with a baked texture (minutes)",
               {"refine": "refine_mesh"}),
    ),
}
"""Task name -> its methods, first = default. Tasks with no method yet have no row (and no panel)."""


def method_property(task: str) -> str:
    """Name of the scene property holding ``task``'s chosen method: ``"<task>_method"``."""
    return f"{task}_method"


def enum_items(task: str) -> list[tuple[str, str, str]]:
    """``EnumProperty`` items of ``task``'s Method choice. Raises KeyError for an unknown task."""
    return [(m.identifier, m.label, m.description) for m in TASKS[task]]


def method_of(task: str, identifier: str) -> Method:
    """The :class:`Method` ``identifier`` of ``task``; the task's first (default) method when ``identifier`` is not
    one of its methods (e.g. a .blend saved with a method this add-on no longer has). Raises KeyError for an unknown
    task."""
    methods = TASKS[task]
    return next((m for m in methods if m.identifier == identifier), methods[0])


def pipeline_for(task: str, method: str, role: str) -> str:
    """The backend pipeline ``method`` of ``task`` submits for ``role``.

    Raises:
        ValueError: unknown task, method, or a method that has no pipeline for ``role`` (message lists what exists).
    """
    methods = {m.identifier: m for m in TASKS.get(task, ())}
    if method not in methods:
        raise ValueError(f"{task} has no method {method!r} (known: {', '.join(methods) or 'none'})")
    pipelines = methods[method].pipelines
    if role not in pipelines:
        raise ValueError(f"the {task} method {methods[method].label} cannot {role} "
                         f"(it can: {', '.join(pipelines)})")
    return pipelines[role]


def all_pipelines() -> list[str]:
    """Every pipeline some method submits, in table order, without repeats."""
    return list(dict.fromkeys(p for methods in TASKS.values() for m in methods for p in m.pipelines.values()))


def point_cloud_pipelines() -> list[str]:
    """Every pipeline some method submits for a role that takes a point cloud (:attr:`Method.point_roles`)."""
    return list(dict.fromkeys(m.pipelines[r] for methods in TASKS.values() for m in methods for r in m.point_roles))
