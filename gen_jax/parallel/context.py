"""The context a traced function runs in: the sharding, for code that places its own `shard_map`,
and the platform it is compiled for, for code that picks kernels or layouts by platform.

Inside `jax.jit` under `jax.set_mesh(mesh)` and `nn.logical_axis_rules(rules)` (as the train loop
runs), ops such as attention read the mesh and turn logical axis names into partition specs here,
so models never pass meshes around.
"""
import contextlib
import contextvars
import math
from collections.abc import Iterator, Sequence

import flax.linen as nn
import jax
from jax.sharding import AbstractMesh, PartitionSpec


_COMPILING_FOR: contextvars.ContextVar[str | None] = contextvars.ContextVar("compiling_for",
                                                                           default=None)


def target_platform() -> str:
  """The platform the computation being traced will run on ("cpu", "gpu", "tpu"): JAX's default
  backend, or the one a surrounding `compiling_for` names."""
  return _COMPILING_FOR.get() or jax.default_backend()


@contextlib.contextmanager
def compiling_for(platform: str) -> Iterator[None]:
  """Traces inside the block choose kernels and layouts for `platform` rather than this host's
  backend: for compiling ahead of time for a device the host does not have (a compile-only
  client, e.g. benchmarks/aot_hlo.py). Nothing else changes: eager computations still run here."""
  if platform not in ("cpu", "gpu", "tpu"):
    raise ValueError(f"compiling_for: platform must be cpu, gpu or tpu, got {platform!r}")
  token = _COMPILING_FOR.set(platform)
  try:
    yield
  finally:
    _COMPILING_FOR.reset(token)


def active_mesh() -> AbstractMesh | None:
  """The mesh of the surrounding `jax.set_mesh`, or None when there is none or it has one device."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty or mesh.size == 1:
    return None
  return mesh


def _as_tuple(axes) -> tuple[str, ...]:
  if axes is None:
    return ()
  return tuple(axes) if isinstance(axes, (tuple, list)) else (axes,)


def fit_spec(spec: PartitionSpec, shape: Sequence[int], mesh) -> PartitionSpec:
  """`spec` with the mesh axes that cannot split `shape` exactly removed.

  Mesh axes of size 1 are dropped, and so are trailing axes of a dimension they do not divide
  (e.g. a batch of 1 while sampling on a data-parallel mesh, or 2 kv heads on a 4-way tensor axis),
  which then stays replicated there.
  """
  fitted = []
  for dim, axes in zip(shape, tuple(spec) + (None,) * (len(shape) - len(spec))):
    axes = [a for a in _as_tuple(axes) if mesh.shape[a] > 1]
    while axes and dim % math.prod(mesh.shape[a] for a in axes):
      axes.pop()
    fitted.append(tuple(axes) if axes else None)
  return PartitionSpec(*fitted)


def logical_spec(names: Sequence[str | None], shape: Sequence[int], mesh) -> PartitionSpec:
  """The partition spec the context's logical rules give an array of `shape` (see `fit_spec`)."""
  return fit_spec(nn.logical_to_mesh_axes(tuple(names)), shape, mesh)


def spec_axes(spec: PartitionSpec, dim: int) -> tuple[str, ...]:
  """The mesh axes dimension `dim` of `spec` is split over (empty when it is replicated)."""
  return _as_tuple(spec[dim]) if dim < len(spec) else ()
