"""The vae family: a convolutional VAE trained on the negative ELBO, with PNG grids at eval."""
import math
import os

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np

from gen_jax import data as data_lib
from gen_jax import objectives
from gen_jax.config.common import DTYPES
from gen_jax.config.errors import require
from gen_jax.eval import save_image_grid
from gen_jax.models.vae import VAE, VAEConfig
from gen_jax.train.state import rng_for
from gen_jax.train.task import WEIGHT, ParamSpec, Task

IMAGES_DIR = "images"


def validate(config: ml_collections.ConfigDict) -> None:
  m = config.model
  require(len(m.channels) > 0 and all(c > 0 for c in m.channels), "model.channels",
          f"must be a non-empty tuple of positive widths, got {m.channels}")
  require(m.image_size > 0 and m.image_size % 2 ** len(m.channels) == 0, "model.image_size",
          f"{m.image_size} must be divisible by 2**len(model.channels) = {2 ** len(m.channels)}")
  require(m.image_channels in (1, 3), "model.image_channels", f"must be 1 or 3, got {m.image_channels}")
  require(m.latent_dim > 0, "model.latent_dim", f"must be positive, got {m.latent_dim}")
  for name in ("dtype", "param_dtype"):
    require(m[name] in DTYPES, f"model.{name}", f"{m[name]!r} is not one of {DTYPES}")
  require(0 < config.data.eval_fraction < 1, "data.eval_fraction",
          f"must be in (0, 1), got {config.data.eval_fraction}")
  require(config.objective.kl_weight >= 0, "objective.kl_weight",
          f"must be >= 0, got {config.objective.kl_weight}")
  require(config.sample.num_images > 0, "sample.num_images",
          f"must be positive, got {config.sample.num_images}")


def model(config) -> VAE:
  return VAE(VAEConfig.from_config(config.model))


def param_spec(config) -> ParamSpec:
  """A random init; every parameter trains."""
  net = model(config)
  m = config.model
  dummy = jnp.zeros((1, m.image_size, m.image_size, m.image_channels), jnp.float32)
  return ParamSpec(lambda rng: net.init(rng, dummy, rng)["params"])


def _load(config):
  arrays, num_levels = data_lib.load_image_source(config.data.source)
  shape = arrays["images"].shape[1:]
  m = config.model
  require(shape == (m.image_size, m.image_size, m.image_channels), "model.image_size",
          f"data {config.data.source!r} has images of shape {shape}, the model expects "
          f"{(m.image_size, m.image_size, m.image_channels)}")
  train, held_out = data_lib.split_examples(arrays, config.data.eval_fraction, config.seed)
  return train, held_out, num_levels


def decode_samples(net: VAE, params, rng, num_images: int, latent_dim: int) -> jax.Array:
  """Decoder means for z ~ N(0, I): [num_images, H, W, C] in [-1, 1]."""
  z = jax.random.normal(rng, (num_images, latent_dim))
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
  m = config.model
  b = config.train.batch_size
  return make_loss_fn(config, num_levels=256), {
      "images": jax.ShapeDtypeStruct((b, m.image_size, m.image_size, m.image_channels), jnp.float32),
      data_lib.EXAMPLE_WEIGHT: jax.ShapeDtypeStruct((b,), jnp.float32)}


def build_task(config: ml_collections.ConfigDict, workdir: str, resuming: bool = False) -> Task:
  del resuming  # Nothing is derived from the data that a resume must reuse.
  train, held_out, num_levels = _load(config)
  host_batch = config.train.batch_size // jax.process_count()
  require(len(train["images"]) >= host_batch, "train.batch_size",
          f"{config.train.batch_size} exceeds the {len(train['images'])} training images")
  net = model(config)
  num_dims = int(np.prod(train["images"].shape[1:]))

  def eval_metrics(totals):
    nelbo = totals["negative_elbo"] / totals[WEIGHT]
    return {"eval/bits_per_dim": nelbo / (num_dims * math.log(2))}

  @jax.jit
  def reconstruct_and_sample(params, images, rng):
    decoded, _ = net.apply({"params": params}, images, rng)
    samples = decode_samples(net, params, rng, config.sample.num_images, config.model.latent_dim)
    return decoded[0], samples

  def on_eval(params, step):
    n = config.sample.num_images
    originals = held_out["images"][:n]
    recon, samples = jax.device_get(reconstruct_and_sample(params, originals, rng_for(config.seed, "sample")))
    directory = os.path.join(workdir, IMAGES_DIR)
    # Originals and reconstructions interleaved row by row: each original above its reconstruction.
    cols = int(math.ceil(math.sqrt(n)))
    pairs = []
    for start in range(0, len(originals), cols):
      pairs += [originals[start:start + cols], recon[start:start + cols]]
    save_image_grid(np.concatenate(pairs), os.path.join(directory, f"reconstructions_{step:06d}.png"),
                    num_cols=cols, scale=4)
    save_image_grid(samples, os.path.join(directory, f"samples_{step:06d}.png"), scale=4)
    return {}

  train_data, eval_data = data_lib.host_pipelines(
      train, held_out, global_batch_size=config.train.batch_size,
      grad_accum_steps=config.train.grad_accum_steps,
      eval_max_batches=config.train.eval_max_batches, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())
  return Task(
      params=param_spec(config),
      loss_fn=make_loss_fn(config, num_levels),
      train_data=train_data,
      eval_data=eval_data,
      eval_metrics=eval_metrics,
      throughput_unit="examples",
      units_per_example=1,
      on_eval=on_eval,
  )


def sample(config, params, workdir: str, request) -> str:
  """Writes request.num_samples decoded prior samples as WORKDIR/samples.png; returns the path."""
  images = decode_samples(model(config), params, jax.random.key(request.seed),
                          request.num_samples, config.model.latent_dim)
  path = save_image_grid(jax.device_get(images), os.path.join(workdir, "samples.png"), scale=4)
  print(f"Wrote {request.num_samples} samples to {path}")
  return path
