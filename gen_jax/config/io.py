"""Loading config files by path and saving/loading the resolved config of a workdir."""
import importlib.util
import json
import os

import ml_collections
from absl import logging

from gen_jax.config.bases import FAMILY_BASES, fill_missing_fields
from gen_jax.config.errors import ConfigError

WORKDIR_CONFIG = "config.json"


def load_config_file(spec: str) -> ml_collections.ConfigDict:
  """Loads `path/to/file.py[:arg]` the way `--config=` does, returning the locked ConfigDict."""
  path, _, arg = spec.partition(":")
  if not os.path.isfile(path):
    raise ConfigError("config", f"no config file at {path!r}")
  module_spec = importlib.util.spec_from_file_location("_gen_jax_config", path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def save_workdir_config(config: ml_collections.ConfigDict, workdir: str) -> None:
  """Writes the resolved config as `workdir/config.json` (atomically, only from process 0)."""
  path = os.path.join(workdir, WORKDIR_CONFIG)
  tmp = path + ".tmp"
  with open(tmp, "w") as f:
    f.write(config.to_json(indent=2, sort_keys=True))
  os.replace(tmp, path)


def load_workdir_config(workdir: str) -> ml_collections.ConfigDict | None:
  """The config a previous run saved in `workdir`, or None if there is none.

  A run saved by an earlier gen_jax lacks the fields added to its family's base config since; they
  take their defaults (which keep the earlier behaviour) and a warning names them, so the workdir
  still samples, resumes and starts later stages.
  """
  path = os.path.join(workdir, WORKDIR_CONFIG)
  if not os.path.exists(path):
    return None
  with open(path) as f:
    config = ml_collections.ConfigDict(json.load(f))
  base = FAMILY_BASES.get(config.get("family"))
  added = fill_missing_fields(config, base()) if base else []
  if added:
    logging.warning("%s predates fields of its family's config; they take their defaults: %s",
                    path, ", ".join(added))
  return config
