"""Flash attention (Dao et al., 2022; FlashAttention-2, Dao, 2023): exact attention in tiles.

`flash_attention` equals `gen_jax.ops.attention(..., impl="xla")` (with query_offset 0) but never
materializes the [t, s] probabilities: the forward kernel keeps an online softmax per block of
queries and saves its log-sum-exp; the backward kernels recompute the probabilities from it.
This module validates arguments, pads lengths to whole tiles (padded keys are masked out, padded
queries sliced off) and picks the kernels of a backend. Letters: b batch, t/s query/key length,
n/k query/kv heads, h head_dim.
"""
import functools
import numbers

import jax
import jax.numpy as jnp

from gen_jax.kernels import flash_attention_gpu, flash_attention_tpu
from gen_jax.kernels.flash_attention_tiles import FlashConfig, TileMask

FLASH_BACKENDS = ("gpu", "tpu")
_KERNELS = {"gpu": flash_attention_gpu, "tpu": flash_attention_tpu}


def flash_attention(query, key, value, *, causal: bool, segment_ids=None, key_segment_ids=None,
                    sliding_window: int | None = None, scale: float | None = None,
                    backend: str = "gpu", block_q: int | None = None, block_k: int | None = None,
                    interpret: bool = False) -> jax.Array:
  """Multi-head attention with grouped kv heads, differentiable in query, key and value.

  Args:
    query: [b, t, n, h], float32 or bfloat16.
    key, value: [b, s, k, h] with k dividing n; query head i reads kv head i // (n // k).
    causal: a query at position i sees keys at positions <= i (both count from 0).
    segment_ids: [b, t] int, document ids of the queries; 0 is padding and attends nowhere.
    key_segment_ids: [b, s] int; defaults to segment_ids.
    sliding_window: a query sees keys with q_pos - k_pos < sliding_window (None: no limit).
    scale: logit scale (a Python float, static); defaults to 1/sqrt(h).
    backend: one of FLASH_BACKENDS, the kernels to run ("gpu": Triton, "tpu": Mosaic).
    block_q, block_k: tile sizes for every kernel (None: the backend's defaults).
    interpret: run the same kernels in the Pallas interpreter (on any device, e.g. CPU tests).
  Returns:
    [b, t, n, h] in value's dtype; a query that sees no key gets 0 (and zero gradients).
  """
  if backend not in FLASH_BACKENDS:
    raise ValueError(f"backend {backend!r} is not one of {FLASH_BACKENDS}")
  segment_ids, key_segment_ids = _check_arguments(query, key, value, segment_ids, key_segment_ids,
                                                  sliding_window)
  t, s, h = query.shape[1], key.shape[1], query.shape[3]
  blocks = _KERNELS[backend].plan_blocks(h, t, s, block_q, block_k, interpret)
  window = None if sliding_window is None else int(sliding_window)  # Hashable, static.
  mask = TileMask(causal=bool(causal), sliding_window=window, query_length=t,
                  key_length=s, has_segments=segment_ids is not None)
  config = FlashConfig(mask=mask, scale=float(h ** -0.5 if scale is None else scale),
                       blocks=blocks, interpret=interpret)

  def pad(x, length):  # Zero rows and zero head_dim columns change no dot product.
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, blocks.padded_head_dim - h)))

  query = pad(query, blocks.padded_query_length)
  key, value = pad(key, blocks.padded_key_length), pad(value, blocks.padded_key_length)
  if segment_ids is not None:  # Padding gets segment 0, which sees nothing.
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, query.shape[1] - t)))
    key_segment_ids = jnp.pad(key_segment_ids, ((0, 0), (0, key.shape[1] - s)))
  out = _flash(backend, config, query, key, value, segment_ids, key_segment_ids)
  return out[:, :t, :, :h]


def _check_arguments(query, key, value, segment_ids, key_segment_ids, sliding_window):
  """Raises ValueError naming the bad argument; returns the query and key segment ids."""
  if query.ndim != 4 or key.ndim != 4 or value.ndim != 4:
    raise ValueError(f"query, key and value must be [batch, length, heads, head_dim], got shapes "
                     f"{query.shape}, {key.shape}, {value.shape}")
  if key.shape != value.shape:
    raise ValueError(f"key {key.shape} and value {value.shape} must have the same shape")
  if query.shape[0] != key.shape[0]:
    raise ValueError(f"query batch {query.shape[0]} differs from key batch {key.shape[0]}")
  if query.shape[3] != key.shape[3]:
    raise ValueError(f"query head_dim {query.shape[3]} differs from key head_dim {key.shape[3]}")
  if query.shape[2] % key.shape[2]:
    raise ValueError(f"query heads {query.shape[2]} must be a multiple of kv heads {key.shape[2]}")
  if not query.dtype == key.dtype == value.dtype:
    raise ValueError(f"query, key and value must share a dtype, got {query.dtype}, {key.dtype}, "
                     f"{value.dtype}")
  if sliding_window is not None and (not isinstance(sliding_window, numbers.Integral)
                                     or sliding_window < 1):
    raise ValueError(f"sliding_window must be a positive int or None, got {sliding_window!r}")
  if segment_ids is None:
    if key_segment_ids is not None:
      raise ValueError("key_segment_ids needs segment_ids (the queries' segments)")
    return None, None
  b, t, s = query.shape[0], query.shape[1], key.shape[1]
  segment_ids = jnp.asarray(segment_ids, jnp.int32)
  if key_segment_ids is None:
    if t != s:
      raise ValueError("key_segment_ids is required when query and key lengths differ")
    key_segment_ids = segment_ids
  if segment_ids.shape != (b, t):
    raise ValueError(f"segment_ids must have shape {(b, t)}, got {segment_ids.shape}")
  key_segment_ids = jnp.asarray(key_segment_ids, jnp.int32)
  if key_segment_ids.shape != (b, s):
    raise ValueError(f"key_segment_ids must have shape {(b, s)}, got {key_segment_ids.shape}")
  return segment_ids, key_segment_ids


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(backend, config, query, key, value, query_ids, key_ids):
  """Attention over padded arrays: query [b, t, n, h], key/value [b, s, k, h], ids or None."""
  out, _ = _KERNELS[backend].forward(query, key, value, query_ids, key_ids, config)
  return out


def _flash_forward(backend, config, query, key, value, query_ids, key_ids):
  return _KERNELS[backend].forward(query, key, value, query_ids, key_ids, config)


def _flash_backward(backend, config, residuals, d_out):
  dq, dk, dv = _KERNELS[backend].backward(residuals, d_out, config)
  return dq, dk, dv, None, None  # Segment ids are integers: no gradient.


_flash.defvjp(_flash_forward, _flash_backward)
