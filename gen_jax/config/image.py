"""The sections every image family shares: the image shape, the image data and the sample grids.

An image family base (vae, diffusion, gan, flow, vqvae, classifier) starts from `image_base`
and adds its model's own fields and its objective's section.
"""
import ml_collections

from gen_jax.config.common import base_config


def image_base(family: str) -> ml_collections.ConfigDict:
  config = base_config()
  config.family = family
  config.model = ml_collections.ConfigDict(dict(
      image_size=8,  # Square images; data of another size fails at load naming this field.
      image_channels=1,  # 1 (grey) or 3 (RGB).
      dtype="float32",
      param_dtype="float32",
  ))
  config.data = ml_collections.ConfigDict(dict(
      # "digits" (sklearn's 8x8 digits, embedded), "tfds:fashion_mnist_local" (the IDX files read
      # by the repo's own tfds builder), or a folder or glob of image files (resized to
      # model.image_size, converted to model.image_channels).
      source="digits",
      # Held-out share of sources without a test split of their own (digits, a folder).
      eval_fraction=0.1,
      # Where tfds builders keep prepared data; "" is ~/tensorflow_datasets.
      tfds_data_dir="",
      # Where the raw files of a local tfds builder lie (Fashion-MNIST's *-ubyte.gz); "" searches
      # the known places (../shared/data/fashion-mnist beside the repo,
      # /usr/share/datasets/fashion-mnist).
      manual_dir="",
  ))
  config.sample = ml_collections.ConfigDict(dict(
      num_images=64,  # Images in each PNG grid written at eval time.
  ))
  config.optimizer.weight_decay = 0.0
  config.optimizer.learning_rate = 1e-3
  return config
