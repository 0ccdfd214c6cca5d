"""Check a config before launch: compile its real train step for its mesh from shapes alone.

Nothing the size of the model is allocated: the state and the batch are `jax.ShapeDtypeStruct`s
carrying their shardings, and `jit(...).lower(...).compile()` gives XLA's own memory accounting
of the step each device will run. A 1b or 7b preset can be checked for a 256-chip mesh on
a laptop by faking the devices (`python -m gen_jax.main --dry_run --dry_run_devices=256`).
"""
import dataclasses
import math

import flax.linen as nn
import jax
import ml_collections
import numpy as np

from gen_jax import families, parallel
from gen_jax.config.common import validate_batch_against_mesh
from gen_jax import partition
from gen_jax.train.loop import abstract_train_state, build_train_step, validate
from gen_jax.train.state import rng_for


@dataclasses.dataclass(frozen=True)
class DryRunReport:
  """Per-device bytes of one train step, with the parameter shardings."""
  mesh: dict[str, int]
  platform: str
  parameter_bytes: int  # This device's shards of the parameters (trainable and frozen).
  optimizer_bytes: int  # ... and of the optimizer state.
  argument_bytes: int  # XLA: the step's inputs (state + batch) on one device.
  output_bytes: int
  alias_bytes: int  # Outputs written in place of donated inputs (the state).
  temp_bytes: int  # XLA: activations kept for the backward pass and scratch.
  shardings: list[tuple[str, tuple, str, tuple]]  # (parameter, shape, spec, per-device shape)

  @property
  def peak_bytes(self) -> int:
    return self.argument_bytes + self.output_bytes - self.alias_bytes + self.temp_bytes

  def format(self) -> str:
    gib = _human_bytes
    lines = [f"Mesh {self.mesh} on {self.platform} ({math.prod(self.mesh.values())} devices)",
             "Per device:",
             f"  parameters       {gib(self.parameter_bytes)}",
             f"  optimizer state  {gib(self.optimizer_bytes)}",
             f"  activations+temp {gib(self.temp_bytes)}   (XLA {self.platform} compile)",
             f"  step inputs      {gib(self.argument_bytes)}   outputs {gib(self.output_bytes)}"
             f"   donated {gib(self.alias_bytes)}",
             f"  peak estimate    {gib(self.peak_bytes)}",
             "Parameter shardings (shape -> per-device shape, spec):"]
    width = max(len(p) for p, *_ in self.shardings)
    for path, shape, spec, local in self.shardings:
      lines.append(f"  {path:<{width}}  {str(shape):>22} -> {str(local):<22} {spec}")
    return "\n".join(lines)


def _human_bytes(n: float) -> str:
  for unit in ("B", "KiB", "MiB", "GiB"):
    if n < 1024 or unit == "GiB":
      return f"{n:8.2f} {unit:<3}"
    n /= 1024
  raise AssertionError("unreachable")


def _bytes_per_device(tree) -> int:
  return sum(math.prod(x.sharding.shard_shape(x.shape)) * np.dtype(x.dtype).itemsize
             for x in jax.tree.leaves(tree))


def _sharding_rows(params) -> list[tuple[str, tuple, str, tuple]]:
  rows = []
  for path, x in jax.tree_util.tree_flatten_with_path(params)[0]:
    name = "/".join(str(getattr(k, "key", k)) for k in path)
    spec = tuple(x.sharding.spec) + (None,) * (len(x.shape) - len(x.sharding.spec))
    rows.append((name, tuple(x.shape), str(spec), tuple(x.sharding.shard_shape(x.shape))))
  return rows


def dry_run(config: ml_collections.ConfigDict, target: str | None = None) -> DryRunReport:
  """Validates `config`, builds its mesh and compiles its train step: on the visible devices, or
  with `target` ("h200", "h100", "tpu:v5e:2x2", ...: `parallel.targets`) on a machine this host
  is not, by that machine's own compiler (its kernels, its memory figures)."""
  compiled, layout, mesh = compile_train_step(config, target=target)
  memory = compiled.memory_analysis()
  return DryRunReport(
      mesh=dict(mesh.shape), platform=mesh.devices.flat[0].platform,
      parameter_bytes=_bytes_per_device((layout.abstract.params, layout.abstract_frozen)),
      optimizer_bytes=_bytes_per_device(layout.abstract.opt_state),
      argument_bytes=memory.argument_size_in_bytes, output_bytes=memory.output_size_in_bytes,
      alias_bytes=memory.alias_size_in_bytes, temp_bytes=memory.temp_size_in_bytes,
      shardings=_sharding_rows(partition.merge_params(layout.abstract.params,
                                                      layout.abstract_frozen)))


def compile_train_step(config: ml_collections.ConfigDict, target: str | None = None):
  """(the compiled train step, the state's StateLayout, the mesh) of `config`, from shapes alone
  (nothing is allocated): on the visible devices, or on `target`'s compile-only devices with its
  kernels and compiler (`parallel.targets.compile_only_devices`)."""
  if target is None:
    return _compile_train_step(config, None)
  platform, devices = parallel.targets.compile_only_devices(target)
  with parallel.context.compiling_for(platform):
    return _compile_train_step(config, devices)


def _compile_train_step(config: ml_collections.ConfigDict, devices):
  validate(config)
  family = families.get(config.family)
  mesh = parallel.make_mesh(config.mesh, devices)
  validate_batch_against_mesh(config, parallel.data_parallel_size(mesh))
  loss_fn, batch_shapes = family.dry_run_inputs(config)
  layout = abstract_train_state(family.param_spec(config), config, mesh)
  batch = {name: jax.ShapeDtypeStruct(s.shape, s.dtype,
                                      sharding=parallel.batch_sharding(mesh, len(s.shape)))
           for name, s in batch_shapes.items()}
  rng = jax.eval_shape(lambda: rng_for(config.seed, "train"))
  # A family with optimizer groups (a GAN) gives {group: loss} as its loss_fn.
  phase_losses = loss_fn if isinstance(loss_fn, dict) else None
  # An on-policy family turns rollouts into experience inside its step (train.loop does the same).
  experience = (family.make_experience_fn(config) if hasattr(family, "make_experience_fn")
                else None)
  step = build_train_step(config, layout, None if phase_losses else loss_fn,
                          phase_losses=phase_losses, experience=experience)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.rules_tuple(config.logical_axis_rules)):
    state_shardings = jax.tree.map(lambda x: x.sharding, layout.abstract)
    compiled = jax.jit(step, donate_argnums=0, out_shardings=(state_shardings, None)).lower(
        layout.abstract, layout.abstract_frozen, batch, rng).compile()
  return compiled, layout, mesh
