"""Plugins: the public API (api.py, message.py) and the host that runs a plugin as a handler."""
