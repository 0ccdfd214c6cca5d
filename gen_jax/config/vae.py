"""The vae family base: a convolutional VAE on small images."""
import ml_collections

from gen_jax.config.image import image_base


def base() -> ml_collections.ConfigDict:
  config = image_base("vae")
  config.model.update(dict(
      channels=(32, 64),
      latent_dim=16,
  ))
  config.objective = ml_collections.ConfigDict(dict(
      kl_weight=1.0,  # beta; the reported ELBO always uses 1.
  ))
  return config
