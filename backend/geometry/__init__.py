"""Geometry shared by every method: meshes and mesh files, frames (every axis change), cameras, rasterization,
point queries (winding numbers, distances), field → mesh extraction, texture baking, DreamFusion shading, and DMTet (a deformable
tetrahedral grid with differentiable marching tetrahedra)."""
