"""The vae family base: a convolutional VAE on small images."""
import ml_collections

from gen_jax.config.image import image_base


def base() -> ml_collections.ConfigDict:
  config = image_base("vae")
  config.model.update(dict(
      channels=(32, 64),
      latent_dim=16,  # The vector latent's size, or with spatial_latent its channels.
      # A latent map [H/2^L, W/2^L, latent_dim] (L = len(channels)) instead of a vector: what
      # latent diffusion trains in (configs/diffusion/latent_digits.py).
      spatial_latent=False,
  ))
  config.objective = ml_collections.ConfigDict(dict(
      kl_weight=1.0,  # beta; the reported ELBO always uses 1.
  ))
  return config
