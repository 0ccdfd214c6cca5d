"""Blocks shared by the transformer families: RMSNorm, rotary embeddings, SwiGLU, attention.

Every parameter is created through `nn.with_logical_partitioning` with names from one vocabulary
(batch, length, embed, heads, kv_heads, head_dim, mlp, vocab, layers), which the config's
logical_axis_rules map onto mesh axes. The attention and MLP projections are
`gen_jax.quant.projection.Projection`s, which `weight_bits` switches from float kernels to
group-wise int8/int4 weights, and which `lora_rank` gives a low-rank adapter where the block's
`lora_targets` names it (gen_jax.lora).
"""
from typing import Any

import flax.linen as nn
import jax
import jax.numpy as jnp

from gen_jax import ops
from gen_jax.quant.projection import Projection

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


def _lora_rank(module: nn.Module, name: str) -> int:
  """The adapter rank of the projection `name` of an Attention or SwiGLU: 0 unless targeted."""
  return module.lora_rank if name in module.lora_targets else 0


class SwiGLU(nn.Module):
  """Gated MLP with a SiLU gate (Shazeer, 2020): wo(silu(x wg) * (x wu))."""
  mlp_dim: int
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  weight_bits: int = 0  # 0: float kernels; 8 or 4: group-wise int weights (gen_jax.quant).
  weight_group_size: int = 64
  lora_rank: int = 0  # Rank of the adapters on the projections in lora_targets; 0: none.
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ()  # Of wi_gate, wi_up, wo (other names are ignored).
  weight_matmul_impl: str = "xla"  # Int weights' matmul: gen_jax.quant.matmul.

  @nn.compact
  def __call__(self, x: jax.Array) -> jax.Array:
    """x: [b, t, d] -> [b, t, d]."""
    dense = lambda features, names, name: Projection(  # noqa: E731
        (features,), names, self.dtype, self.param_dtype, self.weight_bits,
        self.weight_group_size, _lora_rank(self, name), self.lora_alpha,
        self.weight_matmul_impl, name=name)
    gate = dense(self.mlp_dim, ("embed", "mlp"), "wi_gate")(x)  # [b, t, f]
    up = dense(self.mlp_dim, ("embed", "mlp"), "wi_up")(x)  # [b, t, f]
    return dense(x.shape[-1], ("mlp", "embed"), "wo")(nn.silu(gate) * up)


class Attention(nn.Module):
  """Grouped-query self-attention with rotary positions; the product itself is `ops.attention`."""
  num_heads: int
  num_kv_heads: int
  head_dim: int
  rope_base: float
  attention_impl: str = "xla"
  dtype: Dtype = jnp.float32
  param_dtype: Dtype = jnp.float32
  sequence_parallel: str = "all_gather"  # ops.SEQUENCE_PARALLEL: with the length split.
  sliding_window: int | None = None  # Attend to this many most recent tokens (None: all).
  weight_bits: int = 0  # 0: float kernels; 8 or 4: group-wise int weights (gen_jax.quant).
  weight_group_size: int = 64
  lora_rank: int = 0  # Rank of the adapters on the projections in lora_targets; 0: none.
  lora_alpha: float = 16.0
  lora_targets: tuple[str, ...] = ()  # Of query, key, value, out (other names are ignored).
  weight_matmul_impl: str = "xla"  # Int weights' matmul: gen_jax.quant.matmul.

  @nn.compact
  def __call__(self, x: jax.Array, positions: jax.Array, segment_ids: jax.Array | None,
               cache: dict | None = None, cache_index: jax.Array | None = None,
               cache_segment_ids: jax.Array | None = None,
               cache_layer: jax.Array | int | None = 0):
    """x: [b, t, d]; positions, segment_ids: [b, t] -> [b, t, d].

    With a cache ({"key", "value"}: the whole model's [layers, b, L, k, h] stacks, this layer's
    keys and values at index cache_layer; or with cache_layer None this layer's own [b, L, k, h]
    buffers) the new keys and values are written at slots
    cache_index .. cache_index + t - 1, in place, and the queries attend to the layer's whole
    cache, masked by causality (slot order) and cache_segment_ids [b, L] (this call's ids already
    written in); returns (out, the updated cache).
    """
    d = x.shape[-1]
    def proj(features, names, name):
      return Projection(features, names, self.dtype, self.param_dtype, self.weight_bits,
                        self.weight_group_size, _lora_rank(self, name), self.lora_alpha,
                        self.weight_matmul_impl, name=name)

    n, k, h = self.num_heads, self.num_kv_heads, self.head_dim
    query = proj((n, h), ("embed", "heads", "head_dim"), "query")(x)  # btd,dnh->btnh
    key = proj((k, h), ("embed", "kv_heads", "head_dim"), "key")(x)  # btd,dkh->btkh
    value = proj((k, h), ("embed", "kv_heads", "head_dim"), "value")(x)  # btd,dkh->btkh
    query = apply_rope(query, positions, self.rope_base)  # [b, t, n, h]
    key = apply_rope(key, positions, self.rope_base)  # [b, t, k, h]
    if cache is None:
      out = ops.attention(query, key, value, causal=True, segment_ids=segment_ids,
                          sliding_window=self.sliding_window, impl=self.attention_impl,
                          sequence_parallel=self.sequence_parallel)
      return proj((d,), ("heads", "head_dim", "embed"), "out")(out)  # btnh,nhd->btd
    if cache_layer is None:  # This layer's own buffers.
      cache = {name: jax.lax.dynamic_update_slice(cache[name], new.astype(cache[name].dtype),
                                                   (0, cache_index, 0, 0))
               for name, new in (("key", key), ("value", value))}
      keys, values = cache["key"], cache["value"]  # [b, L, k, h]
    else:
      start = (cache_layer, 0, cache_index, 0, 0)
      cache = {name: jax.lax.dynamic_update_slice(cache[name], new[None].astype(cache[name].dtype),
                                                   start)
               for name, new in (("key", key), ("value", value))}
      keys, values = cache["key"], cache["value"]  # [layers, b, L, k, h]: ops reads one.
    layer = cache_layer
    if layer is not None and (keys.dtype != query.dtype or values.dtype != value.dtype):
      # A cache kept in another dtype: cast this layer's slice, not the whole stack.
      keys, values = (jax.lax.dynamic_index_in_dim(x, layer, keepdims=False)
                      for x in (keys, values))
      layer = None
    out = ops.attention(query, keys.astype(query.dtype), values.astype(value.dtype),
                        causal=True, segment_ids=segment_ids, key_segment_ids=cache_segment_ids,
                        query_offset=cache_index, sliding_window=self.sliding_window,
                        impl=self.attention_impl, key_layer=layer,
                        # A cache holds positions in order: striping is for whole sequences.
                        sequence_parallel=("ring" if self.sequence_parallel == "striped_ring"
                                           else self.sequence_parallel))  # [b, t, n, h]
    return proj((d,), ("heads", "head_dim", "embed"), "out")(out), cache  # btnh,nhd->btd
