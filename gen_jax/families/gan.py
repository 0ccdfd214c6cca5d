"""The gan family: a DCGAN (Radford et al., 2016) trained in two phases per step.

The params tree is {"generator": ..., "discriminator": ...}, one optimizer each: every train step
first updates the discriminator (its loss on the batch's real images against fresh fakes, plus
the R1 penalty when gan.r1_weight > 0) with `discriminator_optimizer`, then the generator (its
loss against the just-updated discriminator) with `optimizer`. Fakes take the real batch's labels
in class-conditional models, so the classes keep the data's frequencies. With train.ema_decay > 0
evaluation and sampling use the EMA of both networks.

Held-out evaluation reports the discriminator's loss (eval/loss) and accuracy on held-out real
images against as many fakes, and the generator's loss.
"""
import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import data as data_lib
from gen_jax.config.errors import ConfigError, require
from gen_jax.families import images
from gen_jax.models.gan import Discriminator, GANConfig, Generator
from gen_jax.objectives.gan import GAN_LOSSES, discriminator_loss, generator_loss, r1_penalty
from gen_jax.train.state import rng_for
from gen_jax.train.task import WEIGHT, OptimizerGroup, ParamSpec, Task

GENERATOR, DISCRIMINATOR = "generator", "discriminator"


def _validate_optimizer(config, section: str) -> None:
  """The checks validate_common makes of `optimizer`, for another optimizer section."""
  o = config[section]
  require(o.learning_rate > 0, f"{section}.learning_rate",
          f"must be positive, got {o.learning_rate}")
  require(o.warmup_steps >= 0, f"{section}.warmup_steps", f"must be >= 0, got {o.warmup_steps}")
  require(0 <= o.min_lr_ratio <= 1, f"{section}.min_lr_ratio",
          f"must be in [0, 1], got {o.min_lr_ratio}")
  require(o.weight_decay >= 0, f"{section}.weight_decay", f"must be >= 0, got {o.weight_decay}")
  require(0 <= o.b1 < 1 and 0 <= o.b2 < 1, f"{section}.b1/b2",
          f"must be in [0, 1), got {o.b1}, {o.b2}")
  require(o.grad_clip_norm >= 0, f"{section}.grad_clip_norm",
          f"must be >= 0, got {o.grad_clip_norm}")


def validate(config: ml_collections.ConfigDict) -> None:
  images.validate_image_config(config)
  m = config.model
  for name in ("generator_channels", "discriminator_channels"):
    require(len(m[name]) > 0 and all(c > 0 for c in m[name]), f"model.{name}",
            f"must be a non-empty tuple of positive widths, got {m[name]}")
  upsampling = 2 ** len(m.generator_channels)
  require(m.image_size % upsampling == 0, "model.image_size",
          f"{m.image_size} must be divisible by 2**len(model.generator_channels) = {upsampling}")
  require(m.latent_dim > 0, "model.latent_dim", f"must be positive, got {m.latent_dim}")
  require(m.num_classes >= 0, "model.num_classes",
          f"must be >= 0 (0: unconditional), got {m.num_classes}")
  require(config.gan.loss in GAN_LOSSES, "gan.loss",
          f"{config.gan.loss!r} is not one of {GAN_LOSSES}")
  require(config.gan.r1_weight >= 0, "gan.r1_weight",
          f"must be >= 0 (0 disables R1), got {config.gan.r1_weight}")
  _validate_optimizer(config, "discriminator_optimizer")


def models(config) -> tuple[Generator, Discriminator]:
  model_config = GANConfig.from_config(config.model)
  return Generator(model_config), Discriminator(model_config)


def param_spec(config) -> ParamSpec:
  """A random init of both networks; the discriminator's optimizer steps first."""
  generator, discriminator = models(config)
  m = config.model
  z = jnp.zeros((1, m.latent_dim), jnp.float32)
  labels = jnp.zeros((1,), jnp.int32)
  dummy = jnp.zeros((1, *images.image_shape(config)), jnp.float32)

  def init(rng):
    g_rng, d_rng = jax.random.split(rng)
    return {GENERATOR: generator.init(g_rng, z, labels)["params"],
            DISCRIMINATOR: discriminator.init(d_rng, dummy, labels)["params"]}

  return ParamSpec(init, optimizers=(
      OptimizerGroup(DISCRIMINATOR, lambda path: path[0] == DISCRIMINATOR,
                     section="discriminator_optimizer"),
      OptimizerGroup(GENERATOR, lambda path: path[0] == GENERATOR, section="optimizer"),
  ))


def _networks(config):
  """(generate(params, rng, labels, n) -> images [n, H, W, C], discriminate(params, images,
  labels) -> logits [n], labels_of(batch) -> labels [b] or None (unconditional))."""
  generator, discriminator = models(config)
  conditional = config.model.num_classes > 0

  def generate(params, rng, labels, num_images: int):
    z = jax.random.normal(rng, (num_images, config.model.latent_dim))
    return generator.apply({"params": params[GENERATOR]}, z, labels)

  def discriminate(params, image_batch, labels):
    return discriminator.apply({"params": params[DISCRIMINATOR]}, image_batch, labels)

  def labels_of(batch):
    return batch["labels"] if conditional else None

  return generate, discriminate, labels_of


def make_phase_losses(config) -> dict:
  """{"discriminator": d_loss_fn, "generator": g_loss_fn}, each loss_fn(params, batch, rng) ->
  (loss sum, sums); batch["images"]: [b, H, W, C]."""
  generate, discriminate, labels_of = _networks(config)
  loss_type, r1_weight = config.gan.loss, config.gan.r1_weight

  def d_loss_fn(params, batch, rng):
    real, labels, w = batch["images"], labels_of(batch), batch[data_lib.EXAMPLE_WEIGHT]
    # This phase trains the discriminator only: no need to backpropagate into the generator.
    fake = jax.lax.stop_gradient(generate(params, rng, labels, real.shape[0]))
    real_logits = discriminate(params, real, labels)
    fake_logits = discriminate(params, fake, labels)
    loss = discriminator_loss(real_logits, fake_logits, loss_type)  # [b]
    sums = {"real_logit": (real_logits * w).sum(), "fake_logit": (fake_logits * w).sum()}
    if r1_weight > 0:
      r1 = r1_penalty(lambda x: discriminate(params, x, labels), real)  # [b]
      loss = loss + 0.5 * r1_weight * r1  # Mescheder et al.'s gamma / 2.
      sums["r1"] = (r1 * w).sum()
    return (loss * w).sum(), {WEIGHT: w.sum(), **sums}

  def g_loss_fn(params, batch, rng):
    labels, w = labels_of(batch), batch[data_lib.EXAMPLE_WEIGHT]
    fake_logits = discriminate(params, generate(params, rng, labels, w.shape[0]), labels)
    loss = generator_loss(fake_logits, loss_type)  # [b]
    return (loss * w).sum(), {WEIGHT: w.sum(), "fake_logit": (fake_logits * w).sum()}

  return {DISCRIMINATOR: d_loss_fn, GENERATOR: g_loss_fn}


def make_eval_loss_fn(config):
  """Held-out loss_fn: the discriminator's loss (the reported loss) and accuracy on real images
  against as many fakes, and the generator's loss, as sums over the batch."""
  generate, discriminate, labels_of = _networks(config)
  loss_type = config.gan.loss

  def loss_fn(params, batch, rng):
    real, labels, w = batch["images"], labels_of(batch), batch[data_lib.EXAMPLE_WEIGHT]
    real_logits = discriminate(params, real, labels)
    fake_logits = discriminate(params, generate(params, rng, labels, real.shape[0]), labels)
    d_loss = discriminator_loss(real_logits, fake_logits, loss_type)
    g_loss = generator_loss(fake_logits, loss_type)
    # Half for the real image called real, half for the fake called fake.
    accuracy = 0.5 * ((real_logits > 0).astype(jnp.float32) + (fake_logits < 0).astype(jnp.float32))
    return (d_loss * w).sum(), {WEIGHT: w.sum(), "generator_loss": (g_loss * w).sum(),
                                "discriminator_accuracy": (accuracy * w).sum()}
  return loss_fn


def dry_run_inputs(config):
  """({group: phase loss}, global batch shapes) without reading data."""
  return make_phase_losses(config), images.batch_shapes(config)


def _grid_labels(config) -> tuple[np.ndarray, int | None]:
  """(labels [n], columns) of an eval grid: one row per class for conditional models."""
  m, n = config.model, config.sample.num_images
  if m.num_classes == 0:
    return np.zeros((n,), np.int32), None
  per_class = max(1, round(n / m.num_classes))
  return np.repeat(np.arange(m.num_classes, dtype=np.int32), per_class), per_class


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  del resuming  # Nothing is derived from the data that a resume must reuse.
  data = images.load_data(config)
  m = config.model
  require(m.num_classes in (0, data.num_classes), "model.num_classes",
          f"{m.num_classes}, but data.source {config.data.source!r} has {data.num_classes} "
          f"classes; use 0 (unconditional) or {data.num_classes}")
  generate, _, _ = _networks(config)
  grid_labels, grid_cols = _grid_labels(config)
  conditional = m.num_classes > 0

  @jax.jit
  def sample_grid(params, rng):
    return generate(params, rng, jnp.asarray(grid_labels) if conditional else None,
                    len(grid_labels))

  def on_eval(params, step):
    # The same latents at every eval, so the grids show how the generator moves.
    grid = sample_grid(params, rng_for(config.seed, "sample"))
    options = {"num_cols": grid_cols} if grid_cols else {}
    images.write_eval_grid(workdir, "samples", step, grid, **options)
    return {}

  train_data, eval_data = images.pipelines(config, data)
  return Task(
      params=param_spec(config),
      loss_fn=make_eval_loss_fn(config),
      train_data=train_data,
      eval_data=eval_data,
      eval_metrics=lambda totals: {},
      throughput_unit="examples",
      units_per_example=1,
      on_eval=on_eval,
      phase_losses=make_phase_losses(config),
      progress_metric=f"{GENERATOR}/loss",
  )


def generate(config, params, workdir: str, request):
  """(request.num_samples generated images, what they are). Class-conditional models draw every
  image from request.class_label, or cycle through the classes when it is None."""
  del workdir
  m = config.model
  if request.guidance is not None:
    raise ConfigError("--guidance", "a GAN has no classifier-free guidance")
  n = request.num_samples
  if m.num_classes == 0:
    require(request.class_label is None, "--class", "this GAN is not class-conditional "
            "(model.num_classes = 0)")
    labels = None
  elif request.class_label is None:
    labels = jnp.arange(n, dtype=jnp.int32) % m.num_classes
  else:
    require(0 <= request.class_label < m.num_classes, "--class",
            f"must be in [0, {m.num_classes}), got {request.class_label}")
    labels = jnp.full((n,), request.class_label, jnp.int32)
  generator, _, _ = _networks(config)
  samples = jax.jit(generator, static_argnums=3)(params, jax.random.key(request.seed), labels, n)
  what = "samples" if request.class_label is None else f"samples of class {request.class_label}"
  return samples, what
