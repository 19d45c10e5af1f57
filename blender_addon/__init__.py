"""LatentForge Blender extension: generate and texture 3D assets from text with a local GPU backend.

This file must stay importable without Blender: the backend imports ``blender_addon.core.protocol``, which runs this
``__init__``. So ``bpy`` and the bpy-side submodules are imported inside :func:`register` / :func:`unregister` only.

Modules (imports point down this list; no cycles):

- ``properties`` (scene settings + runtime state), ``preferences`` (backend location), ``operators`` (thin),
  ``panels`` (sidebar tab "LatentForge", one sub-panel per artist task: Texture, Generate, Shape);
- ``session`` (the one :class:`~.session.Session` and its timer) over ``connection`` (client + local backend),
  ``jobs`` (job bookkeeping, targets saved in the scene) and ``handlers`` (message -> Blender state);
- ``results/`` (one result importer per pipeline family, in ONE table ``RESULT_IMPORTERS``), over ``materials``
  and ``mesh_io`` (bpy <-> numpy arrays only), ``runtime`` (``window_manager.latentforge`` helpers);
- ``core/`` is bpy-free: protocol, paths, client, backend_process, arrays, placement, fields (add-on setting ->
  backend field, ranges), tasks (task -> methods -> pipelines).
"""

_MODULE_NAMES = ("properties", "preferences", "operators", "panels", "session")


def _modules():
    import importlib

    return [importlib.import_module(f"{__name__}.{name}") for name in _MODULE_NAMES]


def register():
    """Register properties, preferences, operators and panels, then start the session timer."""
    done = []
    try:
        for module in _modules():
            module.register()
            done.append(module)
    except Exception:
        for module in reversed(done):  # leave nothing half-registered behind
            try:
                module.unregister()
            except Exception:  # noqa: BLE001
                pass
        raise


def unregister():
    """Stop the session (client, timer, a backend Blender started) and unregister everything, in reverse order."""
    errors = []
    for module in reversed(_modules()):
        try:
            module.unregister()
        except Exception as e:  # noqa: BLE001 — unregister as much as possible, then report
            errors.append(f"{module.__name__}: {e}")
    if errors:
        raise RuntimeError("LatentForge unregister: " + "; ".join(errors))
