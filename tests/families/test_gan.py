"""The gan family: one train step against a manual two-phase update, the CLI end to end, a
diverging run, and bad config."""
import functools
import json
import os
import re

import flax.linen as nn
import jax
import numpy as np
import optax
import pytest
from PIL import Image

from gen_jax import parallel
from gen_jax.config import ConfigError
from gen_jax.families import gan
from gen_jax.sample import SampleRequest
from gen_jax.train import abstract_train_state, rng_for, validate
from gen_jax.train.loop import build_train_step
from tests.conftest import checkpoint_tree, run_cli, tiny_config

CONFIG = "configs/gan/digits.py"
# One worker, in file order: the later tests find the CLI run's compiled init and step in the
# test run's compilation cache.
pytestmark = pytest.mark.xdist_group("gan")


def test_trains_checkpoints_both_optimizers_and_samples_a_class(tmp_path):
  workdir = str(tmp_path / "gan")
  # No TensorBoard: its writer's import costs seconds, and the LLM's CLI test covers it.
  result = run_cli("gen_jax.main", f"--config={CONFIG}:tiny", f"--workdir={workdir}",
                   "--config.logging.tensorboard=false", "--config.mesh.num_devices=1")
  assert result.returncode == 0, result.stderr[-3000:]
  with open(os.path.join(workdir, "metrics.jsonl")) as f:
    records = [json.loads(line) for line in f]
  train = [r for r in records if "train/generator/loss" in r]
  assert [r["step"] for r in train] == [1, 5, 10, 15, 20]
  for name in ("discriminator/loss", "discriminator/grad_norm", "discriminator/r1",
               "discriminator/real_logit", "discriminator/fake_logit", "generator/loss",
               "generator/grad_norm", "generator/fake_logit"):
    assert all(np.isfinite(r[f"train/{name}"]) for r in train), name
  # The discriminator learned to tell them apart: real images score above fakes.
  assert train[-1]["train/discriminator/real_logit"] > train[-1]["train/discriminator/fake_logit"]
  evals = [r for r in records if "eval/loss" in r]
  assert [r["step"] for r in evals] == [10, 20]
  assert all(0 <= r["eval/discriminator_accuracy"] <= 1 and np.isfinite(r["eval/generator_loss"])
             for r in evals)
  tree = checkpoint_tree(workdir, 20)
  for name in ("discriminator", "generator"):
    owned = {k[5] for k in tree if k[:2] == ("opt_state", name) and "mu" in k}
    assert owned == {name}, (name, owned)  # Each optimizer holds moments of its own network only.
    assert ("ema", name, "Conv_0" if name == "discriminator" else "project", "kernel") in tree
  # One row per class: 10 classes x 2 columns of 8x8 digits (1-pixel borders, 4x enlarged).
  grid = np.asarray(Image.open(os.path.join(workdir, "images", "samples_000020.png")))
  assert grid.shape == ((10 * 9 + 1) * 4, (2 * 9 + 1) * 4) and grid.std() > 5

  sample = run_cli("gen_jax.sample", f"--workdir={workdir}", "--num_samples=16", "--class=2")
  assert sample.returncode == 0, sample.stderr[-3000:]
  assert "Wrote 16 samples" in sample.stdout
  grid = np.asarray(Image.open(os.path.join(workdir, "samples.png")))
  assert grid.shape == ((4 * 9 + 1) * 4,) * 2 and grid.std() > 5


def test_one_step_updates_the_discriminator_then_the_generator(tmp_path):
  """The loop's jitted step equals, leaf for leaf, a manual Adam update of the discriminator from
  its loss, then of the generator from its loss against the already updated discriminator."""
  config = tiny_config(CONFIG, **{"mesh.num_devices": 1})  # As the CLI test runs it.
  mesh = parallel.make_mesh(config.mesh)
  task = gan.build_task(config, str(tmp_path))
  layout = abstract_train_state(task.params, config, mesh)
  step = build_train_step(config, layout, task.loss_fn, phase_losses=task.phase_losses)
  rng = rng_for(config.seed, "train")
  host_batch = next(iter(task.train_data))
  # Created and jitted as the loop does, so the CLI test's compilations are found in the test
  # run's cache.
  with jax.set_mesh(mesh):
    state, frozen = layout.create(rng_for(config.seed, "init"))
  start = jax.device_get(state.params)
  with jax.set_mesh(mesh), nn.logical_axis_rules(parallel.rules_tuple(config.logical_axis_rules)):
    new, metrics = jax.jit(step, donate_argnums=0, out_shardings=(
        jax.tree.map(lambda x: x.sharding, layout.abstract), None))(
            state, frozen, parallel.shard_batch(host_batch, mesh), rng)
  new, metrics = jax.device_get((new, metrics))
  assert frozen == {} and set(new.opt_state) == {"discriminator", "generator"}

  # The reference needs no speed: unoptimized, it compiles in half the time.
  @functools.partial(jax.jit, static_argnums=0, compiler_options={
      "xla_backend_optimization_level": 0, "xla_llvm_disable_expensive_passes": True})
  def manual_update(phase, params):
    """Phase `phase` (0: D, 1: G) of step 0 on `params`, its rng folded as the step folds it."""
    name = ("discriminator", "generator")[phase]
    phase_rng = jax.random.fold_in(jax.random.fold_in(jax.random.fold_in(rng, 0), phase), 0)
    def loss(own):
      return task.phase_losses[name]({**params, name: own}, host_batch, phase_rng)
    (loss_sum, sums), grads = jax.value_and_grad(loss, has_aux=True)(params[name])
    grads = jax.tree.map(lambda g: g / sums["weight"], grads)
    tx = layout.tx[name][1]
    updates, _ = tx.update(grads, tx.init(params[name]), params[name])
    return optax.apply_updates(params[name], updates), loss_sum / sums["weight"]

  # Adam's first step is +-learning_rate (2e-4) wherever the gradient is not ~0.
  close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6)  # noqa: E731
  discriminator, d_loss = jax.device_get(manual_update(0, start))
  jax.tree.map(close, new.params["discriminator"], discriminator)
  generator, g_loss = jax.device_get(
      manual_update(1, {**start, "discriminator": new.params["discriminator"]}))
  jax.tree.map(close, new.params["generator"], generator)
  np.testing.assert_allclose(metrics["discriminator/loss"], d_loss, rtol=1e-5)
  np.testing.assert_allclose(metrics["generator/loss"], g_loss, rtol=1e-5)
  # Both networks moved, every leaf; the generator's update saw the new discriminator (against the
  # old one it would differ), and each optimizer counted one update.
  def distances(a, b):  # The largest change of each leaf.
    return jax.tree.leaves(jax.tree.map(lambda x, y: np.abs(x - y).max(), a, b))
  for name in ("discriminator", "generator"):
    assert min(distances(new.params[name], start[name])) > 1e-5, name
  stale, _ = jax.device_get(manual_update(1, start))
  assert max(distances(stale, generator)) > 1e-5
  assert metrics["discriminator/r1"] > 0  # The tiny preset's R1 is on.
  assert int(new.opt_state["discriminator"][0][0].count) == 1
  assert int(new.opt_state["generator"][0][0].count) == 1


def test_a_diverging_run_stops_naming_the_metric(tmp_path):
  """A discriminator step of 1e30 makes the generator's logits overflow in the same step."""
  result = run_cli("gen_jax.main", f"--config={CONFIG}:tiny", f"--workdir={tmp_path}",
                   "--config.discriminator_optimizer.learning_rate=1e30",
                   "--config.discriminator_optimizer.grad_clip_norm=0", "--config.gan.r1_weight=0",
                   "--config.train.log_every=1", "--config.logging.tensorboard=false",
                   "--config.mesh.num_devices=1")
  assert result.returncode == 3, result.stderr[-3000:]
  # (Here: train/generator/fake_logit is nan at step 1.)
  assert re.search(r"Training stopped: train/(discriminator|generator)/\w+ is (nan|inf|-inf) at "
                   r"step 1;", result.stderr), result.stderr[-3000:]


BAD = [
    ({"gan.loss": "wgan"}, r"gan.loss: 'wgan' is not one of \('non_saturating', 'hinge'\)"),
    ({"gan.r1_weight": -1.0}, "gan.r1_weight: must be >= 0"),
    ({"discriminator_optimizer.b1": 1.0}, "discriminator_optimizer.b1/b2: must be in"),
    ({"discriminator_optimizer.learning_rate": 0.0},
     "discriminator_optimizer.learning_rate: must be positive"),
    ({"model.generator_channels": (8, 8, 8, 8)},
     r"model.image_size: 8 must be divisible by 2\*\*len\(model.generator_channels\) = 16"),
    ({"model.discriminator_channels": ()}, "model.discriminator_channels: must be a non-empty"),
    ({"model.num_classes": -1}, "model.num_classes: must be >= 0"),
]


def test_bad_config_and_sample_requests_fail_naming_the_field(tmp_path):
  for overrides, message in BAD:
    with pytest.raises(ConfigError, match=message):
      validate(tiny_config(CONFIG, **overrides))
  with pytest.raises(ConfigError, match="model.num_classes: 7, but data.source 'digits' has 10"):
    gan.build_task(tiny_config(CONFIG, **{"model.num_classes": 7}), str(tmp_path))
  config = tiny_config(CONFIG)  # sample() checks the request before it touches the params.
  with pytest.raises(ConfigError, match=r"--class: must be in \[0, 10\), got 10"):
    gan.generate(config, None, str(tmp_path), SampleRequest(class_label=10))
  with pytest.raises(ConfigError, match="--guidance: a GAN has no classifier-free guidance"):
    gan.generate(config, None, str(tmp_path), SampleRequest(guidance=2.0))
  unconditional = tiny_config(CONFIG, **{"model.num_classes": 0})
  with pytest.raises(ConfigError, match="--class: this GAN is not class-conditional"):
    gan.generate(unconditional, None, str(tmp_path), SampleRequest(class_label=1))
