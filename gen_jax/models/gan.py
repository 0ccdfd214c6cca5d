"""DCGAN generator and discriminator (Radford et al., 2016), optionally class-conditional.

The generator projects a latent to a low-resolution map and doubles it with strided transposed
convolutions (4x4 kernels, so every output pixel gets the same number of kernel taps) to an image
in [-1, 1] (tanh). The discriminator halves the resolution with strided convolutions and LeakyReLU
(0.2) and ends in one logit per image.

Two departures from DCGAN, both so that every image is processed on its own: the generator
normalizes with GroupNorm instead of BatchNorm (no mutable batch statistics in the pure train
step, and padded eval rows cannot change the others' outputs), and the discriminator has no
normalization, so a per-example gradient penalty (R1) is exact.

Class-conditional models (num_classes > 0): the generator concatenates a learned class embedding
to z; the discriminator adds the projection term <embed(y), phi(x)> (Miyato & Koyama, 2018) to
its unconditional logit, phi(x) being its flattened convolutional features.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.models.layers import partitioned

LEAKY_SLOPE = 0.2  # DCGAN's LeakyReLU slope in the discriminator.


@dataclasses.dataclass(frozen=True)
class GANConfig:
  """Hyperparameters of the generator and discriminator; the fields of `config.model`."""
  image_size: int  # Square images, divisible by 2 ** len(generator_channels).
  image_channels: int
  latent_dim: int
  # Generator widths from the lowest resolution up: the latent is projected to
  # [image_size / 2**len, same, generator_channels[0]] and each later width (then the image
  # channels) doubles the resolution.
  generator_channels: tuple[int, ...]
  discriminator_channels: tuple[int, ...]  # Each strided conv halves the resolution.
  num_classes: int = 0  # > 0: class-conditional.
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, model_config) -> "GANConfig":
    fields = model_config.to_dict()
    for name in ("generator_channels", "discriminator_channels"):
      fields[name] = tuple(fields[name])
    return cls(**fields)


def _conv_init():
  return partitioned(nn.initializers.lecun_normal(), ("conv_height", "conv_width", None, "mlp"))


class Generator(nn.Module):
  config: GANConfig

  @nn.compact
  def __call__(self, z: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """z [b, latent_dim], labels [b] int (conditional models) -> images [b, H, W, C] in [-1, 1]."""
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    x = z.astype(dtype)
    if c.num_classes > 0:
      # Unit-variance rows: the class code starts on the same scale as z ~ N(0, I).
      embed = nn.Embed(c.num_classes, c.latent_dim, dtype=dtype, param_dtype=param_dtype,
                       embedding_init=partitioned(nn.initializers.normal(1.0), (None, "mlp")),
                       name="class_embed")
      x = jnp.concatenate([x, embed(labels)], axis=-1)  # [b, 2 * latent_dim]
    low = c.image_size // 2 ** len(c.generator_channels)
    x = nn.Dense(low * low * c.generator_channels[0], dtype=dtype, param_dtype=param_dtype,
                 kernel_init=partitioned(nn.initializers.lecun_normal(), (None, "mlp")),
                 name="project")(x)
    x = x.reshape(z.shape[0], low, low, c.generator_channels[0])  # [b, low, low, channels[0]]
    x = nn.relu(nn.GroupNorm(num_groups=min(8, c.generator_channels[0]), dtype=dtype)(x))
    for width in c.generator_channels[1:]:
      x = nn.ConvTranspose(width, (4, 4), strides=(2, 2), dtype=dtype, param_dtype=param_dtype,
                           kernel_init=_conv_init())(x)
      x = nn.relu(nn.GroupNorm(num_groups=min(8, width), dtype=dtype)(x))
    x = nn.ConvTranspose(c.image_channels, (4, 4), strides=(2, 2), dtype=jnp.float32,
                         param_dtype=param_dtype, kernel_init=_conv_init(), name="to_image")(x)
    return jnp.tanh(x.astype(jnp.float32))  # [b, H, W, C]


class Discriminator(nn.Module):
  config: GANConfig

  @nn.compact
  def __call__(self, images: jax.Array, labels: jax.Array | None = None) -> jax.Array:
    """images [b, H, W, C] in [-1, 1], labels [b] int (conditional models) -> logits [b]."""
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    x = images.astype(dtype)
    for width in c.discriminator_channels:
      x = nn.Conv(width, (4, 4), strides=(2, 2), dtype=dtype, param_dtype=param_dtype,
                  kernel_init=_conv_init())(x)
      x = nn.leaky_relu(x, LEAKY_SLOPE)
    features = x.reshape(x.shape[0], -1).astype(jnp.float32)  # phi(x): [b, h * w * channels[-1]]
    logits = nn.Dense(1, dtype=jnp.float32, param_dtype=param_dtype,
                      kernel_init=partitioned(nn.initializers.lecun_normal(), ("mlp", None)),
                      name="logit")(features)[:, 0]  # [b]
    if c.num_classes > 0:
      # Rows scaled like a Dense kernel's fan-in, so the projection starts as large as the logit.
      embed = nn.Embed(c.num_classes, features.shape[-1], dtype=jnp.float32,
                       param_dtype=param_dtype, name="class_projection",
                       embedding_init=partitioned(
                           nn.initializers.normal(features.shape[-1] ** -0.5), (None, "mlp")))
      logits = logits + jnp.sum(embed(labels) * features, axis=-1)  # [b]
    return logits
