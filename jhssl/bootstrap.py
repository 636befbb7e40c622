"""Jittor's environment (moved to :mod:`models.env`, the bottom layer; re-exported here).

``import jhssl`` runs it; entry points and jhssl modules keep importing this name.
"""
from models.env import gpu_visible, setup_env, verbose  # noqa: F401
