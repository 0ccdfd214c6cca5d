"""Flash attention (Dao et al., 2022; FlashAttention-2, Dao, 2023): exact attention in tiles.

`flash_attention` equals `gen_jax.ops.attention(..., impl="xla")` but never materializes the
[t, s] probabilities: the forward kernel keeps an online softmax per block of queries and saves
its log-sum-exp; the backward kernels recompute the probabilities from it. This module validates
arguments, pads lengths to whole tiles (padded keys are masked out, padded queries sliced off),
decides whether the query offset is static or read at run time, and picks the kernels of a
backend. Letters: b batch, t/s query/key length, n/k query/kv heads, h head_dim.
"""
import functools
import numbers

import jax
import jax.numpy as jnp
import numpy as np

from gen_jax.kernels import flash_attention_gpu, flash_attention_mosaic_gpu, flash_attention_tpu
from gen_jax.kernels.flash_attention_tiles import FlashConfig, TileMask

FLASH_BACKENDS = ("gpu", "mosaic_gpu", "tpu")
_KERNELS = {"gpu": flash_attention_gpu, "mosaic_gpu": flash_attention_mosaic_gpu,
            "tpu": flash_attention_tpu}


def flash_attention(query, key, value, *, causal: bool, segment_ids=None, key_segment_ids=None,
                    query_offset: int | jax.Array = 0, sliding_window: int | None = None,
                    scale: float | None = None, backend: str = "gpu", block_q: int | None = None,
                    block_k: int | None = None, interpret: bool = False,
                    num_warps: int | None = None, num_stages: int | None = None,
                    dq_atomic: bool = False, key_splits: int | None = None) -> jax.Array:
  """Multi-head attention with grouped kv heads, differentiable in query, key and value.

  Args:
    query: [b, t, n, h], float32 or bfloat16.
    key, value: [b, s, k, h] with k dividing n; query head i reads kv head i // (n // k).
    causal: a query at position q_pos sees keys at positions <= q_pos.
    segment_ids: [b, t] int, document ids of the queries; 0 is padding and attends nowhere.
    key_segment_ids: [b, s] int; defaults to segment_ids.
    query_offset: the position of the first query among the keys (query i sits at query_offset +
      i; keys count from 0), as in `ops.attention`: s - t to decode after a prefix, or
      axis_index * t_local for a shard of the queries in sequence parallelism. A Python int is
      static (compiled into the kernels, one compilation per value); an int32 scalar jax.Array,
      traced or not, is read by the kernels at run time, so one compilation serves every value.
      Not differentiable. Only causal and sliding-window masks depend on it.
    sliding_window: a query sees keys with q_pos - k_pos < sliding_window (None: no limit).
    scale: logit scale (a Python float, static); defaults to 1/sqrt(h).
    backend: one of FLASH_BACKENDS, the kernels to run ("gpu": Triton; "mosaic_gpu": Hopper
      kernels in Mosaic GPU (wgmma, TMA) for the forward pass, dK/dV and dQ, for bf16/fp16,
      head_dim <= 128 and a static query_offset (`flash_attention_mosaic_gpu`); "tpu": Mosaic).
    block_q, block_k: tile sizes for every kernel (None: the backend's defaults).
    interpret: run the same kernels in the Pallas interpreter (on any device, e.g. CPU tests).
    num_warps, num_stages: Triton's warps per program and pipelining depth for every kernel of
      the gpu backend (None: their defaults; for tuning on new hardware, benchmarks/attention.py).
    dq_atomic: GPU backends: the dK/dV kernel also adds each tile's share of dQ into a float32
      buffer (Triton: atomic adds; mosaic_gpu: TMA's reducing copies), in place of a separate dQ
      kernel that recomputes the logits and probabilities (FlashAttention-2's and -3's CUDA
      backward; 5 matmuls per tile pair instead of 7, at the price of the additions' traffic and
      a summation order that varies from run to run).
    key_splits: GPU backend: the forward kernel splits each query block's keys into this many
      parts, one program each, and merges their partial softmaxes (Flash-Decoding: a few
      queries against a long KV cache would otherwise keep a few SMs busy). None: split when the
      grid is small (`flash_attention_gpu.key_splits`); 1: never.
  Returns:
    [b, t, n, h] in value's dtype; a query that sees no key gets 0 (and zero gradients).
  """
  config, padded = _prepare(query, key, value, causal, segment_ids, key_segment_ids, query_offset,
                            sliding_window, scale, backend, block_q, block_k, interpret,
                            num_warps, num_stages, dq_atomic, key_splits=key_splits)
  out = _flash(backend, config, *padded)
  return out[:, :query.shape[1], :, :query.shape[3]]


def flash_attention_with_lse(query, key, value, *, causal: bool, segment_ids=None,
                             key_segment_ids=None, query_offset: int | jax.Array = 0,
                             sliding_window: int | None = None, scale: float | None = None,
                             backend: str = "gpu", block_q: int | None = None,
                             block_k: int | None = None, interpret: bool = False,
                             num_warps: int | None = None, num_stages: int | None = None,
                             result_dtype=None, key_splits: int | None = None):
  """`flash_attention`'s forward pass with each query's log-sum-exp; not differentiable.

  Attention split over blocks of keys (ring attention) combines the blocks' outputs by their
  log-sum-exps and differentiates with `flash_attention_backward`. Arguments as `flash_attention`;
  result_dtype: out's dtype (None: value's), float32 for blocks summed later, so that each is not
  rounded to the inputs' precision first.
  Returns:
    out [b, t, n, h] (0 for a query that sees no key) and lse [b, n, t] float32,
    the natural log of the sum of exp(scaled logits) over the keys each query sees (-inf: none).
  """
  config, padded = _prepare(query, key, value, causal, segment_ids, key_segment_ids, query_offset,
                            sliding_window, scale, backend, block_q, block_k, interpret,
                            num_warps, num_stages, False,  # dq_atomic is a backward setting.
                            result_dtype, key_splits)
  out, residuals = _KERNELS[backend].forward(*padded, config)
  lse = _KERNELS[backend].natural_lse(residuals[-1])[:, :, :query.shape[1]]
  lse = jnp.where(lse == jnp.inf, -jnp.inf, lse)  # The kernels mark an empty row +inf.
  return out[:, :query.shape[1], :, :query.shape[3]], lse


def flash_attention_at_layer(query, key_layers, value_layers, layer, *, causal: bool,
                             segment_ids=None, key_segment_ids=None,
                             query_offset: int | jax.Array = 0, sliding_window: int | None = None,
                             scale: float | None = None, backend: str = "gpu",
                             block_q: int | None = None, block_k: int | None = None,
                             interpret: bool = False, num_warps: int | None = None,
                             num_stages: int | None = None, key_splits: int | None = None):
  """`flash_attention`'s forward pass against layer `layer` (an int32 scalar, traced or not) of
  stacked keys and values [layers, b, s, k, h]: a decoding step inside a layer loop over a
  stacked KV cache. The GPU kernel reads that layer in place, where slicing it out first copies
  it every step; the TPU backend, and keys that would need padding to whole tiles (s not a
  multiple of the kernels' largest key block, head_dim not a power of two of at least 16), take
  the slice. Not differentiable. Other arguments as `flash_attention`.
  Returns:
    [b, t, n, h] in value's dtype.
  """
  if key_layers.ndim != 5 or key_layers.shape != value_layers.shape:
    raise ValueError(f"key_layers and value_layers must be [layers, batch, length, kv_heads, "
                     f"head_dim] alike, got {key_layers.shape} and {value_layers.shape}")
  options = dict(causal=causal, segment_ids=segment_ids, key_segment_ids=key_segment_ids,
                 query_offset=query_offset, sliding_window=sliding_window, scale=scale,
                 backend=backend, block_q=block_q, block_k=block_k, interpret=interpret,
                 num_warps=num_warps, num_stages=num_stages, key_splits=key_splits)
  layer = jax.lax.stop_gradient(jnp.asarray(layer, jnp.int32))
  # One layer's shapes plan the call (the unused slice is dead code once traced).
  config, padded = _prepare(query, key_layers[0], value_layers[0], causal, segment_ids,
                            key_segment_ids, query_offset, sliding_window, scale, backend,
                            block_q, block_k, interpret, num_warps, num_stages, False,
                            key_splits=key_splits)
  if backend != "gpu" or padded[1].shape != key_layers.shape[1:]:
    take = lambda x: jax.lax.dynamic_index_in_dim(x, layer, keepdims=False)
    return flash_attention(query, take(key_layers), take(value_layers), **options)
  query, _, _, query_ids, key_ids, offset = padded
  out = _flash_at_layer(config, query, key_layers, value_layers, query_ids, key_ids, offset,
                        layer.reshape(1))
  return out[:, :config.mask.query_length, :, :key_layers.shape[-1]]


# A custom_vjp, as `_flash` is: XLA-level dead-code elimination (flax's nn.scan runs it to find
# what a layer body broadcasts) drops an unused custom_vjp call, never a bare pallas_call.
@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _flash_at_layer(config, query, key_layers, value_layers, query_ids, key_ids, offset, layer):
  out, _ = flash_attention_gpu.forward(query, key_layers, value_layers, query_ids, key_ids,
                                       offset, config, layer=layer)
  return out


def _flash_at_layer_forward(config, *args):
  return _flash_at_layer(config, *args), None


def _flash_at_layer_backward(config, residuals, d_out):
  raise NotImplementedError("flash_attention_at_layer is a decoding step's forward pass: "
                            "differentiate flash_attention on the layer's slice instead")


_flash_at_layer.defvjp(_flash_at_layer_forward, _flash_at_layer_backward)


def flash_attention_backward(query, key, value, out, lse, d_out, *, causal: bool,
                             segment_ids=None, key_segment_ids=None,
                             query_offset: int | jax.Array = 0, sliding_window: int | None = None,
                             scale: float | None = None, backend: str = "gpu",
                             block_q: int | None = None, block_k: int | None = None,
                             interpret: bool = False, num_warps: int | None = None,
                             num_stages: int | None = None, dq_atomic: bool = False,
                             result_dtype=None):
  """Gradients (dq, dk, dv) of a loss through attention of `query` to these keys and values.

  `out` [b, t, n, h] and `lse` [b, n, t] (natural log, -inf for a query that sees no key) are those
  of the whole attention the keys are part of: with the output and log-sum-exp of attention over
  several key blocks, each block's call gives its share of dq and its own dk, dv (ring attention),
  since every probability recomputed from the total lse is the total softmax's. With this call's
  own `flash_attention_with_lse` results it is `flash_attention`'s gradient. result_dtype: the
  gradients' dtype (None: each that of its input), float32 for blocks' shares summed later.
  Other arguments as `flash_attention`.
  """
  config, padded = _prepare(query, key, value, causal, segment_ids, key_segment_ids, query_offset,
                            sliding_window, scale, backend, block_q, block_k, interpret,
                            num_warps, num_stages, dq_atomic, result_dtype)
  t, h = query.shape[1], query.shape[3]
  padded_t, padded_h = padded[0].shape[1], padded[0].shape[3]
  pad = lambda x: jnp.pad(x, ((0, 0), (0, padded_t - t), (0, 0), (0, padded_h - h)))
  # Padded rows and empty rows get +inf, the kernels' mark of a row whose probabilities are all 0.
  lse = jnp.pad(jnp.where(lse == -jnp.inf, jnp.inf, lse.astype(jnp.float32)),
                ((0, 0), (0, 0), (0, padded_t - t)), constant_values=jnp.inf)
  residuals = _KERNELS[backend].residuals(*padded, pad(out), lse)
  dq, dk, dv = _KERNELS[backend].backward(residuals, pad(d_out.astype(out.dtype)), config)
  s = key.shape[1]
  return dq[:, :t, :, :h], dk[:, :s, :, :h], dv[:, :s, :, :h]


def _prepare(query, key, value, causal, segment_ids, key_segment_ids, query_offset,
             sliding_window, scale, backend, block_q, block_k, interpret, num_warps, num_stages,
             dq_atomic, result_dtype=None, key_splits=None):
  """(the kernels' FlashConfig, (query, key, value, query ids, key ids, run-time offset)): the
  arrays padded to whole tiles, ids None without segments, the offset None when static."""
  if backend not in FLASH_BACKENDS:
    raise ValueError(f"backend {backend!r} is not one of {FLASH_BACKENDS}")
  if backend != "gpu" and (num_warps or num_stages or key_splits):
    raise ValueError("num_warps, num_stages and key_splits are settings of the 'gpu' backend "
                     "(Triton's)")
  if backend not in ("gpu", "mosaic_gpu") and dq_atomic:
    raise ValueError("dq_atomic is a setting of the GPU backends ('gpu', 'mosaic_gpu')")
  for name, setting in (("num_warps", num_warps), ("num_stages", num_stages),
                        ("key_splits", key_splits)):
    if setting is not None and setting < 1:
      raise ValueError(f"{name} must be positive, got {setting}")
  segment_ids, key_segment_ids = _check_arguments(query, key, value, segment_ids, key_segment_ids,
                                                  sliding_window)
  static_offset, offset = _check_query_offset(query_offset)
  if not causal and sliding_window is None:  # Nothing depends on it: no run-time input.
    static_offset, offset = 0, None
  t, s, h = query.shape[1], key.shape[1], query.shape[3]
  blocks = _KERNELS[backend].plan_blocks(h, t, s, block_q, block_k, interpret)
  window = None if sliding_window is None else int(sliding_window)  # Hashable, static.
  mask = TileMask(causal=bool(causal), sliding_window=window, query_length=t, key_length=s,
                  has_segments=segment_ids is not None, query_offset=static_offset)
  config = FlashConfig(mask=mask, scale=float(h ** -0.5 if scale is None else scale),
                       blocks=blocks, interpret=interpret, num_warps=num_warps,
                       num_stages=num_stages, dq_atomic=bool(dq_atomic),
                       result_dtype=None if result_dtype is None else jnp.dtype(result_dtype).name,
                       key_splits=key_splits)

  def pad(x, length):  # Zero rows and zero head_dim columns change no dot product.
    return jnp.pad(x, ((0, 0), (0, length - x.shape[1]), (0, 0), (0, blocks.padded_head_dim - h)))

  query = pad(query, blocks.padded_query_length)
  key, value = pad(key, blocks.padded_key_length), pad(value, blocks.padded_key_length)
  if segment_ids is not None:  # Padding gets segment 0, which sees nothing.
    segment_ids = jnp.pad(segment_ids, ((0, 0), (0, query.shape[1] - t)))
    key_segment_ids = jnp.pad(key_segment_ids, ((0, 0), (0, key.shape[1] - s)))
  return config, (query, key, value, segment_ids, key_segment_ids, offset)


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


def _check_query_offset(query_offset):
  """(static int or None, None or a run-time int32 array of shape (1,)) for `query_offset`."""
  if isinstance(query_offset, numbers.Integral) and not isinstance(query_offset, bool):
    return int(query_offset), None
  if isinstance(query_offset, (jax.Array, np.ndarray, np.generic)):
    dtype = query_offset.dtype
    if query_offset.shape == () and jnp.issubdtype(dtype, jnp.integer):
      # Shape (1,): a one-element block for the Triton kernels, one SMEM word for Mosaic.
      return None, jax.lax.stop_gradient(jnp.asarray(query_offset, jnp.int32)).reshape(1)
  raise ValueError(f"query_offset must be a Python int or an integer scalar array, got "
                   f"{query_offset!r}")


@functools.partial(jax.custom_vjp, nondiff_argnums=(0, 1))
def _flash(backend, config, query, key, value, query_ids, key_ids, offset):
  """Attention over padded arrays: query [b, t, n, h], key/value [b, s, k, h], ids or None,
  offset an int32 (1,) array when config.mask.dynamic_offset, else None."""
  out, _ = _KERNELS[backend].forward(query, key, value, query_ids, key_ids, offset, config)
  return out


def _flash_forward(backend, config, query, key, value, query_ids, key_ids, offset):
  return _KERNELS[backend].forward(query, key, value, query_ids, key_ids, offset, config)


def _flash_backward(backend, config, residuals, d_out):
  dq, dk, dv = _KERNELS[backend].backward(residuals, d_out, config)
  return dq, dk, dv, None, None, None  # Segment ids and the offset are integers: no gradient.


_flash.defvjp(_flash_forward, _flash_backward)
