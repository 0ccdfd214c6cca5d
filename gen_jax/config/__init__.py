"""Experiment configs: presets, validation, loading and saving.

Every experiment is a file `configs/<family>/<name>.py` with `get_config(arg=None)` returning a locked
`ml_collections.ConfigDict`. Family bases live here so config files derive from them as deltas.
"""
from gen_jax.config.errors import ConfigError
from gen_jax.config.io import load_config_file, load_workdir_config, save_workdir_config
from gen_jax.config.presets import apply_preset

__all__ = [
    "ConfigError",
    "apply_preset",
    "load_config_file",
    "load_workdir_config",
    "save_workdir_config",
]
