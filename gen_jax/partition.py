"""Trainable and frozen parameters: one tree split by a predicate on each leaf's path.

A LoRA run trains its adapters over a frozen base; distillation trains a student beside a frozen
teacher; a later alignment stage keeps a frozen reference policy. All are one parameter tree whose
leaves a family's `trainable(path)` sorts: the train step differentiates and updates only the
trainable part, the optimizer holds state only for it, and checkpoints store only it. The frozen
part is rebuilt at every start from the seeded init and the pretrained values.
"""
from typing import Any, Callable, Mapping

import flax.traverse_util
import jax
import numpy as np

Path = tuple[str, ...]
Trainable = Callable[[Path], bool]


def flatten(tree) -> dict[Path, Any]:
  """{path of str keys: leaf} of a nested dict (a boxed nn.Partitioned counts as a leaf)."""
  return flax.traverse_util.flatten_dict(tree) if tree else {}


def unflatten(flat: Mapping[Path, Any]) -> dict:
  return flax.traverse_util.unflatten_dict(dict(flat)) if flat else {}


def split_params(params, trainable: Trainable | None) -> tuple[dict, dict]:
  """(trainable subtree, frozen subtree); with trainable None every leaf trains."""
  if trainable is None:
    return params, {}
  flat = flatten(params)
  return (unflatten({p: v for p, v in flat.items() if trainable(p)}),
          unflatten({p: v for p, v in flat.items() if not trainable(p)}))


def merge_params(trainable_params, frozen_params) -> dict:
  """The whole tree again from split_params' two parts (cheap: no array is copied); a leaf in both
  is a ValueError naming it."""
  if not frozen_params:
    return trainable_params
  first, second = flatten(trainable_params), flatten(frozen_params)
  both = sorted("/".join(p) for p in first.keys() & second.keys())
  if both:
    raise ValueError(f"merge_params: {', '.join(both[:5])} in both parts")
  return unflatten({**first, **second})


def place_values(tree, values: Mapping[Path, np.ndarray]):
  """`tree` (arrays with shardings) with the leaves named in `values` replaced by those host values,
  each placed straight into the leaf's shards and cast to its dtype (every host passes the same
  full value and keeps its own shards, so this works on many hosts too)."""
  flat = flatten(tree)
  for path, value in values.items():
    if path not in flat:
      continue
    leaf = flat[path]
    if tuple(value.shape) != tuple(leaf.shape):
      raise ValueError(f"pretrained parameter {'/'.join(path)} has shape {tuple(value.shape)}, "
                       f"the model's is {tuple(leaf.shape)}")
    value = np.asarray(value)
    flat[path] = jax.make_array_from_callback(
        leaf.shape, leaf.sharding, lambda index, v=value, d=leaf.dtype: np.asarray(v[index], d))
  return unflatten(flat)
