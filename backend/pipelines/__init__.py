"""The generators: :data:`PIPELINES` maps each pipeline name to its :class:`~backend.pipelines.base.PipelineSpec`.

Every pipeline is one module with a config dataclass and one entry point of one signature,
``run(config, inputs: PipelineInputs, context: JobContext) -> PipelineResult`` (:mod:`.base`); :mod:`.io` alone
converts wire arrays to inputs and results to wire arrays. A new pipeline = one module + one row here (see
``docs/architecture.md``, *Add a pipeline*).
"""

from __future__ import annotations

from . import (clip_mesh, dream_fields, latent_nerf, latent_paint, lion, point_e, refine_mesh, shap_e,
               shape_interpolate, shape_ldm, shape_variations)
from .base import ImageInput, MeshInput, PipelineSpec, PointCloudInput
from .conditions import IMAGE_INPUT

CONCEPT_IMAGE = ImageInput(IMAGE_INPUT, False, "concept image (RGB or RGBA; alpha composited on white) instead of a "
                                              "prompt")
"""The image input of the generators conditioned on a prompt or an image (:mod:`.conditions`)."""

PIPELINES: dict[str, PipelineSpec] = {
    "latent_paint": PipelineSpec(
        latent_paint.LatentPaintConfig, latent_paint.run,
        "Texture a mesh from text (Latent-Paint: SDS on a latent UV texture).",
        mesh_inputs=(MeshInput("mesh", True, "mesh to texture (UVs kept if it has them, else xatlas)"),),
        textured=True),
    "latent_nerf": PipelineSpec(
        latent_nerf.LatentNeRFConfig, latent_nerf.run,
        "Generate a textured mesh from text, optionally following a sketch shape (Latent-NeRF).",
        mesh_inputs=(MeshInput("sketch", False, "sketch shape: a rough blockout the result follows"),),
        textured=True),
    "refine_mesh": PipelineSpec(
        refine_mesh.RefineMeshConfig, refine_mesh.run,
        "Refine a mesh from text into a detailed textured mesh standing where it stands (Magic3D's fine stage: "
        "DMTet + SDS at 512² renders).",
        mesh_inputs=(MeshInput("mesh", True, "mesh to refine: a coarse result or a blockout (open meshes are fine)"),),
        textured=True),
    "clip_mesh": PipelineSpec(
        clip_mesh.CLIPMeshConfig, clip_mesh.run,
        "Generate or restyle a textured, normal-mapped mesh from text with CLIP (CLIP-Mesh: a Loop subdivision "
        "surface from a sphere or the given mesh, a texture and a normal map; no Stable Diffusion).",
        mesh_inputs=(MeshInput("mesh", False, "mesh to start from (shape modes) or to paint (mode texture: kept "
                                              "exactly, UVs kept if it has them, else xatlas); none = a sphere"),),
        check_inputs=clip_mesh.check_inputs, textured=True),
    "dream_fields": PipelineSpec(
        dream_fields.DreamFieldsConfig, dream_fields.run,
        "Generate a textured mesh from text with CLIP alone (Dream Fields: a NeRF whose augmented renders CLIP scores "
        "against the prompt, kept sparse by a transmittance loss).",
        textured=True),
    "shape_ldm": PipelineSpec(
        shape_ldm.ShapeLDMConfig, shape_ldm.run,
        "Generate shapes from text or an image in seconds (Michelangelo: aligned shape latent diffusion); one mesh "
        "per sample.",
        image_inputs=(CONCEPT_IMAGE,),
        check_inputs=shape_ldm.check_inputs),
    "shape_variations": PipelineSpec(
        shape_variations.ShapeVariationsConfig, shape_variations.run,
        "Variations of a mesh: encode it, diffuse to a strength and denoise (optionally prompted); results stand "
        "where the mesh stands.",
        mesh_inputs=(MeshInput("mesh", True, "mesh to make variations of"),)),
    "shape_interpolate": PipelineSpec(
        shape_interpolate.ShapeInterpolateConfig, shape_interpolate.run,
        "In-between shapes of two meshes (interpolated shape latents).",
        mesh_inputs=(MeshInput("mesh", True, "start mesh"), MeshInput("mesh_b", True, "end mesh"))),
    "point_e": PipelineSpec(
        point_e.PointEConfig, point_e.run,
        "Generate coloured point clouds from text or an image in seconds (Point-E), and a mesh per cloud from its "
        "SDF model.",
        image_inputs=(CONCEPT_IMAGE,),
        check_inputs=point_e.check_inputs),
    "shap_e": PipelineSpec(
        shap_e.ShapEConfig, shap_e.run,
        "Generate coloured shapes from text or an image (Shap-E); one mesh with vertex colours per sample, "
        "optionally a baked texture.",
        image_inputs=(CONCEPT_IMAGE,),
        check_inputs=shap_e.check_inputs, textured=True),
    "lion_generate": PipelineSpec(
        lion.LionGenerateConfig, lion.run_generate,
        "Generate point clouds (and meshes) of a category in seconds (LION: latent point diffusion); from a prompt "
        "or an image with a CLIP-conditioned model.",
        image_inputs=(ImageInput(IMAGE_INPUT, False, "concept image (RGB or RGBA; alpha composited on white) instead "
                                                     "of a prompt, for a CLIP-conditioned LION model"),),
        check_inputs=lion.check_generate_inputs),
    "lion_from_blockout": PipelineSpec(
        lion.LionFromBlockoutConfig, lion.run_from_blockout,
        "Detailed shapes that follow a blockout mesh (LION's voxel-guided synthesis); results stand where the "
        "blockout stands, at its size.",
        mesh_inputs=(MeshInput("mesh", True, "blockout: a rough closed mesh the shapes follow"),)),
    "lion_variations": PipelineSpec(
        lion.LionVariationsConfig, lion.run_variations,
        "Variations of a shape (LION's diffuse-denoise); results stand where it stands.",
        mesh_inputs=(MeshInput("mesh", True, "shape to make variations of (or --points)"),),
        point_inputs=(PointCloudInput("points", "shape to make variations of, as a point cloud (or --mesh)",
                                      alternative_to="mesh"),)),
    "lion_interpolate": PipelineSpec(
        lion.LionInterpolateConfig, lion.run_interpolate,
        "In-between shapes of two shapes (LION: interpolation in the diffusion prior through the ODE).",
        mesh_inputs=(MeshInput("mesh", True, "start shape (or --points)"),
                     MeshInput("mesh_b", True, "end shape (or --points-b)")),
        point_inputs=(PointCloudInput("points", "start shape as a point cloud (or --mesh)", alternative_to="mesh"),
                      PointCloudInput("points_b", "end shape as a point cloud (or --mesh-b)",
                                      alternative_to="mesh_b"))),
    "lion_denoise": PipelineSpec(
        lion.LionDenoiseConfig, lion.run_denoise,
        "Clean up a noisy shape or scan (LION: encode, diffuse a little, denoise); results stand where it stands.",
        mesh_inputs=(MeshInput("mesh", True, "noisy shape (its surface, or its vertices with --source vertices; or "
                                             "--points)"),),
        point_inputs=(PointCloudInput("points", "noisy scan: its points as they are (or --mesh)",
                                      alternative_to="mesh"),)),
}
