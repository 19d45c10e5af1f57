"""Node materials of the add-on's results (bpy side; main thread only): a Principled BSDF fed by a texture image,
by a colour attribute, or a plain colour."""

from __future__ import annotations

import bpy

from .mesh_io import COLOR_ATTRIBUTE_NAME


def principled_material(name: str) -> tuple[bpy.types.Material, bpy.types.ShaderNode]:
    """A new node material ``name`` with a Principled BSDF wired to the output; returns it and the BSDF node."""
    mat = bpy.data.materials.new(name)
    if not mat.node_tree:  # Blender < 5.0 creates materials without nodes
        mat.use_nodes = True
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    bsdf = next((n for n in nodes if n.bl_idname == "ShaderNodeBsdfPrincipled"), None)
    if bsdf is None:
        bsdf = nodes.new("ShaderNodeBsdfPrincipled")
        out = next((n for n in nodes if n.bl_idname == "ShaderNodeOutputMaterial"), None) \
            or nodes.new("ShaderNodeOutputMaterial")
        links.new(bsdf.outputs["BSDF"], out.inputs["Surface"])
    return mat, bsdf


NORMAL_MAP_COLORSPACE = "Non-Color"
"""Colour space of normal-map images: their pixels are vectors, not colours (no sRGB transform)."""


def make_texture_material(name: str, image: bpy.types.Image, uv_map_name: str,
                          normal_map: bpy.types.Image | None = None) -> bpy.types.Material:
    """A Principled BSDF material whose Base Color is ``image`` sampled with the UV map ``uv_map_name``.

    With ``normal_map`` (a tangent-space normal map, OpenGL convention = Blender's: +X red right, +Y green up, on the
    same UVs): Image Texture (colour space :data:`NORMAL_MAP_COLORSPACE`, set here) → Normal Map node (space
    TANGENT, UV map ``uv_map_name``, the space its tangents come from) → the BSDF's Normal.
    """
    mat, bsdf = principled_material(name)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    tex = nodes.new("ShaderNodeTexImage")
    tex.image = image
    tex.location = (bsdf.location.x - 350, bsdf.location.y)
    uvmap = nodes.new("ShaderNodeUVMap")
    uvmap.uv_map = uv_map_name
    uvmap.location = (tex.location.x - 250, tex.location.y)
    links.new(uvmap.outputs["UV"], tex.inputs["Vector"])
    links.new(tex.outputs["Color"], bsdf.inputs["Base Color"])
    if normal_map is not None:
        normal_map.colorspace_settings.name = NORMAL_MAP_COLORSPACE
        ntex = nodes.new("ShaderNodeTexImage")
        ntex.image = normal_map
        ntex.location = (tex.location.x, tex.location.y - 320)
        nmap = nodes.new("ShaderNodeNormalMap")
        nmap.space = "TANGENT"
        nmap.uv_map = uv_map_name
        nmap.location = (bsdf.location.x - 180, ntex.location.y)
        links.new(uvmap.outputs["UV"], ntex.inputs["Vector"])
        links.new(ntex.outputs["Color"], nmap.inputs["Color"])
        links.new(nmap.outputs["Normal"], bsdf.inputs["Normal"])
    return mat


def make_color_attribute_material(name: str, attribute_name: str = COLOR_ATTRIBUTE_NAME) -> bpy.types.Material:
    """The material ``name`` (made once, then reused) whose Base Color is the colour attribute ``attribute_name``."""
    mat = bpy.data.materials.get(name)
    if mat is not None:
        return mat
    mat, bsdf = principled_material(name)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    color = nodes.new("ShaderNodeVertexColor")
    color.layer_name = attribute_name
    color.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(color.outputs["Color"], bsdf.inputs["Base Color"])
    return mat



def make_point_color_material(name: str, attribute_name: str) -> bpy.types.Material:
    """The material ``name`` (made once, then reused) whose Base Color is the geometry attribute ``attribute_name``
    (an Attribute node: it reads point-cloud attributes, which the Color Attribute node does not)."""
    mat = bpy.data.materials.get(name)
    if mat is not None:
        return mat
    mat, bsdf = principled_material(name)
    nodes, links = mat.node_tree.nodes, mat.node_tree.links
    attr = nodes.new("ShaderNodeAttribute")
    attr.attribute_type = "GEOMETRY"
    attr.attribute_name = attribute_name
    attr.location = (bsdf.location.x - 300, bsdf.location.y)
    links.new(attr.outputs["Color"], bsdf.inputs["Base Color"])
    return mat


def plain_material(name: str, rgba: tuple[float, float, float, float], roughness: float = 0.5) -> bpy.types.Material:
    """The material ``name`` (made once, then reused): a Principled BSDF of Base Color ``rgba`` (linear, in [0, 1])
    and ``roughness``; the viewport's solid mode shows ``rgba`` too."""
    mat = bpy.data.materials.get(name)
    if mat is not None:
        return mat
    mat, bsdf = principled_material(name)
    bsdf.inputs["Base Color"].default_value = rgba
    bsdf.inputs["Roughness"].default_value = roughness
    mat.diffuse_color = rgba
    return mat


def assign_material(obj: bpy.types.Object, mat: bpy.types.Material) -> None:
    """Put ``mat`` in every material slot of ``obj`` (one slot is added when it has none)."""
    if len(obj.material_slots) == 0:
        obj.data.materials.append(mat)
    for slot in obj.material_slots:
        slot.material = mat

