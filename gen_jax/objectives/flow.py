"""A normalizing flow's negative log-likelihood under uniform dequantization (Theis et al., 2016;
Dinh et al., 2017, RealNVP; Kingma & Dhariwal, 2018, Glow).

Pixels take the values x_i = -1 + 2 i / (K - 1), i = 0..K-1 (K = num_levels); each owns the bin
of width 2 / (K - 1) centred on it, as in the VAE's discretized likelihood. Training adds uniform
noise over that bin, v = x + (u - 1/2) * 2 / (K - 1), and fits a continuous density p(v). For the
discrete data, by Jensen's inequality,

  log P(i) = log E_u[p(v) (2 / (K - 1))^D] >= E_u[log p(v)] + D log(2 / (K - 1)),

so -(log p(v) + D log(2 / (K - 1))) with one noise draw per image is an unbiased estimate of an
upper bound on the discrete negative log-likelihood (nats; D = H * W * C). A density uniform over
the K bins gives exactly log2(K) bits/dim.
"""
import math

import jax
import jax.numpy as jnp


def bin_width(num_levels: int) -> float:
  """The width of one pixel level's bin in [-1, 1] units."""
  return 2.0 / (num_levels - 1)


def dequantize(images: jax.Array, rng: jax.Array, num_levels: int) -> jax.Array:
  """Uniform noise over each pixel's bin: images [b, H, W, C] on the K-level grid in [-1, 1] ->
  continuous values in [-1 - w/2, 1 + w/2) (w the bin width), same shape."""
  noise = jax.random.uniform(rng, images.shape, jnp.float32) - 0.5
  return images.astype(jnp.float32) + noise * bin_width(num_levels)


def negative_log_likelihood(log_density: jax.Array, num_dims: int, num_levels: int
                            ) -> dict[str, jax.Array]:
  """The discrete negative log-likelihood bound of dequantized images.

  Args:
    log_density: [b] the flow's log p(v) in nats of the dequantized images v.
    num_dims: D, values per image (H * W * C).
    num_levels: K, pixel levels of the data.
  Returns:
    dict of [b] arrays: nats_per_image (-(log p(v) + D log(2/(K-1)))) and bits_per_dim
    (nats_per_image / (D ln 2)).
  """
  nats = -(log_density + num_dims * math.log(bin_width(num_levels)))
  return {"nats_per_image": nats, "bits_per_dim": nats / (num_dims * math.log(2.0))}
