"""Add-on preferences: where the backend is and how to reach it.

Defaults come from ``install.py``'s config (:func:`core.paths.read_config`) when it exists, read once when the
add-on registers.
"""

import bpy
from bpy.props import BoolProperty, EnumProperty, IntProperty, StringProperty

from .core import paths



def _read_config() -> dict:
    try:
        return paths.read_config()
    except (OSError, ValueError) as e:  # a broken config must not stop the add-on from loading
        print(f"LatentForge: ignoring unreadable install config {paths.config_path()}: {e}")
        return {}


_CONFIG = _read_config()

BACKEND_MODES = (
    ("LOCAL", "Local", "Start a backend on this computer with the interpreter install.py set up (or use the one "
                       "already listening on the port)"),
    ("REMOTE", "Remote", "Connect to a backend that is already running (another terminal, or a GPU host through an "
                         "SSH tunnel)"),
)


class LATENTFORGE_AP_preferences(bpy.types.AddonPreferences):
    """Preferences of the LatentForge extension (``bl_idname`` = the extension's package)."""

    bl_idname = __package__

    backend_mode: EnumProperty(name="Backend", items=BACKEND_MODES, default="LOCAL")
    host: StringProperty(name="Host", description="Backend address", default=str(_CONFIG.get("host")
                                                                                  or paths.DEFAULT_HOST))
    port: IntProperty(name="Port", description="Backend TCP port", default=int(_CONFIG.get("port")
                                                                                 or paths.DEFAULT_PORT),
                      min=1, max=65535)
    token_file: StringProperty(name="Token File", description="File holding the backend's handshake token",
                               default=str(paths.token_path()), subtype="FILE_PATH")
    tls_fingerprint: StringProperty(name="TLS Fingerprint",
                                    description="SHA-256 fingerprint of the backend's TLS certificate (`python -m "
                                                "backend tls fingerprint` on the server prints it): connect with TLS "
                                                "and accept only that certificate. Empty = plain TCP (this computer, "
                                                "or an SSH tunnel)",
                                    default="")
    python_path: StringProperty(name="Backend Python", description="Interpreter of the backend environment "
                                                                   "(local mode)",
                                default=str(_CONFIG.get("python", "")), subtype="FILE_PATH")
    repo_root: StringProperty(name="Backend Folder", description="LatentForge checkout holding the 'backend' package "
                                                                 "(local mode)",
                              default=str(_CONFIG.get("repo_root", "")), subtype="DIR_PATH")
    data_dir: StringProperty(name="Job Store", description="Folder of the backend's job store; empty = its default "
                                                           "(local mode)",
                             default=str(_CONFIG.get("data_dir", "")), subtype="DIR_PATH")
    auto_start: BoolProperty(name="Start Backend Automatically",
                             description="In local mode, start the backend when the add-on first needs it",
                             default=True)

    def draw(self, context):
        layout = self.layout
        layout.prop(self, "backend_mode", expand=True)
        col = layout.column()
        col.prop(self, "host")
        col.prop(self, "port")
        col.prop(self, "token_file")
        col.prop(self, "tls_fingerprint")
        if self.backend_mode == "LOCAL":
            col.prop(self, "auto_start")
            col.prop(self, "python_path")
            col.prop(self, "repo_root")
            col.prop(self, "data_dir")


def get_preferences(context=None) -> LATENTFORGE_AP_preferences:
    """The add-on's preferences. Raises KeyError if the add-on is not enabled."""
    context = context or bpy.context
    return context.preferences.addons[__package__].preferences


classes = (LATENTFORGE_AP_preferences,)


register, unregister = bpy.utils.register_classes_factory(classes)
