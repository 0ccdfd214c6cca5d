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

# The mesh axes a batch is split over. `expert` is one of them: devices that hold different experts
# hold different tokens too, and the MoE layer exchanges tokens between them (all-to-all).
BATCH_AXES = ("data", "fsdp", "expert")


def _fill(sizes: dict[str, int], available: int, field: str, unit: str) -> dict[str, int]:
  """Resolves the -1 axis of `sizes` so they multiply to `available`; ConfigError names `field`."""
  sizes = dict(sizes)
  fixed = math.prod(s for s in sizes.values() if s != -1)
  fill = [a for a, s in sizes.items() if s == -1]
  if fill:
    if available % fixed:
      raise ConfigError(f"{field}.{fill[0]}", f"the other axes use {fixed} {unit}, which does not "
                        f"divide the {available} {unit} available")
    sizes[fill[0]] = available // fixed
  elif fixed != available:
    raise ConfigError(field, f"axis sizes {sizes} use {fixed} {unit} but {available} are used "
                      "(set one axis to -1, or mesh.num_devices)")
  return sizes


def mesh_shape(mesh_config, num_devices: int, num_slices: int = 1) -> dict[str, dict[str, int]]:
  """{"per_slice": sizes, "across_slices": sizes, "total": their product} with the -1s resolved.

  Raises ConfigError naming the field if the sizes do not fit the devices and slices.
  """
  if num_devices % num_slices:
    raise ConfigError("mesh.num_devices", f"{num_devices} devices do not split evenly over "
                      f"{num_slices} slices")
  per_slice = _fill({a: mesh_config[a] for a in MESH_AXES}, num_devices // num_slices, "mesh",
                    "devices")
  across = _fill({a: mesh_config.across_slices[a] for a in MESH_AXES}, num_slices,
                 "mesh.across_slices", "slices")
  total = {a: per_slice[a] * across[a] for a in MESH_AXES}
  return {"per_slice": per_slice, "across_slices": across, "total": total}


def num_slices_of(devices) -> int:
  """Slices (TPU pods joined by the data-center network) the devices belong to; 1 off TPU."""
  return len({getattr(d, "slice_index", 0) for d in devices})


def device_array(mesh_config, devices) -> np.ndarray:
  """The devices arranged as the mesh: axes MESH_AXES, each slice a contiguous block per axis."""
  slices = num_slices_of(devices)
  shapes = mesh_shape(mesh_config, len(devices), slices)
  per_slice = tuple(shapes["per_slice"][a] for a in MESH_AXES)
  if slices > 1:
    across = tuple(shapes["across_slices"][a] for a in MESH_AXES)
    return jax.experimental.mesh_utils.create_hybrid_device_mesh(per_slice, across, devices)
  try:
    return jax.experimental.mesh_utils.create_device_mesh(per_slice, devices)
  except (ValueError, NotImplementedError, AssertionError):  # Topology-unaware fallback (CPU).
    return np.array(devices).reshape(per_slice)


def make_mesh(mesh_config, devices=None) -> Mesh:
  """A mesh with axes MESH_AXES (Auto axis types: jit propagates shardings like pjit did)."""
  devices = list(jax.devices() if devices is None else devices)
  if mesh_config.num_devices != -1:
    if not 0 < mesh_config.num_devices <= len(devices):
      raise ConfigError("mesh.num_devices", f"{mesh_config.num_devices} requested but only "
                        f"{len(devices)} devices are visible")
    devices = devices[:mesh_config.num_devices]
  return Mesh(device_array(mesh_config, devices), MESH_AXES,
              axis_types=(AxisType.Auto,) * len(MESH_AXES))


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
