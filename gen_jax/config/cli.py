"""Command-line parsing of `--config=file.py:preset` plus `--config.a.b=value` overrides.

ml_collections' config_flags does the parsing; this turns its failures for an override of a field
that does not exist into one line naming the field and the fields that do exist.
"""
import sys

from absl import app

from gen_jax.config.errors import ConfigError
from gen_jax.config.io import load_config_file


def _unknown_override(argv: list[str]) -> ConfigError | None:
  """The first `--config.x.y=` override whose field is not in the config file's config."""
  spec = _config_spec(argv)
  if spec is None:
    return None
  config = load_config_file(spec)
  for arg in argv:
    if not arg.startswith("--config."):
      continue
    dotted = arg[len("--config."):].split("=", 1)[0]
    node = config
    parts = dotted.split(".")
    for i, name in enumerate(parts):
      if not hasattr(node, "keys") or name not in node:
        where = ".".join(parts[:i]) or "config"
        fields = sorted(node.keys()) if hasattr(node, "keys") else []
        return ConfigError(dotted, f"no such field; fields of {where} are {fields}")
      node = node[name]
  return None


def _config_spec(argv: list[str]) -> str | None:
  return next((a.split("=", 1)[1] for a in reversed(argv) if a.startswith("--config=")), None)


def parse_flags_with_config(argv: list[str]) -> list[str]:
  """absl's flag parsing, with one-line messages for a bad config file, preset or field."""
  spec = _config_spec(argv)
  if spec is not None:
    try:  # Loaded here first so a bad file or preset is reported without absl's traceback text.
      load_config_file(spec)
    except ConfigError as e:
      print(f"Config error: {e}", file=sys.stderr)
      sys.exit(2)
  try:
    return app.parse_flags_with_usage(argv)
  except (AttributeError, KeyError) as e:  # config_flags' error for a missing field.
    try:
      error = _unknown_override(argv)
    except ConfigError as load_error:
      error = load_error
    print(f"Config error: {error or e}", file=sys.stderr)
    sys.exit(2)
