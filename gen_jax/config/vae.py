"""The vae family base: a convolutional VAE on small images."""
import ml_collections

from gen_jax.config.common import base_config


def base() -> ml_collections.ConfigDict:
  config = base_config()
  config.family = "vae"
  config.model = ml_collections.ConfigDict(dict(
      image_size=8,
      image_channels=1,
      channels=(32, 64),
      latent_dim=16,
      dtype="float32",
      param_dtype="float32",
  ))
  config.data = ml_collections.ConfigDict(dict(
      source="digits",
      eval_fraction=0.1,
  ))
  config.objective = ml_collections.ConfigDict(dict(
      kl_weight=1.0,  # beta; the reported ELBO always uses 1.
  ))
  config.sample = ml_collections.ConfigDict(dict(
      num_images=64,  # Images in each PNG grid written at eval time.
  ))
  config.optimizer.weight_decay = 0.0
  config.optimizer.learning_rate = 1e-3
  return config
