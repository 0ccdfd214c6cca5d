"""Image datasets as arrays on a fixed pixel grid in [-1, 1], split into train and held-out."""
import dataclasses

import numpy as np

from gen_jax.config.errors import ConfigError

DIGITS_LEVELS = 17  # sklearn digits pixels take the integer values 0..16.
DIGITS_CLASSES = tuple(str(d) for d in range(10))


@dataclasses.dataclass(frozen=True)
class ImageData:
  """A source's images as {"images": [n, H, W, C] float32 in [-1, 1], "labels": [n] int32}.

  num_levels: distinct pixel values (17 for digits, 256 for 8-bit images), for discrete
  likelihoods and bits/dim. class_names: the label names (label i is class_names[i]); () when the
  source has no labels (its labels are then all 0).
  """
  train: dict[str, np.ndarray]
  held_out: dict[str, np.ndarray]
  num_levels: int
  class_names: tuple[str, ...]

  @property
  def num_classes(self) -> int:
    return len(self.class_names)


def split_examples(arrays: dict[str, np.ndarray], eval_fraction: float, seed: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """A seeded random split into (train, held-out)."""
  n = len(next(iter(arrays.values())))
  order = np.random.default_rng(seed).permutation(n)
  num_eval = int(round(n * eval_fraction))
  held_out, train = order[:num_eval], order[num_eval:]
  return ({k: v[train] for k, v in arrays.items()}, {k: v[held_out] for k, v in arrays.items()})


def _digits(data_config, seed: int) -> ImageData:
  from sklearn.datasets import load_digits  # Ships inside the scikit-learn wheel.
  digits = load_digits()
  images = digits.images.astype(np.float32)[..., None]  # [1797, 8, 8, 1], values 0..16
  images = images / (DIGITS_LEVELS - 1) * 2.0 - 1.0
  arrays = {"images": images, "labels": digits.target.astype(np.int32)}
  train, held_out = split_examples(arrays, data_config.eval_fraction, seed)
  return ImageData(train, held_out, DIGITS_LEVELS, DIGITS_CLASSES)


def load_images(data_config, image_size: int, image_channels: int, seed: int) -> ImageData:
  """Loads config.data's source, checked against the model's image shape.

  Args:
    data_config: the config's `data` section (source, eval_fraction, tfds_data_dir, manual_dir).
    image_size, image_channels: the shape the model takes; a source of another shape is a
      ConfigError naming model.image_size / model.image_channels.
    seed: the seed of the train/held-out split of sources without a test split.
  """
  source = data_config.source
  if source == "digits":
    data = _digits(data_config, seed)
  else:
    raise ConfigError("data.source", f"unknown image source {source!r}; available: 'digits'")
  shape = data.train["images"].shape[1:]
  if shape[:2] != (image_size, image_size):
    raise ConfigError("model.image_size", f"data {source!r} has {shape[0]}x{shape[1]} images, the "
                      f"model takes {image_size}x{image_size}")
  if shape[2] != image_channels:
    raise ConfigError("model.image_channels", f"data {source!r} has {shape[2]} channel(s), the "
                      f"model takes {image_channels}")
  return data
