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


def test_epochs_and_minibatches_are_sequential_updates_on_shuffled_splits():
  """train.epochs_per_batch passes over the batch, each shuffled (by the step's rng folded with the
  epoch) and cut into train.minibatches updates; `experience` runs once, before them."""
  import jax.numpy as jnp
  import optax
  from gen_jax.train.state import TrainState

  def loss_fn(params, batch, rng):  # Mean squared distance of w to each row: grad = w - mean(x).
    del rng
    return 0.5 * ((params["w"] - batch["x"]) ** 2).sum(), {"weight": jnp.float32(len(batch["x"]))}

  def experience(params, extra, batch, rng):  # Once per step: shifts the rows, counts itself.
    return {"x": batch["x"] + 1.0}, {"calls": extra["calls"] + 1}, {"seen": batch["x"].mean()}

  x = np.random.default_rng(0).standard_normal((8, 3)).astype(np.float32)
  tx, lr = optax.sgd(0.1), lambda count: 0.1
  state = TrainState.create({"w": jnp.zeros(3)}, tx, {"calls": np.int32(0)})
  rng = jax.random.key(7)
  step = jax.jit(make_train_step(loss_fn, tx, lr, 1, experience=experience, epochs=2,
                                 minibatches=4))
  new_state, metrics = step(state, {}, {"x": jnp.asarray(x)}, rng)

  w, rows = np.zeros(3, np.float32), x + 1.0
  for epoch in range(2):
    epoch_rng = jax.random.fold_in(jax.random.fold_in(rng, 0), epoch)
    order = np.asarray(jax.random.permutation(epoch_rng, 8))
    for part in np.split(rows[order], 4):
      w = w - 0.1 * (w - part.mean(axis=0))
  np.testing.assert_allclose(np.asarray(new_state.params["w"]), w, rtol=1e-5)
  assert int(new_state.step) == 1 and int(new_state.extra["calls"]) == 1
  np.testing.assert_allclose(float(metrics["seen"]), x.mean(), rtol=1e-6)
  # A plain step is one update on the whole batch.
  plain, _ = jax.jit(make_train_step(loss_fn, tx, lr, 1))(state, {}, {"x": jnp.asarray(x)}, rng)
  np.testing.assert_allclose(np.asarray(plain.params["w"]), 0.1 * x.mean(axis=0), rtol=1e-5)


def test_optimizer_groups_update_in_phases_with_statistics_and_ema():
  """Two optimizer groups step in order (the second sees the first's update), each touching only
  its own leaves with its own optimizer state; a statistics-set leaf takes the value computed
  under the step's starting params; the EMA follows its warmed-up formula."""
  import jax.numpy as jnp
  import optax
  from gen_jax.partition import split_params
  from gen_jax.train.state import TrainState
  from gen_jax.train.step import Phase, ema_decay_at

  weight = {"weight": jnp.float32(1.0)}

  def a_loss(params, batch, rng):  # d/da = a - x.mean + b: depends on b, which phase "b" moves.
    return 0.5 * ((params["a"]["w"] + params["b"]["w"] - batch["x"].mean(0)) ** 2).sum(), weight

  def b_loss(params, batch, rng):  # d/db = b - 2a: sees the a that phase "a" just wrote.
    return 0.5 * ((params["b"]["w"] - 2 * params["a"]["w"]) ** 2).sum(), weight

  def statistics(params, batch, rng):  # The running mean of x, and a metric.
    return {("stats", "mean"): 0.5 * params["stats"]["mean"] + 0.5 * batch["x"].mean(0)}, {
        "stat_metric": batch["x"].sum()}

  owns_a = lambda p: p[0] in ("a", "stats")  # noqa: E731 (the stats leaf gets a zero gradient)
  owns_b = lambda p: p[0] == "b"  # noqa: E731
  tx_a, tx_b = optax.sgd(0.5), optax.adam(0.1)
  params = {"a": {"w": jnp.ones(2)}, "b": {"w": jnp.full(2, 3.0)}, "stats": {"mean": jnp.zeros(2)}}
  state = TrainState.create(params, {"a": (owns_a, tx_a), "b": (owns_b, tx_b)}, ema=True)
  assert set(state.opt_state) == {"a", "b"}
  phases = (Phase("a", a_loss, owns_a, tx_a), Phase("b", b_loss, owns_b, tx_b))
  step = jax.jit(make_train_step(None, None, lambda count: 0.0, 1, phases=phases, ema_decay=0.9,
                                 statistics_update=statistics))
  x = jnp.asarray([[1.0, 2.0], [3.0, 6.0]])
  new, metrics = step(state, {}, {"x": x}, jax.random.key(0))

  a0, b0, mean_x = np.ones(2), np.full(2, 3.0), np.array([2.0, 4.0])
  a1 = a0 - 0.5 * (a0 + b0 - mean_x)
  b_grad = b0 - 2 * a1
  b_update, _ = tx_b.update({"w": jnp.asarray(b_grad)}, tx_b.init({"w": jnp.asarray(b0)}))
  b1 = b0 + np.asarray(b_update["w"])
  np.testing.assert_allclose(new.params["a"]["w"], a1, rtol=1e-6)
  np.testing.assert_allclose(new.params["b"]["w"], b1, rtol=1e-6)
  np.testing.assert_allclose(new.params["stats"]["mean"], 0.5 * mean_x, rtol=1e-6)
  np.testing.assert_allclose(float(metrics["a/loss"]), 0.5 * ((a0 + b0 - mean_x) ** 2).sum())
  np.testing.assert_allclose(float(metrics["b/loss"]), 0.5 * (b_grad ** 2).sum(), rtol=1e-6)
  assert float(metrics["stat_metric"]) == 12.0
  # Adam's state advanced for b only; the sgd state of group a holds no b leaves.
  assert int(new.opt_state["b"][0].count) == 1
  assert set(split_params(new.params, owns_a)[0]) == {"a", "stats"}
  decay = float(ema_decay_at(0, 0.9))
  assert decay == pytest.approx(0.1)  # (1 + 0) / (10 + 0): the warmup, below the 0.9 cap.
  assert float(ema_decay_at(10_000, 0.9)) == pytest.approx(0.9)
  for path, start in (("a", a0), ("b", b0)):
    np.testing.assert_allclose(new.ema[path]["w"], decay * start + (1 - decay) * new.params[path]["w"],
                               rtol=1e-6)
  assert new.eval_params() is new.ema
