"""The flow family: Glow (Kingma & Dhariwal, 2018) trained by maximum likelihood on uniformly
dequantized images, reporting bits/dim, with sample grids at eval.

The training loss is the negative log-likelihood bound in bits/dim (gen_jax.objectives.flow), so
"loss" and "bits_per_dim" read the same; "nats_per_image" is reported beside them. Held-out
numbers use one dequantization draw per image (fixed across evals): an unbiased estimate of the
discrete bound, not the exact discrete likelihood.

Actnorm starts data-dependent: build_task closes the init over the first flow.init_batch_size
training images (ParamSpec.init then normalizes their activations at every actnorm), while
`param_spec(config)` alone, which gen_jax.sample and shape checks use, starts actnorm at the
identity (the shapes are the same; the values come from the checkpoint).
"""
import functools
import math

import jax
import jax.numpy as jnp
import ml_collections

from gen_jax import data as data_lib
from gen_jax.config.errors import ConfigError, require
from gen_jax.families import images
from gen_jax.models.flow import FlowConfig, Glow
from gen_jax.objectives.flow import dequantize, negative_log_likelihood
from gen_jax.train.state import rng_for
from gen_jax.train.task import WEIGHT, ParamSpec, Task


def validate(config: ml_collections.ConfigDict) -> None:
  images.validate_image_config(config)
  m = config.model
  for name in ("levels", "steps_per_level", "hidden_channels"):
    require(m[name] > 0, f"model.{name}", f"must be positive, got {m[name]}")
  # Each level's 2x2 squeeze needs an even size. It also makes 4x the channels (4 *
  # image_channels, then twice the kept half), so every coupling and split has an even number of
  # channels to halve: no channel count can be wrong.
  require(m.image_size % 2 ** m.levels == 0, "model.image_size",
          f"{m.image_size} must be divisible by 2**model.levels = {2 ** m.levels}")
  require(m.max_log_scale > 0, "model.max_log_scale", f"must be positive, got {m.max_log_scale}")
  require(config.flow.init_batch_size >= 0, "flow.init_batch_size",
          f"must be >= 0 (0: actnorm starts as the identity), got {config.flow.init_batch_size}")
  require(config.sample.temperature > 0, "sample.temperature",
          f"must be positive, got {config.sample.temperature}")


def model(config) -> Glow:
  return Glow(FlowConfig.from_config(config.model))


def param_spec(config, init_images=None, num_levels: int | None = None) -> ParamSpec:
  """Every parameter trains. init_images [n, H, W, C] in [-1, 1] on num_levels levels (a numpy
  array the init closes over): actnorm's data-dependent init from them, dequantized with the init
  rng; None: actnorm starts as the identity."""
  net = model(config)
  if init_images is None:
    dummy = jnp.zeros((1, *images.image_shape(config)), jnp.float32)
    return ParamSpec(lambda rng: net.init(rng, dummy, method=Glow.forward)["params"])

  def init(rng):
    init_rng, noise_rng = jax.random.split(rng)
    x = dequantize(jnp.asarray(init_images), noise_rng, num_levels)
    return net.init(init_rng, x, data_init=True, method=Glow.forward)["params"]
  return ParamSpec(init)


def make_loss_fn(config, num_levels: int):
  """loss_fn(params, batch, rng) -> (bits/dim summed over images, sums); batch["images"]:
  [b, H, W, C]."""
  net = model(config)
  num_dims = math.prod(images.image_shape(config))

  def loss_fn(params, batch, rng):
    x = dequantize(batch["images"], rng, num_levels)
    log_density = net.apply({"params": params}, x, method=Glow.log_prob)
    terms = negative_log_likelihood(log_density, num_dims, num_levels)
    w = batch[data_lib.EXAMPLE_WEIGHT]
    sums = {k: (v * w).sum() for k, v in terms.items()}
    return sums["bits_per_dim"], {WEIGHT: w.sum(), **sums}
  return loss_fn


def dry_run_inputs(config):
  """(loss_fn, global batch shapes) without reading data; the pixel levels do not change shapes."""
  return make_loss_fn(config, num_levels=256), images.batch_shapes(config)


def _sampler(config):
  """A jitted (params, rng, num_samples, temperature) -> images [n, H, W, C]: the continuous
  samples, which the PNG writers clip to [-1, 1] (rounding to the data's levels would move each
  value by at most half a bin)."""
  net = model(config)

  @functools.partial(jax.jit, static_argnums=2)
  def generate(params, rng, num_samples, temperature):
    return net.apply({"params": params}, rng, num_samples, temperature, method=Glow.sample)
  return generate


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  del resuming  # A resume restores the data-initialized params from the checkpoint.
  data = images.load_data(config)
  n = config.flow.init_batch_size
  init_images = data.train["images"][:n] if n > 0 else None
  generate = _sampler(config)

  def on_eval(params, step):
    # The same latents at every eval, so the grids show how the flow moves.
    grid = generate(params, rng_for(config.seed, "sample"), config.sample.num_images,
                    config.sample.temperature)
    images.write_eval_grid(workdir, "samples", step, grid)
    return {}

  train_data, eval_data = images.pipelines(config, data)
  return Task(
      params=param_spec(config, init_images, data.num_levels),
      loss_fn=make_loss_fn(config, data.num_levels),
      train_data=train_data,
      eval_data=eval_data,
      eval_metrics=lambda totals: {},  # eval/bits_per_dim comes from the loss's sums.
      throughput_unit="examples",
      units_per_example=1,
      on_eval=on_eval,
      progress_metric="bits_per_dim",
  )


def generate(config, params, workdir: str, request):
  """(request.num_samples samples, "samples"). The prior's temperature is request.temperature
  when > 0, else config.sample.temperature."""
  del workdir
  if request.guidance is not None:
    raise ConfigError("--guidance", "a flow has no classifier-free guidance")
  require(request.class_label is None, "--class", "this flow is not class-conditional")
  temperature = request.temperature if request.temperature > 0 else config.sample.temperature
  samples = _sampler(config)(params, jax.random.key(request.seed), request.num_samples,
                             temperature)
  return samples, "samples"
