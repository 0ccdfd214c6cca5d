"""A finished (or running) training workdir's config and parameters, for sampling or a later stage."""
import jax
import ml_collections

from gen_jax import config as config_lib
from gen_jax import families, parallel
from gen_jax.config.common import MESH_AXES
from gen_jax import partition
from gen_jax.train.checkpoint import Checkpointer
from gen_jax.train.loop import abstract_train_state
from gen_jax.train.state import rng_for


def load_workdir_params(workdir: str, field: str = "--workdir") -> tuple[ml_collections.ConfigDict,
                                                                          dict]:
  """(config, params) from the workdir's saved config and newest checkpoint, on one device.

  The params are the whole tree: the checkpoint's trainable part (its EMA where the run kept
  one) merged with the frozen part rebuilt as the run built it (e.g. a LoRA run's base weights
  from its init.source).
  Raises ConfigError naming `field` when the directory is not a workdir or has no checkpoint.
  """
  config = config_lib.load_workdir_config(workdir)
  if config is None:
    raise config_lib.ConfigError(field, f"{workdir!r} has no config.json: not a training workdir")
  for axis in MESH_AXES:  # One device, whatever mesh the run trained on.
    config.mesh[axis] = 1
  config.mesh.num_devices = 1
  family = families.get(config.family)
  mesh = parallel.make_mesh(config.mesh, jax.devices()[:1])
  layout = abstract_train_state(family.param_spec(config), config, mesh)
  ckpt = Checkpointer(workdir)
  step = ckpt.latest_step()
  if step is None:
    ckpt.close()
    raise config_lib.ConfigError(field, f"{workdir!r} has no checkpoint yet")
  state, _ = ckpt.restore(step, layout.abstract)
  ckpt.close()
  with jax.set_mesh(mesh):
    _, frozen = layout.create(rng_for(config.seed, "init"), with_state=False)
  return config, partition.merge_params(state.eval_params(), frozen)
