"""The generic train step: one device equals a (data, fsdp) mesh of 8; accumulation is exact."""
import flax.linen as nn
import jax
import numpy as np
import pytest

from gen_jax import families, parallel
from gen_jax.train import NonFiniteError, abstract_train_state, make_train_step, rng_for, train_and_evaluate
from gen_jax.train.state import learning_rate_schedule
from tests.conftest import tiny_config


def _run_steps(config, workdir, num_steps=3):
  """Trains num_steps in-process; returns (losses, params on the host, state sharding of a kernel)."""
  mesh = parallel.make_mesh(config.mesh)
  task = families.get(config.family).build_task(config, workdir)
  layout = abstract_train_state(task.params, config, mesh)
  step_fn = make_train_step(task.loss_fn, layout.tx, learning_rate_schedule(config),
                            config.train.grad_accum_steps)
  rules = parallel.rules_tuple(config.logical_axis_rules)
  data = iter(task.train_data)
  losses = []
  with jax.set_mesh(mesh), nn.logical_axis_rules(rules):
    state, frozen = layout.create(rng_for(config.seed, "init"))
    step_fn = jax.jit(step_fn, out_shardings=(
        jax.tree.map(lambda x: x.sharding, layout.abstract), None))
    for _ in range(num_steps):
      state, metrics = step_fn(state, frozen, parallel.shard_batch(next(data), mesh),
                               rng_for(0, "train"))
      losses.append(float(metrics["loss"]))
  kernel = state.params["layers"]["mlp"]["wi_gate"]["kernel"] if config.family == "llm" else None
  return losses, jax.device_get(state.params), kernel


@pytest.mark.parametrize("family_config", ["configs/llm/pretrain.py", "configs/vae/digits.py"])
def test_eight_device_mesh_equals_one_device(family_config, tmp_path):
  one = tiny_config(family_config, **{"mesh.num_devices": 1})
  eight = tiny_config(family_config, **{"mesh.data": 2, "mesh.fsdp": 4})
  losses1, params1, _ = _run_steps(one, str(tmp_path / "one"))
  losses8, params8, kernel = _run_steps(eight, str(tmp_path / "eight"))
  np.testing.assert_allclose(losses8, losses1, rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4), params8, params1)
  if kernel is not None:  # [layers, embed, mlp]: embed is split over fsdp=4, as the rules say.
    assert kernel.sharding.spec == jax.sharding.PartitionSpec(None, "fsdp", None)
    shard = kernel.addressable_shards[0].data
    assert shard.shape == (kernel.shape[0], kernel.shape[1] // 4, kernel.shape[2])


def test_gradient_accumulation_equals_the_full_batch(tmp_path):
  full = tiny_config(**{"mesh.num_devices": 1})
  accumulated = tiny_config(**{"mesh.num_devices": 1, "train.grad_accum_steps": 4})
  losses_full, params_full, _ = _run_steps(full, str(tmp_path / "full"))
  losses_acc, params_acc, _ = _run_steps(accumulated, str(tmp_path / "acc"))
  np.testing.assert_allclose(losses_acc, losses_full, rtol=2e-5)
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, atol=2e-5, rtol=1e-4), params_acc, params_full)


def test_non_finite_loss_stops_the_run_naming_metric_and_step(tmp_path):
  config = tiny_config(**{"optimizer.learning_rate": 1e12, "optimizer.grad_clip_norm": 0.0,
                          "optimizer.warmup_steps": 0, "train.log_every": 1})
  with pytest.raises(NonFiniteError, match=r"train/(loss|grad_norm) is (nan|inf|-inf) at step \d+"):
    train_and_evaluate(config, str(tmp_path))


def test_a_failed_start_does_not_pin_the_workdir_to_its_config(tmp_path):
  """Fixing a typo in the data path after a failed run works in the same workdir."""
  from gen_jax.config import ConfigError
  bad = tiny_config(**{"data.source": str(tmp_path / "missing.txt"), "train.num_steps": 2})
  with pytest.raises(ConfigError, match="data.source: no such file or folder"):
    train_and_evaluate(bad, str(tmp_path / "w"))
  metrics = train_and_evaluate(tiny_config(**{"train.num_steps": 2}), str(tmp_path / "w"))
  assert np.isfinite(metrics["train/loss"])
