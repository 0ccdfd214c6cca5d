"""Image datasets as arrays on a fixed pixel grid in [-1, 1]."""
import numpy as np

from gen_jax.config.errors import ConfigError

DIGITS_LEVELS = 17  # sklearn digits pixels take the integer values 0..16.


def load_image_source(source: str) -> tuple[dict[str, np.ndarray], int]:
  """Loads `source` as {"images": [n, H, W, C] float32 in [-1, 1], "labels": [n] int32}.

  Returns the arrays and the number of pixel levels (for discrete likelihoods).
  """
  if source == "digits":
    from sklearn.datasets import load_digits  # Ships inside the scikit-learn wheel.
    digits = load_digits()
    images = digits.images.astype(np.float32)[..., None]  # [1797, 8, 8, 1], values 0..16
    images = images / (DIGITS_LEVELS - 1) * 2.0 - 1.0
    return {"images": images, "labels": digits.target.astype(np.int32)}, DIGITS_LEVELS
  raise ConfigError("data.source", f"unknown image source {source!r}; available: 'digits'")


def split_examples(arrays: dict[str, np.ndarray], eval_fraction: float, seed: int
                   ) -> tuple[dict[str, np.ndarray], dict[str, np.ndarray]]:
  """A seeded random split into (train, held-out)."""
  n = len(next(iter(arrays.values())))
  order = np.random.default_rng(seed).permutation(n)
  num_eval = int(round(n * eval_fraction))
  held_out, train = order[:num_eval], order[num_eval:]
  return ({k: v[train] for k, v in arrays.items()}, {k: v[held_out] for k, v in arrays.items()})
