"""A small convolutional image classifier (LeCun et al., 1998, with GroupNorm, Wu & He, 2018).

Conv blocks (3x3 conv, GroupNorm, SiLU), each but the last followed by 2x2 max pooling; global
average pooling; a dense layer to `feature_dim` features (SiLU); a dense layer to the logits.
The features are what a Fréchet distance between real and generated images is measured on
(gen_jax's stand-in for FID where no Inception weights can be had). GroupNorm rather than
BatchNorm keeps every image's outputs independent of the rest of its batch, so the features of
a set of images do not depend on how it was batched.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.models.layers import partitioned


@dataclasses.dataclass(frozen=True)
class ClassifierConfig:
  """Hyperparameters of the classifier; the fields of `config.model` for the classifier family."""
  image_size: int  # Square images, at least 2 ** (len(channels) - 1).
  image_channels: int
  # Conv block widths; every block but the last halves the resolution (rounding down: 28 -> 14 ->
  # 7 -> 3), so deep blocks see coarse maps and the global average loses little of where things are.
  channels: tuple[int, ...]
  feature_dim: int  # Width of the penultimate layer: the features.
  num_classes: int
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, model_config) -> "ClassifierConfig":
    fields = model_config.to_dict()
    fields["channels"] = tuple(fields["channels"])
    return cls(**fields)


class FeatureExtractor(nn.Module):
  """The conv blocks, pooling and penultimate dense layer."""
  config: ClassifierConfig

  @nn.compact
  def __call__(self, images: jax.Array) -> jax.Array:
    """images [b, H, W, C] in [-1, 1] -> penultimate features [b, feature_dim], float32."""
    c = self.config
    dtype, param_dtype = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    x = images.astype(dtype)
    for i, width in enumerate(c.channels):
      x = nn.Conv(width, (3, 3), dtype=dtype, param_dtype=param_dtype,
                  kernel_init=partitioned(nn.initializers.lecun_normal(),
                                          ("conv_height", "conv_width", None, "mlp")))(x)
      x = nn.silu(nn.GroupNorm(num_groups=min(8, width), dtype=dtype)(x))
      if i < len(c.channels) - 1:
        x = nn.max_pool(x, (2, 2), strides=(2, 2))  # [b, floor(H/2), floor(W/2), width]
    x = x.mean(axis=(1, 2))  # [b, channels[-1]]
    x = nn.Dense(c.feature_dim, dtype=dtype, param_dtype=param_dtype,
                 kernel_init=partitioned(nn.initializers.lecun_normal(), (None, "mlp")))(x)
    return nn.silu(x).astype(jnp.float32)


class Classifier(nn.Module):
  """FeatureExtractor, then one dense layer `head` to the logits."""
  config: ClassifierConfig

  def setup(self):
    self.backbone = FeatureExtractor(self.config)
    self.head = nn.Dense(self.config.num_classes, dtype=jnp.float32,
                         param_dtype=jnp.dtype(self.config.param_dtype),
                         kernel_init=partitioned(nn.initializers.lecun_normal(), ("mlp", None)))

  def __call__(self, images: jax.Array) -> jax.Array:
    """images [b, H, W, C] in [-1, 1] -> logits [b, num_classes], float32."""
    return self.head(self.backbone(images))

  def features(self, images: jax.Array) -> jax.Array:
    """images [b, H, W, C] in [-1, 1] -> penultimate features [b, feature_dim], float32."""
    return self.backbone(images)
