"""Blocks shared by the transformer families: RMSNorm, rotary embeddings, SwiGLU, attention.

Every parameter is created through `nn.with_logical_partitioning` with names from one vocabulary
(batch, length, embed, heads, kv_heads, head_dim, mlp, vocab, layers), which the config's
logical_axis_rules map onto mesh axes.
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax import ops

Dtype = Any


def partitioned(init, names: tuple[str | None, ...]):
  return nn.with_logical_partitioning(init, names)


class RMSNorm(nn.Module):
  """Root-mean-square layer norm (Zhang & Sennrich, 2019), computed in float32."""
  eps: float = 1e-6
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    scale = self.param("scale", partitioned(nn.initializers.ones, ("embed",)), (x.shape[-1],),
                       self.param_dtype)
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * scale.astype(jnp.float32)).astype(self.dtype)


def apply_rope(x: jax.Array, positions: jax.Array, base: float) -> jax.Array:
  """Rotary position embedding (Su et al., 2021), rotate-half layout as in LLaMA/Hugging Face.

  Args:
    x: [b, t, n, h] with h even.
    positions: [b, t] int positions of each token.
    base: rotary base frequency (theta).
  """
  half = x.shape[-1] // 2
  inv_freq = 1.0 / (base ** (jnp.arange(half, dtype=jnp.float32) / half))  # [h/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, h/2]
  sin = jnp.sin(angles)[:, :, None, :]  # [b, t, 1, h/2]
  cos = jnp.cos(angles)[:, :, None, :]
  x1, x2 = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
  return rotated.astype(x.dtype)


class SwiGLU(nn.Module):
  """Gated MLP with a SiLU gate (Shazeer, 2020): wo(silu(x wg) * (x wu))."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [b, t, d] -> [b, t, d]."""
    embed_dim = x.shape[-1]
    dense = lambda features, names, name: nn.DenseGeneral(  # noqa: E731
        features, use_bias=False, dtype=self.dtype, param_dtype=self.param_dtype,
        kernel_init=partitioned(nn.initializers.lecun_normal(), names), name=name)
    gate = dense(self.mlp_dim, ("embed", "mlp"), "wi_gate")(x)  # [b, t, f]
    up = dense(self.mlp_dim, ("embed", "mlp"), "wi_up")(x)  # [b, t, f]
    return dense(embed_dim, ("mlp", "embed"), "wo")(nn.silu(gate) * up)


class Attention(nn.Module):
  """Grouped-query self-attention with rotary positions; the product itself is `ops.attention`."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_base: float
  attention_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  sliding_window: int | None = None  # Attend to this many most recent tokens (None: all).

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None,
               cache: dict | None = None, cache_index: jax.Array | None = None,
               cache_segment_ids: jax.Array | None = None):
    """x: [b, t, d]; positions, segment_ids: [b, t] -> [b, t, d].

    With a cache ({"key", "value"}: [b, L, k, h]) the new keys and values are written at slots
    cache_index .. cache_index + t - 1 and the queries attend to the whole cache, masked by
    causality (slot order) and cache_segment_ids [b, L] (this call's ids already written in);
    returns (out, the updated cache).
    """
    d = x.shape[-1]
    def proj(shape, names, equation, name):
      # Fan-in is the contracted axes: embed for q/k/v, (heads, head_dim) for the output.
      in_axis = (0, 1) if equation.startswith("btnh") else 0
      out_axis = 2 if equation.startswith("btnh") else (1, 2)
      init = nn.initializers.lecun_normal(in_axis=in_axis, out_axis=out_axis)
      return nn.Einsum(shape, equation, use_bias=False, dtype=self.dtype,
                       param_dtype=self.param_dtype, kernel_init=partitioned(init, names), name=name)

    n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
    query = proj((d, n, h), ("embed", "heads", "head_dim"), "btd,dnh->btnh", "query")(x)
    key = proj((d, k, h), ("embed", "kv_heads", "head_dim"), "btd,dkh->btkh", "key")(x)
    value = proj((d, k, h), ("embed", "kv_heads", "head_dim"), "btd,dkh->btkh", "value")(x)
    query = apply_rope(query, positions, self.rope_base)  # [b, t, n, h]
    key = apply_rope(key, positions, self.rope_base)  # [b, t, k, h]
    if cache is None:
      out = ops.attention(query, key, value, causal=True, segment_ids=segment_ids,
                          sliding_window=self.sliding_window, impl=self.attention_impl)
      return proj((n, h, d), ("heads", "head_dim", "embed"), "btnh,nhd->btd", "out")(out)
    start = (0, cache_index, 0, 0)
    cache = {"key": jax.lax.dynamic_update_slice(cache["key"], key.astype(cache["key"].dtype), start),
             "value": jax.lax.dynamic_update_slice(cache["value"], value.astype(cache["value"].dtype),
                                                   start)}
    out = ops.attention(query, cache["key"].astype(query.dtype), cache["value"].astype(value.dtype),
                        causal=True, segment_ids=segment_ids, key_segment_ids=cache_segment_ids,
                        query_offset=cache_index, sliding_window=self.sliding_window,
                        impl=self.attention_impl)  # [b, t, n, h]
    return proj((n, h, d), ("heads", "head_dim", "embed"), "btnh,nhd->btd", "out")(out), cache
