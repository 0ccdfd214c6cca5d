"""Conditioning and attention of the diffusion backbones (Ho et al., 2020; Rombach et al., 2022).

The timestep enters as a sinusoidal embedding (Vaswani et al., 2017) through a two-layer MLP, a
class label through an embedding table with one extra row for the "null" class that
classifier-free guidance (Ho & Salimans, 2022) trains as the unconditional model, and a text
encoder's token states through cross-attention whose padded tokens are masked out.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax import ops
from gen_jax.models.layers import partitioned

Dtype = Any

# The diffusion backbones attend over a few hundred image positions at most: the XLA reference.
ATTENTION_IMPL = "xla"


def sinusoidal_embedding(t: jax.Array, dim: int, max_period: float = 10_000.0) -> jax.Array:
  """t [b] float (timestep index, may be fractional) -> [b, dim] float32: [cos(t w), sin(t w)].

  Frequencies w_i = max_period ** (-i / half) for i < half = dim // 2, as in ADM (Dhariwal & Nichol,
  2021); an odd `dim` gets a zero last column.
  """
  half = dim // 2
  freqs = jnp.exp(-jnp.log(max_period) * jnp.arange(half, dtype=jnp.float32) / half)  # [half]
  args = t.astype(jnp.float32)[:, None] * freqs[None]  # [b, half]
  emb = jnp.concatenate([jnp.cos(args), jnp.sin(args)], axis=-1)  # [b, 2 * half]
  if dim % 2:
    emb = jnp.pad(emb, ((0, 0), (0, 1)))
  return emb


class TimestepEmbedding(nn.Module):
  """t [b] -> [b, features]: sinusoidal features of width `frequency_dim`, then Dense-SiLU-Dense."""
  features: int
  frequency_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, t: jax.Array) -> jax.Array:
    emb = sinusoidal_embedding(t, self.frequency_dim).astype(self.dtype)  # [b, frequency_dim]
    emb = nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                   kernel_init=partitioned(nn.initializers.lecun_normal(), (None, "mlp")),
                   bias_init=partitioned(nn.initializers.zeros, ("mlp",)), name="dense_in")(emb)
    return nn.Dense(self.features, dtype=self.dtype, param_dtype=self.param_dtype,
                    kernel_init=partitioned(nn.initializers.lecun_normal(), ("mlp", "embed")),
                    bias_init=partitioned(nn.initializers.zeros, ("embed",)),
                    name="dense_out")(nn.silu(emb))


class ClassEmbedding(nn.Module):
  """labels [b] int in [0, num_classes] -> [b, features]; row `num_classes` is the null class."""
  num_classes: int
  features: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, labels: jax.Array) -> jax.Array:
    table = self.param("embedding", partitioned(nn.initializers.normal(0.02), (None, "embed")),
                       (self.num_classes + 1, self.features), self.param_dtype)
    return jnp.take(table, labels, axis=0).astype(self.dtype)


def prepare_conditioning(x, labels, context, context_mask, *, num_classes: int, context_dim: int):
  """Checks the conditioning arguments of a backbone and fills in what was left out.

  Returns (labels, context, context_mask): labels [b] int32 (None for an unconditional model; the
  null class `num_classes` when a class-conditional model is given none); context [b, s, c] and
  context_mask [b, s] bool (None without cross-attention; one masked token when a model with
  cross-attention is given no context, which is exactly what an all-padding context computes).
  Raises ValueError naming the argument that does not fit the model.
  """
  batch = x.shape[0]
  if num_classes == 0:
    if labels is not None:
      raise ValueError("labels: given to an unconditional model (model.num_classes = 0)")
  elif labels is None:
    labels = jnp.full((batch,), num_classes, jnp.int32)
  elif labels.shape != (batch,):
    raise ValueError(f"labels: shape {labels.shape} is not (batch,) = ({batch},)")
  if context_dim == 0:
    if context is not None or context_mask is not None:
      name = "context" if context is not None else "context_mask"
      raise ValueError(f"{name}: given to a model without cross-attention (model.context_dim = 0)")
    return labels, None, None
  if context is None:
    if context_mask is not None:
      raise ValueError("context_mask: given without context")
    return labels, jnp.zeros((batch, 1, context_dim), x.dtype), jnp.zeros((batch, 1), bool)
  if context.ndim != 3 or context.shape[0] != batch or context.shape[2] != context_dim:
    raise ValueError(f"context: shape {context.shape} is not (batch, length, context_dim) = "
                     f"({batch}, length, {context_dim})")
  if context_mask is not None and context_mask.shape != context.shape[:2]:
    raise ValueError(f"context_mask: shape {context_mask.shape} is not {context.shape[:2]}")
  return labels, context, context_mask


class MultiHeadAttention(nn.Module):
  """Self-attention over x, or cross-attention from x to `context`; out projection zero-initialized.

  The zero out projection makes a residual attention block the identity at initialization
  (Dhariwal & Nichol, 2021), so the backbone starts as its convolutional/MLP path.
  """
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array | None = None,
               context_mask: jax.Array | None = None) -> jax.Array:
    """x [b, t, d]; context [b, s, c] (None: self-attention); context_mask [b, s] bool -> [b, t, d].

    Keys where context_mask is False (padding) get no weight.
    """
    d = x.shape[-1]
    n, h = self.num_heads, d // self.num_heads

    def proj(inputs, features, names, name):
      """inputs [b, t, d_in] -> [b, t, *features]: a dense map whose kernel [d_in, *features]
      keeps its logical axis names (nn.DenseGeneral inits a flattened kernel, which they do not fit)."""
      kernel = self.param(f"{name}_kernel", partitioned(nn.initializers.lecun_normal(), names),
                          (inputs.shape[-1], *features), self.param_dtype)
      bias = self.param(f"{name}_bias", partitioned(nn.initializers.zeros, names[1:]), features,
                        self.param_dtype)
      out = jnp.tensordot(inputs.astype(self.dtype), kernel.astype(self.dtype), axes=1)
      return out + bias.astype(self.dtype)

    # Fused projections: one matmul (and one random init) for what comes from the same input.
    if context is None:
      qkv = proj(x, (3, n, h), ("embed", None, "heads", "head_dim"), "qkv")  # [b, t, 3, n, h]
      query, key, value = qkv[:, :, 0], qkv[:, :, 1], qkv[:, :, 2]
    else:
      query = proj(x, (n, h), ("embed", "heads", "head_dim"), "query")  # btd,dnh->btnh
      kv = proj(context, (2, n, h), ("embed", None, "kv_heads", "head_dim"), "kv")  # [b, s, 2, n, h]
      key, value = kv[:, :, 0], kv[:, :, 1]
    segments = {}
    if context_mask is not None:
      # Every query is in segment 1; padded keys are in segment 0, which nothing attends to.
      segments = dict(segment_ids=jnp.ones(x.shape[:2], jnp.int32),
                      key_segment_ids=context_mask.astype(jnp.int32))
    out = ops.attention(query, key, value, causal=False, impl=ATTENTION_IMPL, **segments)
    out_kernel = self.param("out_kernel", partitioned(nn.initializers.zeros,
                                                      ("heads", "head_dim", "embed")),
                            (n, h, d), self.param_dtype)
    out_bias = self.param("out_bias", partitioned(nn.initializers.zeros, ("embed",)), (d,),
                          self.param_dtype)
    return (jnp.einsum("btnh,nhd->btd", out.astype(self.dtype), out_kernel.astype(self.dtype))
            + out_bias.astype(self.dtype))


class CrossAttentionBlock(nn.Module):
  """x + CrossAttention(LayerNorm(x), context), as in Latent Diffusion (Rombach et al., 2022)."""
  num_heads: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array, context: jax.Array,
               context_mask: jax.Array | None) -> jax.Array:
    """x [b, t, d]; context [b, s, c]; context_mask [b, s] bool or None -> [b, t, d]."""
    y = nn.LayerNorm(dtype=self.dtype, param_dtype=self.param_dtype,
                     scale_init=partitioned(nn.initializers.ones, ("embed",)),
                     bias_init=partitioned(nn.initializers.zeros, ("embed",)), name="norm")(x)
    return x + MultiHeadAttention(self.num_heads, self.dtype, self.param_dtype,
                                  name="attention")(y, context, context_mask)
