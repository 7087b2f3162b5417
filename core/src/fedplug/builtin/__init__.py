"""fedplug's built-in plugins: core's own behaviour, one concern per module.

Each module is registered under its own name by :func:`fedplug.plugins.get_plugin_manager`
(:data:`fedplug.plugins.DEFAULT_PLUGINS`), exactly as a third-party plugin is: core has no
privileged path, and ``fedplug plugins`` lists what each of them registers.
"""
