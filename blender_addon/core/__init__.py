"""bpy-free core of the LatentForge add-on: wire protocol, paths/settings, socket client.

Nothing in this package imports ``bpy`` or ``torch``; the backend imports the protocol from here, so there is
exactly one copy of it.
"""
