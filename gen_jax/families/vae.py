"""The vae family: a convolutional VAE trained on the negative ELBO, with PNG grids at eval."""
import math

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import data as data_lib
from gen_jax import objectives
from gen_jax.config.errors import require
from gen_jax.families import images
from gen_jax.models.vae import VAE, VAEConfig
from gen_jax.train.state import rng_for
from gen_jax.train.task import WEIGHT, ParamSpec, Task

def validate(config: ml_collections.ConfigDict) -> None:
  images.validate_image_config(config)
  m = config.model
  require(len(m.channels) > 0 and all(c > 0 for c in m.channels), "model.channels",
          f"must be a non-empty tuple of positive widths, got {m.channels}")
  require(m.image_size % 2 ** len(m.channels) == 0, "model.image_size",
          f"{m.image_size} must be divisible by 2**len(model.channels) = {2 ** len(m.channels)}")
  require(m.latent_dim > 0, "model.latent_dim", f"must be positive, got {m.latent_dim}")
  require(config.objective.kl_weight >= 0, "objective.kl_weight",
          f"must be >= 0, got {config.objective.kl_weight}")


def model(config) -> VAE:
  return VAE(VAEConfig.from_config(config.model))


def param_spec(config) -> ParamSpec:
  """A random init; every parameter trains."""
  net = model(config)
  m = config.model
  dummy = jnp.zeros((1, m.image_size, m.image_size, m.image_channels), jnp.float32)
  return ParamSpec(lambda rng: net.init(rng, dummy, rng)["params"])


def decode_samples(net: VAE, params, rng, num_images: int) -> jax.Array:
  """Decoder means for z ~ N(0, I): [num_images, H, W, C] in [-1, 1]."""
  z = jax.random.normal(rng, (num_images, *net.latent_shape()))
  return net.apply({"params": params}, z, method=VAE.decode)[0]


def make_loss_fn(config, num_levels: int):
  """loss_fn(params, batch, rng) -> (negative-ELBO sum, sums); batch["images"]: [b, H, W, C]."""
  net = model(config)

  def loss_fn(params, batch, rng):
    decoded, posterior = net.apply({"params": params}, batch["images"], rng)
    terms = objectives.negative_elbo(batch["images"], decoded, posterior, num_levels,
                                     config.objective.kl_weight)
    w = batch[data_lib.EXAMPLE_WEIGHT]
    sums = {k: (v * w).sum() for k, v in terms.items() if k != "loss"}
    return (terms["loss"] * w).sum(), {WEIGHT: w.sum(), **sums}
  return loss_fn


def dry_run_inputs(config):
  """(loss_fn, global batch shapes) without reading data; the pixel levels do not change shapes."""
  return make_loss_fn(config, num_levels=256), images.batch_shapes(config)


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  del resuming  # Nothing is derived from the data that a resume must reuse.
  data = images.load_data(config)
  held_out = data.held_out
  net = model(config)

  def eval_metrics(totals):
    return {"eval/bits_per_dim": images.bits_per_dim(totals["negative_elbo"] / totals[WEIGHT], config)}

  @jax.jit
  def reconstruct_and_sample(params, images, rng):
    decoded, _ = net.apply({"params": params}, images, rng)
    samples = decode_samples(net, params, rng, config.sample.num_images)
    return decoded[0], samples

  def on_eval(params, step):
    n = config.sample.num_images
    originals = held_out["images"][:n]
    recon, samples = jax.device_get(reconstruct_and_sample(params, originals, rng_for(config.seed, "sample")))
    # Originals and reconstructions interleaved row by row: each original above its reconstruction.
    cols = int(math.ceil(math.sqrt(n)))
    pairs = []
    for start in range(0, len(originals), cols):
      pairs += [originals[start:start + cols], recon[start:start + cols]]
    images.write_eval_grid(workdir, "reconstructions", step, np.concatenate(pairs), num_cols=cols)
    images.write_eval_grid(workdir, "samples", step, samples)
    return {}

  train_data, eval_data = images.pipelines(config, data)
  return Task(
      params=param_spec(config),
      loss_fn=make_loss_fn(config, data.num_levels),
      train_data=train_data,
      eval_data=eval_data,
      eval_metrics=eval_metrics,
      throughput_unit="examples",
      units_per_example=1,
      on_eval=on_eval,
  )


def generate(config, params, workdir: str, request):
  """(request.num_samples decoder means of z ~ N(0, I), "samples")."""
  del workdir
  samples = decode_samples(model(config), params, jax.random.key(request.seed),
                           request.num_samples)
  return samples, "samples"
