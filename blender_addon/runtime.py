"""The add-on's runtime state in Blender (``window_manager.latentforge``; never saved) and small helpers around it
(bpy side; main thread only)."""

from __future__ import annotations

import bpy


def runtime_state():
    """``window_manager.latentforge`` (the runtime PropertyGroup).

    Raises:
        AttributeError / IndexError: the add-on is not (fully) registered, or there is no window manager.
    """
    wm = bpy.context.window_manager or bpy.data.window_managers[0]
    return wm.latentforge


def tag_redraw() -> None:
    """Ask every 3D viewport's sidebar to redraw (no-op in background mode)."""
    wm = bpy.context.window_manager or (bpy.data.window_managers[0] if bpy.data.window_managers else None)
    if wm is None:
        return
    for window in wm.windows:
        for area in window.screen.areas:
            if area.type == "VIEW_3D":
                area.tag_redraw()
