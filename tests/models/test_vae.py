"""The VAE's two latents: a vector, and a spatial map (what latent diffusion trains in)."""
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax import objectives
from gen_jax.models.vae import VAE, VAEConfig


def test_spatial_latent_shapes_and_its_kl_sums_every_position():
  config = VAEConfig(image_size=8, image_channels=1, channels=(8, 8), latent_dim=3,
                     spatial_latent=True)
  net = VAE(config)
  images = jnp.asarray(np.random.default_rng(0).uniform(-1, 1, (2, 8, 8, 1)), jnp.float32)
  params = net.init(jax.random.key(0), images, jax.random.key(1))["params"]
  assert net.latent_shape() == (2, 2, 3)
  mean, log_var = net.apply({"params": params}, images, method=VAE.encode)
  assert mean.shape == log_var.shape == (2, 2, 2, 3)
  (decoded_mean, log_scale), _ = net.apply({"params": params}, images, jax.random.key(2))
  assert decoded_mean.shape == log_scale.shape == (2, 8, 8, 1)
  kl = objectives.gaussian_kl_to_standard_normal(mean, log_var)
  by_hand = 0.5 * (np.exp(log_var) + np.asarray(mean) ** 2 - 1 - log_var).reshape(2, -1).sum(-1)
  np.testing.assert_allclose(kl, by_hand, rtol=1e-5)
  vector = VAE(VAEConfig(image_size=8, image_channels=1, channels=(8, 8), latent_dim=3))
  assert vector.latent_shape() == (3,)
