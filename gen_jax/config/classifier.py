"""The classifier family base: a small CNN whose features and accuracy measure sample quality."""
import ml_collections

from gen_jax.config.image import image_base


def base() -> ml_collections.ConfigDict:
  config = image_base("classifier")
  config.model.update(dict(
      # Conv block widths; all blocks but the last halve the resolution (28 -> 14 -> 7 -> 3).
      channels=(16, 32, 64, 128),
      feature_dim=128,  # The penultimate layer, whose features a Fréchet distance compares.
      num_classes=10,  # Must equal the data's number of classes.
  ))
  return config
