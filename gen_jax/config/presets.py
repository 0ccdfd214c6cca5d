"""Strict presets: `get_config("tiny")` applies the `tiny` deltas to a family base.

A preset is a dict of dotted field names to values. Presets never copy the base: they change only
what differs, and an unknown preset name or field is an error (big_vision's habit).
"""
import ast
from typing import Any, Mapping

import ml_collections

from gen_jax.config.errors import ConfigError


def set_field(config: ml_collections.ConfigDict, dotted: str, value: Any) -> None:
  """Sets `config.<dotted>` = value; the field must already exist (configs are locked)."""
  *parents, leaf = dotted.split(".")
  node = config
  for i, name in enumerate(parents):
    if name not in node:
      raise ConfigError(".".join(parents[: i + 1]), "no such config section")
    node = node[name]
  if leaf not in node:
    raise ConfigError(dotted, f"no such field; fields here are {sorted(node.keys())}")
  try:
    node[leaf] = value
  except TypeError as e:  # ConfigDict keeps each field's type.
    raise ConfigError(dotted, str(e)) from e


def set_fields(config: ml_collections.ConfigDict, assignments: list[str]) -> None:
  """Applies "field.path=VALUE" strings in order (a benchmark's --set flags); VALUE is read as a
  Python literal (numbers, booleans, tuples) where it is one, else taken as a string."""
  for assignment in assignments:
    dotted, _, text = assignment.partition("=")
    try:
      value = ast.literal_eval(text)
    except (ValueError, SyntaxError):
      value = text
    set_field(config, dotted, value)


def apply_preset(
    config: ml_collections.ConfigDict,
    arg: str | None,
    presets: Mapping[str, Mapping[str, Any]],
    default: str,
) -> ml_collections.ConfigDict:
  """Applies the preset named `arg` (or `default` when arg is None/empty) and locks the config.

  Args:
    config: the family base config.
    arg: the preset name from `--config=path:arg`.
    presets: preset name -> {dotted field: value} deltas from the base.
    default: the preset used when no arg is given.
  Returns:
    The same config, with the preset applied and `config.preset` recording its name, locked.
  """
  name = arg or default
  if name not in presets:
    raise ConfigError("config preset", f"unknown preset {name!r}; choose one of {sorted(presets)}")
  config.preset = name
  for dotted, value in presets[name].items():
    set_field(config, dotted, value)
  config.lock()
  return config
