"""What every image family shares: config checks, data and pipelines, bits/dim and sample grids.

The image families (vae, diffusion, gan, flow, vqvae, vq_prior, classifier) differ in their
model and objective; their data, held-out passes and PNG outputs go through here.
"""
import math
import os

import jax
import numpy as np

from gen_jax import data as data_lib
from gen_jax.config.common import DTYPES
from gen_jax.config.errors import require
from gen_jax.eval import save_image_grid

IMAGES_DIR = "images"  # WORKDIR/images/<name>_<step>.png at every eval.
SAMPLES_FILE = "samples.png"  # What gen_jax.sample writes in the workdir.


def validate_image_config(config) -> None:
  """The shared image fields (model.image_size/channels/dtypes, data, sample); ConfigError."""
  m = config.model
  require(m.image_size > 0, "model.image_size", f"must be positive, got {m.image_size}")
  require(m.image_channels in (1, 3), "model.image_channels", f"must be 1 or 3, got {m.image_channels}")
  for name in ("dtype", "param_dtype"):
    require(m[name] in DTYPES, f"model.{name}", f"{m[name]!r} is not one of {DTYPES}")
  require(0 < config.data.eval_fraction < 1, "data.eval_fraction",
          f"must be in (0, 1), got {config.data.eval_fraction}")
  require(config.sample.num_images > 0, "sample.num_images",
          f"must be positive, got {config.sample.num_images}")


def load_data(config) -> data_lib.ImageData:
  """config.data's images, checked against the model's shape and the global batch."""
  m = config.model
  data = data_lib.load_images(config.data, m.image_size, m.image_channels, config.seed)
  num_train = len(data.train["images"])
  require(num_train >= config.train.batch_size // jax.process_count(), "train.batch_size",
          f"{config.train.batch_size} exceeds the {num_train} training images")
  return data


def pipelines(config, data: data_lib.ImageData):
  """(train dataset, held-out pass factory) of images and labels, as a Task takes them."""
  return data_lib.host_pipelines(
      data.train, data.held_out, global_batch_size=config.train.batch_size,
      grad_accum_steps=config.train.grad_accum_steps,
      eval_max_batches=config.train.eval_max_batches, seed=config.seed,
      process_index=jax.process_index(), process_count=jax.process_count())


def image_shape(config) -> tuple[int, int, int]:
  m = config.model
  return (m.image_size, m.image_size, m.image_channels)


def batch_shapes(config) -> dict[str, jax.ShapeDtypeStruct]:
  """A global training batch's shapes (images, labels, example weights), for --dry_run."""
  b = config.train.batch_size
  return {"images": jax.ShapeDtypeStruct((b, *image_shape(config)), np.float32),
          "labels": jax.ShapeDtypeStruct((b,), np.int32),
          data_lib.EXAMPLE_WEIGHT: jax.ShapeDtypeStruct((b,), np.float32)}


def bits_per_dim(nats_per_image: float, config) -> float:
  """Nats per image -> bits per pixel channel."""
  return nats_per_image / (math.prod(image_shape(config)) * math.log(2))


def write_eval_grid(workdir: str, name: str, step: int, images, **grid_options) -> str:
  """WORKDIR/images/<name>_<step>.png from images [n, H, W, C] in [-1, 1]."""
  path = os.path.join(workdir, IMAGES_DIR, f"{name}_{step:06d}.png")
  return save_image_grid(np.asarray(jax.device_get(images)), path, scale=4, **grid_options)


def write_samples(workdir: str, images, what: str = "samples") -> str:
  """gen_jax.sample's output: WORKDIR/samples.png; prints where it went."""
  path = save_image_grid(np.asarray(jax.device_get(images)), os.path.join(workdir, SAMPLES_FILE),
                         scale=4)
  print(f"Wrote {len(images)} {what} to {path}")
  return path
