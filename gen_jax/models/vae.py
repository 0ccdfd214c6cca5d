"""Convolutional variational autoencoder (Kingma & Welling, 2014).

The encoder maps an image to a diagonal Gaussian q(z|x); the decoder maps a latent to the
parameters of a discretized logistic likelihood p(x|z) per pixel (Salimans et al., 2017), so the
ELBO is a bound on the log-probability of the actual discrete pixel values.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.models.layers import partitioned


@dataclasses.dataclass(frozen=True)
class VAEConfig:
  """Hyperparameters of the VAE; the fields of `config.model` for the vae family."""
  image_size: int  # Square images, divisible by 2 ** len(channels).
  image_channels: int
  channels: tuple[int, ...]  # Encoder conv widths; each stage halves the resolution.
  # A vector latent of latent_dim, or with spatial_latent a map [H/2^L, W/2^L, latent_dim] (L =
  # len(channels)): the latent a latent diffusion model (Rombach et al., 2022) is trained in.
  latent_dim: int
  spatial_latent: bool = False
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, model_config) -> "VAEConfig":
    fields = model_config.to_dict()
    fields["channels"] = tuple(fields["channels"])
    return cls(**fields)


def _conv_init():
  return partitioned(nn.initializers.lecun_normal(), ("conv_height", "conv_width", None, "mlp"))


class Encoder(nn.Module):
  config: VAEConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> tuple[jax.Array, jax.Array]:
    """images [b, H, W, C] in [-1, 1] -> (mean, log_variance), each [b, latent_dim] or, with
    spatial_latent, [b, H/2^L, W/2^L, latent_dim]."""
    c = self.config
    x = images.astype(jnp.dtype(c.dtype))
    for width in c.channels:
      x = nn.Conv(width, (3, 3), strides=(2, 2), dtype=jnp.dtype(c.dtype),
                  param_dtype=jnp.dtype(c.param_dtype), kernel_init=_conv_init())(x)
      x = nn.silu(nn.GroupNorm(num_groups=min(8, width), dtype=jnp.dtype(c.dtype))(x))
    if c.spatial_latent:  # [b, h, w, channels[-1]] -> [b, h, w, 2 * latent_dim]
      stats = nn.Conv(2 * c.latent_dim, (1, 1), dtype=jnp.float32,
                      param_dtype=jnp.dtype(c.param_dtype), kernel_init=_conv_init())(x)
    else:
      x = x.reshape(x.shape[0], -1)  # [b, H/2^L * W/2^L * channels[-1]]
      stats = nn.Dense(2 * c.latent_dim, dtype=jnp.float32, param_dtype=jnp.dtype(c.param_dtype),
                       kernel_init=partitioned(nn.initializers.lecun_normal(), ("mlp", None)))(x)
    mean, log_variance = jnp.split(stats.astype(jnp.float32), 2, axis=-1)
    return mean, log_variance


class Decoder(nn.Module):
  config: VAEConfig

  @nn.compact
  def __call__(self, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """z [b, latent_dim] (or [b, h, w, latent_dim]) -> (pixel means in [-1, 1], log scales),
    each [b, H, W, C]."""
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    low = c.image_size // 2 ** len(c.channels)
    if c.spatial_latent:
      x = nn.Conv(c.channels[-1], (3, 3), dtype=dtype, param_dtype=param_dtype,
                  kernel_init=_conv_init())(z)  # [b, h, w, channels[-1]]
    else:
      x = nn.Dense(low * low * c.channels[-1], dtype=dtype, param_dtype=param_dtype,
                   kernel_init=partitioned(nn.initializers.lecun_normal(), (None, "mlp")))(z)
      x = x.reshape(z.shape[0], low, low, c.channels[-1])  # [b, h, w, channels[-1]]
    for width in reversed(c.channels):
      x = nn.ConvTranspose(width, (3, 3), strides=(2, 2), dtype=dtype, param_dtype=param_dtype,
                           kernel_init=_conv_init())(x)
      x = nn.silu(nn.GroupNorm(num_groups=min(8, width), dtype=dtype)(x))
    out = nn.Conv(2 * c.image_channels, (3, 3), dtype=jnp.float32, param_dtype=param_dtype,
                  kernel_init=_conv_init())(x)  # [b, H, W, 2C]
    mean, log_scale = jnp.split(out.astype(jnp.float32), 2, axis=-1)
    return jnp.tanh(mean), jnp.maximum(log_scale, -7.0)


class VAE(nn.Module):
  """Encoder + reparameterized sample + decoder."""
  config: VAEConfig

  def setup(self):
    self.encoder = Encoder(self.config)
    self.decoder = Decoder(self.config)

  def __call__(self, images: jax.Array, rng: jax.Array):
    """images [b, H, W, C] in [-1, 1] -> (decoder (mean, log_scale), posterior (mean, log_var))."""
    mean, log_variance = self.encoder(images)
    z = mean + jnp.exp(0.5 * log_variance) * jax.random.normal(rng, mean.shape)  # reparameterization
    return self.decoder(z), (mean, log_variance)

  def latent_shape(self) -> tuple[int, ...]:
    """One image's latent: (latent_dim,) or (h, w, latent_dim)."""
    c = self.config
    if not c.spatial_latent:
      return (c.latent_dim,)
    low = c.image_size // 2 ** len(c.channels)
    return (low, low, c.latent_dim)

  def encode(self, images):
    return self.encoder(images)

  def decode(self, z):
    return self.decoder(z)
