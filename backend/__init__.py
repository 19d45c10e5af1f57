"""LatentForge backend: the GPU service that runs the generators (map: docs/architecture.md).

Run as ``python -m backend serve`` (socket service for the Blender add-on), ``python -m backend run <pipeline> ...``
(one job from the terminal) or ``python -m backend jobs`` (the job store).
"""

__version__ = "0.1.0"
