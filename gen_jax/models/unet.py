"""The denoising U-Net of DDPM (Ho et al., 2020) as refined by ADM (Dhariwal & Nichol, 2021).

Residual blocks (GroupNorm, SiLU, 3x3 conv) take the timestep (+ class) embedding through a
projection added to their features; each level but the last halves the resolution, and the
upsampling path concatenates the skip activations of the matching downsampling blocks. At the
`attention_resolutions` (and in the middle) a block of self-attention follows, and with a context
(a text encoder's token states) a cross-attention block, as in Latent Diffusion (Rombach et al.,
2022). The second conv of each residual block, every attention out projection and the output conv
start at zero, so the network starts as the identity path and predicts zeros.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax.config.errors import require
from gen_jax.models.diffusion_layers import (ClassEmbedding, CrossAttentionBlock,
                                             MultiHeadAttention, TimestepEmbedding,
                                             prepare_conditioning)
from gen_jax.models.layers import partitioned

_DTYPES = ("float32", "bfloat16")


@dataclasses.dataclass(frozen=True)
class UNetConfig:
  """Hyperparameters of the U-Net; its fields of `config.model`."""
  image_size: int  # Square images, divisible by 2 ** (len(channel_multipliers) - 1).
  image_channels: int
  base_channels: int  # Width of the first conv; level i has base_channels * channel_multipliers[i].
  channel_multipliers: tuple[int, ...]  # One per resolution level.
  num_res_blocks: int  # Residual blocks per level on the way down (one more on the way up).
  attention_resolutions: tuple[int, ...]  # Spatial sizes (image_size / 2**i) with attention.
  num_heads: int
  num_groups: int  # GroupNorm groups; divides every width.
  dropout: float  # In the residual blocks, with train=True.
  num_classes: int  # 0: unconditional; else a label embedding with a null row at num_classes.
  context_dim: int  # 0: no cross-attention; else the width of the context token states.
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, model_config) -> "UNetConfig":
    """Reads this model's fields of `model_config` (which may hold other fields too)."""
    fields = {f.name: model_config[f.name] for f in dataclasses.fields(cls)}
    for name in ("channel_multipliers", "attention_resolutions"):
      fields[name] = tuple(fields[name])
    return cls(**fields)

  @property
  def widths(self) -> tuple[int, ...]:
    return tuple(self.base_channels * m for m in self.channel_multipliers)

  @property
  def resolutions(self) -> tuple[int, ...]:
    return tuple(self.image_size // 2 ** i for i in range(len(self.channel_multipliers)))


def validate_unet(model_config, section: str = "model") -> None:
  """Raises ConfigError naming the first field of `model_config` the U-Net cannot be built with."""
  c = UNetConfig.from_config(model_config)
  f = lambda name: f"{section}.{name}"  # noqa: E731
  require(c.dtype in _DTYPES, f("dtype"), f"{c.dtype!r} is not one of {_DTYPES}")
  require(c.param_dtype in _DTYPES, f("param_dtype"), f"{c.param_dtype!r} is not one of {_DTYPES}")
  require(c.image_channels >= 1, f("image_channels"), f"must be positive, got {c.image_channels}")
  require(c.base_channels >= 1, f("base_channels"), f"must be positive, got {c.base_channels}")
  require(len(c.channel_multipliers) >= 1 and all(m >= 1 for m in c.channel_multipliers),
          f("channel_multipliers"), f"must be positive integers, got {c.channel_multipliers}")
  levels = len(c.channel_multipliers)
  require(c.image_size >= 1 and c.image_size % 2 ** (levels - 1) == 0, f("image_size"),
          f"{c.image_size} is not divisible by 2**{levels - 1}, which {levels} levels of "
          f"{f('channel_multipliers')} halve it by")
  require(c.num_res_blocks >= 1, f("num_res_blocks"), f"must be positive, got {c.num_res_blocks}")
  for r in c.attention_resolutions:
    require(r in c.resolutions, f("attention_resolutions"),
            f"{r} is not a resolution of the U-Net; its levels have {c.resolutions}")
  widths = (c.base_channels, *c.widths)
  require(c.num_groups >= 1 and all(w % c.num_groups == 0 for w in widths), f("num_groups"),
          f"{c.num_groups} does not divide every width {widths}")
  attended = {w for w, r in zip(c.widths, c.resolutions) if r in c.attention_resolutions}
  attended.add(c.widths[-1])  # The middle block always attends.
  require(c.num_heads >= 1 and all(w % c.num_heads == 0 for w in attended), f("num_heads"),
          f"{c.num_heads} does not divide the widths with attention {sorted(attended)}")
  require(0.0 <= c.dropout < 1.0, f("dropout"), f"must be in [0, 1), got {c.dropout}")
  require(c.num_classes >= 0, f("num_classes"), f"must be >= 0, got {c.num_classes}")
  require(c.context_dim >= 0, f("context_dim"), f"must be >= 0, got {c.context_dim}")


def _conv(features, kernel, dtype, param_dtype, *, strides=1, zero=False, name=None):
  init = nn.initializers.zeros if zero else nn.initializers.lecun_normal()
  return nn.Conv(features, (kernel, kernel), strides=(strides, strides), dtype=dtype,
                 param_dtype=param_dtype,
                 kernel_init=partitioned(init, ("conv_height", "conv_width", None, "mlp")),
                 bias_init=partitioned(nn.initializers.zeros, ("mlp",)), name=name)


def _group_norm(num_groups, dtype, param_dtype, name=None):
  return nn.GroupNorm(num_groups=num_groups, dtype=dtype, param_dtype=param_dtype,
                      scale_init=partitioned(nn.initializers.ones, ("mlp",)),
                      bias_init=partitioned(nn.initializers.zeros, ("mlp",)), name=name)


class ResBlock(nn.Module):
  """x [b, h, w, c_in], emb [b, e] -> [b, h, w, features]: two convs, emb added between them."""
  features: int
  num_groups: int
  dropout: float
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array, emb: jax.Array, train: bool) -> jax.Array:
    dt, pdt = self.dtype, self.param_dtype
    h = _conv(self.features, 3, dt, pdt)(nn.silu(_group_norm(self.num_groups, dt, pdt)(x)))
    h = h + nn.Dense(self.features, dtype=dt, param_dtype=pdt,
                     kernel_init=partitioned(nn.initializers.lecun_normal(), ("embed", "mlp")),
                     bias_init=partitioned(nn.initializers.zeros, ("mlp",)),
                     name="emb_proj")(nn.silu(emb))[:, None, None, :]  # [b, 1, 1, features]
    h = nn.silu(_group_norm(self.num_groups, dt, pdt)(h))
    h = nn.Dropout(self.dropout, deterministic=not train)(h)
    h = _conv(self.features, 3, dt, pdt, zero=True)(h)
    skip = x if x.shape[-1] == self.features else _conv(self.features, 1, dt, pdt, name="skip")(x)
    return skip + h


class AttentionBlock(nn.Module):
  """x [b, h, w, c] -> same: self-attention over the h*w positions, then cross-attention."""
  num_heads: int
  num_groups: int
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None,
               context_mask: jax.Array | None) -> jax.Array:
    b, height, width, c = x.shape
    y = _group_norm(self.num_groups, self.dtype, self.param_dtype)(x).reshape(b, height * width, c)
    x = x.reshape(b, height * width, c)  # [b, t, c]
    x = x + MultiHeadAttention(self.num_heads, self.dtype, self.param_dtype, name="self_attn")(y)
    if context is not None:
      x = CrossAttentionBlock(self.num_heads, self.dtype, self.param_dtype,
                              name="cross_attn")(x, context, context_mask)
    return x.reshape(b, height, width, c)


class UNet(nn.Module):
  """The noise-prediction (or x0/v-prediction) network eps(x_t, t, label, context)."""
  config: UNetConfig

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None,
               context: jax.Array | None = None, context_mask: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """x [b, H, W, C]; t [b] float timestep index; labels [b] int in [0, num_classes] (num_classes
    is the null class; None: the null class, or nothing for an unconditional model); context
    [b, s, context_dim] with context_mask [b, s] bool (False: padding) -> [b, H, W, C] float32.
    """
    c = self.config
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    expected = (c.image_size, c.image_size, c.image_channels)
    if x.shape[1:] != expected:
      raise ValueError(f"x: shape {x.shape} is not (batch, {', '.join(map(str, expected))})")
    labels, context, context_mask = prepare_conditioning(
        x, labels, context, context_mask, num_classes=c.num_classes, context_dim=c.context_dim)
    emb = TimestepEmbedding(4 * c.base_channels, c.base_channels, dt, pdt, name="time_embed")(t)
    if labels is not None:
      emb = emb + ClassEmbedding(c.num_classes, 4 * c.base_channels, dt, pdt,
                                 name="class_embed")(labels)  # [b, 4 * base_channels]
    res = lambda w: ResBlock(w, c.num_groups, c.dropout, dt, pdt)  # noqa: E731
    attn = lambda: AttentionBlock(c.num_heads, c.num_groups, dt, pdt)  # noqa: E731

    h = _conv(c.base_channels, 3, dt, pdt, name="conv_in")(x.astype(dt))  # [b, H, W, base]
    skips = [h]
    for level, (width, size) in enumerate(zip(c.widths, c.resolutions)):
      for _ in range(c.num_res_blocks):
        h = res(width)(h, emb, train)
        if size in c.attention_resolutions:
          h = attn()(h, context, context_mask)
        skips.append(h)
      if level < len(c.widths) - 1:
        h = _conv(width, 3, dt, pdt, strides=2)(h)  # [b, size / 2, size / 2, width]
        skips.append(h)

    h = res(c.widths[-1])(h, emb, train)
    h = attn()(h, context, context_mask)
    h = res(c.widths[-1])(h, emb, train)

    for level in reversed(range(len(c.widths))):
      width, size = c.widths[level], c.resolutions[level]
      for _ in range(c.num_res_blocks + 1):
        h = res(width)(jnp.concatenate([h, skips.pop()], axis=-1), emb, train)
        if size in c.attention_resolutions:
          h = attn()(h, context, context_mask)
      if level > 0:
        h = jnp.repeat(jnp.repeat(h, 2, axis=1), 2, axis=2)  # nearest: [b, 2 size, 2 size, width]
        h = _conv(width, 3, dt, pdt)(h)

    h = nn.silu(_group_norm(c.num_groups, dt, pdt, name="norm_out")(h))
    out = _conv(c.image_channels, 3, dt, pdt, zero=True, name="conv_out")(h)  # [b, H, W, C]
    return out.astype(jnp.float32)
