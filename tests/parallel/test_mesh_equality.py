"""The LLM's loss and gradients are the same on one device and on every kind of 8-device mesh, and
each device holds the share of the parameters and optimizer state the sharding rules promise."""
import math

import flax.linen as nn
import jax
import numpy as np
import pytest

from gen_jax import families, parallel
from gen_jax.train import abstract_train_state, rng_for
from tests.conftest import tiny_config

MESHES = {
    "data": {"mesh.data": 8},
    "fsdp": {"mesh.data": 1, "mesh.fsdp": 8},
    "tensor": {"mesh.data": 2, "mesh.tensor": 4},
    "sequence": {"mesh.data": 2, "mesh.sequence": 4},
    "mixed": {"mesh.data": 2, "mesh.fsdp": 2, "mesh.tensor": 2},
}


def _loss_and_grads(config, workdir):
  """(loss, grads on the host, the sharded train state) for the first training batch."""
  mesh = parallel.make_mesh(config.mesh)
  task = families.get(config.family).build_task(config, workdir)
  layout = abstract_train_state(task.params, config, mesh)
  param_shardings = jax.tree.map(lambda x: x.sharding, layout.abstract.params)

  def loss_and_grads(params, batch):
    (loss_sum, sums), grads = jax.value_and_grad(task.loss_fn, has_aux=True)(params, batch, None)
    weight = sums["weight"]
    return loss_sum / weight, jax.tree.map(lambda g: g / weight, grads)

  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.rules_tuple(config.logical_axis_rules)):
    state, _ = layout.create(rng_for(config.seed, "init"))
    batch = parallel.shard_batch(next(iter(task.train_data)), mesh)
    step = jax.jit(loss_and_grads, out_shardings=(None, param_shardings))
    loss, grads = step(state.params, batch)
  return float(loss), jax.device_get(grads), state


# One worker runs this module, so its session fixtures load once.
pytestmark = pytest.mark.xdist_group("mesh_equality")


@pytest.fixture(scope="session")
def one_device(tmp_path_factory):
  return _loss_and_grads(tiny_config(**{"mesh.num_devices": 1}), str(tmp_path_factory.mktemp("one")))


@pytest.mark.parametrize("mesh", MESHES)
def test_loss_and_gradients_equal_one_device(mesh, one_device, tmp_path):
  loss1, grads1, _ = one_device
  loss8, grads8, _ = _loss_and_grads(tiny_config(**MESHES[mesh]), str(tmp_path))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), grads8, grads1)


def _bytes_on_first_device(tree) -> int:
  device = jax.devices()[0]
  return sum(shard.data.nbytes for leaf in jax.tree.leaves(tree)
             for shard in leaf.addressable_shards if shard.device == device)


def _bytes_of(params, *names: str) -> int:
  flat = jax.tree_util.tree_flatten_with_path(params)[0]
  return sum(leaf.nbytes for path, leaf in flat
             if any(f"'{name}'" in jax.tree_util.keystr(path) for name in names))


# Per-device share of the parameters (and of Adam's two moments), worked out by hand from
# DEFAULT_LOGICAL_AXIS_RULES: every matrix has an `embed` axis (fsdp) and one of heads / kv_heads /
# mlp / vocab (tensor); the norm scales have only `embed`. The tiny model has 2 kv heads, which a
# 4-way tensor axis cannot split: the key and value kernels stay whole there (and are split 2-way
# by the mixed mesh).
EXPECTED_SHARE = {
    "data": lambda total, norms, kv: total,  # Pure data parallelism replicates everything.
    "fsdp": lambda total, norms, kv: total / 8,
    "tensor": lambda total, norms, kv: (total - norms - kv) / 4 + norms + kv,
    "sequence": lambda total, norms, kv: total,  # Splits activations, not parameters.
    "mixed": lambda total, norms, kv: (total - norms) / 4 + norms / 2,
}


@pytest.mark.parametrize("mesh", MESHES)
def test_per_device_parameter_and_optimizer_bytes_follow_the_rules(mesh, one_device):
  _, _, state1 = one_device
  config = tiny_config(**MESHES[mesh])
  spec = families.get("llm").param_spec(config)
  layout = abstract_train_state(spec, config, parallel.make_mesh(config.mesh))
  with jax.set_mesh(parallel.make_mesh(config.mesh)):
    state, _ = layout.create(rng_for(config.seed, "init"))
  total = sum(x.nbytes for x in jax.tree.leaves(state1.params))
  expected = EXPECTED_SHARE[mesh](total, _bytes_of(state1.params, "attention_norm", "mlp_norm",
                                                    "final_norm"),
                                  _bytes_of(state1.params, "key", "value"))
  assert _bytes_on_first_device(state.params) == expected
  adam = state.opt_state  # mu and nu are shaped and sharded like the parameters; step counts are scalars.
  scalars = sum(math.prod(x.shape) == 1 for x in jax.tree.leaves(adam)) * 4
  assert _bytes_on_first_device(adam) == 2 * expected + scalars


@pytest.mark.parametrize("mode", ["ring", "striped_ring"])
@pytest.mark.parametrize("impl", ["xla", "pallas"])
def test_ring_attention_inside_the_sharded_model_equals_one_device(mode, impl, one_device,
                                                                    tmp_path):
  """model.sequence_parallel="ring" or "striped_ring" (the model runs on the sequence in stripe
  order) on a data x sequence mesh: the train step's loss and gradients are one device's."""
  loss1, grads1, _ = one_device
  config = tiny_config(**MESHES["sequence"], **{"model.attention_impl": impl,
                                                "model.sequence_parallel": mode})
  loss8, grads8, _ = _loss_and_grads(config, str(tmp_path))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), grads8, grads1)


def test_logit_chunks_on_a_sequence_mesh_equal_one_device(one_device, tmp_path):
  """objective.logit_chunks slices the positions across the whole length, so each slice is split
  over the sequence axis like the length: loss and gradients as on one device."""
  loss1, grads1, _ = one_device
  config = tiny_config(**MESHES["sequence"], **{"objective.logit_chunks": 8})
  loss8, grads8, _ = _loss_and_grads(config, str(tmp_path))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), grads8, grads1)


@pytest.mark.parametrize("mesh", ["mixed", "sequence"])
def test_pallas_flash_attention_inside_the_sharded_model_equals_one_device(mesh, one_device, tmp_path):
  """The flash kernel (interpreted on CPU) runs per shard through shard_map inside the train step."""
  loss1, grads1, _ = one_device
  config = tiny_config(**MESHES[mesh], **{"model.attention_impl": "pallas"})
  loss8, grads8, _ = _loss_and_grads(config, str(tmp_path))
  np.testing.assert_allclose(loss8, loss1, rtol=1e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=1e-6, rtol=1e-4), grads8, grads1)
