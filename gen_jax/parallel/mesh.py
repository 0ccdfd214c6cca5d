"""Device meshes from `config.mesh` and shardings from logical axis names.

Axes: data (replicas), fsdp (parameter/optimizer sharding, also data-parallel), tensor (heads,
mlp, vocab), sequence (length) and expert. Models name logical axes; `config.logical_axis_rules`
maps those onto these mesh axes, so the same model runs on 1 device or a pod slice.
"""
import math

import flax.linen as nn
import jax
import jax.experimental.mesh_utils
import numpy as np
from jax.sharding import AxisType, Mesh, NamedSharding, PartitionSpec

from gen_jax.config.common import MESH_AXES
from gen_jax.config.errors import ConfigError
from gen_jax.parallel import context

BATCH_AXES = ("data", "fsdp")  # The mesh axes a batch is split over.


def mesh_shape(mesh_config, num_devices: int) -> dict[str, int]:
  """Resolves the -1 axis; raises ConfigError if the sizes do not multiply to num_devices."""
  sizes = {axis: mesh_config[axis] for axis in MESH_AXES}
  fixed = math.prod(s for s in sizes.values() if s != -1)
  fill = [a for a, s in sizes.items() if s == -1]
  if fill:
    if num_devices % fixed:
      raise ConfigError(f"mesh.{fill[0]}", f"the other axes use {fixed} devices, which does not "
                        f"divide the {num_devices} devices available")
    sizes[fill[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError("mesh", f"axis sizes {sizes} use {fixed} devices but {num_devices} are used "
                      "(set one axis to -1, or mesh.num_devices)")
  return sizes


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A mesh with axes MESH_AXES (Auto axis types: jit propagates shardings like pjit did)."""
  devices = list(jax.devices() if devices is None else devices)
  if mesh_config.num_devices != -1:
    if not 0 < mesh_config.num_devices <= len(devices):
      raise ConfigError("mesh.num_devices", f"{mesh_config.num_devices} requested but only "
                        f"{len(devices)} devices are visible")
    devices = devices[:mesh_config.num_devices]
  sizes = mesh_shape(mesh_config, len(devices))
  shape = tuple(sizes[a] for a in MESH_AXES)
  try:
    device_array = jax.experimental.mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError, AssertionError):  # Topology-unaware fallback (CPU).
    device_array = np.array(devices).reshape(shape)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))


def data_parallel_size(mesh: Mesh) -> int:
  return math.prod(mesh.shape[a] for a in BATCH_AXES)


def rules_tuple(rules) -> tuple:
  """Rules from a config (lists after a JSON round trip) as hashable tuples."""
  return tuple((name, tuple(axes) if isinstance(axes, list) else axes) for name, axes in rules)


def logical_shardings(abstract_tree, mesh: Mesh, rules):
  """NamedShardings for a tree of (possibly nn.LogicallyPartitioned) abstract values.

  Leaves without logical names (step counters, scalars) are replicated; a mesh axis that does not
  divide a dimension leaves that dimension replicated (`context.fit_spec`).
  """
  specs = nn.logical_to_mesh(nn.get_partition_spec(abstract_tree), rules_tuple(rules))
  is_boxed = lambda x: isinstance(x, nn.meta.AxisMetadata)
  # Plain unbox would add sharding constraints under the surrounding mesh; only shapes are needed.
  shapes = jax.tree.map(lambda x: x.unbox(apply_constraint=False) if is_boxed(x) else x,
                        abstract_tree, is_leaf=is_boxed)
  return jax.tree.map(lambda spec, x: NamedSharding(mesh, context.fit_spec(spec, x.shape, mesh)),
                      specs, shapes, is_leaf=lambda x: isinstance(x, PartitionSpec))


def batch_sharding(mesh: Mesh, ndim: int) -> NamedSharding:
  """Splits the leading (batch) axis over the data-parallel mesh axes."""
  return NamedSharding(mesh, PartitionSpec(BATCH_AXES, *([None] * (ndim - 1))))


def shard_batch(batch: dict[str, np.ndarray], mesh: Mesh) -> dict[str, jax.Array]:
  """Places this host's part of a global batch on the devices, split along the batch axis."""
  return {k: jax.make_array_from_process_local_data(batch_sharding(mesh, v.ndim), v)
          for k, v in batch.items()}
