"""Diffusion Transformer, DiT (Peebles & Xie, 2023), with optional cross-attention (PixArt-alpha).

The image is cut into patch_size x patch_size patches, each projected to a token with a fixed 2-D
sine-cosine position embedding; transformer blocks are conditioned on the timestep (+ class)
embedding by adaLN-Zero: a zero-initialized linear regresses each block's shift, scale and gate, so
every block starts as the identity. With a context (a text encoder's token states) each block
also cross-attends to it between self-attention and MLP (Chen et al., 2023), through an out
projection that starts at zero. A final adaLN layer and a zero-initialized linear give each patch's
prediction, which is folded back into an image.
"""
import dataclasses

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.config.errors import require
from gen_jax.models.diffusion_layers import (ClassEmbedding, CrossAttentionBlock,
                                             MultiHeadAttention, TimestepEmbedding,
                                             prepare_conditioning)
from gen_jax.models.layers import partitioned

_DTYPES = ("float32", "bfloat16")
_FREQUENCY_DIM = 256  # Width of the sinusoidal timestep features, as in DiT.


@dataclasses.dataclass(frozen=True)
class DiTConfig:
  """Hyperparameters of the DiT; its fields of `config.model`."""
  image_size: int  # Square images, divisible by patch_size.
  image_channels: int
  patch_size: int
  hidden_size: int  # Token width; divisible by num_heads and by 4 (2-D sine-cosine positions).
  depth: int  # Transformer blocks.
  num_heads: int
  mlp_ratio: float  # MLP width = int(hidden_size * mlp_ratio).
  num_classes: int  # 0: unconditional; else a label embedding with a null row at num_classes.
  context_dim: int  # 0: no cross-attention; else the width of the context token states.
  dtype: str = "float32"
  param_dtype: str = "float32"

  @classmethod
  def from_config(cls, model_config) -> "DiTConfig":
    """Reads this model's fields of `model_config` (which may hold other fields too)."""
    return cls(**{f.name: model_config[f.name] for f in dataclasses.fields(cls)})


def validate_dit(model_config, section: str = "model") -> None:
  """Raises ConfigError naming the first field of `model_config` the DiT cannot be built with."""
  c = DiTConfig.from_config(model_config)
  f = lambda name: f"{section}.{name}"  # noqa: E731
  require(c.dtype in _DTYPES, f("dtype"), f"{c.dtype!r} is not one of {_DTYPES}")
  require(c.param_dtype in _DTYPES, f("param_dtype"), f"{c.param_dtype!r} is not one of {_DTYPES}")
  require(c.image_channels >= 1, f("image_channels"), f"must be positive, got {c.image_channels}")
  require(c.patch_size >= 1, f("patch_size"), f"must be positive, got {c.patch_size}")
  require(c.image_size >= 1 and c.image_size % c.patch_size == 0, f("patch_size"),
          f"{c.patch_size} does not divide {f('image_size')} = {c.image_size}")
  require(c.hidden_size >= 4 and c.hidden_size % 4 == 0, f("hidden_size"),
          f"must be a positive multiple of 4 (2-D sine-cosine positions), got {c.hidden_size}")
  require(c.num_heads >= 1 and c.hidden_size % c.num_heads == 0, f("num_heads"),
          f"{c.num_heads} does not divide {f('hidden_size')} = {c.hidden_size}")
  require(c.depth >= 1, f("depth"), f"must be positive, got {c.depth}")
  require(int(c.hidden_size * c.mlp_ratio) >= 1, f("mlp_ratio"),
          f"must give a positive MLP width, got {c.mlp_ratio}")
  require(c.num_classes >= 0, f("num_classes"), f"must be >= 0, got {c.num_classes}")
  require(c.context_dim >= 0, f("context_dim"), f"must be >= 0, got {c.context_dim}")


def sincos_position_embedding(dim: int, grid_size: int) -> np.ndarray:
  """[grid_size**2, dim] float32, row-major over (row, column): half the width encodes the column,
  half the row, each as [sin(p w), cos(p w)] with w_i = 10000 ** (-i / (dim / 4)), as DiT/MAE.
  """
  def one_axis(positions, width):
    omega = 1.0 / 10000 ** (np.arange(width // 2, dtype=np.float64) / (width / 2))  # [width / 2]
    angles = positions.reshape(-1)[:, None] * omega[None]  # [n, width / 2]
    return np.concatenate([np.sin(angles), np.cos(angles)], axis=1)

  rows, cols = np.meshgrid(np.arange(grid_size), np.arange(grid_size), indexing="ij")
  emb = np.concatenate([one_axis(cols, dim // 2), one_axis(rows, dim // 2)], axis=1)
  return emb.astype(np.float32)


def _modulate(x, shift, scale):
  """x [b, t, d]; shift, scale [b, d]."""
  return x * (1 + scale[:, None]) + shift[:, None]


def _norm(dtype):
  # DiT's LayerNorms have no affine parameters: adaLN supplies the scale and shift.
  return nn.LayerNorm(epsilon=1e-6, use_scale=False, use_bias=False, dtype=dtype)


def _dense(features, names, dtype, param_dtype, *, zero=False, name=None):
  init = nn.initializers.zeros if zero else nn.initializers.xavier_uniform()
  return nn.Dense(features, dtype=dtype, param_dtype=param_dtype,
                  kernel_init=partitioned(init, names),
                  bias_init=partitioned(nn.initializers.zeros, names[1:]), name=name)


class DiTBlock(nn.Module):
  """x [b, t, d], cond [b, d] -> [b, t, d]; the identity at initialization (adaLN-Zero)."""
  num_heads: int
  mlp_dim: int
  dtype: jnp.dtype
  param_dtype: jnp.dtype

  @nn.compact
  def __call__(self, x: jax.Array, cond: jax.Array, context: jax.Array | None,
               context_mask: jax.Array | None) -> jax.Array:
    d = x.shape[-1]
    dt, pdt = self.dtype, self.param_dtype
    modulation = _dense(6 * d, ("embed", "mlp"), dt, pdt, zero=True,
                        name="adaln")(nn.silu(cond))  # [b, 6d]
    shift_msa, scale_msa, gate_msa, shift_mlp, scale_mlp, gate_mlp = jnp.split(modulation, 6, -1)
    y = _modulate(_norm(dt)(x), shift_msa, scale_msa)
    x = x + gate_msa[:, None] * MultiHeadAttention(self.num_heads, dt, pdt, name="self_attn")(y)
    if context is not None:
      x = CrossAttentionBlock(self.num_heads, dt, pdt, name="cross_attn")(x, context, context_mask)
    y = _modulate(_norm(dt)(x), shift_mlp, scale_mlp)
    y = _dense(self.mlp_dim, ("embed", "mlp"), dt, pdt, name="mlp_in")(y)  # [b, t, f]
    y = _dense(d, ("mlp", "embed"), dt, pdt, name="mlp_out")(nn.gelu(y, approximate=True))
    return x + gate_mlp[:, None] * y


class DiT(nn.Module):
  """The noise-prediction (or x0/v-prediction) network eps(x_t, t, label, context)."""
  config: DiTConfig

  @nn.compact
  def __call__(self, x: jax.Array, t: jax.Array, labels: jax.Array | None = None,
               context: jax.Array | None = None, context_mask: jax.Array | None = None,
               train: bool = False) -> jax.Array:
    """x [b, H, W, C]; t [b] float timestep index; labels [b] int in [0, num_classes] (num_classes
    is the null class; None: the null class, or nothing for an unconditional model); context
    [b, s, context_dim] with context_mask [b, s] bool (False: padding) -> [b, H, W, C] float32.
    `train` is accepted for the backbones' common signature; DiT has no dropout.
    """
    del train
    c = self.config
    dt, pdt = jnp.dtype(c.dtype), jnp.dtype(c.param_dtype)
    expected = (c.image_size, c.image_size, c.image_channels)
    if x.shape[1:] != expected:
      raise ValueError(f"x: shape {x.shape} is not (batch, {', '.join(map(str, expected))})")
    labels, context, context_mask = prepare_conditioning(
        x, labels, context, context_mask, num_classes=c.num_classes, context_dim=c.context_dim)
    b, p, d = x.shape[0], c.patch_size, c.hidden_size
    grid = c.image_size // p

    tokens = nn.Conv(d, (p, p), strides=(p, p), padding="VALID", dtype=dt, param_dtype=pdt,
                     kernel_init=partitioned(nn.initializers.xavier_uniform(),
                                             ("conv_height", "conv_width", None, "embed")),
                     bias_init=partitioned(nn.initializers.zeros, ("embed",)),
                     name="patch_embed")(x.astype(dt))  # [b, grid, grid, d]
    tokens = tokens.reshape(b, grid * grid, d)  # [b, t, d]
    tokens = tokens + jnp.asarray(sincos_position_embedding(d, grid), dt)[None]
    cond = TimestepEmbedding(d, _FREQUENCY_DIM, dt, pdt, name="time_embed")(t)  # [b, d]
    if labels is not None:
      cond = cond + ClassEmbedding(c.num_classes, d, dt, pdt, name="class_embed")(labels)

    for i in range(c.depth):
      tokens = DiTBlock(c.num_heads, int(d * c.mlp_ratio), dt, pdt,
                        name=f"block_{i}")(tokens, cond, context, context_mask)

    shift, scale = jnp.split(_dense(2 * d, ("embed", "mlp"), dt, pdt, zero=True,
                                    name="final_adaln")(nn.silu(cond)), 2, axis=-1)
    tokens = _modulate(_norm(dt)(tokens), shift, scale)
    out = _dense(p * p * c.image_channels, ("embed", None), dt, pdt, zero=True,
                 name="final_linear")(tokens)  # [b, t, p * p * C]
    out = out.reshape(b, grid, grid, p, p, c.image_channels)
    out = out.transpose(0, 1, 3, 2, 4, 5)  # [b, grid, p, grid, p, C]
    return out.reshape(b, c.image_size, c.image_size, c.image_channels).astype(jnp.float32)
